"""A session's prompts (points, a box, or "everything"), their validation, and drawing them on the photo.

Prompts are immutable: every change makes a new `Prompts` that remembers the one before (for undo)
and carries a higher version, so a pane can tell whether its masks answer the current prompts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

POSITIVE, NEGATIVE, BOX = "Positive point", "Negative point", "Box (two clicks)"
CLICK_MODES = (POSITIVE, NEGATIVE, BOX)


class PromptError(ValueError):
    """A prompt the models cannot use (outside the image, zero-area box, malformed JSON); the message is for users."""


@dataclass(frozen=True)
class Prompts:
    points: tuple[tuple[float, float, int], ...] = ()  # (x, y, label) in image px; label 1 positive, 0 negative
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 px, x1 < x2 and y1 < y2
    box_corner: tuple[float, float] | None = None  # first click of a box still waiting for its second
    everything: bool = False  # "segment everything" instead of points / box
    version: int = 0
    previous: Prompts | None = None

    @property
    def is_empty(self) -> bool:
        """True when there is nothing the models could segment (a lone box corner is not a prompt yet)."""
        return not (self.points or self.box or self.everything)

    def _then(self, **changes) -> Prompts:
        return replace(self, version=self.version + 1, previous=self, **changes)

    def add_point(self, x: float, y: float, label: int, size: tuple[int, int]) -> Prompts:
        check_inside(x, y, size)
        return self._then(points=(*self.points, (float(x), float(y), int(label))), everything=False)

    def add_box_corner(self, x: float, y: float, size: tuple[int, int]) -> Prompts:
        """First click: remember the corner. Second click: the box (any two opposite corners)."""
        check_inside(x, y, size)
        if self.box_corner is None:
            return self._then(box_corner=(float(x), float(y)), everything=False)
        box, _ = ordered_box((*self.box_corner, x, y))
        return self._then(box=box, box_corner=None)

    def everything_mode(self) -> Prompts:
        return self._then(points=(), box=None, box_corner=None, everything=True)

    def undo(self) -> Prompts:
        if self.previous is None:
            return self
        return replace(self.previous, version=self.version + 1, previous=self.previous.previous)

    def cleared(self) -> Prompts:
        return Prompts(version=self.version + 1)

    def scaled(self, factor: float) -> Prompts:
        """The same prompts on the photo resized by `factor` (e.g. from the uploaded photo to its working copy)."""
        return replace(self, points=tuple((x * factor, y * factor, label) for x, y, label in self.points),
                       box=tuple(v * factor for v in self.box) if self.box else None)

    def as_arrays(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(points (N, 2) xy px, labels (N,), box (4,) xyxy px); None for what is absent."""
        if not self.points:
            return None, None, (np.array(self.box, dtype=np.float32) if self.box else None)
        table = np.array(self.points, dtype=np.float32)
        return table[:, :2], table[:, 2].astype(np.int64), (np.array(self.box, dtype=np.float32) if self.box else None)

    def describe(self) -> str:
        if self.everything:
            return "segment everything"
        parts = []
        if self.points:
            positive = sum(label for *_, label in self.points)
            parts.append(f"{positive} positive, {len(self.points) - positive} negative point(s)")
        if self.box:
            parts.append("a box")
        if self.box_corner:
            parts.append("a box corner (click the opposite corner)")
        return ", ".join(parts) or "no prompts"


def check_inside(x: float, y: float, size: tuple[int, int]) -> None:
    """Raise PromptError unless pixel (x, y) lies inside an image of `size` (H, W)."""
    height, width = size
    if not (0 <= x < width and 0 <= y < height):
        raise PromptError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image")


def ordered_box(corners) -> tuple[tuple[float, float, float, float], list[str]]:
    """Any two opposite corners -> (x1, y1, x2, y2) with x1 < x2, y1 < y2, plus notes on what was fixed."""
    x1, y1, x2, y2 = (float(v) for v in corners)
    if abs(x2 - x1) < 1 or abs(y2 - y1) < 1:
        raise PromptError(f"the box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has zero area: give two opposite corners")
    notes = [] if (x1 < x2 and y1 < y2) else ["box corners reordered to top-left, bottom-right"]
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), notes


def parse_json_prompts(points_json: str, box_json: str, size: tuple[int, int]) -> tuple[Prompts, list[str]]:
    """The `segment` API's prompts: points '[[x, y, label], ...]' (label 1 or 0) and box '[x1, y1, x2, y2]' or ''.

    Returns the prompts (validated against the image size (H, W)) and notes on anything adjusted.
    """
    try:
        points = json.loads(points_json) if points_json and points_json.strip() else []
        box = json.loads(box_json) if box_json and box_json.strip() else None
    except json.JSONDecodeError as error:
        raise PromptError(f"prompts must be JSON: {error}") from None
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 3 for p in points):
        raise PromptError('points must be a JSON list of [x, y, label] triples, e.g. "[[250, 300, 1], [40, 60, 0]]"')
    for x, y, label in points:
        if not all(isinstance(v, (int, float)) for v in (x, y)) or label not in (0, 1):
            raise PromptError(f"bad point {[x, y, label]}: x and y are numbers, label is 1 (positive) or 0 (negative)")
        check_inside(x, y, size)
    notes: list[str] = []
    if box is not None:
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise PromptError('box must be a JSON list "[x1, y1, x2, y2]" or an empty string')
        check_inside(box[0], box[1], size)
        check_inside(box[2], box[3], size)
        box, notes = ordered_box(box)
    if not points and box is None:
        raise PromptError("give at least one point or a box")
    return Prompts(points=tuple((float(x), float(y), int(label)) for x, y, label in points), box=box), notes


def draw_prompts(image: np.ndarray, prompts: Prompts) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 image with the prompts drawn: green/red dots, a box, a pending corner."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    radius = max(4, round(max(canvas.size) / 120))
    if prompts.box:
        draw.rectangle(prompts.box, outline=(255, 215, 0), width=max(2, radius // 2))
    if prompts.box_corner:
        x, y = prompts.box_corner
        draw.line((x - 2 * radius, y, x + 2 * radius, y), fill=(255, 215, 0), width=max(2, radius // 2))
        draw.line((x, y - 2 * radius, x, y + 2 * radius), fill=(255, 215, 0), width=max(2, radius // 2))
    for x, y, label in prompts.points:
        colour = (40, 200, 70) if label == 1 else (230, 40, 40)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline="white",
                     width=max(1, radius // 3))
    return np.asarray(canvas)
