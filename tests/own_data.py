"""The other annotation formats, written by tests: COCO instance files and mask folders, from given masks.

Written with pycocotools and PIL directly (not with slimsam's readers), so the readers are checked against
files made independently of them.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from sa1b import encode_rle


def sa1b_annotations(folder: Path) -> dict[str, list[dict]]:
    """Image file name -> its SA-1B annotations, for every sa_<n>.json in `folder`."""
    return {path.with_suffix(".jpg").name: json.loads(path.read_text())["annotations"]
            for path in sorted(folder.glob("sa_*.json"))}


def decode(segmentation: dict | list, height: int, width: int) -> np.ndarray:
    """(H, W) bool of a COCO segmentation (RLE or polygons), through pycocotools."""
    if isinstance(segmentation, list):
        segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        segmentation = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(segmentation).astype(bool)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with a background run."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [len(flat)]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def write_coco(file: Path, images: Sequence[tuple[str, int, int]], annotations: Sequence[Sequence[dict]]) -> Path:
    """A COCO instances file: images (file_name, height, width) with ids 1.., and per image its annotation dicts
    (each needs `segmentation`; `iscrowd` defaults to 0; an `image_id` given in one is kept)."""
    records, next_id = [], 1
    for image_id, image_annotations in enumerate(annotations, start=1):
        for annotation in image_annotations:
            records.append({"id": next_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, **annotation})
            next_id += 1
    images = [{"id": i, "file_name": name, "height": h, "width": w} for i, (name, h, w) in enumerate(images, start=1)]
    file.write_text(json.dumps({"images": images, "annotations": records,
                                "categories": [{"id": 1, "name": "object"}]}))
    return file


def coco_from_sa1b(sa1b: Path, file: Path, point_coords: bool = True) -> Path:
    """The SA-1B folder's annotations as one COCO file (compressed RLE), its point_coords kept or dropped."""
    annotations = sa1b_annotations(sa1b)
    first = next(iter(annotations.values()))[0]["segmentation"]["size"]
    keys = ("segmentation", "bbox", "area") + (("point_coords",) if point_coords else ())
    return write_coco(file, [(name, *first) for name in annotations],
                      [[{key: a[key] for key in keys} for a in image] for image in annotations.values()])


def write_mask_folder(folder: Path, photos: Sequence[Path], masks: Sequence[Sequence[np.ndarray]]) -> Path:
    """photo.jpg copied into `folder`, beside photo/0.png, 1.png, ... (0 background, 255 foreground)."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo, photo_masks in zip(photos, masks):
        shutil.copy(photo, folder / photo.name)
        (folder / photo.stem).mkdir()
        for k, mask in enumerate(photo_masks):
            Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(folder / photo.stem / f"{k}.png")
    return folder


def polygon(mask: np.ndarray) -> list[float]:
    """A polygon (x0, y0, x1, y1, ...) around the mask's bounding box: a shape pycocotools rasterises itself."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0, x1, y1 = float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])
    return [x0, y0, (x0 + x1) / 2, y0 + 0.4, x1, y0, x1, y1, x0, y1]


def mixed_coco(sa1b: Path, file: Path) -> tuple[Path, list[list[np.ndarray]]]:
    """A COCO file for the SA-1B folder's images in every encoding, plus one unusable annotation per kind.

    Annotation k of an image is stored as compressed RLE (k % 3 == 0), uncompressed RLE (1) or a polygon
    around the mask's box (2); no point_coords. Image 1 also gets a crowd annotation and a 2-point polygon,
    image 2 an RLE of the wrong size. Returns the file and, per image, the masks that should be read
    (the polygons as pycocotools rasterises them).
    """
    annotations = sa1b_annotations(sa1b)
    height, width = next(iter(annotations.values()))[0]["segmentation"]["size"]
    stored, expected = [], []
    for n, image_annotations in enumerate(annotations.values()):
        records, masks = [], []
        for k, annotation in enumerate(image_annotations):
            mask = decode(annotation["segmentation"], height, width)
            segmentation = [annotation["segmentation"], uncompressed_rle(mask), [polygon(mask)]][k % 3]
            records.append({"segmentation": segmentation})
            masks.append(decode(segmentation, height, width))
        if n == 0:
            records += [{"segmentation": encode_rle(masks[0]), "iscrowd": 1},
                        {"segmentation": [[10.0, 10.0, 40.0, 30.0]]}]
        if n == 1:
            records.append({"segmentation": encode_rle(np.ones((height + 1, width), bool))})
        stored.append(records)
        expected.append(masks)
    return write_coco(file, [(name, height, width) for name in annotations], stored), expected
