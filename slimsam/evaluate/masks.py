"""Masks from prompts and how to score them: prompted mask logits, IoU, and SAM's mask loss.

Shared by evaluation (mIoU), labelled Taylor importance (its loss) and training: one definition of each.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SamModel, SamProcessor

PROMPTS = ("point", "box")
FOCAL_WEIGHT = 20.0  # SAM: "a linear combination of focal loss and dice loss in a 20:1 ratio"


def mask_logits(model: SamModel, processor: SamProcessor, sample: dict, image_embeddings: torch.Tensor,
                prompt: str = "point", select: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """Single-mask logits of the selected annotations' prompts, at the original image size.

    sample: an AnnotatedDataset item (slimsam.data.annotations); image_embeddings: (1, C, s, s) from the
    model's vision encoder; select: which annotations (index tensor or slice). Returns (n, H, W) float
    logits; mask = logits > 0. Differentiable (label-based Taylor backpropagates through it).
    """
    device, dtype = image_embeddings.device, image_embeddings.dtype
    if prompt == "point":
        points = sample["input_points"][select].to(device, dtype)  # (n, 1, 2)
        prompts = dict(input_points=points[None], input_labels=torch.ones(points.shape[:2], dtype=torch.long,
                                                                            device=device)[None])
    elif prompt == "box":
        prompts = dict(input_boxes=sample["input_boxes"][select].to(device, dtype)[None])
    else:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    # (n, 1, s', s') logits over the padded input, s' = S / 4
    low_res = model(image_embeddings=image_embeddings, multimask_output=False, **prompts).pred_masks[0]
    upscaled = processor.post_process_masks([low_res], [sample["original_size"]], [sample["reshaped_size"]],
                                            binarize=False)[0]
    return upscaled[:, 0]


def mask_iou(predicted, target):
    """IoU of bool masks (..., H, W), torch tensors or numpy arrays: shape (...), e.g. (n,) for n masks, () for one.

    Two empty masks agree perfectly (IoU 1), so a model that correctly finds nothing is not penalised.
    """
    intersection = (predicted & target).reshape(*predicted.shape[:-2], -1).sum(-1)
    union = (predicted | target).reshape(*predicted.shape[:-2], -1).sum(-1)
    if isinstance(union, torch.Tensor):
        return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                    gamma: float = 2.0) -> torch.Tensor:
    """Scalar SAM mask loss, averaged over masks: 20 * sigmoid focal loss (pixel mean) + soft dice loss.

    logits: (n, H, W) mask logits; target: (n, H, W) bool ground truth.
    """
    target = target.to(logits.dtype)
    prob = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = prob * target + (1 - prob) * (1 - target)  # probability given to the right answer
    alpha_true = alpha * target + (1 - alpha) * (1 - target)
    focal = (alpha_true * (1 - p_true) ** gamma * cross_entropy).flatten(1).mean(1)
    # +1 keeps dice defined (and equal to 0) for an empty mask predicted empty.
    dice = 1 - (2 * (prob * target).flatten(1).sum(1) + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    return (FOCAL_WEIGHT * focal + dice).mean()
