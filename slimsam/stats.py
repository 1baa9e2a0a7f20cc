"""Model size figures: parameter counts, encoder MACs, per-layer dims."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import SamModel

from slimsam.structure import empty_model, read_dims


def count_parameters(model: SamModel) -> dict[str, int]:
    """Parameters of the whole model and of the image encoder (shared tensors counted once)."""
    def count(module):
        return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
    return {"total": count(model), "encoder": count(model.vision_encoder)}


def encoder_macs(model: SamModel) -> dict[str, int]:
    """Multiply-accumulates of one image-encoder forward at the model's input size (1024x1024 for SAM).

    Returns {"linear_conv": ..., "attention": ..., "total": ...}. "linear_conv" (Linear and Conv layers
    only) is the convention of the SlimSAM paper's figures (SAM-B 372G, SlimSAM-77 23G); "attention"
    adds the q@k, attn@v and decomposed rel-pos matmuls, which pruning shrinks far less.
    Counted on a weightless copy on the meta device: no memory or compute, even for SAM-H.
    """
    meta_encoder = empty_model(model.config, read_dims(model)).vision_encoder
    size = model.config.vision_config.image_size
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        meta_encoder(torch.empty(1, 3, size, size))
    flops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear_conv = sum(n for op, n in flops.items() if op in ("aten.addmm", "aten.mm", "aten.convolution")) // 2
    total = counter.get_total_flops() // 2
    return {"linear_conv": linear_conv, "attention": total - linear_conv, "total": total}
