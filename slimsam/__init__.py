"""SlimSAM workbench: prune and distil Segment Anything's image encoder.

    model, processor = slimsam.load_model("sam-b")
    slimsam.prune(model, "embedding", 0.5, pixel_values=...)   # step 1
    slimsam.save_model(model, processor, "runs/step1")

Sub-packages, each importing only those before it: data, model <- infer <- evaluate <- pruning <- distill
<- bench, cli, teach. `import slimsam` loads model and infer only; the pruning functions below are
imported on first use, so that serving masks never loads torch-pruning or pycocotools.
"""
from importlib import import_module

from slimsam.infer.predictor import SamPredictor
from slimsam.model.checkpoints import (
    ALIASES,
    IncompleteWeightsError,
    NotUniformError,
    WeightsNotFoundError,
    export_model,
    load_model,
    read_history,
    save_model,
)
from slimsam.model.stats import count_parameters, encoder_macs
from slimsam.model.structure import EncoderDims, LayerDims, read_dims

_ON_FIRST_USE = {name: "slimsam.pruning.steps" for name in ("kept_count", "prune", "prune_bottlenecks",
                                                            "prune_embedding_dim")}

__all__ = ["ALIASES", "EncoderDims", "IncompleteWeightsError", "LayerDims", "NotUniformError", "SamPredictor",
           "WeightsNotFoundError", "count_parameters", "encoder_macs", "export_model", "load_model", "read_dims",
           "read_history", "save_model", *_ON_FIRST_USE]


def __getattr__(name: str):
    """`slimsam.prune` etc.: the pruning API, imported when first asked for (PEP 562)."""
    if name in _ON_FIRST_USE:
        return getattr(import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module 'slimsam' has no attribute {name!r}")
