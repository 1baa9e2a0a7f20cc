"""SlimSAM's two structural pruning steps on SAM's image encoder.

Step 1, `prune_embedding_dim`: narrow the hidden (embedding) dim, keep the bottlenecks.
Step 2, `prune_bottlenecks`: narrow each block's q/k/v head dim and MLP width, keep the hidden dim.
Both keep the highest-scoring channels of each group (see slimsam.pruning.groups) and work in place.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from transformers import SamModel, SamProcessor

from slimsam.data.images import ImageFolderError
from slimsam.model.structure import sync_config
from slimsam.pruning.groups import bottleneck_groups, embedding_group, prune_group
from slimsam.pruning.importance import (
    CRITERIA,
    accumulate_disturbed_taylor_gradients,
    bottleneck_scores,
    embedding_scores,
)
from slimsam.pruning.label_taylor import accumulate_label_taylor_gradients

TARGETS = ("embedding", "bottleneck")
SCOPES = ("local", "global")


def kept_count(total: int, ratio: float, multiple: int = 1) -> int:
    """Channels left after pruning `ratio` of `total`, rounded down to a multiple (at least one multiple).

    SAM-B, 12 heads: kept_count(768, 0.77, 12) == 168, kept_count(3072, 0.77, 12) == 696.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    # The epsilon keeps exact products such as 3072 * 0.5 from flooring to one multiple less.
    return max(multiple, math.floor(total * (1 - ratio) / multiple + 1e-6) * multiple)


