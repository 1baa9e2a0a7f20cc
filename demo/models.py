"""Which models the app offers, which of them are available here, and loading each one once per process.

Weights are read-only once loaded, so one copy serves every session; everything that belongs to a
user (image, prompts, embeddings, masks) lives in that user's `gr.State` (see demo.session).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from transformers import SamModel, SamProcessor

from slimsam import IncompleteWeightsError, WeightsNotFoundError, count_parameters, load_model
from slimsam.infer.onnx_runtime import NotAnExportError, OnnxSam, is_onnx_export, load_export
from slimsam.model.checkpoints import available_locally, default_device, resolve

# Pane menu label -> slimsam alias (resolved to a Hub id by slimsam.model.checkpoints.ALIASES).
# The toy SAM ships with the package (trained here on synthetic shapes): the one entry that is always here.
TOY_LABEL = "Toy SAM (synthetic shapes)"
TOY_NOTE = "a toy model trained on synthetic shapes, not SAM: expect coarse masks"
STANDARD_MODELS = {"SAM-B": "sam-b", "SAM-L": "sam-l", "SAM-H": "sam-h", "SlimSAM-50": "slimsam-50",
                   "SlimSAM-77": "slimsam-77", TOY_LABEL: "toy-sam"}
DEFAULT_LEFT, DEFAULT_RIGHT = "SAM-H", "SlimSAM-77"


def default_pane(label: str, store: "ModelStore") -> str:
    """A pane's default model, or the toy SAM when that model's weights are not on this machine (offline)."""
    return label if store.available.get(label) else TOY_LABEL
NOT_HERE = "not downloaded"  # how the menu marks a model whose weights are not on this machine

try:  # Hugging Face ZeroGPU: run the decorated function on a borrowed GPU; a no-op everywhere else.
    from spaces import GPU as gpu
except ImportError:
    def gpu(function):
        return function


@dataclass(frozen=True)
class LoadedModel:
    model: SamModel | OnnxSam
    processor: SamProcessor
    parameters: int | None  # of the whole SamModel; None for an ONNX export (its graphs hold them)
    runtime: str = "PyTorch"  # what the pane says runs it: "PyTorch", or "onnxruntime <variant>"


class ModelLoadError(Exception):
    """A model that cannot be loaded: `summary` says so in one line, `details` where weights were looked for
    and what to do (markdown)."""

    def __init__(self, summary: str, details: str) -> None:
        super().__init__(f"{summary} {details}")
        self.summary, self.details = summary, details


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
        # Whether each model's weights are on this machine (a folder, or the Hugging Face cache), checked
        # once at start from the files alone: the menu and the page's notice say it before anyone waits.
        self.available = {label: available_locally(source) for label, source in self.sources.items()}

    @property
    def labels(self) -> list[str]:
        return list(self.sources)

    def menu(self) -> list[tuple[str, str]]:
        """Dropdown choices (shown name, label): models whose weights are not here are marked."""
        return [(label if self.available[label] else f"{label} ({NOT_HERE})", label) for label in self.sources]

    def notice(self) -> str:
        """One line for the top of the page: which models can be used here."""
        here = [label for label in self.sources if self.available[label]]
        missing = [label for label in self.sources if not self.available[label]]
        if not missing:
            return f"Models available here: {', '.join(here)}."
        text = f"Models available here: {', '.join(here) or 'none'}. Not downloaded: {', '.join(missing)}"
        if hub_constants.HF_HUB_OFFLINE:
            return text + " (offline: a pane with one of them says what to do)."
        return text + " (downloaded when first chosen, if this machine can reach the Hugging Face Hub)."

    def is_loaded(self, label: str) -> bool:
        return label in self._loaded

    def get(self, label: str) -> LoadedModel:
        """The loaded model for a menu label; raises ModelLoadError with a user-facing message."""
        if label not in self.sources:
            raise ModelLoadError(f"Unknown model {label!r}.", f"Choose one of {', '.join(self.sources)}.")
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
            if is_onnx_export(source):  # an export folder (`slimsam export --format onnx`) runs on onnxruntime
                model, processor = load_export(source)
                return LoadedModel(model, processor, None, f"onnxruntime {model.variant}")
            model, processor = load_model(source, device=self.device)
        except (WeightsNotFoundError, FileNotFoundError, NotAnExportError) as error:
            return load_error(label, source, error)
        return LoadedModel(model, processor, count_parameters(model)["total"])


def load_error(label: str, source: str, error: Exception) -> ModelLoadError:
    """The pane's one line and details for a model that could not be loaded."""
    model_id = resolve(source)
    if isinstance(error, IncompleteWeightsError):
        summary = f"{label}'s checkpoint is incomplete: refused (some weights would be random)."
        where = f"Source: `{model_id}`."
    elif Path(model_id).expanduser().is_dir() or isinstance(error, FileNotFoundError):
        summary = f"{label} cannot be loaded from its folder."
        where = f"Folder: `{model_id}`."
    else:
        summary = f"{label} is not available here (weights not downloaded)."
        where = (f"Hub id: `{model_id}`. Looked for in the Hugging Face cache: `{hub_constants.HF_HUB_CACHE}` "
                 f"(HF_HUB_OFFLINE={int(bool(hub_constants.HF_HUB_OFFLINE))}). Download with `hf download {model_id}`.")
    details = (f"{where} Or start the app with `--left FOLDER` or `--right FOLDER` (a `save_pretrained` folder). "
               f"Loader: {str(error).splitlines()[0]}")
    return ModelLoadError(summary, details)


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
