"""A folder of masks: `photo.jpg` beside a folder `photo/` of mask images `0.png, 1.png, ...`.

One PNG per object, the same size as its photo; any non-zero pixel value is foreground (an alpha channel is
ignored). Masks are taken in the order of their names, numbers by value (`2.png` before `10.png`). The photos
sit directly in the data folder, so the same folder serves distillation (which reads only its images).
Photos without a mask folder are not part of the dataset (they count as unannotated).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import UnidentifiedImageError

from slimsam.data.annotations import SIZE_DIFFERS, ImageAnnotations, read_mask_png
from slimsam.data.images import list_images

LAYOUT = "mask folders: photo.jpg beside photo/0.png, photo/1.png, ..."
UNREADABLE = "unreadable mask file"


def mask_files(image: Path) -> list[Path]:
    """The mask PNGs of an image (`photo.jpg` -> `photo/*.png`), numbered names by value, then the others by name."""
    folder = image.with_suffix("")
    if not folder.is_dir():
        return []
    files = [path for path in folder.iterdir() if path.suffix.lower() == ".png" and path.is_file()]
    return sorted(files, key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))


def annotates(image: Path) -> bool:
    return bool(mask_files(image))


class MaskFolder:
    """The photos of a folder that have their folder of mask PNGs (an AnnotationSource)."""

    format = "masks"

    def __init__(self, folder: str | Path) -> None:
        images = list_images(folder)
        self.paths = [path for path in images if annotates(path)]
        self.unannotated = len(images) - len(self.paths)
        self.left_out: Counter = Counter()

    def read(self, path: Path, size: tuple[int, int]) -> ImageAnnotations:
        """Every mask PNG of `path`; unreadable ones and ones of another size are left out and counted."""
        masks, left_out = [], Counter()
        for file in mask_files(path):
            try:
                mask = read_mask_png(file)
            except (OSError, UnidentifiedImageError, ValueError):
                left_out[UNREADABLE] += 1
                continue
            if mask.shape != tuple(size):
                left_out[SIZE_DIFFERS] += 1
                continue
            masks.append(mask)
        return ImageAnnotations.from_masks(masks, *size, left_out)
