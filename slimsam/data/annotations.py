"""Annotated images, whatever their format, as one kind of item: the photo, its masks and their prompts.

A format (SA-1B, COCO, a mask folder; `slimsam.data.formats` is their registry) knows which images it
annotates and reads one image's masks, plus the prompts it stores (SA-1B's `point_coords` and `bbox`).
`AnnotatedDataset` does the rest the same way for every format:

- masks with fewer than `min_area` foreground pixels (empty ones included) are left out and counted;
- an annotation without a stored point gets the mask's most interior point (`interior_point`), one
  without a stored box the mask's bounding box (`bounding_box`), so every run uses the same prompts;
- the photo goes through the model's `SamProcessor`, and the prompts with it.

Whatever a format cannot use (a crowd annotation, a polygon of two points, a mask PNG of the wrong size)
is left out with a reason and counted in the item's `left_out`, never silently dropped.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt
from torch.utils.data import Dataset
from transformers import SamProcessor

from slimsam.data.images import open_rgb

log = logging.getLogger(__name__)

MIN_MASK_AREA = 16  # pixels: smaller masks (less than a 4 x 4 square) are left out as "empty or tiny"
SIZE_DIFFERS = "mask size differs from its image"
# What reading an image's files may raise when they are corrupt or not in the format's schema.
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError)


class DatasetError(ValueError):
    """Annotations that cannot be used at all (wrong file, no annotated image, ambiguous layout): one line."""


@dataclass
class ImageAnnotations:
    """What a format read for one image of H x W pixels: N usable annotations, and those left out.

    masks: (N, H, W) bool; points: (N, 2) float32 xy pixels and boxes: (N, 4) float32 XYXY pixels, with
    NaN rows where the format stores no prompt; left_out: annotations not usable, by reason.
    """

    masks: np.ndarray
    points: np.ndarray
    boxes: np.ndarray
    left_out: Counter = field(default_factory=Counter)

    @classmethod
    def from_masks(cls, masks: list[np.ndarray], height: int, width: int, left_out: Counter | None = None,
                   points: list | None = None, boxes: list | None = None) -> "ImageAnnotations":
        """From a list of (H, W) masks; points / boxes: per mask a prompt or None (derived later)."""
        stacked = np.stack(masks).astype(bool) if masks else np.zeros((0, height, width), dtype=bool)
        return cls(stacked, _prompt_rows(points, len(masks), 2), _prompt_rows(boxes, len(masks), 4),
                   Counter(left_out or {}))


def _prompt_rows(values: list | None, count: int, width: int) -> np.ndarray:
    """(count, width) float32 of the given prompts, NaN rows where a prompt is None (or values is None)."""
    rows = np.full((count, width), np.nan, dtype=np.float32)
    for i, value in enumerate(values or []):
        if value is not None:
            rows[i] = value
    return rows


class AnnotationSource(Protocol):
    """One dataset in one format: which images it annotates, and how to read one image's annotations."""

    format: str  # the registry name: "sa1b", "coco", "masks"
    paths: list[Path]  # the annotated images that exist, sorted by path
    left_out: Counter  # annotations left out before any image is read (e.g. their image file is missing)
    unannotated: int  # images in the data folder that this dataset has no annotations for

    def read(self, path: Path, size: tuple[int, int]) -> ImageAnnotations:
        """The annotations of `path`, whose upright RGB image is `size` (H, W); raises READ_ERRORS."""


def read_mask_png(path: Path) -> np.ndarray:
    """(H, W) bool from a mask image: any non-zero value in a colour (or grey) channel is foreground.

    An alpha channel is ignored: a mask saved with an opaque black background must not become all foreground.
    """
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "PA"):
            image = image.convert("RGB" if image.mode == "RGBA" else "L")
        array = np.asarray(image)
    return array.reshape(*array.shape[:2], -1).any(axis=-1)


