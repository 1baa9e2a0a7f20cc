"""Pictures for the panes (the photo at display size, a mask or label map over it, the prompts on top) and the
downloads (the mask PNG, the object cut out as an RGBA PNG).

A pane shows the photo scaled to fit a DISPLAY_SIDE square, whatever its size: a 300 px photo is enlarged
and a 2048 px one reduced, so the prompt markers, drawn at a fixed size in display pixels, read the same
on screen, and a click's display pixel maps back to the photo by one scale factor.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from demo.prompts import Prompts

DISPLAY_SIDE = 800  # px: a pane shows the photo at 350-600 CSS px, so this stays sharp and is quick to send
MARKER_RADIUS = 16  # display px: 7-12 CSS px in a pane
MASK_COLOUR = np.array([30, 144, 255], dtype=np.uint16)  # the same blue in both panes, to compare shapes
POSITIVE_COLOUR, NEGATIVE_COLOUR, BOX_COLOUR = (40, 200, 70), (230, 40, 40), (255, 215, 0)


def display_size(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the photo -> (h, w) that fits a DISPLAY_SIDE square (at least 1 px each)."""
    height, width = size
    scale = DISPLAY_SIDE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_image(x: float, y: float, shown: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """A display pixel (x, y) of a picture of `shown` (h, w) -> the photo's pixel coordinates (size (H, W)).

    Pixel centres map onto pixel centres; the result is clipped into the photo (a click is on it)."""
    (h, w), (height, width) = shown, size
    x = min(max((min(max(x, 0), w - 1) + 0.5) * width / w - 0.5, 0.0), width - 1)
    y = min(max((min(max(y, 0), h - 1) + 0.5) * height / h - 0.5, 0.0), height - 1)
    return x, y


@dataclass(frozen=True)
class Backdrop:
    """One photo as the panes show it, made once per photo: every click then only blends a mask over it.

    base: (h, w, 3) uint8, the photo at display size; tinted: the same, half MASK_COLOUR; rows (h, 1) and
    cols (1, w): the photo's pixels each display pixel shows (nearest), to bring (H, W) masks to (h, w).
    """

    size: tuple[int, int]  # (H, W) of the photo
    base: np.ndarray
    tinted: np.ndarray
    rows: np.ndarray
    cols: np.ndarray


def backdrop(image: np.ndarray, shown: tuple[int, int] | None = None) -> Backdrop:
    """The (H, W, 3) photo at display size (or at `shown` (h, w)): smooth when reducing, crisp when enlarging."""
    size = image.shape[:2]
    shown = shown or display_size(size)
    if shown == size:
        base = image
    else:
        resample = Image.Resampling.BILINEAR if shown[0] < size[0] else Image.Resampling.NEAREST
        base = np.asarray(Image.fromarray(image).resize(shown[::-1], resample))
    tinted = ((base.astype(np.uint16) + MASK_COLOUR) // 2).astype(np.uint8)
    (height, width), (h, w) = size, shown
    return Backdrop(size, base, tinted, (np.arange(h) * height // h)[:, None], (np.arange(w) * width // w)[None, :])


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the mask's boundary pixels (inside the mask, next to a pixel outside it)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def pane_picture(photo: Backdrop, prompts: Prompts, mask: np.ndarray | None = None,
                 label_map: np.ndarray | None = None) -> np.ndarray:
    """What a pane shows: the photo's backdrop tinted by an (H, W) bool mask or an (H, W) uint8 label map
    (0 = none, i = the i-th mask, one colour each), outlined, with the prompts drawn on top."""
    if mask is not None:
        small = mask[photo.rows, photo.cols]
        picture = np.where(small[..., None], photo.tinted, photo.base)
        picture[outline(small)] = 255
    elif label_map is not None:
        labels = label_map[photo.rows, photo.cols]
        palette = np.random.default_rng(0).integers(40, 256, (int(labels.max()) + 1, 3)).astype(np.uint16)
        palette[0] = 0
        masked = labels > 0
        picture = np.where(masked[..., None], ((photo.base + palette[labels]) // 2).astype(np.uint8), photo.base)
        edges = np.zeros_like(masked)
        edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edges[1:, :] |= labels[1:, :] != labels[:-1, :]
        picture[edges] = 255
    else:
        picture = photo.base
    return draw_prompts(picture, prompts, photo.size)


def draw_prompts(picture: np.ndarray, prompts: Prompts, size: tuple[int, int]) -> np.ndarray:
    """The display-size picture with the prompts (in the photo's pixels, the photo being (H, W) `size`) drawn:
    green / red dots with a white ring for positive / negative points, a yellow box, a cross for a pending corner."""
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    (height, width), (h, w) = size, picture.shape[:2]

    def shown(x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * w / width - 0.5, (y + 0.5) * h / height - 0.5

    radius = MARKER_RADIUS
    if prompts.box:
        (x1, y1), (x2, y2) = shown(*prompts.box[:2]), shown(*prompts.box[2:])
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=(0, 0, 0), width=6)
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=4)
    if prompts.box_corner:
        x, y = shown(*prompts.box_corner)
        for line in ((x - 2 * radius, y, x + 2 * radius, y), (x, y - 2 * radius, x, y + 2 * radius)):
            draw.line(line, fill=(0, 0, 0), width=8)
            draw.line(line, fill=BOX_COLOUR, width=4)
    for x, y, label in prompts.points:
        x, y = shown(x, y)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(0, 0, 0), width=2,
                     fill=POSITIVE_COLOUR if label == 1 else NEGATIVE_COLOUR)
        draw.ellipse((x - radius + 2, y - radius + 2, x + radius - 2, y + radius - 2), outline="white", width=4)
        sign = radius // 2  # a plus or a minus: readable without colour
        draw.line((x - sign, y, x + sign, y), fill="white", width=4)
        if label == 1:
            draw.line((x, y - sign, x, y + sign), fill="white", width=4)
    return np.asarray(canvas)


def label_map(masks: list[np.ndarray]) -> np.ndarray:
    """Masks (largest first) -> (H, W) uint8 label map; smaller masks are drawn over larger ones."""
    labelled = np.zeros(masks[0].shape, dtype=np.uint8)
    for index, mask in enumerate(masks[:255], start=1):
        labelled[mask] = index
    return labelled


def cut_out(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The object alone: (H, W, 4) RGBA, the photo where the mask is, transparent elsewhere, cropped to the
    mask's bounding box (the whole photo's size if the mask is empty)."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        rows, cols = np.array([0, mask.shape[0] - 1]), np.array([0, mask.shape[1] - 1])
    window = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.dstack([image[window], mask[window].astype(np.uint8) * 255])


def save_png(array: np.ndarray, folder: Path, stem: str) -> Path:
    """Write a bool mask (a 1-bit PNG), a uint8 label map or an RGBA array to a new PNG in `folder`; its path.

    1-bit masks, because they are written on every click: 3x faster to encode than 0/255 grey and a third of
    the size (2048x1536 mask: 6 ms and 1.9 KB against 19 ms and 4.9 KB). compress_level 1: cut-outs are
    photos, which zlib's harder levels shrink little for much more time.
    """
    path = Path(folder) / f"{stem}-{uuid.uuid4().hex[:8]}.png"
    Image.fromarray(array).save(path, compress_level=1)
    return path
