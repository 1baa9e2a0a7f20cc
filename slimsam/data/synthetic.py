"""Synthetic segmentation photos in the SA-1B layout, generated from a seed.

Each image shows several overlapping objects (ellipses, convex and concave polygons, stars and
rings whose hole shows what lies beneath) filled solid, with linear / radial gradients or with
textures (stripes, checks, noise, dots), over a textured background (gradients, noise, stripes,
checks) with small clutter; half the scenes are "plain" (no textured fills, smooth background, less
clutter: see `STYLES`). Objects are painted in order, so later ones occlude earlier ones; an
object's mask is its VISIBLE part, and an object whose visible part is too small (see `MIN_AREA`,
`MIN_VISIBLE`) is left unannotated though still painted. Clutter ("distractors") is small shapes
painted behind the objects (most) or in front of them (a few): they are never annotated, and one
painted in front removes its pixels from the masks beneath it. Their size keeps them below
`MIN_AREA`, so they follow the same rule as any object too small to annotate.

Conventions: sizes are (H, W) in pixels; images are (H, W, 3) uint8 RGB; masks (N, H, W) bool;
points (N, 2) float32 xy pixel indices (SAM's prompt convention: the model adds the 0.5 itself);
boxes (N, 4) float32 XYWH pixel extents, as pycocotools' `toBbox` gives them.

Image n of split s is a pure function of (seed, s, n) (its own numpy Generator, seeded with
[seed, split code, n]), so splits never overlap and any count is reproducible. Point prompts: a
seeded random pixel among the mask's "deep" pixels, those at least half the largest inscribed
square's half-side from the mask's edge or the image border (Chebyshev distance).

    python -m slimsam.data.synthetic OUT --split train --count N --seed S
    (or: python slimsam/data/synthetic.py OUT ...)  writes OUT/sa_<n>.jpg + OUT/sa_<n>.json
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

SPLITS = {"train": 0, "val": 1, "test": 2}
LONG_SIDE = (192, 640)   # longest image side, pixels (inclusive range)
ASPECT = (0.5, 2.0)      # width / height, sampled log-uniformly
OBJECTS = (2, 9)         # objects painted per image (inclusive)
RADIUS = (0.09, 0.36)    # object radius as a fraction of the shorter image side (log-uniform)
MIN_AREA = 0.008         # visible area below this fraction of H * W: not annotated
MIN_VISIBLE = 0.25       # visible area below this fraction of the object's in-image area: not annotated
SHAPES = ("ellipse", "convex", "concave", "star", "ring")
FILLS = ("solid", "linear", "radial", "stripes", "checks", "noise", "dots")
BACKGROUNDS = ("linear", "radial", "stripes", "checks", "noise")
# Scene styles: "plain" scenes use untextured fills and smooth backgrounds with little clutter, "textured"
# ones everything above. Half of each: a toy SAM trained for an hour on two CPU cores learns grouping by
# colour first, and the plain half gives it that signal from the first steps.
STYLES = {"plain": (("solid", "linear", "radial"), ("linear", "radial"), 4),
          "textured": (FILLS, BACKGROUNDS, 16)}   # style: (fills, backgrounds, most clutter behind)
PLAIN_FRACTION = 0.5


@dataclass
class Sample:
    """One image in memory. image: (H, W, 3) uint8; masks: (N, H, W) bool visible masks;
    points: (N, 2) float32 xy; boxes: (N, 4) float32 XYWH (pixels); N >= 1."""

    image: np.ndarray
    masks: np.ndarray
    points: np.ndarray
    boxes: np.ndarray


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The Generator that draws image `index` of `split` (one of SPLITS) for `seed`."""
    return np.random.default_rng([seed, SPLITS[split], index])


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(H, W): longest side uniform in LONG_SIDE, width / height log-uniform in ASPECT."""
    long_side = int(rng.integers(LONG_SIDE[0], LONG_SIDE[1] + 1))
    aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
    if aspect >= 1:
        return max(16, round(long_side / aspect)), long_side
    return long_side, max(16, round(long_side * aspect))


# ----------------------------------------------------------------------------- textures


def _colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB in [0, 255]."""
    return rng.uniform(0, 255, 3).astype(np.float32)