def bounding_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 XYXY box around a non-empty (H, W) mask, on pixel edges: the box of pixels x0..x1-1, y0..y1-1.

    The same box as SA-1B's and pycocotools' `bbox` (x, y, w, h) = (x0, y0, x1 - x0, y1 - y0).
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(2,) float32 xy of a non-empty (H, W) mask's most interior pixel: its centre (col + 0.5, row + 0.5).

    Most interior: the foreground pixel farthest (Euclidean) from any background pixel, the outside of the
    image counting as background (scipy's exact distance transform). Ties go to the first such pixel in
    row-major order: the topmost, then the leftmost. Computed on the mask's bounding box with a one-pixel
    background border, which gives the same distances as the whole image (the border is at least as close
    as any background pixel beyond it) in a fraction of the time for small masks.
    """
    x0, y0, x1, y1 = bounding_box(mask).astype(int)
    distance = distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))
    row, col = np.unravel_index(np.argmax(distance), distance.shape)
    return np.array([x0 + col - 1 + 0.5, y0 + row - 1 + 0.5], dtype=np.float32)


@dataclass
class LoadedImage:
    """An annotated image read and checked, before any model's preprocessing (AnnotatedDataset.load)."""

    path: Path
    image: Image.Image  # upright RGB
    masks: np.ndarray  # (N, H, W) bool, each at least min_area pixels
    points: np.ndarray  # (N, 2) float32 xy pixels
    boxes: np.ndarray  # (N, 4) float32 XYXY pixels
    left_out: Counter  # this image's annotations not used, by reason


class AnnotatedDataset(Dataset):
    """The annotated images of a source; item i is a dict, or None when the image or its annotations are unreadable.

    Item keys (N annotations, image of H x W pixels, model input S x S):
        pixel_values: (3, S, S) float tensor, as SamProcessor makes it;
        original_size: (H, W); reshaped_size: (h, w), the image inside the padded input (both ints);
        masks: (N, H, W) bool numpy; points: (N, 2) float32 xy; boxes: (N, 4) float32 XYXY, in pixels;
        input_points: (N, 1, 2) and input_boxes: (N, 4) float tensors, the same prompts in the model's
            input frame (what SamModel takes), or None when N == 0;
        path: the image file; left_out: Counter of this image's annotations not used, by reason.
    paths: a subset of source.paths (default: all of them), in the order given.
    """

    def __init__(self, source: AnnotationSource, processor: SamProcessor, paths: list[Path] | None = None,
                 min_area: int = MIN_MASK_AREA) -> None:
        self.source = source
        self.processor = processor
        self.paths = list(source.paths if paths is None else paths)
        self.min_area = min_area

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> LoadedImage | None:
        """Image `index` with its usable masks and their prompts, or None (logged) when unreadable."""
        path = self.paths[index]
        try:
            image = open_rgb(path)
            found = self.source.read(path, (image.height, image.width))
        except READ_ERRORS as error:
            log.warning("skipping %s: %s", path, error)
            return None
        left_out = Counter(found.left_out)
        keep = found.masks.sum(axis=(1, 2)) >= self.min_area
        if not keep.all():
            left_out[f"empty or tiny mask (< {self.min_area} px)"] += int((~keep).sum())
        masks, points, boxes = found.masks[keep], found.points[keep], found.boxes[keep]
        for i, mask in enumerate(masks):
            if np.isnan(points[i]).any():
                points[i] = interior_point(mask)
            if np.isnan(boxes[i]).any():
                boxes[i] = bounding_box(mask)
        return LoadedImage(path, image, masks, points, boxes, left_out)

    @staticmethod
    def to_item(loaded: LoadedImage, processor: SamProcessor) -> dict:
        """The item dict (see the class) of a loaded image, preprocessed by `processor`."""
        points, boxes = loaded.points, loaded.boxes
        prompts = dict(input_points=[points[:, None].tolist()], input_boxes=[boxes.tolist()]) if len(points) else {}
        encoded = processor(images=loaded.image, return_tensors="pt", **prompts)
        return {"pixel_values": encoded["pixel_values"][0], "original_size": (loaded.image.height, loaded.image.width),
                "reshaped_size": tuple(int(v) for v in encoded["reshaped_input_sizes"][0]),
                "masks": loaded.masks, "points": points, "boxes": boxes,
                "input_points": encoded["input_points"][0].float() if prompts else None,
                "input_boxes": encoded["input_boxes"][0].float() if prompts else None,
                "path": loaded.path, "left_out": loaded.left_out}

    def __getitem__(self, index: int) -> dict | None:
        loaded = self.load(index)
        return None if loaded is None else self.to_item(loaded, self.processor)


def iter_annotated(dataset: AnnotatedDataset, skipped: list[Path] | None = None) -> Iterator[dict]:
    """The dataset's items in order, unreadable ones left out (logged, and recorded in `skipped`)."""
    for index, path in enumerate(dataset.paths):
        item = dataset[index]
        if item is not None:
            yield item
        elif skipped is not None:
            skipped.append(path)
