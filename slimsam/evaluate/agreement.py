"""Agreement with a teacher, without labels: how often does a student give the teacher's mask on your images?

On every image the teacher answers a set of prompts: `points` single positive points (a fixed grid, or seeded
random points), then one box per point around the teacher's mask for it (unless that mask is empty or tiny).
Each student answers the same prompts; its score on a prompt is the IoU between its mask and the teacher's
(single-mask output, as the mIoU protocol). Scores are summarised as mIoU is (slimsam.evaluate.scores):
mean over images of the per-image mean, median and shares above 0.5 / 0.9 over all prompts.
Built on SamPredictor: each model encodes an image once and decodes all its prompts from that embedding.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from slimsam.data.annotations import MIN_MASK_AREA, bounding_box
from slimsam.data.images import open_rgb
from slimsam.evaluate.masks import mask_iou
from slimsam.evaluate.scores import Comparison, ModelScores, WorstCase, WorstCases
from slimsam.infer.predictor import SamPredictor

PROMPTS_PER_BATCH = 32  # bounds the memory of full-size masks (a 2048 x 1536 mask is 3 MB)


def grid_side(points: int) -> int:
    """The side of a square grid of `points` points; ValueError when `points` is not a square."""
    side = math.isqrt(points)
    if side < 1 or side * side != points:
        raise ValueError(f"a grid needs a square number of points (4, 9, 16, ...), got {points}")
    return side


def point_prompts(size: tuple[int, int], points: int, seed: int | None = None, index: int = 0) -> np.ndarray:
    """(points, 2) float32 xy pixels for an image of `size` (H, W).

    seed None: a k x k grid (k^2 == points) of cell centres, row by row, as SAM's automatic mask generator
    places its points. Else uniform random points drawn from (seed, index), so each image of a folder (index:
    its position in the sorted list) has its own points and the same ones in every run.
    """
    height, width = size
    if seed is None:
        side = grid_side(points)
        ys, xs = np.meshgrid((np.arange(side) + 0.5) * height / side, (np.arange(side) + 0.5) * width / side,
                             indexing="ij")
        return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    rng = np.random.default_rng([seed, index])
    return (rng.random((points, 2)) * [width, height]).astype(np.float32)


def predicted_masks(predictor: SamPredictor, points: np.ndarray | None = None,
                    boxes: np.ndarray | None = None) -> np.ndarray:
    """(n, H, W) bool single-mask answers of the predictor's current image to n one-point or n box prompts."""
    count = len(points) if points is not None else len(boxes)
    height, width = predictor.require_image().original_size
    masks = [np.zeros((0, height, width), dtype=bool)]
    for start in range(0, count, PROMPTS_PER_BATCH):
        chunk = slice(start, start + PROMPTS_PER_BATCH)
        batch_points = None if points is None else points[chunk, None]  # (B, 1, 2)
        labels = None if points is None else np.ones(batch_points.shape[:2], dtype=np.int64)
        logits, _ = predictor.decode_low_res(batch_points, labels, None if boxes is None else boxes[chunk],
                                             multimask_output=False)
        masks.append(predictor.masks_from_logits(logits[:, 0]))
    return np.concatenate(masks)


def _answers(predictor: SamPredictor, image, points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, float]:
    """((points + boxes, H, W) masks for the points then the boxes, seconds to encode and decode)."""
    start = time.perf_counter()
    predictor.set_image(image)
    masks = [predicted_masks(predictor, points=points)]
    if len(boxes):
        masks.append(predicted_masks(predictor, boxes=boxes))
    return np.concatenate(masks), time.perf_counter() - start


def compare_with_teacher(teacher: SamPredictor, students: dict[str, SamPredictor], paths: list[Path],
                         points: int = 16, seed: int | None = None, worst: int = 0, min_area: int = MIN_MASK_AREA,
                         progress: bool = True, teacher_name: str = "teacher") -> Comparison:
    """Agreement of each student with the teacher on the images `paths` (any photos, no labels needed).

    points, seed: the point prompts (see point_prompts); boxes around teacher masks of fewer than
    `min_area` pixels are not asked. worst: how many of the lowest-agreement images to keep as pictures.
    """
    if seed is None:
        grid_side(points)  # a bad count fails before any image is read
    scores = {name: ModelScores(name) for name in students}
    worst_cases = WorstCases(worst)
    images, skipped, teacher_seconds = [], [], []
    for index, path in enumerate(tqdm(paths, desc="agreement with the teacher", disable=not progress)):
        try:
            image = open_rgb(path)
        except OSError:
            skipped.append(path)
            continue
        start = time.perf_counter()
        teacher.set_image(image)
        prompts = point_prompts((image.height, image.width), points, seed, index)
        point_masks = predicted_masks(teacher, points=prompts)
        boxes = np.array([bounding_box(m) for m in point_masks if m.sum() >= min_area], dtype=np.float32)
        reference = np.concatenate([point_masks, predicted_masks(teacher, boxes=boxes)]) if len(boxes) \
            else point_masks
        teacher_seconds.append(time.perf_counter() - start)
        ious = {}
        for name, student in students.items():
            masks, seconds = _answers(student, image, prompts, boxes.reshape(-1, 4))
            ious[name] = mask_iou(masks, reference)
            scores[name].add(ious[name], seconds)
        images.append(path)
        score = float(np.mean([student_ious.mean() for student_ious in ious.values()]))
        if worst_cases.wants(score):
            worst_cases.add(_worst_case(students, path, image, prompts, boxes, reference, ious, score))
    described = f"{points} {'random' if seed is not None else 'grid'} points + boxes from the teacher's masks"
    return Comparison("agreement", described, scores, images, skipped, Counter(), worst_cases.cases, teacher_name,
                      teacher_seconds=float(np.mean(teacher_seconds)) if teacher_seconds else None)


def _worst_case(students: dict[str, SamPredictor], path: Path, image, prompts: np.ndarray, boxes: np.ndarray,
                reference: np.ndarray, ious: dict[str, np.ndarray], score: float) -> WorstCase:
    """The prompt with the lowest agreement averaged over the students, and each student's mask for it."""
    index = int(np.argmin(np.mean(list(ious.values()), axis=0)))
    is_point = index < len(prompts)
    point = prompts[index] if is_point else None
    box = None if is_point else boxes[index - len(prompts)]
    # Each student's predictor still holds this image: decoding one prompt again is cheap.
    masks = {name: predicted_masks(student, points=None if point is None else point[None],
                                   boxes=None if box is None else box[None])[0]
             for name, student in students.items()}
    return WorstCase.make(path, score, image, reference[index], masks,
                          {name: float(student_ious[index]) for name, student_ious in ious.items()}, point, box)
