"""Automatic "segment everything": a grid of single-point prompts on one cached image embedding.

The recipe of segment-anything's SamAutomaticMaskGenerator (one crop layer), which it is modelled on: it owns a
`SamPredictor`, whose cached embedding it prompts. Prompt every grid point,
keep masks whose predicted IoU and stability are high enough, drop near-duplicates by box NMS.
Each filter runs as early as it can: the predicted IoU before the decoder upscales a mask at all
(`SamPredictor.decode_confident`), stability and NMS on the decoder's low-res logits (256 px for SAM), so
only the survivors are ever upscaled to the image size.
"""
from __future__ import annotations

import numpy as np
import torch

from slimsam.infer.predictor import Progress, SamPredictor

MAX_POINTS_PER_SIDE = 64  # 4096 prompts: the grid's work (and time) grows with its square
MAX_POINTS_PER_BATCH = 256  # the decoder's memory grows linearly with it (SAM: ~20 MB per prompt)


def point_grid(points_per_side: int, height: int, width: int) -> np.ndarray:
    """(points_per_side**2, 2) xy pixel centres of an evenly spaced grid over an H x W image."""
    offsets = (np.arange(points_per_side) + 0.5) / points_per_side
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def stability_scores(logits: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """(M, h, w) logits -> (M,) IoU between the masks thresholded at +offset and at -offset."""
    inner = (logits > offset).flatten(1).sum(1)
    outer = (logits > -offset).flatten(1).sum(1)
    return inner / outer.clamp(min=1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(M, h, w) bool -> (M, 4) xyxy boxes in mask pixels (inclusive); empty masks give (0, 0, 0, 0)."""
    rows, cols = masks.any(2), masks.any(1)  # (M, h), (M, w)
    height, width = rows.shape[1], cols.shape[1]
    top, left = rows.int().argmax(1), cols.int().argmax(1)
    bottom, right = height - 1 - rows.flip(1).int().argmax(1), width - 1 - cols.flip(1).int().argmax(1)
    boxes = torch.stack([left, top, right, bottom], dim=1).float()
    return boxes * rows.any(1, keepdim=True)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = (bottom_right - top_left + 1).clamp(min=0).prod(-1)
    iou = overlap / (areas[:, None] + areas[None, :] - overlap)
    kept: list[int] = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in torch.argsort(scores, descending=True).tolist():
        if not suppressed[i]:
            kept.append(i)
            suppressed |= iou[i] > iou_threshold
    return torch.tensor(kept, dtype=torch.long)


class MaskGenerator:
    """Masks of everything in an image, as segment-anything's SamAutomaticMaskGenerator gives them.

        generator = MaskGenerator(SamPredictor.from_pretrained("slimsam-77"), points_per_side=16)
        masks = generator.generate(photo)          # or generate() for the predictor's current image

    points_per_side: grid density, 1 to MAX_POINTS_PER_SIDE (SAM uses 32; 16 is 4x cheaper and finds the larger
    objects). points_per_batch: prompts decoded per forward pass, 1 to MAX_POINTS_PER_BATCH (memory grows
    linearly with it; larger batches spend less time per prompt on the decoder's many small steps).
    pred_iou_thresh, stability_score_thresh: keep masks scoring above these.
    box_nms_thresh: drop masks whose box overlaps a better one's by more than this IoU.
    min_mask_area: drop masks smaller than this many original-image pixels. max_masks: keep at most this many.
    """

    def __init__(self, predictor: SamPredictor, points_per_side: int = 16, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.92,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, min_mask_area: int = 0,
                 max_masks: int = 100) -> None:
        for name, value, most in (("points_per_side", points_per_side, MAX_POINTS_PER_SIDE),
                                  ("points_per_batch", points_per_batch, MAX_POINTS_PER_BATCH),
                                  ("max_masks", max_masks, None)):
            if not isinstance(value, int) or value < 1 or (most is not None and value > most):
                raise ValueError(f"{name} must be an integer from 1 to {most or 'any'}, got {value!r}")
        self.predictor = predictor
        self.points_per_side, self.points_per_batch = points_per_side, points_per_batch
        self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
        self.stability_score_offset, self.box_nms_thresh = stability_score_offset, box_nms_thresh
        self.min_mask_area, self.max_masks = min_mask_area, max_masks

    def generate(self, image=None, progress: Progress | None = None) -> list[dict]:
        """Masks of everything in `image` (set on the predictor first), or in its current image; largest first.

        progress: called as progress(fraction, stage) while the grid is prompted ("prompting a 16x16 grid")
        and while the kept masks are brought to the image size ("upscaling N masks"), for UIs.
        Returns dicts with segmentation ((H, W) bool), area (px), predicted_iou, stability_score and bbox
        (x, y, w, h in px) -- the format of segment-anything's automatic mask generator.
        """
        if image is not None:
            self.predictor.set_image(image, progress=progress)
        logits, ious, stabilities, size = self._grid_candidates(progress)
        if len(logits) == 0:
            return []
        kept = box_nms(mask_boxes(logits[:, :size[0], :size[1]] > 0), ious, self.box_nms_thresh)
        return self._full_size_records(logits, ious, stabilities, kept, progress)

    def _grid_candidates(self, progress) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Prompt every grid point; keep the low-res logits (M, h', w') of the confident, stable masks, their
        predicted IoUs and stability scores (M,), and the (h, w) of the low-res part that covers the image."""
        predictor = self.predictor
        height, width = predictor.require_image().original_size
        input_h, input_w = predictor.current.input_size
        pad = predictor.processor.image_processor.pad_size
        grid = point_grid(self.points_per_side, height, width)
        stage = f"prompting a {self.points_per_side}x{self.points_per_side} grid"
        logits, ious, stabilities, size = [], [], [], (0, 0)
        for start in range(0, len(grid), self.points_per_batch):
            if progress is not None:
                progress(start / len(grid), stage)
            points = grid[start:start + self.points_per_batch, None, :]  # one single-point prompt per grid point
            batch_logits, batch_ious, _ = predictor.decode_confident(
                points, np.ones(points.shape[:2], dtype=np.int64), self.pred_iou_thresh)
            batch_logits, batch_ious = batch_logits.cpu(), batch_ious.cpu()
            # Only the part of the padded low-res square that covers the image counts.
            size = (-(-input_h * batch_logits.shape[-2] // pad["height"]),
                    -(-input_w * batch_logits.shape[-1] // pad["width"]))
            batch_stability = stability_scores(batch_logits[:, :size[0], :size[1]], self.stability_score_offset)
            keep = batch_stability > self.stability_score_thresh
            logits.append(batch_logits[keep])
            ious.append(batch_ious[keep])
            stabilities.append(batch_stability[keep])
        return torch.cat(logits), torch.cat(ious), torch.cat(stabilities), size

    def _full_size_records(self, logits: torch.Tensor, ious: torch.Tensor, stabilities: torch.Tensor,
                           kept: torch.Tensor, progress, chunk: int = 8) -> list[dict]:
        """The kept candidates upscaled to the image (`chunk` at a time), empty and too small ones dropped,
        at most max_masks, largest first."""
        results = []
        stage = f"upscaling {min(len(kept), self.max_masks)} masks"
        for start in range(0, len(kept), chunk):
            if progress is not None:
                progress(min(1.0, start / min(len(kept), self.max_masks)), stage)
            indices = kept[start:start + chunk]
            for index, mask in zip(indices.tolist(), self.predictor.masks_from_logits(logits[indices])):
                area = int(mask.sum())
                if area == 0 or area < self.min_mask_area:
                    continue
                rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
                results.append({"segmentation": mask, "area": area, "predicted_iou": float(ious[index]),
                                "stability_score": float(stabilities[index]),
                                "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                                         int(rows[-1] - rows[0] + 1)]})
                if len(results) == self.max_masks:
                    break
            if len(results) == self.max_masks:
                break
        return sorted(results, key=lambda result: result["area"], reverse=True)
