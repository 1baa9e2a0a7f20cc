"""Intermediate features of SAM's image encoder, taken with forward hooks (transformers' code is not forked).

What is captured in every SamVisionLayer (block) i, for a batch of B images on an h x w patch grid:
- "qkv": the output of `attn.qkv`, split into q, k and v. Its last dim is laid out (q|k|v, head, head_dim),
  so each of q, k, v is (B', t, t, heads * head_dim), where B' = B * windows and t = window size in
  windowed blocks, B' = B and t = h = w in global blocks;
- "mlp": the MLP hidden features GELU(lin1(x)), taken as the input of `mlp.lin2`: (B, h, w, mlp_dim);
- "blocks": the block's output (residual stream after the MLP): (B, h, w, hidden_size);
- "stream": the residual stream at 2 x depth + 1 points, each (B, h, w, hidden_size): the patch embedding
  plus pos_embed (the first block's input), then per block the stream after attention (x + attention(x),
  the input of `layer_norm2`) and after the MLP (the block's output). What the official step-2 code aligns.
The final image embedding (after the neck) is always returned: (B, output_channels, h, w).
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

FEATURE_KINDS = ("qkv", "mlp", "blocks", "stream")
PRECISIONS = ("fp32", "bf16")


@dataclass
class EncoderFeatures:
    """One encoder forward: the image embedding plus the captured per-block features (lists, one per block)."""

    embedding: torch.Tensor
    queries: list[torch.Tensor] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    mlp_hidden: list[torch.Tensor] = field(default_factory=list)
    block_outputs: list[torch.Tensor] = field(default_factory=list)
    residual_stream: list[torch.Tensor] = field(default_factory=list)  # "stream": 2 x depth + 1, in forward order


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
    layers = getattr(encoder, "module", encoder).layers
    if "stream" in capture:  # the hooks fire in forward order, which is the order of the list
        handles.append(layers[0].register_forward_pre_hook(lambda _m, args: captured["stream"].append(args[0])))
    for layer in layers:
        if "qkv" in capture:
            handles.append(layer.attn.qkv.register_forward_hook(lambda _m, _i, out: captured["qkv"].append(out)))
        if "mlp" in capture:
            handles.append(layer.mlp.lin2.register_forward_pre_hook(lambda _m, args: captured["mlp"].append(args[0])))
        if "blocks" in capture:
            handles.append(layer.register_forward_hook(lambda _m, _i, out: captured["blocks"].append(out)))
        if "stream" in capture:
            handles.append(layer.layer_norm2.register_forward_pre_hook(
                lambda _m, args: captured["stream"].append(args[0])))
            handles.append(layer.register_forward_hook(lambda _m, _i, out: captured["stream"].append(out)))
    try:
        embedding = encoder(pixel_values).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    features = EncoderFeatures(embedding, mlp_hidden=captured["mlp"], block_outputs=captured["blocks"],
                               residual_stream=captured["stream"])
    for qkv in captured["qkv"]:
        query, key, value = qkv.chunk(3, dim=-1)
        features.queries.append(query)
        features.keys.append(key)
        features.values.append(value)
    return features


def autocast_for(device: torch.device, precision: str = "fp32"):
    """bf16 autocast on GPU when `precision` is "bf16" (one of PRECISIONS); full precision otherwise, and always
    on CPU (where bf16 is slow and would break CPU determinism). The official code trains in fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" and device.type == "cuda" \
        else nullcontext()
