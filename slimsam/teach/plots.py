"""Figures shared by the tutorial notebooks (notebooks/): each function draws one kind of picture.

Each function returns the matplotlib Figure it drew (notebooks display it; scripts can save it). `show_mask`
(one mask and its prompt on an Axes, from slimsam.evaluate.report, which draws evaluation reports) is here too.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import ConnectionPatch, FancyArrowPatch, Rectangle

from slimsam.evaluate.masks import mask_iou
from slimsam.evaluate.report import show_mask
from slimsam.model.structure import EncoderDims

EMBEDDING_COLOR = "tab:blue"
BOTTLENECK_COLOR = "tab:orange"


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _human(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


# --- masks ---------------------------------------------------------------------------------------------

def mask_grid(image, results: Mapping[str, tuple], points=None, labels=None, box=None, suptitle=None, truth=None):
    """One panel per model: its best mask (highest predicted IoU) for the same prompt.

    results: name -> (masks (K, H, W) bool, scores (K,)). truth: the (H, W) bool mask the prompt asks for, when
    known: drawn first, and each panel gives its mask's IoU with it.
    """
    panels = len(results) + (truth is not None)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.6), squeeze=False)
    axes = list(axes[0])
    if truth is not None:
        show_mask(axes.pop(0), image, truth, points, labels, box, title="ground truth", color=(0.1, 0.7, 0.3))
    for ax, (name, (masks, scores)) in zip(axes, results.items()):
        best = int(np.argmax(_numpy(scores)))
        mask = _numpy(masks)[best]
        scored = f"predicted IoU {float(_numpy(scores)[best]):.2f}"
        if truth is not None:
            scored += f", true IoU {float(mask_iou(mask.astype(bool), np.asarray(truth, dtype=bool))):.2f}"
        show_mask(ax, image, mask, points, labels, box, title=f"{name}\n{scored}")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


# --- sizes ---------------------------------------------------------------------------------------------

def share_bars(breakdowns: Mapping[str, Mapping[str, float]], title: str, unit: str = "params"):
    """One horizontal stacked bar per model: each part's share of the total, labelled with its absolute size."""
    models = list(breakdowns)
    parts = list(next(iter(breakdowns.values())))
    colors = plt.cm.tab10(np.arange(len(parts)))
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.8 * len(models)))
    for row, model in enumerate(models):
        total = sum(breakdowns[model].values())
        left = 0.0
        for part, color in zip(parts, colors):
            share = breakdowns[model][part] / total
            ax.barh(row, share, left=left, color=color, label=part if row == 0 else None)
            if share > 0.03:
                ax.text(left + share / 2, row, f"{share:.1%}\n{_human(breakdowns[model][part])}", ha="center",
                        va="center", fontsize=8, color="white")
            left += share
        ax.text(1.01, row, f"total {_human(total)} {unit}", va="center", fontsize=9)
    ax.set_yticks(range(len(models)), models)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.invert_yaxis()
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(models) < 3 else -0.15), ncol=len(parts),
              frameon=False)
    fig.tight_layout()
    return fig


