"""SlimSAM's two structural pruning steps on SAM's image encoder.

Step 1, `prune_embedding_dim`: narrow the hidden (embedding) dim, keep the bottlenecks.
Step 2, `prune_bottlenecks`: narrow each block's q/k/v head dim and MLP width, keep the hidden dim.
Both keep the highest-scoring channels of each group (see slimsam.pruning.groups) and work in place.

Which channels are kept follows the official SlimSAM code (czg1225/SlimSAM, prune_funcs.py and its
torch-pruning fork, MetaPruner.prune_local / prune_global), with this project's counts:
- step 1 keeps the same offsets in each of the `heads` blocks of hidden/heads consecutive channels, the
  offsets with the highest block-summed scores ("head-blocks"; "channels" ranks every channel freely);
- step 2, local: every block keeps the same fraction of its head dim and of its MLP width;
- step 2, global: each block's scores are z-scored, attention blocks are ranked together and MLP blocks
  together, below one threshold per kind is pruned (see `global_selection`);
- counts are floor(total * (1 - ratio)) rounded down to a multiple of the head count where needed, and a
  group that would keep no channel at all is left whole, as the official code leaves it.
"""
from __future__ import annotations

import logging
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
    SCORE_TENSORS,
    accumulate_disturbed_taylor_gradients,
    bottleneck_scores,
    embedding_scores,
)
from slimsam.pruning.label_taylor import accumulate_label_taylor_gradients

log = logging.getLogger(__name__)

TARGETS = ("embedding", "bottleneck")
SCOPES = ("local", "global")
EMBEDDING_SELECTIONS = ("head-blocks", "channels")


def _check_ratio(ratio: float) -> None:
    """A pruning ratio must be in [0, 1)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")


def kept_count(total: int, ratio: float, multiple: int = 1) -> int:
    """Channels left after pruning `ratio` of `total`: floor(total * (1 - ratio)) rounded down to a multiple.

    When that is 0 the group is left whole (`total`), as the official code leaves it (its torch-pruning
    fork refuses to remove every channel of a group). SAM-B, 12 heads: kept_count(768, 0.77, 12) == 168,
    kept_count(3072, 0.77, 12) == 696.
    """
    _check_ratio(ratio)
    # The epsilon keeps exact products such as 3072 * 0.5 from flooring to one multiple less (the official
    # code's int() does not have it: SAM-H's 1280 * (1 - 0.8) gives it 240 channels, here 256).
    kept = math.floor(total * (1 - ratio) / multiple + 1e-6) * multiple
    return kept if kept > 0 else total


def _warn_if_left_whole(ratio: float, what: str, kept: list[torch.Tensor], sizes: list[int]) -> None:
    """Say so when a ratio's kept count rounded to 0 and `kept_count` left groups whole (local selection only)."""
    whole = sum(ratio > 0 and k.numel() == n for k, n in zip(kept, sizes))
    if whole:
        log.warning("pruning %.3g would keep no channel of %d %s group(s): left whole, as the official code leaves "
                    "them", ratio, whole, what)


