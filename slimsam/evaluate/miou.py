"""Prompted-segmentation mIoU on annotated images (SA-1B, COCO, mask folders), the SlimSAM paper's protocol.

Every annotation is one query: its point as a single positive point (or its box), the mask decoder at
single-mask output, logits upscaled to the original image by the processor and thresholded at 0. IoU is
averaged over an image's annotations, then over images, so an image with many small masks counts as much
as one with a few (slimsam.evaluate.scores). Several models are scored on the same images in one pass.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import SamModel, SamProcessor

from slimsam.data.annotations import AnnotatedDataset, LoadedImage
from slimsam.evaluate.masks import PROMPTS, mask_iou, mask_logits
from slimsam.evaluate.scores import Comparison, ModelScores, WorstCase, WorstCases


@dataclass(frozen=True)
class EvalResult:
    """miou: mean over images of each image's mean IoU; images: images scored (readable, >= 1 annotation);
    annotations: masks scored; skipped: image files that could not be read; left_out: annotations not
    used (crowd, tiny, wrong size, ...), by reason."""

    miou: float
    images: int
    annotations: int
    skipped: int
    left_out: dict[str, int]


@torch.inference_mode()
def image_embeddings(model: SamModel, sample: dict) -> torch.Tensor:
    """(1, C, s, s) image embedding of an AnnotatedDataset item, in the model's dtype, on its device."""
    parameter = next(model.parameters())
    return model.vision_encoder(sample["pixel_values"][None].to(parameter.device, parameter.dtype)).last_hidden_state


@torch.inference_mode()
def image_ious(model: SamModel, processor: SamProcessor, sample: dict, embeddings: torch.Tensor,
               prompt: str = "point", prompts_per_batch: int = 32) -> torch.Tensor:
    """(N,) IoU of each of the sample's N annotations against the model's mask for its prompt (on the CPU)."""
    targets = torch.from_numpy(sample["masks"])
    ious = []
    # Batches of prompts bound the memory of original-size logits (SA-1B: ~100 masks of 1500 x 2250).
    for start in range(0, len(targets), prompts_per_batch):
        select = slice(start, start + prompts_per_batch)
        predicted = mask_logits(model, processor, sample, embeddings, prompt, select) > 0
        ious.append(mask_iou(predicted, targets[select].to(predicted.device)).cpu())
    return torch.cat(ious)


def _preprocessing(processor: SamProcessor) -> str:
    """What decides a processor's output: models with equal ones share one preprocessed item per image."""
    return json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str)


def _worst_case(models: dict, loaded: LoadedImage, items: dict, embeddings: dict, ious: dict, score: float,
                prompt: str) -> WorstCase:
    """The image's annotation with the lowest IoU averaged over the models, each model's mask for it."""
    index = int(np.argmin(np.mean([model_ious for model_ious in ious.values()], axis=0)))
    masks = {}
    with torch.inference_mode():
        for name, (model, processor) in models.items():
            logits = mask_logits(model, processor, items[name], embeddings[name], prompt, slice(index, index + 1))
            masks[name] = (logits[0] > 0).cpu().numpy()
    return WorstCase.make(loaded.path, score, loaded.image, loaded.masks[index], masks,
                          {name: float(model_ious[index]) for name, model_ious in ious.items()},
                          point=loaded.points[index] if prompt == "point" else None,
                          box=loaded.boxes[index] if prompt == "box" else None)


def compare_on_annotations(models: dict[str, tuple[SamModel, SamProcessor]], dataset: AnnotatedDataset,
                           prompt: str = "point", worst: int = 0, progress: bool = True) -> Comparison:
    """Score every model (name -> (model, processor)) on every annotation of `dataset`, image by image.

    Each image is read once; each model encodes it once and decodes all its prompts. `worst`: how many of
    the lowest-scoring images to keep as pictures (Comparison.worst).
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    scores = {name: ModelScores(name) for name in models}
    worst_cases = WorstCases(worst)
    images, skipped, left_out = [], [], Counter(dataset.source.left_out)
    for index in tqdm(range(len(dataset)), desc=f"mIoU ({prompt} prompts)", disable=not progress):
        loaded = dataset.load(index)
        if loaded is None:
            skipped.append(dataset.paths[index])
            continue
        left_out += loaded.left_out
        if len(loaded.masks) == 0:
            continue  # no annotation, no IoU to average
        shared, items, embeddings, ious = {}, {}, {}, {}
        for name, (model, processor) in models.items():
            key = _preprocessing(processor)
            if key not in shared:
                shared[key] = dataset.to_item(loaded, processor)
            items[name] = shared[key]
            start = time.perf_counter()
            embeddings[name] = image_embeddings(model, items[name])
            ious[name] = image_ious(model, processor, items[name], embeddings[name], prompt).numpy()
            scores[name].add(ious[name], time.perf_counter() - start)
        images.append(loaded.path)
        score = float(np.mean([model_ious.mean() for model_ious in ious.values()]))
        if worst_cases.wants(score):
            worst_cases.add(_worst_case(models, loaded, items, embeddings, ious, score, prompt))
    return Comparison("miou", f"{prompt} prompts", scores, images, skipped, left_out, worst_cases.cases)


def evaluate(model: SamModel, processor: SamProcessor, dataset: AnnotatedDataset, prompt: str = "point",
             progress: bool = True) -> EvalResult:
    """mIoU of one model on an annotated dataset (slimsam.data.formats.open_annotations, AnnotatedDataset)."""
    comparison = compare_on_annotations({"model": (model, processor)}, dataset, prompt, progress=progress)
    summary = comparison.summaries()[0]
    return EvalResult(miou=summary["miou"], images=summary["images"], annotations=summary["annotations"],
                      skipped=len(comparison.skipped), left_out=dict(comparison.left_out))
