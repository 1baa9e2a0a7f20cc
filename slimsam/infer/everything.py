"""Automatic "segment everything": a grid of single-point prompts on one cached image embedding.

The recipe of segment-anything's SamAutomaticMaskGenerator (one crop layer), which it is modelled on: it owns a
`SamPredictor`, whose cached embedding it prompts. Prompt every grid point,
keep masks whose predicted IoU and stability are high enough, drop near-duplicates by box NMS.
Filtering runs on the decoder's low-res logits (256 px for SAM), so only the survivors are ever
upscaled to the image size.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from slimsam.infer.predictor import SamPredictor


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
    boxes = torch.zeros(len(masks), 4)
    for i, mask in enumerate(masks):
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        if len(rows):
            boxes[i] = torch.tensor([cols[0], rows[0], cols[-1], rows[-1]], dtype=torch.float32)
    return boxes


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

    points_per_side: grid density (SAM uses 32; 16 is 4x cheaper and finds the larger objects).
    points_per_batch: prompts decoded per forward pass (memory grows linearly with it).
    pred_iou_thresh, stability_score_thresh: keep masks scoring above these (0 keeps everything).
    box_nms_thresh: drop masks whose box overlaps a better one's by more than this IoU.
    min_mask_area: drop masks smaller than this many original-image pixels. max_masks: keep at most this many.
    """

    def __init__(self, predictor: SamPredictor, points_per_side: int = 16, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.92,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, min_mask_area: int = 0,
                 max_masks: int = 100) -> None:
        self.predictor = predictor
        self.points_per_side, self.points_per_batch = points_per_side, points_per_batch
        self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
        self.stability_score_offset, self.box_nms_thresh = stability_score_offset, box_nms_thresh
        self.min_mask_area, self.max_masks = min_mask_area, max_masks

    def generate(self, image=None, progress: Callable[[float], None] | None = None) -> list[dict]:
        """Masks of everything in `image` (set on the predictor first), or in its current image; largest first.

        progress: called with the fraction of the grid done, for UIs.
        Returns dicts with segmentation ((H, W) bool), area (px), predicted_iou, stability_score and bbox
        (x, y, w, h in px) -- the format of segment-anything's automatic mask generator.
        """
        if image is not None:
            self.predictor.set_image(image)
        logits, ious, stabilities, size = self._grid_candidates(progress)
        if len(logits) == 0:
            return []
        kept = box_nms(mask_boxes(logits[:, :size[0], :size[1]] > 0), ious, self.box_nms_thresh)
        return self._full_size_records(logits, ious, stabilities, kept)

    def _grid_candidates(self, progress) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Prompt every grid point; keep the low-res logits (M, h', w') of the confident, stable masks, their
        predicted IoUs and stability scores (M,), and the (h, w) of the low-res part that covers the image."""
        predictor = self.predictor
        height, width = predictor.require_image().original_size
        input_h, input_w = predictor.current.input_size
        pad = predictor.processor.image_processor.pad_size
        grid = point_grid(self.points_per_side, height, width)
        logits, ious, stabilities, size = [], [], [], (0, 0)
        for start in range(0, len(grid), self.points_per_batch):
            points = grid[start:start + self.points_per_batch, None, :]  # one single-point prompt per grid point
            batch_logits, batch_ious = predictor.decode_low_res(points, np.ones(points.shape[:2], dtype=np.int64))
            batch_logits, batch_ious = batch_logits.flatten(0, 1).cpu(), batch_ious.flatten().cpu()
            # Only the part of the padded low-res square that covers the image counts.
            size = (-(-input_h * batch_logits.shape[-2] // pad["height"]),
                    -(-input_w * batch_logits.shape[-1] // pad["width"]))
            batch_stability = stability_scores(batch_logits[:, :size[0], :size[1]], self.stability_score_offset)
            keep = (batch_ious > self.pred_iou_thresh) & (batch_stability > self.stability_score_thresh)
            logits.append(batch_logits[keep])
            ious.append(batch_ious[keep])
            stabilities.append(batch_stability[keep])
            if progress is not None:
                progress(min(1.0, (start + self.points_per_batch) / len(grid)))
        return torch.cat(logits), torch.cat(ious), torch.cat(stabilities), size

    def _full_size_records(self, logits: torch.Tensor, ious: torch.Tensor, stabilities: torch.Tensor,
                           kept: torch.Tensor) -> list[dict]:
        """The kept candidates upscaled to the image, empty and too small ones dropped, largest first."""
        results = []
        for index in kept.tolist():
            mask = self.predictor.masks_from_logits(logits[index:index + 1])[0]
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
        return sorted(results, key=lambda result: result["area"], reverse=True)
