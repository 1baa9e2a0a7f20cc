"""A session's prompts (points, a box, or "everything") and their validation.

Prompts are immutable: every change makes a new `Prompts` that remembers the one before (for undo)
and carries a higher version, so a pane can tell whether its masks answer the current prompts. A change
that fails validation raises PromptError before anything is made: the session keeps what it had.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np

POSITIVE, NEGATIVE, BOX = "Positive point", "Negative point", "Box (two clicks)"
CLICK_MODES = (POSITIVE, NEGATIVE, BOX)
MAX_POINTS = 64  # per request and per session: SAM's decoder attends over every point, and 64 is plenty
MAX_PROMPT_CHARS = 20_000  # of JSON text per request (64 points take under 2,000)


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
        if len(self.points) >= MAX_POINTS:
            raise PromptError(f"at most {MAX_POINTS} points: Undo or Clear some first")
        return self._then(points=(*self.points, (float(x), float(y), int(label))), everything=False)

    def add_box_corner(self, x: float, y: float, size: tuple[int, int]) -> Prompts:
        """First click: remember the corner. Second click: the box (any two opposite corners)."""
        check_inside(x, y, size)
        if self.box_corner is None:
            return self._then(box_corner=(float(x), float(y)), everything=False)
        box, _ = clipped_box((*self.box_corner, x, y), size)
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
        box = np.array(self.box, dtype=np.float32) if self.box else None
        if not self.points:
            return None, None, box
        table = np.array(self.points, dtype=np.float32)
        return table[:, :2], table[:, 2].astype(np.int64), box

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


def shown(*values: float) -> str:
    """Coordinates for a message: "(281, 326.5)", to a tenth of a pixel."""
    return f"({', '.join(f'{round(v, 1):g}' for v in values)})"


def check_inside(x: float, y: float, size: tuple[int, int]) -> None:
    """Raise PromptError unless pixel (x, y) lies inside an image of `size` (H, W)."""
    height, width = size
    if not (0 <= x < width and 0 <= y < height):
        raise PromptError(f"point {shown(x, y)} is outside the {width}x{height} image")


def clipped_box(corners, size: tuple[int, int]) -> tuple[tuple[float, float, float, float], list[str]]:
    """Any two opposite corners -> (x1, y1, x2, y2) with x1 < x2, y1 < y2, clipped to an image of `size` (H, W),
    plus notes on what was adjusted. A box with no area inside the image is a PromptError."""
    height, width = size
    x1, y1, x2, y2 = given = tuple(float(v) for v in corners)
    notes = [] if (x1 < x2 and y1 < y2) else ["box corners reordered to top-left, bottom-right"]
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    inside = (min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height))
    if inside[2] - inside[0] < 1 or inside[3] - inside[1] < 1:
        where = "has zero area" if (x2 - x1 < 1 or y2 - y1 < 1) else f"lies outside the {width}x{height} image"
        raise PromptError(f"the box {shown(*given)} {where}: give two opposite corners inside the image")
    if inside != (x1, y1, x2, y2):
        notes.append(f"the box reached outside the {width}x{height} image: clipped to {shown(*inside)}")
    return inside, notes


def is_number(value) -> bool:
    """A JSON number: int or float, finite, and not a boolean (Python's True is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_json(text, what: str):
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise PromptError(f"{what} must be JSON text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"{what} is {len(text):,} characters long; at most {MAX_PROMPT_CHARS:,} "
                          f"(at most {MAX_POINTS} points)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, too-long integers, absurd nesting
        raise PromptError(f"{what} must be JSON: {str(error)[:120]}") from None


def parse_points(points_json: str) -> list[tuple[float, float, int]]:
    """'[[x, y, label], ...]' -> (x, y, label) triples: x, y numbers, label the integer 1 or 0; at most MAX_POINTS.

    Checks the text alone (no image needed), so a malformed or oversized request fails before any work.
    """
    points = _load_json(points_json, "points")
    if points is None:
        return []
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 3 for p in points):
        raise PromptError('points must be a JSON list of [x, y, label] triples, e.g. "[[250, 300, 1], [40, 60, 0]]"')
    if len(points) > MAX_POINTS:
        raise PromptError(f"{len(points):,} points given; at most {MAX_POINTS} per request")
    for x, y, label in points:
        if not (is_number(x) and is_number(y)) or type(label) is not int or label not in (0, 1):
            raise PromptError(f"bad point {json.dumps([x, y, label])[:80]}: x and y are numbers, label is the "
                              f"integer 1 (positive) or 0 (negative)")
    return [(float(x), float(y), label) for x, y, label in points]


def parse_box(box_json: str) -> tuple[float, float, float, float] | None:
    """'[x1, y1, x2, y2]' (numbers) or '' -> the four corners' coordinates, or None."""
    box = _load_json(box_json, "box")
    if box is None:
        return None
    if not isinstance(box, list) or len(box) != 4 or not all(is_number(v) for v in box):
        raise PromptError('box must be a JSON list of four numbers "[x1, y1, x2, y2]", or an empty string')
    return tuple(float(v) for v in box)


def prompts_from(points: list[tuple[float, float, int]], corners: tuple[float, float, float, float] | None,
                 size: tuple[int, int]) -> tuple[Prompts, list[str]]:
    """Parsed points and box corners (parse_points, parse_box) checked against an image of `size` (H, W): points
    inside, the box clipped to it. Returns the prompts and notes on anything adjusted."""
    for x, y, _ in points:
        check_inside(x, y, size)
    box, notes = clipped_box(corners, size) if corners is not None else (None, [])
    if not points and box is None:
        raise PromptError("give at least one point or a box")
    return Prompts(points=tuple(points), box=box), notes


def parse_json_prompts(points_json: str, box_json: str, size: tuple[int, int]) -> tuple[Prompts, list[str]]:
    """The `segment` API's prompts: points '[[x, y, label], ...]' (label 1 or 0) and box '[x1, y1, x2, y2]' or '',
    for an image of `size` (H, W); and notes on anything adjusted."""
    return prompts_from(parse_points(points_json), parse_box(box_json), size)
