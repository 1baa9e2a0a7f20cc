"""Reading user images robustly: any PIL mode, EXIF rotation, unreadable files skipped and counted."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import SamProcessor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
log = logging.getLogger(__name__)


class ImageFolderError(ValueError):
    """A folder of images that is missing or holds no image files."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name.

    Deliberately not recursive: a val/ or an output folder inside a training folder must not leak into it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ImageFolderError(f"image folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 or 270 degrees (width and height swap)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB from any PIL image: EXIF orientation applied, alpha dropped, 16-bit rescaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    return image.convert("RGB")


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale so that the longest side is at most `max_side` px (aspect kept); smaller images unchanged.

    Works in any mode, 16-bit included, so huge images never reach a float conversion at full size.
    """
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def open_rgb(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Open an image file as upright RGB; raises OSError for unreadable, corrupt or absurdly large files.

    max_side: downscale to at most this many px on the longest side. JPEGs are then decoded at a reduced
    scale directly (PIL's draft mode), so a 12000x9000 photo never exists at full size in memory.
    """
    return open_rgb_sized(path, max_side)[0]


def open_rgb_sized(path: str | Path, max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`open_rgb`, plus the file's full (H, W) once upright, which a downscaled copy no longer tells.

    The file is decoded once (a PNG keeps its EXIF after the pixels: reading the orientation first would
    decode it twice).
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_side is not None:
                image.draft("RGB", (max_side, max_side))  # a no-op for formats other than JPEG
            image.load()
            size = (width, height) if image.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS else (height, width)
            return to_rgb(shrink(image, max_side) if max_side is not None else image), size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise OSError(f"cannot read image {path}: {error}") from error


def read_pixel_values(path: Path, processor: SamProcessor) -> torch.Tensor | None:
    """(1, 3, S, S) SAM-preprocessed pixels of one image file, or None (logged) when it is unreadable."""
    try:
        image = open_rgb(path)
    except OSError as error:
        log.warning("skipping %s", error)
        return None
    return processor(images=image, return_tensors="pt")["pixel_values"]


def iter_pixel_values(paths: list[Path], processor: SamProcessor, limit: int | None = None,
                      skipped: list[Path] | None = None) -> Iterator[torch.Tensor]:
    """Yield (1, 3, S, S) SAM-preprocessed images, skipping unreadable files (logged, and appended to `skipped`)."""
    yielded = 0
    for path in paths:
        if limit is not None and yielded >= limit:
            return
        pixels = read_pixel_values(path, processor)
        if pixels is None:
            if skipped is not None:
                skipped.append(path)
            continue
        yielded += 1
        yield pixels