def top_channels(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, sorted ascending (ties broken by lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:count].sort().values


def select_embedding_channels(scores: torch.Tensor, ratio: float, heads: int,
                              selection: str = "head-blocks") -> torch.Tensor:
    """Step 1's choice: the hidden channels to keep, sorted ascending.

    scores: (hidden_size,) importance of each hidden channel. "head-blocks": the official code's choice (its
    q/k/v are head-grouped inside the embedding group): channel c = h * B + j is offset j of block h, B =
    hidden / heads; the block-summed score of offset j is sum_h scores[h * B + j], and the kept_count / heads
    best offsets are kept in every block. "channels": the kept_count best channels, wherever they are.
    """
    if selection not in EMBEDDING_SELECTIONS:
        raise ValueError(f"embedding selection must be one of {EMBEDDING_SELECTIONS}, got {selection!r}")
    hidden = scores.numel()
    count = kept_count(hidden, ratio, heads)
    if selection == "channels":
        return top_channels(scores, count)
    if hidden % heads:
        raise ValueError(f"head-block selection needs a hidden size divisible by {heads} heads, got {hidden}")
    block = hidden // heads
    offsets = top_channels(scores.reshape(heads, block).sum(0), count // heads)
    return (torch.arange(heads).unsqueeze(1) * block + offsets).flatten()


def zscore(scores: torch.Tensor, repeats: int = 1) -> torch.Tensor:
    """The official "gaussian" normaliser of a layer's scores: (s - mean) / (std + 1e-8), with the unbiased std
    taken over `scores` repeated `repeats` times (the fork normalises an attention group's per-row scores,
    the head-dim scores repeated once per head). Shape as `scores`."""
    repeated = scores.repeat(repeats)
    if repeated.numel() < 2:  # no spread to measure (a one-unit layer)
        return torch.zeros_like(scores)
    return (scores - repeated.mean()) / (repeated.std() + 1e-8)


def global_selection(z: list[torch.Tensor], ratio: float, round_to: int = 1) -> list[torch.Tensor]:
    """Rank every layer's z-scored channels together, as the official global pruning does; kept indices per layer.

    z: per layer, (n_i,) z-scores. With N = sum n_i, the threshold is the (N - floor(N (1 - ratio)))-th lowest
    z-score, and each layer loses its channels at or below it, taken in index order and cut to a multiple
    of `round_to` (so with round_to > 1 the highest-index below-threshold channels stay: the fork's
    order, kept here for fidelity). A layer that would lose every channel is left whole; there is no other
    per-layer minimum.
    """
    flat = torch.cat(z)
    pruned_count = flat.numel() - math.floor(flat.numel() * (1 - ratio) + 1e-6)
    if pruned_count <= 0:
        return [torch.arange(s.numel()) for s in z]
    threshold = flat.kthvalue(pruned_count).values
    kept = []
    for s in z:
        removed = torch.nonzero(s <= threshold).flatten()
        removed = removed[:removed.numel() - removed.numel() % round_to]
        keep = torch.ones(s.numel(), dtype=torch.bool)
        if removed.numel() < s.numel():
            keep[removed] = False
        kept.append(torch.nonzero(keep).flatten())
    return kept


def select_bottleneck_channels(attention_scores: list[torch.Tensor], mlp_scores: list[torch.Tensor], ratio: float,
                               heads: int, scope: str = "local") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Step 2's choice: per block, the head-dim channels and the MLP units to keep (each sorted ascending).

    attention_scores[i]: (head_dim_i,); mlp_scores[i]: (mlp_dim_i,). scope "local": every block keeps
    kept_count(head_dim, ratio) head-dim channels (no rounding: heads * head_dim is a multiple of heads
    whatever it is) and kept_count(mlp_dim, ratio, heads) MLP units. "global": `global_selection` over the
    attention blocks (floor(sum head_dim_i * (1 - ratio)) head-dim channels kept in all) and, separately,
    over the MLP blocks (each block's pruned count rounded down to a multiple of heads).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "local":
        return ([top_channels(s, kept_count(s.numel(), ratio)) for s in attention_scores],
                [top_channels(s, kept_count(s.numel(), ratio, heads)) for s in mlp_scores])
    return (global_selection([zscore(s, heads) for s in attention_scores], ratio),
            global_selection([zscore(s) for s in mlp_scores], ratio, round_to=heads))


def prune_embedding_dim(model: SamModel, ratio: float, scores: torch.Tensor,
                        selection: str = "head-blocks") -> torch.Tensor:
    """Step 1: keep the hidden channels `select_embedding_channels` picks; returns their indices.

    scores: (hidden_size,) importance of each hidden channel. q/k/v head dims and MLP widths are untouched,
    so afterwards head_dim != hidden_size / heads (saved in this project's format, not exportable).
    """
    keep = select_embedding_channels(scores, ratio, model.vision_encoder.config.num_attention_heads, selection)
    _warn_if_left_whole(ratio, "embedding", [keep], [scores.numel()])
    prune_group(embedding_group(model), keep)
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
                      mlp_scores: list[torch.Tensor], scope: str = "local"
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Step 2: prune each block's q/k/v head dim and MLP hidden width; the hidden size is untouched.

    attention_scores[i]: (head_dim_i,) importance of head-dim channel j of block i (shared by q, k, v
    and every head). mlp_scores[i]: (mlp_dim_i,). scope "local" prunes every block by the same ratio
    (exportable as a plain SamModel); "global" ranks z-scored scores across blocks, so dims differ (see
    `select_bottleneck_channels`). Returns the kept head-dim channels and MLP units of every block.
    """
    encoder = model.vision_encoder
    heads = encoder.config.num_attention_heads
    attn_keep, mlp_keep = select_bottleneck_channels(attention_scores, mlp_scores, ratio, heads, scope)
    if scope == "local":
        _warn_if_left_whole(ratio, "attention", attn_keep, [s.numel() for s in attention_scores])
        _warn_if_left_whole(ratio, "MLP", mlp_keep, [s.numel() for s in mlp_scores])
    attn_groups, mlp_groups = bottleneck_groups(model)
    for layer, group, keep in zip(encoder.layers, attn_groups, attn_keep):
        prune_group(group, keep)
        _fold_attention_scale(layer.attn, heads, len(keep))
    for group, keep in zip(mlp_groups, mlp_keep):
        prune_group(group, keep)
    sync_config(model)
    return attn_keep, mlp_keep


def _accumulate_gradients(model: SamModel, criterion: str, pixel_values: Iterable[torch.Tensor] | None,
                          samples: Iterable[dict] | None, processor: SamProcessor | None, num_images: int | None,
                          seed: int, progress: bool) -> int:
    """The gradient pass a Taylor criterion needs (none for the others); returns the images used."""
    if criterion == "disturbed-taylor":
        if pixel_values is None:
            raise ValueError("disturbed-taylor importance needs images")
        used = accumulate_disturbed_taylor_gradients(model, pixel_values, seed=seed, total=num_images,
                                                     progress=progress)
        if used == 0:
            raise ImageFolderError("no readable images for the disturbed-taylor gradient pass")
        return used
    if criterion == "taylor":
        if samples is None or processor is None:
            raise ValueError("label-based taylor importance needs annotated samples and the model's processor")
        used = accumulate_label_taylor_gradients(model, processor, samples, seed=seed, total=num_images,
                                                 progress=progress)
        if used == 0:
            raise ImageFolderError("no readable annotated images for the taylor gradient pass")
        return used
    return 0


def prune(model: SamModel, target: str, ratio: float, scope: str = "local", criterion: str = "disturbed-taylor",
          pixel_values: Iterable[torch.Tensor] | None = None, num_images: int | None = None, seed: int = 0,
          progress: bool = True, samples: Iterable[dict] | None = None, processor: SamProcessor | None = None,
          embedding_selection: str = "head-blocks", score_tensors: str = "weights") -> dict:
    """Score channels with `criterion`, then run one SlimSAM pruning step in place.

    target: "embedding" (step 1) or "bottleneck" (step 2). criterion: one of importance.CRITERIA.
    samples, processor: for label-based "taylor", annotated samples (slimsam.data.annotations; num_images
    of them) and the model's processor.
    pixel_values: (1, 3, S, S) images for the disturbed-Taylor gradient pass (num_images of them, for
    the progress bar). embedding_selection: one of EMBEDDING_SELECTIONS (step 1, see
    `select_embedding_channels`); score_tensors: one of importance.SCORE_TENSORS. Returns a record of what
    was done (incl. the recipe options and the seconds spent on gradients and on scoring + pruning), for
    the model folder's history.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"importance must be one of {CRITERIA}, got {criterion!r}")
    if embedding_selection not in EMBEDDING_SELECTIONS:
        raise ValueError(f"embedding selection must be one of {EMBEDDING_SELECTIONS}, got {embedding_selection!r}")
    if score_tensors not in SCORE_TENSORS:
        raise ValueError(f"score tensors must be one of {SCORE_TENSORS}, got {score_tensors!r}")
    _check_ratio(ratio)  # before the (slow) gradient pass
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    used = _accumulate_gradients(model, criterion, pixel_values, samples, processor, num_images, seed, progress)
    gradient_seconds = time.perf_counter() - started
    score_kind = "taylor" if criterion in ("disturbed-taylor", "taylor") else criterion
    with torch.no_grad():
        if target == "embedding":
            prune_embedding_dim(model, ratio, embedding_scores(model, score_kind, generator, score_tensors),
                                embedding_selection)
        else:
            prune_bottlenecks(model, ratio, *bottleneck_scores(model, score_kind, generator, score_tensors),
                              scope=scope)
    model.zero_grad(set_to_none=True)
    pruning_seconds = time.perf_counter() - started - gradient_seconds
    record = {"step": "prune", "target": target, "ratio": ratio,
              "scope": scope if target == "bottleneck" else "local", "importance": criterion,
              "score_tensors": score_tensors, "images": used, "seed": seed,
              "seconds": {"gradients": round(gradient_seconds, 3), "pruning": round(pruning_seconds, 3)}}
    if target == "embedding":
        record["embedding_selection"] = embedding_selection
    return record
