"""Prompted-segmentation mIoU on SA-1B, the SlimSAM paper's protocol.

Every annotation is one query: its `point_coords` as a single positive point (or its `bbox` as a
box), the mask decoder at single-mask output, logits upscaled to the original image by the
processor and thresholded at 0. IoU is averaged over an image's annotations, then over images,
so an image with many small masks counts as much as one with a few.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import SamModel, SamProcessor

from slimsam.data.sa1b import iter_sa1b
from slimsam.evaluate.masks import PROMPTS, mask_iou, mask_logits


@dataclass(frozen=True)
class EvalResult:
    """miou: mean over images of each image's mean IoU; images: images scored (readable, >= 1 annotation);
    annotations: masks scored; skipped: files that could not be read."""

    miou: float
    images: int
    annotations: int
    skipped: int


@torch.inference_mode()
def image_ious(model: SamModel, processor: SamProcessor, sample: dict, prompt: str = "point",
               prompts_per_batch: int = 32) -> torch.Tensor:
    """(N,) IoU of each of the sample's N annotations against the model's mask for its prompt."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    embeddings = model.vision_encoder(sample["pixel_values"][None].to(device, dtype)).last_hidden_state
    targets = torch.from_numpy(sample["masks"])
    ious = []
    # Batches of prompts bound the memory of original-size logits (SA-1B: ~100 masks of 1500 x 2250).
    for start in range(0, len(targets), prompts_per_batch):
        select = slice(start, start + prompts_per_batch)
        predicted = mask_logits(model, processor, sample, embeddings, prompt, select) > 0
        ious.append(mask_iou(predicted, targets[select].to(predicted.device)).cpu())
    return torch.cat(ious)


def evaluate(model: SamModel, processor: SamProcessor, paths: Iterable[Path], prompt: str = "point",
             progress: bool = True) -> EvalResult:
    """mIoU of `model` on SA-1B images `paths` (each with its sa_<n>.json beside it)."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    paths = list(paths)
    skipped: list[Path] = []
    per_image, annotations = [], 0
    for sample in tqdm(iter_sa1b(paths, processor, skipped), total=len(paths), desc=f"mIoU ({prompt} prompts)",
                       disable=not progress):
        if len(sample["masks"]) == 0:
            continue  # no annotation, no IoU to average
        ious = image_ious(model, processor, sample, prompt)
        per_image.append(ious.mean().item())
        annotations += len(ious)
    miou = float(np.mean(per_image)) if per_image else float("nan")
    return EvalResult(miou=miou, images=len(per_image), annotations=annotations, skipped=len(skipped))
