"""Which models the app offers, and loading each one once per process.

Weights are read-only once loaded, so one copy serves every session; everything that belongs to a
user (image, prompts, embeddings, masks) lives in that user's `gr.State` (see demo.session).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import SamModel, SamProcessor

from slimsam import WeightsNotFoundError, count_parameters, load_model
from slimsam.model.checkpoints import default_device, resolve

# Pane menu label -> slimsam alias (resolved to a Hub id by slimsam.model.checkpoints.ALIASES).
STANDARD_MODELS = {"SAM-B": "sam-b", "SAM-L": "sam-l", "SAM-H": "sam-h", "SlimSAM-50": "slimsam-50",
                   "SlimSAM-77": "slimsam-77"}
DEFAULT_LEFT, DEFAULT_RIGHT = "SAM-H", "SlimSAM-77"

try:  # Hugging Face ZeroGPU: run the decorated function on a borrowed GPU; a no-op everywhere else.
    from spaces import GPU as gpu
except ImportError:
    def gpu(function):
        return function


@dataclass(frozen=True)
class LoadedModel:
    model: SamModel
    processor: SamProcessor
    parameters: int  # of the whole SamModel


class ModelLoadError(Exception):
    """A model that cannot be loaded; the message says which, where weights were looked for, and what to do."""


class ModelStore:
    """The app's menu of models; each is loaded on first use and then shared by all sessions.

    sources: menu label -> alias, Hub id or local folder. A failed load is remembered (restart the app
    after fetching the weights) so that an offline machine does not retry the network on every click.
    """

    def __init__(self, sources: dict[str, str], device: str | torch.device | None = None) -> None:
        self.sources = dict(sources)
        self.device = device or default_device()
        self._loaded: dict[str, LoadedModel | ModelLoadError] = {}
        # One load at a time: transformers' from_pretrained patches torch globally while it builds a
        # model, so two loads in parallel threads corrupt each other (meta tensors left behind).
        self._loading = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.sources)

    def is_loaded(self, label: str) -> bool:
        return label in self._loaded

    def get(self, label: str) -> LoadedModel:
        """The loaded model for a menu label; raises ModelLoadError with a user-facing message."""
        if label not in self.sources:
            raise ModelLoadError(f"unknown model {label!r}; choose one of {', '.join(self.sources)}")
        if label not in self._loaded:  # loaded models never wait for another model's load
            with self._loading:  # also makes two sessions asking at once load it once
                if label not in self._loaded:
                    self._loaded[label] = self._load(label)
        loaded = self._loaded[label]
        if isinstance(loaded, ModelLoadError):
            raise loaded
        return loaded

    def _load(self, label: str) -> LoadedModel | ModelLoadError:
        source = self.sources[label]
        try:
            model, processor = load_model(source, device=self.device)
        except (WeightsNotFoundError, FileNotFoundError) as error:
            return ModelLoadError(f"{label} ({resolve(source)}) is not available: {error} "
                                  f"To use a copy on disk, start the app with `--left FOLDER` or `--right FOLDER`.")
        return LoadedModel(model, processor, count_parameters(model)["total"])


def menu_with(choice: str, sources: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Add a --left/--right choice to the menu: a menu label or alias selects that entry; a folder or
    Hub id gets its own entry. Returns (label to select, updated menu)."""
    for label, alias in sources.items():
        if choice.lower() in (label.lower(), alias.lower(), resolve(alias).lower()):
            return label, sources
    path = Path(choice).expanduser()
    label = f"{path.name} (local)" if path.is_dir() else choice
    if label in sources and sources[label] != choice:
        label = f"{choice} (local)"
    return label, {**sources, label: choice}
