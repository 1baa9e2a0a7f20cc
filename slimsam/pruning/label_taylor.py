"""Label-based Taylor importance: the paper's labelled baseline beside disturbed Taylor.

Taylor importance needs dL/dw. Here L is SAM's own training loss on annotated data: 20 * focal
+ dice (the SAM paper's weighting) between the model's single-mask prediction for an annotation's
point and that annotation's mask. Scoring then reuses `group_importance(group, "taylor")`.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm
from transformers import SamModel, SamProcessor

from slimsam.evaluate.masks import focal_dice_loss, mask_logits
from slimsam.pruning.importance import lean_backward

MAX_MASKS_PER_IMAGE = 16


def accumulate_label_taylor_gradients(model: SamModel, processor: SamProcessor, samples: Iterable[dict],
                                      max_masks: int = MAX_MASKS_PER_IMAGE, seed: int = 0, total: int | None = None,
                                      progress: bool = True) -> int:
    """Sum d(focal_dice_loss)/dw over annotated samples into the model's `.grad`; returns the images used.

    samples: AnnotatedDataset items (slimsam.data.annotations, any format); images without annotations
    are passed over.
    Each image contributes at most `max_masks` annotations, drawn with `seed`: the loss is computed at
    the original resolution, and ~100 SA-1B masks of 1500 x 2250 at once would not fit in memory.
    """
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    count = 0
    with lean_backward(model):
        for sample in tqdm(samples, total=total, desc="taylor gradients (mask loss)", disable=not progress):
            num_masks = len(sample["masks"])
            if num_masks == 0:
                continue
            select = torch.randperm(num_masks, generator=generator)[:max_masks].sort().values
            embeddings = model.vision_encoder(sample["pixel_values"][None].to(device, dtype)).last_hidden_state
            logits = mask_logits(model, processor, sample, embeddings, "point", select)
            target = torch.from_numpy(sample["masks"][select.numpy()]).to(device)
            focal_dice_loss(logits.float(), target).backward()
            count += 1
    return count