def _lerp(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(h, w, 3) blend of colours c1 (t = 0) and c2 (t = 1); t: (h, w) in [0, 1]."""
    return c1 + (c2 - c1) * t[..., None].astype(np.float32)


def _rotated(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) of the pixel grid (yy, xx) rotated by a random angle."""
    angle = rng.uniform(0, math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    return xx * cos + yy * sin, -xx * sin + yy * cos


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """(h, w) smooth noise in [0, 1]: a random grid of about `cell`-pixel cells, bilinearly upsampled."""
    h, w = shape
    grid = rng.random((max(2, round(h / cell) + 2), max(2, round(w / cell) + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


def texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, scale: float) -> np.ndarray:
    """(h, w, 3) float32 RGB texture over the pixel grid (yy, xx), each (h, w) float32 absolute pixel
    coordinates. kind: one of FILLS; scale: the region's size in pixels (sets periods and gradients)."""
    c1, c2 = _colour(rng), _colour(rng)
    if kind == "solid":
        return np.broadcast_to(c1, yy.shape + (3,)).copy()
    if kind == "linear":
        u, _ = _rotated(rng, yy, xx)
        return _lerp(c1, c2, (u - u.min()) / max(float(np.ptp(u)), 1.0))
    if kind == "radial":
        cy, cx = yy.mean() + rng.normal(0, scale / 3), xx.mean() + rng.normal(0, scale / 3)
        return _lerp(c1, c2, np.clip(np.hypot(yy - cy, xx - cx) / (scale * rng.uniform(0.6, 1.5)), 0, 1))
    u, v = _rotated(rng, yy, xx)
    period = scale * rng.uniform(0.06, 0.3) + 3
    if kind == "stripes":
        phase = (u / period) % 1.0
        t = phase < rng.uniform(0.3, 0.7) if rng.random() < 0.6 else 0.5 + 0.5 * np.sin(2 * np.pi * phase)
        return _lerp(c1, c2, t)
    if kind == "checks":
        return _lerp(c1, c2, (np.floor(u / period) + np.floor(v / period)) % 2)
    if kind == "dots":
        du, dv = u % period - period / 2, v % period - period / 2
        return _lerp(c1, c2, du * du + dv * dv < (period * rng.uniform(0.2, 0.4)) ** 2)
    if kind == "noise":
        t = _value_noise(rng, yy.shape, period)
        return _lerp(c1, c2, t) + rng.normal(0, rng.uniform(2, 12), yy.shape + (1,)).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def background(rng: np.random.Generator, size: tuple[int, int], kinds: tuple[str, ...] = BACKGROUNDS) -> np.ndarray:
    """(H, W, 3) float32 background: one texture of `kinds`, sometimes blended with a second."""
    yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    scale = float(max(size))
    canvas = texture(str(rng.choice(kinds)), rng, yy, xx, scale)
    if rng.random() < 0.5:
        alpha = rng.uniform(0.2, 0.5)
        canvas = (1 - alpha) * canvas + alpha * texture(str(rng.choice(kinds)), rng, yy, xx, scale)
    return canvas


# ----------------------------------------------------------------------------- shapes


@dataclass
class Shape:
    """A shape centred at (cy, cx) that fits in a circle of `radius` pixels. kind: one of SHAPES;
    vertices: (k, 2) xy offsets from the centre (polygons and stars); axes: (ry, rx, angle, hole)
    for ellipses and rings (hole: the inner ellipse's scale, 0 for a plain ellipse)."""

    kind: str
    cy: float
    cx: float
    radius: float
    vertices: np.ndarray | None = None
    axes: tuple[float, float, float, float] | None = None


def _star_vertices(rng: np.random.Generator, kind: str, radius: float) -> np.ndarray:
    """(k, 2) xy vertex offsets, in angular order, of a convex / concave polygon or a star."""
    if kind == "star":
        points = int(rng.integers(4, 8))
        angles = np.arange(2 * points) * np.pi / points + rng.uniform(0, np.pi)
        radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.4, 0.65))
    else:
        count = int(rng.integers(3, 9)) if kind == "convex" else int(rng.integers(5, 12))
        step = 2 * np.pi / count  # evenly spread angles, jittered: no sliver polygons
        angles = np.arange(count) * step + rng.uniform(-0.35, 0.35, count) * step + rng.uniform(0, 2 * np.pi)
        radii = np.ones(count) if kind == "convex" else rng.uniform(0.4, 1.0, count)
    squash = np.array([1.0, rng.uniform(0.55, 1.0)])  # points on an ellipse: convex stays convex
    xy = np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None] * squash
    u, v = _rotated(rng, xy[:, 1], xy[:, 0])
    return np.stack([u, v], 1) * radius


def random_shape(rng: np.random.Generator, size: tuple[int, int], kind: str, radius: float) -> Shape:
    """A Shape of `kind` with `radius` pixels, centred anywhere in the (H, W) image."""
    cy, cx = rng.uniform(0, size[0]), rng.uniform(0, size[1])
    if kind in ("ellipse", "ring"):
        ratio = rng.uniform(0.5, 1.0) if kind == "ellipse" else rng.uniform(0.65, 1.0)
        hole = rng.uniform(0.35, 0.65) if kind == "ring" else 0.0
        return Shape(kind, cy, cx, radius, axes=(radius * ratio, radius, rng.uniform(0, np.pi), hole))
    return Shape(kind, cy, cx, radius, vertices=_star_vertices(rng, kind, radius))


def shape_mask(shape: Shape, box: tuple[int, int, int, int]) -> np.ndarray:
    """(y1 - y0, x1 - x0) bool mask of `shape` over the image window box = (y0, x0, y1, x1)."""
    y0, x0, y1, x1 = box
    if shape.axes is not None:
        ry, rx, angle, hole = shape.axes
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - shape.cy, xx + 0.5 - shape.cx
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        r2 = (u / rx) ** 2 + (v / ry) ** 2
        return (r2 <= 1.0) & (r2 > hole * hole)
    canvas = Image.new("1", (x1 - x0, y1 - y0), 0)
    xy = shape.vertices + np.array([shape.cx - x0, shape.cy - y0])
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in xy.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


def shape_window(shape: Shape, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the shape's bounding square clipped to the (H, W) image; None if outside."""
    r = shape.radius + 1
    y0, x0 = max(0, int(shape.cy - r)), max(0, int(shape.cx - r))
    y1, x1 = min(size[0], int(math.ceil(shape.cy + r))), min(size[1], int(math.ceil(shape.cx + r)))
    return None if y0 >= y1 or x0 >= x1 else (y0, x0, y1, x1)


# ----------------------------------------------------------------------------- painting


def paint(canvas: np.ndarray, label: np.ndarray, shape: Shape, rng: np.random.Generator, value: int,
          fills: tuple[str, ...] = FILLS) -> int:
    """Paint `shape` onto canvas ((H, W, 3) float32, in place) with a random fill of `fills`, and write
    `value` into label ((H, W) int16) where painted. Returns the painted area in pixels.

    Of up to 3 fills drawn, keeps the first whose mean colour differs from what it covers by >= 48
    (RGB distance), else the most different one, so that most objects stand out."""
    box = shape_window(shape, label.shape)
    if box is None:
        return 0
    y0, x0, y1, x1 = box
    inside = shape_mask(shape, box)
    if not inside.any():
        return 0
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    beneath = canvas[y0:y1, x0:x1][inside].mean(0)
    best, best_distance = None, -1.0
    for _ in range(3):
        fill = texture(str(rng.choice(fills)), rng, yy, xx, 2 * shape.radius)[inside]
        distance = float(np.linalg.norm(fill.mean(0) - beneath))
        if distance > best_distance:
            best, best_distance = fill, distance
        if distance >= 48:
            break
    canvas[y0:y1, x0:x1][inside] = best
    label[y0:y1, x0:x1][inside] = value
    return int(inside.sum())


def paint_distractors(canvas: np.ndarray, label: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Paint `count` small unannotated shapes (radius 1.2-4.5 % of the shorter side; label 0), in place."""
    short = min(label.shape)
    for _ in range(count):
        kind = str(rng.choice(SHAPES[:4]))
        paint(canvas, label, random_shape(rng, label.shape, kind, short * rng.uniform(0.012, 0.045)), rng, 0)


def finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 photo from the float canvas: an illumination ramp, sensor noise, sometimes blur."""
    h, w = canvas.shape[:2]
    u, _ = _rotated(rng, np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None],
                    np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :])  # (h, w) ramp, |u| <= 0.71
    gain = 1 + rng.uniform(-0.15, 0.15) * u
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(0, 6))
    noisy = canvas * gain[..., None] + noise
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return np.asarray(image)


