"""What an evaluation of one or more models on the same images and prompts produces, and how it is summarised.

One protocol for both measures (mIoU against annotations, agreement with a teacher): every prompt gets an IoU
(slimsam.evaluate.masks.mask_iou, two empty masks counting 1), an image's score is the mean over its prompts,
and the headline number is the mean over images, so an image with many prompts counts as much as one with few.
Beside it, `summary` gives the median IoU over all prompts and the shares of prompts above 0.5 and 0.9.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from slimsam.data.images import shrink

PANEL_SIDE = 320  # px: the longest side of the worst cases' pictures
THRESHOLDS = (0.5, 0.9)


@dataclass
class ModelScores:
    """One model's IoUs: per scored image (in Comparison.images' order) one IoU per prompt, and its seconds."""

    name: str
    ious: list[np.ndarray] = field(default_factory=list)  # per image: (n,) float IoU of each prompt
    seconds: list[float] = field(default_factory=list)  # per image: encoder + decoder wall time

    def add(self, ious: np.ndarray, seconds: float) -> None:
        self.ious.append(np.asarray(ious, dtype=np.float64))
        self.seconds.append(seconds)

    def image_means(self) -> np.ndarray:
        """(images,) each image's mean IoU over its prompts."""
        return np.array([ious.mean() for ious in self.ious])

    def summary(self, metric: str) -> dict:
        """{model, metric: mean over images of the image means, median_iou and above_<t>: over all prompts,
        images, annotations (mIoU) or prompts (agreement): how many were scored, seconds_per_image};
        NaN figures when nothing was scored."""
        pooled = np.concatenate(self.ious) if self.ious else np.zeros(0)
        nan = float("nan")
        return {"model": self.name, metric: float(self.image_means().mean()) if self.ious else nan,
                "median_iou": float(np.median(pooled)) if len(pooled) else nan,
                **{f"above_{t}": float((pooled > t).mean()) if len(pooled) else nan for t in THRESHOLDS},
                "images": len(self.ious), ("annotations" if metric == "miou" else "prompts"): len(pooled),
                "seconds_per_image": float(np.mean(self.seconds)) if self.seconds else nan}


def thumbnail(image: Image.Image | np.ndarray, side: int = PANEL_SIDE) -> np.ndarray:
    """An RGB image (PIL) or an (H, W) bool mask, downscaled to at most `side` px (masks by nearest neighbour)."""
    if isinstance(image, Image.Image):
        return np.asarray(shrink(image, side))
    scale = side / max(image.shape)
    if scale >= 1:
        return image
    height, width = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.NEAREST))


@dataclass
class WorstCase:
    """One of the lowest-scoring images, with the prompt on which the models did worst, ready to draw.

    Pictures are downscaled to at most PANEL_SIDE px; point and box are in the downscaled picture's pixels.
    """

    path: Path
    score: float  # the image's mean IoU, averaged over the models
    image: np.ndarray  # (h, w, 3) uint8
    reference: np.ndarray  # (h, w) bool: the annotation's mask or the teacher's
    masks: dict[str, np.ndarray]  # model -> (h, w) bool, its mask for the prompt
    ious: dict[str, float]  # model -> its IoU on this prompt
    point: np.ndarray | None = None  # (2,) xy
    box: np.ndarray | None = None  # (4,) XYXY

    @classmethod
    def make(cls, path: Path, score: float, image: Image.Image, reference: np.ndarray, masks: dict[str, np.ndarray],
             ious: dict[str, float], point: np.ndarray | None = None, box: np.ndarray | None = None) -> "WorstCase":
        """From full-size pictures and prompts in the image's pixels: downscales all of them alike."""
        small = thumbnail(image)
        scale = small.shape[1] / image.width
        return cls(path, score, small, thumbnail(reference), {name: thumbnail(m) for name, m in masks.items()}, ious,
                   None if point is None else np.asarray(point) * scale,
                   None if box is None else np.asarray(box) * scale)


class WorstCases:
    """The `count` lowest-scoring images seen so far (ties: the earlier image stays)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.cases: list[WorstCase] = []

    def wants(self, score: float) -> bool:
        return self.count > 0 and (len(self.cases) < self.count or score < self.cases[-1].score)

    def add(self, case: WorstCase) -> None:
        self.cases = sorted([*self.cases, case], key=lambda c: c.score)[:self.count]


@dataclass
class Comparison:
    """Several models scored on the same images and prompts (slimsam.evaluate.miou or .agreement)."""

    metric: str  # "miou" (against annotations) or "agreement" (with the teacher)
    prompts: str  # what the prompts were, in words
    models: dict[str, ModelScores]
    images: list[Path]  # the scored images, in order
    skipped: list[Path]  # unreadable images
    left_out: Counter  # annotations not used, by reason
    worst: list[WorstCase]
    teacher: str | None = None  # agreement: the model the others are compared with
    teacher_seconds: float | None = None  # agreement: the teacher's mean seconds per image

    def summaries(self) -> list[dict]:
        return [scores.summary(self.metric) for scores in self.models.values()]