def block_bars(rows_by_model: Mapping[str, Sequence[Mapping]]):
    """Per part of the image encoder: parameters (top) and MACs split into Linear/Conv and attention (bottom).

    rows_by_model: name -> rows of `slimsam.teach.tutorial.encoder_breakdown`. Blocks with global attention are hatched.
    """
    fig, axes = plt.subplots(2, len(rows_by_model), figsize=(6.5 * len(rows_by_model), 6.5), squeeze=False)
    for col, (name, rows) in enumerate(rows_by_model.items()):
        x = np.arange(len(rows))
        hatch = ["//" if row["global"] else "" for row in rows]
        top, bottom = axes[0, col], axes[1, col]
        top.bar(x, [row["params"] / 1e6 for row in rows], color="tab:gray", hatch=hatch, edgecolor="white")
        top.set_ylabel("parameters (M)")
        top.set_title(f"{name}: parameters per part")
        linear = np.array([row["linear_macs"] for row in rows]) / 1e9
        attention = np.array([row["attention_macs"] for row in rows]) / 1e9
        bottom.bar(x, linear, color=EMBEDDING_COLOR, hatch=hatch, edgecolor="white", label="Linear / Conv layers")
        bottom.bar(x, attention, bottom=linear, color=BOTTLENECK_COLOR, hatch=hatch, edgecolor="white",
                   label="attention matmuls (q@k, attn@v, rel-pos)")
        bottom.set_ylabel("GMACs per 1024x1024 image")
        bottom.set_title(f"{name}: MACs per part (hatched: global attention)")
        bottom.legend(fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks(x, [row["part"] for row in rows], rotation=90, fontsize=7)
    fig.tight_layout()
    return fig


def value_bars(values: Mapping[str, float], ylabel: str, title: str, ax=None, fmt=_human, log: bool = False):
    """A labelled bar per entry (one number per model or per criterion)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(values), 3.6))
    bars = ax.bar(list(values), list(values.values()), color=plt.cm.tab10(np.arange(len(values))))
    for bar, value in zip(bars, values.values()):
        ax.annotate(fmt(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=20)
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


def layer_dims(dims_by_name: Mapping[str, EncoderDims], title: str = "per-block bottleneck widths"):
    """Grouped bars per block: attention width (heads x head dim) and MLP width, one colour per model."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    names = list(dims_by_name)
    n_layers = len(next(iter(dims_by_name.values())).layers)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        dims = dims_by_name[name]
        x = np.arange(n_layers) + (k - (len(names) - 1) / 2) * width
        axes[0].bar(x, [layer.head_dim * dims.num_heads for layer in dims.layers], width, label=name)
        axes[1].bar(x, [layer.mlp_dim for layer in dims.layers], width, label=name)
    for ax, what in zip(axes, ("attention width (heads x head dim)", "MLP hidden width")):
        ax.set_xticks(range(n_layers), [f"block {i}" for i in range(n_layers)], rotation=45, fontsize=8)
        ax.set_ylabel("channels")
        ax.set_title(what)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- the ViT block -------------------------------------------------------------------------------------

# Where draw_vit_block puts each tensor along its x axis.
_TENSOR_X = {"input": 0.0, "q": 2.0, "k": 2.45, "v": 2.9, "attention": 4.6, "residual": 6.4, "mlp": 8.3, "output": 10.2}


def draw_vit_block(hidden: int, heads: int, head_dim: int, mlp_dim: int, ax=None, scale: float | None = None,
                   title: str | None = None):
    """One ViT block of SAM's image encoder drawn as the widths of its tensors.

    Each bar is a tensor, its height the number of channels per token: blue bars carry the embedding
    (hidden) dim C, which every block and the residual stream share; orange bars are the block's
    bottlenecks (q, k, v: heads x head dim; MLP hidden: mlp_dim), private to the block.
    scale: channels drawn at full height (pass the same value to compare two blocks).
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(12, 4.2))
    scale = scale or max(hidden, mlp_dim, 3 * heads * head_dim / 3)
    width = heads * head_dim
    x = _TENSOR_X
    tensors = [  # x, channels, colour, label
        (x["input"], hidden, EMBEDDING_COLOR, f"input\nC = {hidden}"),
        (x["q"], width, BOTTLENECK_COLOR, f"q\n{heads}x{head_dim}"),
        (x["k"], width, BOTTLENECK_COLOR, f"k\n{heads}x{head_dim}"),
        (x["v"], width, BOTTLENECK_COLOR, f"v\n{heads}x{head_dim}"),
        (x["attention"], width, BOTTLENECK_COLOR, f"attention out\n{heads}x{head_dim}"),
        (x["residual"], hidden, EMBEDDING_COLOR, f"+ residual\nC = {hidden}"),
        (x["mlp"], mlp_dim, BOTTLENECK_COLOR, f"MLP hidden\nM = {mlp_dim}"),
        (x["output"], hidden, EMBEDDING_COLOR, f"output\nC = {hidden}"),
    ]
    ops = [(1.0, "LayerNorm\nqkv Linear\nC -> 3·H·d"), (3.75, "softmax(q·kᵀ/√d\n+ rel-pos)·v"),
           (5.5, "proj Linear\nH·d -> C"), (7.35, "LayerNorm\nlin1 C -> M\nGELU"), (9.25, "lin2 Linear\nM -> C")]
    bar_w = 0.35
    for x, channels, color, label in tensors:
        h = channels / scale
        ax.add_patch(Rectangle((x - bar_w / 2, -h / 2), bar_w, h, color=color, alpha=0.9))
        ax.text(x, -0.62, label, ha="center", va="top", fontsize=8)
    for x, label in ops:
        ax.text(x, 0, label, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", facecolor="whitesmoke", edgecolor="gray"))
    for x0, x1 in ((0.2, 0.55), (1.45, 1.8), (3.1, 3.15), (4.35, 4.4), (4.8, 4.95), (6.05, 6.2), (6.6, 6.85),
                   (7.85, 8.1), (8.5, 8.7), (9.8, 10.0)):
        ax.add_patch(FancyArrowPatch((x0, 0), (x1, 0), arrowstyle="-|>", mutation_scale=10, color="gray"))
    for x0, x1 in ((0.0, 6.4), (6.4, 10.2)):  # residual connections
        ax.add_patch(FancyArrowPatch((x0, 0.55), (x1, 0.55), connectionstyle="arc3,rad=-0.25", arrowstyle="-|>",
                                     mutation_scale=10, color=EMBEDDING_COLOR, linestyle="--"))
    ax.text(3.2, 1.0, "residual stream: width C everywhere", color=EMBEDDING_COLOR, ha="center", fontsize=8)
    ax.set_xlim(-0.6, 10.8)
    ax.set_ylim(-1.05, 1.15)
    ax.axis("off")
    ax.legend(handles=[Rectangle((0, 0), 1, 1, color=EMBEDDING_COLOR), Rectangle((0, 0), 1, 1, color=BOTTLENECK_COLOR)],
              labels=["embedding dim C (step 1 prunes it)", "bottleneck dims d, M (step 2 prunes them)"],
              loc="upper right", fontsize=8, frameon=False)
    ax.set_title(title or f"one ViT block: C={hidden}, {heads} heads x d={head_dim}, M={mlp_dim}", fontsize=10)
    return fig or ax.figure


def draw_blocks(dims_by_name: Mapping[str, EncoderDims], block: int = 0):
    """`draw_vit_block` for block `block` of several encoders, stacked, on one shared scale."""
    items = list(dims_by_name.items())
    scale = max(max(d.hidden_size, d.layers[block].mlp_dim) for _, d in items)
    fig, axes = plt.subplots(len(items), 1, figsize=(12, 3.6 * len(items)), squeeze=False)
    for ax, (name, dims) in zip(axes[:, 0], items):
        layer = dims.layers[block]
        draw_vit_block(dims.hidden_size, dims.num_heads, layer.head_dim, layer.mlp_dim, ax=ax, scale=scale,
                       title=f"{name}, block {block}: C={dims.hidden_size}, {dims.num_heads} heads x "
                             f"d={layer.head_dim}, M={layer.mlp_dim}")
    fig.tight_layout()
    return fig


def draw_aligning(target_name: str, target: EncoderDims, student_name: str, student: EncoderDims,
                  matched: Sequence[str], block: int = 0):
    """What an aligning loss compares: the target's block on top, the student's below (same scale), and a red
    "MSE" link between each pair of tensors the loss matches. matched: keys of the drawing, any of
    "q", "k", "v", "attention", "mlp" (bottlenecks) and "input", "residual", "output" (embedding width).
    """
    fig = draw_blocks({target_name: target, student_name: student}, block)
    top, bottom = fig.axes[0], fig.axes[1]
    bottom.get_legend().remove()
    for key in matched:
        x = _TENSOR_X[key]
        fig.add_artist(ConnectionPatch(xyA=(x, -1.0), coordsA=top.transData, xyB=(x, 0.52), coordsB=bottom.transData,
                                       arrowstyle="<|-|>", mutation_scale=12, color="red", linewidth=1.8))
        bottom.text(x + 0.08, 0.72, "MSE", color="red", fontsize=9, fontweight="bold", clip_on=False)
    return fig


# --- importance ----------------------------------------------------------------------------------------

def score_histograms(scores: Mapping[str, torch.Tensor], keep: int, title: str):
    """One histogram per criterion; the dashed line is the cut: channels right of it are kept."""
    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], scores.items()):
        values = np.maximum(_numpy(values), 1e-30)
        cut = np.sort(values)[::-1][keep - 1]
        wide = values.max() > 20 * values.min()  # spans orders of magnitude: log-spaced bins
        bins = np.geomspace(values.min(), values.max() * 1.001, 30) if wide else 30
        ax.hist(values, bins=bins, color="tab:gray")
        if wide:
            ax.set_xscale("log")
        ax.axvline(cut, color="red", linestyle="--", label=f"keep top {keep} of {len(values)}")
        ax.set_title(name)
        ax.set_xlabel("importance score" + (" (log scale)" if wide else ""))
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("channels")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def kept_heatmaps(kept: Mapping[str, Sequence[torch.Tensor]], num_channels: Sequence[int], title: str,
                  row_labels: Sequence[str] | None = None):
    """Kept (dark) and pruned (light) channels, one row per layer, one panel per criterion.

    kept: criterion -> per layer, the indices of the kept channels. num_channels: channels per layer.
    row_labels: one per layer (default "block i").
    """
    row_labels = row_labels or [f"block {i}" for i in range(len(num_channels))]
    fig, axes = plt.subplots(1, len(kept), figsize=(4.2 * len(kept), 1.5 + 0.3 * len(num_channels)),
                             squeeze=False)
    for ax, (name, layers) in zip(axes[0], kept.items()):
        grid = np.zeros((len(layers), max(num_channels)))
        grid[:] = np.nan
        for row, (indices, n) in enumerate(zip(layers, num_channels)):
            grid[row, :n] = 0
            grid[row, _numpy(indices).astype(int)] = 1
        ax.imshow(grid, aspect="auto", cmap="Greens", vmin=-0.3, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(layers)), row_labels, fontsize=7)
        ax.set_xlabel("channel index")
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- features and training -----------------------------------------------------------------------------

def embedding_maps(embeddings: Mapping[str, torch.Tensor], reference: str, image=None):
    """Image embeddings (C, h, w) as pictures: top row RGB = the reference's 3 main directions (PCA), shared
    by every panel so colours are comparable; bottom row = per-pixel squared error against the reference.
    """
    ref = _numpy(embeddings[reference]).reshape(len(_numpy(embeddings[reference])), -1)
    mean = ref.mean(1, keepdims=True)
    _, _, vt = np.linalg.svd((ref - mean).T, full_matrices=False)
    basis = vt[:3]
    ref_proj = basis @ (ref - mean)
    lo, hi = ref_proj.min(1, keepdims=True), ref_proj.max(1, keepdims=True)
    h, w = _numpy(embeddings[reference]).shape[-2:]
    errors = {name: ((_numpy(e) - _numpy(embeddings[reference])) ** 2).mean(0) for name, e in embeddings.items()}
    vmax = max(float(err.max()) for err in errors.values()) or 1.0
    extra = image is not None
    n = len(embeddings) + extra
    fig, axes = plt.subplots(2, n, figsize=(2.9 * n, 5.8), squeeze=False, layout="constrained")
    if extra:
        axes[0, 0].imshow(image)
        axes[0, 0].set_title("input", fontsize=10)
        axes[1, 0].axis("off")
    for col, (name, emb) in enumerate(embeddings.items(), start=extra):
        proj = basis @ (_numpy(emb).reshape(len(_numpy(emb)), -1) - mean)
        rgb = np.clip((proj - lo) / (hi - lo + 1e-12), 0, 1).T.reshape(h, w, 3)
        axes[0, col].imshow(rgb, interpolation="nearest")
        axes[0, col].set_title(name, fontsize=10)
        im = axes[1, col].imshow(errors[name], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        axes[1, col].set_title(f"error vs {reference}\nMSE {errors[name].mean():.3g}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="squared error")
    return fig


def training_curves(rows: Sequence[Mapping], terms: Mapping[str, str], title: str):
    """A distillation run from its metric rows (slimsam.distill.train's metrics.jsonl).

    Left: the loss terms per optimizer step on a log axis (terms: row key -> legend label; a term is drawn
    where it was computed) and the feature-term weight `a` (dotted, right axis). Right: the validation
    metric after each epoch.
    """
    train = [row for row in rows if row["kind"] == "train"]
    val = [row for row in rows if row["kind"] == "val"]
    fig, (ax, val_ax) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    for key, label in terms.items():
        points = [(row["optimizer_step"], row[key]) for row in train if key in row]
        if points:
            ax.plot(*zip(*points), label=label, marker="." if len(points) < 60 else None)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE")
    twin = ax.twinx()
    twin.step([row["optimizer_step"] for row in train], [row["alpha"] for row in train], where="post",
              color="black", linestyle=":", label="weight a of the feature terms")
    twin.set_ylim(-0.05, 1.05)
    twin.set_ylabel("a")
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = twin.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    if val:
        val_ax.plot([row["epoch"] + 1 for row in val], [row["value"] for row in val], marker="o")
        val_ax.set_xlabel("epoch")
        val_ax.set_ylabel(val[0]["metric"])
        val_ax.set_title(f"validation {val[0]['metric'].replace('_', ' ')} after each epoch", fontsize=10)
    fig.tight_layout()
    return fig


def error_bars(errors: Mapping[str, Sequence[float]], ylabel: str, title: str, row_label: str = "block"):
    """Grouped bars: one group per layer, one bar per model (e.g. each block's feature error to the teacher)."""
    names = list(errors)
    n = len(next(iter(errors.values())))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * n + 2), 3.6))
    for k, name in enumerate(names):
        ax.bar(np.arange(n) + (k - (len(names) - 1) / 2) * width, errors[name], width, label=name)
    ax.set_xticks(range(n), [f"{row_label} {i}" for i in range(n)])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rel_pos_slicing(before: torch.Tensor, kept: torch.Tensor, after: torch.Tensor, name: str = "rel_pos_h"):
    """A relative-position table (offsets x head-dim channels) before bottleneck pruning, with the pruned
    columns struck out, and after: the kept columns, in order (rescaled by the attention-scale fold)."""
    before, after = _numpy(before), _numpy(after)
    pruned = np.setdiff1d(np.arange(before.shape[1]), _numpy(kept).astype(int))
    limit = max(np.abs(before).max(), np.abs(after).max())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [before.shape[1], after.shape[1]]})
    for ax, table, title in ((axes[0], before, f"{name} before: {before.shape[1]} channels"),
                             (axes[1], after, f"after: the {after.shape[1]} kept channels")):
        im = ax.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xlabel("head-dim channel")
        ax.set_title(title, fontsize=10)
    for column in pruned:
        axes[0].axvspan(column - 0.5, column + 0.5, facecolor="none", edgecolor="black", hatch="xx", linewidth=0)
    axes[0].set_ylabel("relative offset")
    fig.colorbar(im, ax=axes.tolist(), shrink=0.8)
    return fig