def interior_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(x, y) pixel index of a random "deep" pixel of the non-empty (H, W) bool `mask`: one whose
    Chebyshev distance to the outside (image border included) is >= half the largest found in the mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, x0 = rows[0], cols[0]
    crop = np.pad(mask[y0:rows[-1] + 1, x0:cols[-1] + 1], 1)
    table = np.zeros((crop.shape[0] + 1, crop.shape[1] + 1), np.int32)
    table[1:, 1:] = crop.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)

    def eroded(r: int) -> np.ndarray:  # [i, j]: the (2r+1)^2 square centred at crop (i + r, j + r) is inside
        k = 2 * r + 1
        return table[k:, k:] - table[:-k, k:] - table[k:, :-k] + table[:-k, :-k] == k * k

    low, high = 0, (min(crop.shape) - 1) // 2  # eroded(low) is non-empty; find the largest such r
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if eroded(middle).any() else (low, middle - 1)
    r = low // 2
    i, j = np.unravel_index(rng.choice(np.flatnonzero(eroded(r))), eroded(r).shape)
    return float(x0 + j + r - 1), float(y0 + i + r - 1)


def mask_box(mask: np.ndarray) -> list[float]:
    """XYWH pixel extents of a non-empty (H, W) bool mask, as pycocotools' toBbox gives them."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


# ----------------------------------------------------------------------------- samples and files


def _draw(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Paint one scene of a random style (STYLES): ((H, W, 3) uint8 image, (H, W) int16 label map
    (object k is k + 1, 0 none), in-image area of each object k before occlusion)."""
    fills, backgrounds, clutter = STYLES["plain" if rng.random() < PLAIN_FRACTION else "textured"]
    canvas = background(rng, size, backgrounds)
    label = np.zeros(size, np.int16)
    paint_distractors(canvas, label, rng, int(rng.integers(0, clutter + 1)))
    short, areas = min(size), []
    low, high = math.log(RADIUS[0]), math.log(RADIUS[1])
    for k in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
        kind = str(rng.choice(SHAPES))
        radius = short * math.exp(rng.uniform(low, high))
        if kind == "ring":
            radius = max(radius, 0.16 * short)  # keeps the ring's band >= ~3 % of the shorter side
        areas.append(paint(canvas, label, random_shape(rng, size, kind, radius), rng, k + 1, fills))
    paint_distractors(canvas, label, rng, int(rng.integers(0, 3)))  # in front: carve small holes
    return finish(canvas, rng), label, areas


