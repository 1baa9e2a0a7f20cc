"""COCO instance annotations: a folder of images and one `instances.json` (`--data DIR --annotations FILE`).

The file holds `images` ({id, file_name, height, width}; file_name relative to the folder) and `annotations`
({image_id, segmentation, iscrowd}); `segmentation` is a list of polygons ([x0, y0, x1, y1, ...] pixels)
or an RLE ({size: [h, w], counts: string or list}), decoded with pycocotools. Categories are not used:
every object is one query. Left out and counted: crowd annotations (`iscrowd` 1: a region of many objects,
not one), polygons of fewer than 3 points, malformed segmentations, masks whose size differs from the
image, and the annotations of images that are missing from the folder or from the file.

The prompts are the mask's: an annotation's `point_coords` ([[x, y]], SA-1B's field) when present, else the
mask's most interior point; the box is the decoded mask's bounding box, not the file's `bbox` (for
polygons that is the polygon's extent in fractional pixels), so a COCO file and the same masks written as
a mask folder give the same prompts.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from pycocotools import mask as mask_utils

from slimsam.data.annotations import SIZE_DIFFERS, DatasetError, ImageAnnotations
from slimsam.data.images import IMAGE_SUFFIXES, ImageFolderError

LAYOUT = "COCO: --data IMAGES_DIR --annotations instances.json"
CROWD = "crowd annotation"
FEW_POINTS = "polygon with fewer than 3 points"
MALFORMED = "malformed segmentation"
MISSING_IMAGE = "annotation of an image missing from the folder"
UNKNOWN_IMAGE = "annotation of an image_id not in the file's images"


class Unusable(Exception):
    """One annotation that cannot be used; its reason is the message."""


def read_instances(file: str | Path) -> dict:
    """The COCO file's JSON, checked to have `images` and `annotations` lists; DatasetError otherwise."""
    try:
        record = json.loads(Path(file).read_text())
    except FileNotFoundError:
        raise DatasetError(f"annotation file {file} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"{file} is not a COCO annotation file: not JSON ({error})") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(key), list) for key in ("images", "annotations")):
        raise DatasetError(f"{file} is not a COCO annotation file: it needs 'images' and 'annotations' lists")
    return record


def decode_segmentation(segmentation, height: int, width: int):
    """A COCO segmentation (polygons, compressed or uncompressed RLE) as a pycocotools RLE; raises Unusable."""
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) and len(p) % 2 == 0 for p in segmentation):
            raise Unusable(MALFORMED)
        # Checked before pycocotools sees them: it would take a 2-point polygon (4 numbers) for a box.
        if any(len(polygon) < 6 for polygon in segmentation):
            raise Unusable(FEW_POINTS)
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if not isinstance(segmentation, dict) or not {"size", "counts"} <= segmentation.keys():
        raise Unusable(MALFORMED)
    if list(segmentation["size"]) != [height, width]:
        raise Unusable(SIZE_DIFFERS)
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


class Coco:
    """The images of a folder that a COCO instances file lists (an AnnotationSource)."""

    format = "coco"

    def __init__(self, folder: str | Path, annotation_file: str | Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ImageFolderError(f"image folder {folder} does not exist")
        record = read_instances(annotation_file)
        self.left_out: Counter = Counter()
        self.images: dict[Path, dict] = {}  # path -> the file's image record
        by_id: dict = {}
        for image in record["images"]:
            if not isinstance(image, dict) or not {"id", "file_name", "height", "width"} <= image.keys():
                raise DatasetError(f"{annotation_file}: an image record needs id, file_name, height and width, "
                                   f"got {str(image)[:80]}")
            by_id[image["id"]] = folder / image["file_name"]
            self.images[folder / image["file_name"]] = image
        self.annotations: dict[Path, list[dict]] = defaultdict(list)
        for annotation in record["annotations"]:
            path = by_id.get(annotation.get("image_id")) if isinstance(annotation, dict) else None
            if path is None:
                self.left_out[UNKNOWN_IMAGE] += 1
            elif not path.is_file():
                self.left_out[MISSING_IMAGE] += 1
            else:
                self.annotations[path].append(annotation)
        self.paths = sorted(path for path in self.images if path.is_file())
        if not self.paths:
            example = f" (first: {next(iter(self.images)).name})" if self.images else ""
            raise DatasetError(f"none of the {len(self.images)} images that {annotation_file} lists is in "
                               f"{folder}{example}")
        listed = set(self.paths)
        self.unannotated = sum(1 for path in folder.iterdir()
                               if path.suffix.lower() in IMAGE_SUFFIXES and path not in listed)

    def read(self, path: Path, size: tuple[int, int]) -> ImageAnnotations:
        """The image's annotations, rasterised at its size; unusable ones are left out and counted."""
        image = self.images[path]
        height, width = size
        masks, points, left_out = [], [], Counter()
        for annotation in self.annotations[path]:
            try:
                if annotation.get("iscrowd"):
                    raise Unusable(CROWD)
                if (image["height"], image["width"]) != (height, width):
                    raise Unusable(SIZE_DIFFERS)
                rle = decode_segmentation(annotation.get("segmentation"), height, width)
                masks.append(mask_utils.decode(rle).astype(bool))
            except Unusable as reason:
                left_out[str(reason)] += 1
                continue
            stored = annotation.get("point_coords")
            points.append(stored[0] if stored else None)
        return ImageAnnotations.from_masks(masks, height, width, left_out, points)
