"""An evaluation's report: a markdown table, JSON, a per-image CSV, a bar chart and the worst cases as pictures.

Uses matplotlib (through `Figure`, no pyplot state), so only the CLI and the notebooks import this module;
`import slimsam` and the app never load it.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from slimsam.data.files import write_folder_atomically
from slimsam.evaluate.scores import THRESHOLDS, Comparison

TABLE, JSON, CSV, CHART, WORST = "table.md", "results.json", "per_image.csv", "scores.png", "worst.png"
HEADLINE = {"miou": "mIoU", "agreement": "agreement (mean IoU)"}


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(comparison: Comparison) -> str:
    """One row per model: the headline figure, median IoU, shares above the thresholds, counts, seconds."""
    counted = "annotations" if comparison.metric == "miou" else "prompts"
    header = ["model", HEADLINE[comparison.metric], "median IoU", *(f"IoU > {t}" for t in THRESHOLDS), "images",
              counted, "s / image"]
    rows = [[s["model"], _number(s[comparison.metric]), _number(s["median_iou"]),
             *(_number(s[f"above_{t}"], 3) for t in THRESHOLDS), str(s["images"]), str(s[counted]),
             _number(s["seconds_per_image"], 3)] for s in comparison.summaries()]
    if comparison.teacher is not None:
        rows.append([f"{comparison.teacher} (teacher)", "1 (reference)", "", "", "", "", "",
                     _number(comparison.teacher_seconds or math.nan, 3)])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def results_json(comparison: Comparison, data: dict) -> dict:
    """The report as JSON: `data` (what was evaluated), the prompts, one object per model, the worst images.

    Figures that could not be computed (NaN) are null, which JSON has and NaN is not.
    """
    models = [{key: None if isinstance(value, float) and math.isnan(value) else value for key, value in s.items()}
              for s in comparison.summaries()]
    record = {**data, "metric": comparison.metric, "prompts": comparison.prompts,
              "scored_images": len(comparison.images), "unreadable_images": [str(p) for p in comparison.skipped],
              "left_out": dict(comparison.left_out), "models": models,
              "worst_images": [{"image": str(case.path), "score": case.score} for case in comparison.worst]}
    if comparison.teacher is not None:
        record["teacher"] = {"model": comparison.teacher, "seconds_per_image": comparison.teacher_seconds}
    return record


def per_image_csv(comparison: Comparison) -> str:
    """One row per scored image: its path, its number of prompts, then each model's mean IoU on it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(comparison.models)
    writer.writerow(["image", "annotations" if comparison.metric == "miou" else "prompts", *names])
    means = [scores.image_means() for scores in comparison.models.values()]
    counts = [len(ious) for ious in next(iter(comparison.models.values())).ious]
    for row, path in enumerate(comparison.images):
        writer.writerow([str(path), counts[row], *(f"{m[row]:.6f}" for m in means)])
    return buffer.getvalue()


def show_mask(ax, image, mask, points=None, labels=None, box=None, title=None, color=(0.12, 0.56, 1.0)) -> None:
    """Draw `image` with `mask` (H, W bool) tinted on top, and the prompt: points (green stars
    positive, red negative) and box."""
    ax.imshow(image)
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        overlay = np.zeros((*mask.shape, 4))
        overlay[mask] = (*color, 0.55)
        ax.imshow(overlay)
    if points is not None:
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        labels = np.ones(len(points)) if labels is None else np.asarray(labels)
        for (x, y), label in zip(points, labels):
            ax.scatter([x], [y], s=180, marker="*", c="lime" if label == 1 else "red", edgecolors="white",
                       linewidths=1.2)
    if box is not None:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=2))
    if title:
        ax.set_title(title, fontsize=10)
    ax.axis("off")


def score_bars(comparison: Comparison, title: str | None = None) -> Figure:
    """Grouped bars per model: the headline figure and the shares of prompts above each threshold."""
    summaries = comparison.summaries()
    series = [(HEADLINE[comparison.metric], comparison.metric)] + [(f"share IoU > {t}", f"above_{t}")
                                                                   for t in THRESHOLDS]
    figure = Figure(figsize=(2.5 + 1.6 * len(summaries), 3.8))
    ax = figure.subplots()
    width = 0.8 / len(series)
    positions = np.arange(len(summaries))
    for i, (label, key) in enumerate(series):
        values = [s[key] for s in summaries]
        bars = ax.bar(positions + (i - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, labels=[_number(v, 2) for v in values], fontsize=7, padding=1)
    ax.set_xticks(positions, [s["model"] for s in summaries], rotation=15, fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.legend(fontsize=8, loc="upper right", ncols=len(series))
    against = f"agreement with {comparison.teacher}" if comparison.metric == "agreement" else "mIoU"
    ax.set_title(title or f"{against}\n{comparison.prompts}, {len(comparison.images)} images", fontsize=10)
    figure.tight_layout()
    return figure


def worst_grid(comparison: Comparison) -> Figure:
    """One row per worst image: the photo with the prompt, the reference mask, then each model's mask and IoU."""
    cases = comparison.worst
    reference = "teacher" if comparison.metric == "agreement" else "ground truth"
    columns = 2 + len(comparison.models)
    figure = Figure(figsize=(2.6 * columns, 2.6 * max(1, len(cases)) + 0.4))
    axes = figure.subplots(max(1, len(cases)), columns, squeeze=False)
    for row, case in zip(axes, cases):
        points = None if case.point is None else [case.point]
        show_mask(row[0], case.image, None, points, box=case.box,
                  title=f"{Path(case.path).name}\nmean IoU {case.score:.2f}")
        show_mask(row[1], case.image, case.reference, points, box=case.box, title=reference, color=(0.1, 0.7, 0.3))
        for ax, (name, mask) in zip(row[2:], case.masks.items()):
            show_mask(ax, case.image, mask, points, box=case.box, title=f"{name}\nIoU {case.ious[name]:.2f}")
    if not cases:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].set_title("no scored image")
    figure.suptitle(f"the {len(cases)} worst images: the prompt on which the models did worst", fontsize=11)
    figure.tight_layout()
    return figure


def write_report(comparison: Comparison, folder: str | Path, data: dict, overwrite: bool = False) -> Path:
    """Write TABLE, JSON, CSV, CHART and WORST into `folder`, whole or not at all (slimsam.data.files)."""
    def write(target: Path) -> None:
        (target / TABLE).write_text(markdown_table(comparison) + "\n")
        (target / JSON).write_text(json.dumps(results_json(comparison, data), indent=2) + "\n")
        (target / CSV).write_text(per_image_csv(comparison))
        score_bars(comparison).savefig(target / CHART, dpi=100)
        worst_grid(comparison).savefig(target / WORST, dpi=90)

    return write_folder_atomically(folder, write, overwrite=overwrite)