def make_sample(rng: np.random.Generator) -> Sample:
    """One random image with its annotated objects (at least one; redraws a scene that has none)."""
    size = image_size(rng)
    while True:
        image, label, areas = _draw(rng, size)
        masks = [label == k + 1 for k in range(len(areas))]
        keep = [m for m, area in zip(masks, areas)
                if area and m.sum() >= max(MIN_AREA * size[0] * size[1], MIN_VISIBLE * area)]
        if keep:
            break
    points = np.array([interior_point(m, rng) for m in keep], np.float32)
    boxes = np.array([mask_box(m) for m in keep], np.float32)
    return Sample(image=image, masks=np.stack(keep), points=points, boxes=boxes)


def sample(seed: int, split: str, index: int) -> Sample:
    """Image `index` of `split` for `seed`, in memory (what `write_split` writes to disk, before JPEG)."""
    return make_sample(image_rng(seed, split, index))


def annotation(mask: np.ndarray, point: np.ndarray, annotation_id: int) -> dict:
    """SA-1B annotation of one (H, W) bool mask and its (x, y) point prompt."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    height, width = mask.shape
    return {"id": annotation_id, "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "point_coords": [[float(point[0]), float(point[1])]], "predicted_iou": 1.0, "stability_score": 1.0,
            "crop_box": [0.0, 0.0, float(width), float(height)]}


def write_image(folder: str | Path, split: str, index: int, seed: int, quality: int = 92) -> Path:
    """Write sa_<index>.jpg and sa_<index>.json (image_id = index; annotation ids index * 100 + k)."""
    folder = Path(folder)
    item = sample(seed, split, index)
    height, width = item.image.shape[:2]
    path = folder / f"sa_{index}.jpg"
    Image.fromarray(item.image).save(path, quality=quality)
    record = {"image": {"image_id": index, "width": width, "height": height, "file_name": path.name},
              "annotations": [annotation(m, p, index * 100 + k) for k, (m, p) in enumerate(zip(item.masks,
                                                                                              item.points))]}
    path.with_suffix(".json").write_text(json.dumps(record))
    return path


def write_split(folder: str | Path, split: str, count: int, seed: int = 0, start: int = 0) -> list[Path]:
    """Write images start .. start + count - 1 of `split` into `folder` (created); returns the .jpg paths."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return [write_image(folder, split, index, seed) for index in range(start, start + count)]


def main(argv: list[str] | None = None) -> None:
    """CLI: write a split of synthetic SA-1B-style images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--split", choices=tuple(SPLITS), default="train")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first image")
    args = parser.parse_args(argv)
    paths = write_split(args.out, args.split, args.count, args.seed, args.start)
    print(f"wrote {len(paths)} images to {args.out}")


if __name__ == "__main__":
    main()
