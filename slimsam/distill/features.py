"""Intermediate features of SAM's image encoder, taken with forward hooks (transformers' code is not forked).

What is captured in every SamVisionLayer (block) i, for a batch of B images on an h x w patch grid:
- "qkv": the output of `attn.qkv`, split into q, k and v. Its last dim is laid out (q|k|v, head, head_dim),
  so each of q, k, v is (B', t, t, heads * head_dim), where B' = B * windows and t = window size in
  windowed blocks, B' = B and t = h = w in global blocks;
- "mlp": the MLP hidden features GELU(lin1(x)), taken as the input of `mlp.lin2`: (B, h, w, mlp_dim);
- "blocks": the block's output (residual stream after the MLP): (B, h, w, hidden_size).
The final image embedding (after the neck) is always returned: (B, output_channels, h, w).
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

FEATURE_KINDS = ("qkv", "mlp", "blocks")


@dataclass
class EncoderFeatures:
    """One encoder forward: the image embedding plus the captured per-block features (lists, one per block)."""

    embedding: torch.Tensor
    queries: list[torch.Tensor] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    mlp_hidden: list[torch.Tensor] = field(default_factory=list)
    block_outputs: list[torch.Tensor] = field(default_factory=list)


def encode(encoder: nn.Module, pixel_values: torch.Tensor, capture: Iterable[str] = ()) -> EncoderFeatures:
    """Run the image encoder on (B, 3, S, S) pixel values and return its embedding and the `capture`d features.

    encoder: a SamVisionEncoder, or a DistributedDataParallel wrapping one (the hooks go on the wrapped
    module and the forward goes through the wrapper, so gradients are still synchronised).
    capture: any of FEATURE_KINDS.
    """
    capture = set(capture)
    unknown = capture - set(FEATURE_KINDS)
    if unknown:
        raise ValueError(f"unknown feature kinds {sorted(unknown)}; choose from {FEATURE_KINDS}")
    captured: dict[str, list[torch.Tensor]] = {kind: [] for kind in FEATURE_KINDS}
    handles = []
    for layer in getattr(encoder, "module", encoder).layers:
        if "qkv" in capture:
            handles.append(layer.attn.qkv.register_forward_hook(lambda _m, _i, out: captured["qkv"].append(out)))
        if "mlp" in capture:
            handles.append(layer.mlp.lin2.register_forward_pre_hook(lambda _m, args: captured["mlp"].append(args[0])))
        if "blocks" in capture:
            handles.append(layer.register_forward_hook(lambda _m, _i, out: captured["blocks"].append(out)))
    try:
        embedding = encoder(pixel_values).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    features = EncoderFeatures(embedding, mlp_hidden=captured["mlp"], block_outputs=captured["blocks"])
    for qkv in captured["qkv"]:
        query, key, value = qkv.chunk(3, dim=-1)
        features.queries.append(query)
        features.keys.append(key)
        features.values.append(value)
    return features


def autocast_for(device: torch.device):
    """bf16 autocast on GPU; full precision on CPU (where bf16 is slow and would break CPU determinism)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
