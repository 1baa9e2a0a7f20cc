"""A small dataset in the real SA-1B layout, written by tests: `sa_<n>.jpg` + `sa_<n>.json`.

Each JSON follows the SA-1B schema (segment-anything's dataset README):
    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"id", "segmentation": {"size": [h, w], "counts": <COCO RLE string>}, "area",
                      "bbox": [x, y, w, h], "point_coords": [[x, y]], "predicted_iou",
                      "stability_score", "crop_box": [x, y, w, h]}]}
The masks are filled ellipses drawn in the photo with their own colour, so they are real objects of
the image; the RLE is real COCO RLE from pycocotools.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def _ellipse(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width) bool: a random filled ellipse at least a few pixels across."""
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
    y, x = np.mgrid[:height, :width]
    return ((y + 0.5 - cy) / ry) ** 2 + ((x + 0.5 - cx) / rx) ** 2 <= 1


def encode_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # JSON needs str; SA-1B stores it that way too
    return rle


def _generate(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One image (h, w, 3) uint8 and its 1-4 object masks, each drawn in its own colour."""
    y, x = np.mgrid[:height, :width]
    background = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 128.0)], axis=-1)
    image = background + rng.normal(0, 8, (height, width, 3))
    masks = []
    for _ in range(rng.integers(1, 5)):
        mask = _ellipse(rng, height, width)
        image[mask] = rng.uniform(0, 255, 3)
        masks.append(mask)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def make_sa1b_folder(root: str | Path, num_images: int = 16, size: tuple[int, int] = (96, 128), seed: int = 0,
                     masks: Sequence[Sequence[np.ndarray]] | None = None) -> Path:
    """Write `num_images` SA-1B-style image/annotation pairs of `size` (h, w) into `root`; returns root.

    masks: optionally, per image, the (h, w) bool masks to store as its annotations' segmentation
    (e.g. a model's own predictions). Everything else, the JPEGs, `point_coords` and `bbox`, stays
    what `seed` generates, so the prompts are those of the folder written without `masks`. Then
    len(masks) replaces num_images and each image needs as many masks as it has annotations.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    count = num_images if masks is None else len(masks)
    for n in range(1, count + 1):
        image, object_masks = _generate(rng, height, width)
        annotations = []
        for i, mask in enumerate(object_masks):
            ys, xs = np.nonzero(mask)
            pick = rng.integers(len(xs))
            rle = encode_rle(mask)
            annotations.append({
                "id": n * 1000 + i, "segmentation": rle, "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "point_coords": [[float(xs[pick]) + 0.5, float(ys[pick]) + 0.5]],
                "predicted_iou": float(rng.uniform(0.8, 1.0)), "stability_score": float(rng.uniform(0.9, 1.0)),
                "crop_box": [0.0, 0.0, float(width), float(height)],
            })
        if masks is not None:
            supplied = masks[n - 1]
            if len(supplied) != len(annotations):
                raise ValueError(f"image {n}: {len(supplied)} masks given, but it has {len(annotations)} annotations")
            for annotation, mask in zip(annotations, supplied):
                if np.shape(mask) != (height, width):
                    raise ValueError(f"image {n}: mask shape {np.shape(mask)} is not {size}")
                annotation["segmentation"] = encode_rle(np.asarray(mask, dtype=bool))
                annotation["area"] = int(mask_utils.area(annotation["segmentation"]))
        name = f"sa_{n}"
        Image.fromarray(image).save(root / f"{name}.jpg", quality=95)
        record = {"image": {"image_id": n, "width": width, "height": height, "file_name": f"{name}.jpg"},
                  "annotations": annotations}
        (root / f"{name}.json").write_text(json.dumps(record))
    return root
