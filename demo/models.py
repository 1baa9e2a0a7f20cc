"""Which models the app offers, which of them are available here, and loading each one once per process.

Weights are read-only once loaded, so one copy serves every session; everything that belongs to a
user (image, prompts, embeddings, masks) lives in that user's `gr.State` (see demo.session).
"""
from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from transformers import SamModel, SamProcessor

from slimsam import IncompleteWeightsError, WeightsNotFoundError, count_parameters, load_model
from slimsam.deploy.onnx_export import QUANTIZE_VARIANTS, ExportError, export_onnx
from slimsam.infer.onnx_runtime import NotAnExportError, OnnxSam, is_onnx_export, load_export
from slimsam.infer.predictor import ONNX_DTYPES, TORCH_DTYPES
from slimsam.model.checkpoints import available_locally, default_device, resolve

log = logging.getLogger("demo")

# Pane menu label -> slimsam alias (resolved to a Hub id by slimsam.model.checkpoints.ALIASES).
# The toy SAM ships with the package (trained here on synthetic shapes): the one entry that is always here.
TOY_LABEL = "Toy SAM (synthetic shapes)"
TOY_NOTE = "a toy model trained on synthetic shapes, not SAM: expect coarse masks"
STANDARD_MODELS = {"SAM-B": "sam-b", "SAM-L": "sam-l", "SAM-H": "sam-h", "SlimSAM-50": "slimsam-50",
                   "SlimSAM-77": "slimsam-77", TOY_LABEL: "toy-sam"}
DEFAULT_LEFT, DEFAULT_RIGHT = "SAM-H", "SlimSAM-77"
NOT_HERE = "not downloaded"  # how the menu marks a model whose weights are not on this machine


def default_pane(label: str, store: "ModelStore") -> str:
    """A pane's default model, or the toy SAM when that model's weights are not on this machine (offline)."""
    return label if store.available.get(label) else TOY_LABEL


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
    runtime: str = "PyTorch"  # what the pane says runs it: "PyTorch" (fp32), "PyTorch bf16", "onnxruntime int8", ...


class ModelLoadError(Exception):
    """A model that cannot be loaded: `summary` says so in one line, `details` where weights were looked for
    and what to do (markdown)."""

    def __init__(self, summary: str, details: str) -> None:
        super().__init__(f"{summary} {details}")
        self.summary, self.details = summary, details