def top_channels(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, sorted ascending (ties broken by lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:count].sort().values


def global_allocation(scores: list[torch.Tensor], total_keep: int, min_keep: int) -> list[torch.Tensor]:
    """Rank channels across layers after z-scoring each layer's scores; return kept indices per layer.

    Every layer keeps at least `min_keep` channels (its own best ones).
    """
    z = [(s - s.mean()) / (s.std() + 1e-12) if s.numel() > 1 else torch.zeros_like(s) for s in scores]
    bonus = [torch.zeros_like(s) for s in z]
    for b, s in zip(bonus, z):
        b[top_channels(s, min_keep)] = float("inf")  # guaranteed seats
    flat = torch.cat([s + b for s, b in zip(z, bonus)])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[top_channels(flat, total_keep)] = True
    kept, start = [], 0
    for s in z:
        kept.append(torch.nonzero(chosen[start:start + s.numel()]).flatten())
        start += s.numel()
    return kept


def prune_embedding_dim(model: SamModel, ratio: float, scores: torch.Tensor) -> torch.Tensor:
    """Step 1: keep the best `kept_count(hidden, ratio, heads)` hidden channels; returns their indices.

    scores: (hidden_size,) importance of each hidden channel. q/k/v head dims and MLP widths are untouched,
    so afterwards head_dim != hidden_size / heads (saved in this project's format, not exportable).
    """
    group = embedding_group(model)
    heads = model.vision_encoder.config.num_attention_heads
    keep = top_channels(scores, kept_count(group.num_channels, ratio, heads))
    prune_group(group, keep)
    sync_config(model)
    return keep


@torch.no_grad()
def _fold_attention_scale(attn, heads: int, new_head_dim: int) -> None:
    """Keep attention logits unchanged when the head dim shrinks.

    SAM scales q.k by head_dim**-0.5, and a vanilla SamModel (and SDPA) recompute that from the new head
    dim. Multiplying the q rows by c = old_scale / new_scale, and rel_pos by 1/c (it is applied to the
    unscaled q), makes the pruned block compute exactly what the original computed with the removed
    channels zeroed.
    """
    new_scale = new_head_dim ** -0.5
    c = attn.scale / new_scale
    width = heads * new_head_dim
    attn.qkv.weight[:width] *= c
    if attn.qkv.bias is not None:
        attn.qkv.bias[:width] *= c
    if attn.use_rel_pos:
        attn.rel_pos_h /= c
        attn.rel_pos_w /= c
    attn.scale = new_scale


def prune_bottlenecks(model: SamModel, ratio: float, attention_scores: list[torch.Tensor],
                      mlp_scores: list[torch.Tensor], scope: str = "local") -> None:
    """Step 2: prune each block's q/k/v head dim and MLP hidden width; the hidden size is untouched.

    attention_scores[i]: (head_dim_i,) importance of head-dim channel j of block i (shared by q, k, v
    and every head). mlp_scores[i]: (mlp_dim_i,). scope "local" prunes every block by the same ratio
    (exportable as a plain SamModel); "global" ranks z-scored scores across blocks, so dims differ.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    encoder = model.vision_encoder
    heads = encoder.config.num_attention_heads
    layers = encoder.layers
    attn_groups, mlp_groups = bottleneck_groups(model)
    # Per block: the head dim needs no rounding (heads * head_dim is a multiple of heads whatever it is);
    # the MLP width is rounded down to a multiple of heads.
    attn_keep_counts = [kept_count(g.num_channels, ratio) for g in attn_groups]
    mlp_keep_counts = [kept_count(g.num_channels, ratio, heads) for g in mlp_groups]
    if scope == "local":
        attn_keep = [top_channels(s, n) for s, n in zip(attention_scores, attn_keep_counts)]
        mlp_keep = [top_channels(s, n) for s, n in zip(mlp_scores, mlp_keep_counts)]
    else:
        attn_keep = global_allocation(attention_scores, sum(attn_keep_counts), min_keep=1)
        mlp_keep = global_allocation(mlp_scores, sum(mlp_keep_counts), min_keep=heads)
    for layer, group, keep in zip(layers, attn_groups, attn_keep):
        prune_group(group, keep)
        _fold_attention_scale(layer.attn, heads, len(keep))
    for group, keep in zip(mlp_groups, mlp_keep):
        prune_group(group, keep)
    sync_config(model)


def prune(model: SamModel, target: str, ratio: float, scope: str = "local", criterion: str = "disturbed-taylor",
          pixel_values: Iterable[torch.Tensor] | None = None, num_images: int | None = None, seed: int = 0,
          progress: bool = True, samples: Iterable[dict] | None = None,
          processor: SamProcessor | None = None) -> dict:
    """Score channels with `criterion`, then run one SlimSAM pruning step in place.

    target: "embedding" (step 1) or "bottleneck" (step 2). criterion: one of importance.CRITERIA.
    samples, processor: for label-based "taylor", annotated samples (slimsam.data.annotations; num_images
    of them) and the model's processor.
    pixel_values: (1, 3, S, S) images for the disturbed-Taylor gradient pass (num_images of them, for
    the progress bar). Returns a record of what was done (incl. seconds spent on gradients and on
    scoring + pruning), for the model folder's history.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"importance must be one of {CRITERIA}, got {criterion!r}")
    kept_count(1, ratio)  # validate before the (slow) gradient pass
    generator = torch.Generator().manual_seed(seed)
    used = 0
    started = time.perf_counter()
    if criterion == "disturbed-taylor":
        if pixel_values is None:
            raise ValueError("disturbed-taylor importance needs images")
        used = accumulate_disturbed_taylor_gradients(model, pixel_values, seed=seed, total=num_images,
                                                     progress=progress)
        if used == 0:
            raise ImageFolderError("no readable images for the disturbed-taylor gradient pass")
    elif criterion == "taylor":
        if samples is None or processor is None:
            raise ValueError("label-based taylor importance needs annotated samples and the model's processor")
        used = accumulate_label_taylor_gradients(model, processor, samples, seed=seed, total=num_images,
                                                 progress=progress)
        if used == 0:
            raise ImageFolderError("no readable annotated images for the taylor gradient pass")
    gradient_seconds = time.perf_counter() - started
    score_kind = "taylor" if criterion in ("disturbed-taylor", "taylor") else criterion
    with torch.no_grad():
        if target == "embedding":
            prune_embedding_dim(model, ratio, embedding_scores(model, score_kind, generator))
        else:
            prune_bottlenecks(model, ratio, *bottleneck_scores(model, score_kind, generator), scope=scope)
    model.zero_grad(set_to_none=True)
    pruning_seconds = time.perf_counter() - started - gradient_seconds
    return {"step": "prune", "target": target, "ratio": ratio, "scope": scope if target == "bottleneck" else "local",
            "importance": criterion, "images": used, "seed": seed,
            "seconds": {"gradients": round(gradient_seconds, 3), "pruning": round(pruning_seconds, 3)}}
