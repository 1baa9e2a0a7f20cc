"""SA-1B: images with their annotated masks and prompts, for evaluation and labelled pruning.

Layout: `sa_<n>.jpg` beside `sa_<n>.json`, whose `annotations[*]` hold `segmentation` (COCO RLE of the
whole image), `bbox` (XYWH pixels) and `point_coords` ([[x, y]] pixels). A file that cannot be read
yields `None` (logged), and `iter_sa1b` leaves it out and records it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset
from transformers import SamProcessor

from slimsam.data.images import ImageFolderError, list_images, open_rgb

log = logging.getLogger(__name__)


def find_sa1b_images(root: str | Path) -> list[Path]:
    """Images in `root` that have their SA-1B annotation file (same name, .json) beside them, sorted."""
    paths = [p for p in list_images(root) if p.with_suffix(".json").is_file()]
    if not paths:
        raise ImageFolderError(f"{root} has images but no SA-1B annotations beside them (sa_<n>.jpg + sa_<n>.json)")
    return paths


def _decode_masks(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """(N, height, width) bool masks from the annotations' COCO RLE."""
    if not annotations:
        return np.zeros((0, height, width), dtype=bool)
    rles = [annotation["segmentation"] for annotation in annotations]
    for rle in rles:
        if list(rle["size"]) != [height, width]:
            raise ValueError(f"mask size {rle['size']} differs from the image's {[height, width]}")
    return np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool)


class SA1BDataset(Dataset):
    """SA-1B images with their masks and prompts; item i is a dict, or None when a file is unreadable.

    Item keys (N annotations, image of H x W pixels, model input S x S):
        pixel_values: (3, S, S) float tensor, as SamProcessor makes it;
        original_size: (H, W); reshaped_size: (h, w), the image inside the padded input (both ints);
        masks: (N, H, W) bool numpy; points: (N, 2) float32 xy; boxes: (N, 4) float32 XYXY, in pixels;
        input_points: (N, 1, 2) and input_boxes: (N, 4) float tensors, the same prompts in the model's
            input frame (what SamModel takes), or None when N == 0;
        path: the image file.
    """

    def __init__(self, paths: list[Path], processor: SamProcessor) -> None:
        self.paths = list(paths)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | None:
        path = self.paths[index]
        try:
            image = open_rgb(path)
            annotations = json.loads(path.with_suffix(".json").read_text())["annotations"]
            width, height = image.size
            masks = _decode_masks(annotations, height, width)
            points = np.array([a["point_coords"][0] for a in annotations], dtype=np.float32).reshape(-1, 2)
            xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            # ValueError covers malformed JSON; KeyError / TypeError / IndexError a JSON that is not SA-1B's schema.
            log.warning("skipping %s: %s", path, error)
            return None
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        prompts = dict(input_points=[points[:, None].tolist()], input_boxes=[boxes.tolist()]) if len(points) else {}
        encoded = self.processor(images=image, return_tensors="pt", **prompts)
        return {"pixel_values": encoded["pixel_values"][0], "original_size": (height, width),
                "reshaped_size": tuple(int(v) for v in encoded["reshaped_input_sizes"][0]),
                "masks": masks, "points": points, "boxes": boxes,
                "input_points": encoded["input_points"][0].float() if prompts else None,
                "input_boxes": encoded["input_boxes"][0].float() if prompts else None,
                "path": path}


def iter_sa1b(paths: list[Path], processor: SamProcessor, skipped: list[Path] | None = None) -> Iterator[dict]:
    """SA1BDataset items of `paths` in order, unreadable ones left out (logged, and recorded in `skipped`)."""
    dataset = SA1BDataset(paths, processor)
    for index, path in enumerate(dataset.paths):
        sample = dataset[index]
        if sample is not None:
            yield sample
        elif skipped is not None:
            skipped.append(path)