class ModelStore:
    """The app's menu of models; each is loaded on first use and then shared by all sessions.

    sources: menu label -> alias, Hub id, local folder or ONNX export folder. A failed load is remembered
    (restart the app after fetching the weights) so that an offline machine does not retry the network on
    every click.
    runtime: "pytorch" or "onnxruntime" for every model, or None for each model's own (an ONNX export on
    onnxruntime, weights on PyTorch). On onnxruntime, a model given as weights is exported to ONNX on first
    use, into a temporary folder that goes once onnxruntime holds the graphs. dtype: PyTorch's weights
    ("fp32", "bf16", "fp16") or the export's variant ("fp32", "int8", "fp16"); None for fp32 (or, for an
    export without fp32 graphs, the variant it has). PyTorch fp32 is the default: exact, and the fastest exact path
    on the CPUs measured (BENCHMARKS.md, "Runtimes and dtypes"); the others are there to choose.
    """

    def __init__(self, sources: dict[str, str], device: str | torch.device | None = None,
                 runtime: str | None = None, dtype: str | None = None) -> None:
        self.sources = dict(sources)
        self.device = device or default_device()
        self.runtime, self.dtype = runtime, dtype
        self._loaded: dict[str, LoadedModel | ModelLoadError] = {}
        # One load at a time: transformers' from_pretrained patches torch globally while it builds a
        # model, so two loads in parallel threads corrupt each other (meta tensors left behind).
        self._loading = threading.Lock()
        # Whether each model's weights are on this machine (a folder, or the Hugging Face cache), checked
        # once at start from the files alone: the menu and the page's notice say it before anyone waits.
        self.available = {label: available_locally(source) or is_onnx_export(source)
                          for label, source in self.sources.items()}

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

    def runtime_of(self, label: str) -> str:
        """"pytorch" or "onnxruntime": what runs the model of menu label `label`."""
        return self.runtime or ("onnxruntime" if is_onnx_export(self.sources[label]) else "pytorch")

    def loading_stage(self, label: str) -> str:
        """What a pane says while its model loads."""
        if self.runtime_of(label) == "onnxruntime" and not is_onnx_export(self.sources[label]):
            return "exporting the model to ONNX for onnxruntime (minutes for a large model)"
        return "loading the model"

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
        source, runtime = self.sources[label], self.runtime_of(label)
        try:
            check_runtime(label, source, runtime, self.dtype)
            if runtime == "onnxruntime":  # an export folder (`slimsam export --format onnx`), or weights exported now
                model, processor = (load_export(source, self.dtype) if is_onnx_export(source)
                                    else exported_to_onnx(source, self.dtype))
                return LoadedModel(model, processor, None, f"onnxruntime {model.variant}")
            dtype = self.dtype or "fp32"
            model, processor = load_model(source, device=self.device, dtype=TORCH_DTYPES[dtype])
        except ModelLoadError as error:
            return error
        except (WeightsNotFoundError, FileNotFoundError, NotAnExportError) as error:
            return load_error(label, source, error)
        except ExportError as error:  # the export does not compute what the model computes
            return ModelLoadError(f"{label} could not be exported to ONNX for onnxruntime.",
                                  f"{str(error).splitlines()[0]}. Start the app without `--runtime onnxruntime`.")
        except ImportError as error:  # onnx, onnxscript or onnxruntime is not installed
            return ModelLoadError(f"{label} needs onnxruntime, which is not installed here.",
                                  f"{str(error).splitlines()[0]}. Install it with `pip install -e \".[onnx]\"`, "
                                  f"or start the app without `--runtime onnxruntime`.")
        return LoadedModel(model, processor, count_parameters(model)["total"],
                           "PyTorch" if dtype == "fp32" else f"PyTorch {dtype}")


def check_runtime(label: str, source: str, runtime: str, dtype: str | None) -> None:
    """Raise ModelLoadError when `runtime` cannot run the model of `source` with `dtype`."""
    if runtime == "pytorch" and is_onnx_export(source):
        raise ModelLoadError(f"{label} is an ONNX export, which runs on onnxruntime only.",
                             "Start the app without `--runtime pytorch`, or give the model's weights instead.")
    allowed = ONNX_DTYPES if runtime == "onnxruntime" else tuple(TORCH_DTYPES)
    if dtype is not None and dtype not in allowed:
        where = "onnxruntime" if runtime == "onnxruntime" else "PyTorch"
        raise ModelLoadError(f"{label} runs on {where}, which has no {dtype}.",
                             f"On {where}, `--dtype` is one of {', '.join(allowed)}"
                             + ("; int8 is an ONNX variant: add `--runtime onnxruntime` (the model is exported on "
                                "first use) or give an ONNX export folder." if runtime == "pytorch" else "."))


def exported_to_onnx(source: str, dtype: str | None) -> tuple[OnnxSam, SamProcessor]:
    """The model of `source` (alias, Hub id or folder of weights) exported to ONNX (its fp32 graphs, and the variant
    `dtype` names) and opened on onnxruntime. The export is checked against PyTorch (slimsam.deploy.onnx_export
    raises ExportError if it differs) and its folder deleted once onnxruntime's sessions hold the graphs."""
    model, processor = load_model(source, fast=False)  # the exporter traces transformers' own attention
    variant = {variant: name for name, variant in QUANTIZE_VARIANTS.items()}[dtype or "fp32"]  # a --quantize value
    quantize = ["none"] if variant == "none" else ["none", variant]  # fp32 is always made and checked
    with tempfile.TemporaryDirectory(prefix="slimsam-app-onnx-") as folder:
        export = Path(folder) / "onnx"
        export_onnx(model, processor, export, quantize=quantize, log_progress=log.info)
        del model
        return load_export(export, dtype)


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
