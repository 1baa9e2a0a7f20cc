"""SlimSAM workbench: prune and distil Segment Anything's image encoder.

    model, processor = slimsam.load_model("sam-b")
    slimsam.prune(model, "embedding", 0.5, pixel_values=...)   # step 1
    slimsam.save_model(model, processor, "runs/step1")
"""
from slimsam.checkpoints import (ALIASES, NotUniformError, WeightsNotFoundError, export_model, load_model,
                                 read_history, save_model)
from slimsam.predictor import SamPredictor
from slimsam.pruning import kept_count, prune, prune_bottlenecks, prune_embedding_dim
from slimsam.stats import count_parameters, encoder_macs
from slimsam.structure import EncoderDims, LayerDims, read_dims

__all__ = ["ALIASES", "EncoderDims", "LayerDims", "NotUniformError", "SamPredictor", "WeightsNotFoundError", "count_parameters",
           "encoder_macs", "export_model", "kept_count", "load_model", "prune", "prune_bottlenecks",
           "prune_embedding_dim", "read_dims", "read_history", "save_model"]
