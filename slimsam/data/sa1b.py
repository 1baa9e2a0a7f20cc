"""SA-1B as it comes out of the archives: `sa_<n>.jpg` beside `sa_<n>.json`.

Each JSON's `annotations[*]` hold `segmentation` (COCO RLE of the whole image), `bbox` (XYWH pixels) and
`point_coords` ([[x, y]] pixels); the stored point and box are the prompts. Images without a .json are
not part of the dataset (they count as unannotated).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from slimsam.data.annotations import SIZE_DIFFERS, ImageAnnotations
from slimsam.data.images import list_images

LAYOUT = "SA-1B: sa_<n>.jpg beside sa_<n>.json"


def annotates(image: Path) -> bool:
    """Whether an image file has its SA-1B annotation file (same name, .json) beside it."""
    return image.with_suffix(".json").is_file()


class SA1B:
    """The SA-1B images of a folder (an AnnotationSource)."""

    format = "sa1b"

    def __init__(self, folder: str | Path) -> None:
        images = list_images(folder)
        self.paths = [path for path in images if annotates(path)]
        self.unannotated = len(images) - len(self.paths)
        self.left_out: Counter = Counter()

    def read(self, path: Path, size: tuple[int, int]) -> ImageAnnotations:
        """Masks from the RLE, prompts from `point_coords` and `bbox`; a mask of another size is left out."""
        height, width = size
        annotations = json.loads(path.with_suffix(".json").read_text())["annotations"]
        rles, points, boxes, left_out = [], [], [], Counter()
        for annotation in annotations:
            rle = annotation["segmentation"]
            if list(rle["size"]) != [height, width]:
                left_out[SIZE_DIFFERS] += 1
                continue
            x, y, w, h = annotation["bbox"]
            rles.append(rle)
            points.append(annotation["point_coords"][0])
            boxes.append([x, y, x + w, y + h])
        masks = list(np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool)) if rles else []
        return ImageAnnotations.from_masks(masks, height, width, left_out, points, boxes)
