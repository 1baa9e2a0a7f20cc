"""How a distillation phase is validated: the student's embedding MSE to the teacher, or mIoU on annotated images.

The validation metric picks the best epoch and drives the learning-rate schedule.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import SamModel, SamProcessor

from slimsam.data.annotations import AnnotatedDataset, AnnotationSource, DatasetError
from slimsam.data.datasets import ImageDataset, collate_pixels
from slimsam.data.formats import NoAnnotationsError, open_annotations
from slimsam.distill.distributed import is_main
from slimsam.distill.features import autocast_for
from slimsam.evaluate.miou import evaluate

log = logging.getLogger(__name__)


class TeacherEmbeddings:
    """The teacher's image embeddings of a fixed list of images, for measuring students against them.

    Computed once, on the first `mse` call, and kept on the CPU (4 MB per 1024-px image): validating a
    student every epoch, or each phase's result in `slim`, then runs only the student. Batches follow
    `paths` in order (batch_size images each, unreadable ones dropped), the same for every call.
    """

    def __init__(self, teacher: SamModel, paths: list[Path], processor: SamProcessor, batch_size: int = 1,
                 num_workers: int = 0, precision: str = "fp32") -> None:
        self.teacher, self.paths, self.processor = teacher, list(paths), processor
        self.batch_size, self.num_workers, self.precision = batch_size, num_workers, precision
        self._batches: list[torch.Tensor] | None = None  # (B, C, h, w) float32 per readable batch, on the CPU

    def _pixel_batches(self, device: torch.device) -> Iterator[torch.Tensor]:
        loader = DataLoader(ImageDataset(self.paths, self.processor), batch_size=self.batch_size,
                            collate_fn=collate_pixels, num_workers=self.num_workers)
        return (pixels.to(device) for pixels, _ in loader if pixels is not None)

    def _embed(self, model: SamModel, pixels: torch.Tensor) -> torch.Tensor:
        with autocast_for(pixels.device, self.precision):
            return model.vision_encoder(pixels).last_hidden_state.float()

    @torch.no_grad()
    def mse(self, student: SamModel) -> float:
        """Mean over readable images of MSE(student's image embedding, teacher's); models on one device."""
        device = next(student.parameters()).device
        if self._batches is None:
            self._batches = [self._embed(self.teacher, pixels).cpu() for pixels in self._pixel_batches(device)]
        if not self._batches:
            raise ValueError("no readable validation images")
        was_training = student.vision_encoder.training
        student.vision_encoder.eval()
        total = 0.0
        for pixels, target in zip(self._pixel_batches(device), self._batches):
            difference = self._embed(student, pixels) - target.to(device)
            total += difference.pow(2).mean(dim=(1, 2, 3)).sum().item()
        student.vision_encoder.train(was_training)
        return total / sum(len(batch) for batch in self._batches)


def embedding_mse(student: SamModel, teacher: SamModel, paths: list[Path], processor: SamProcessor,
                  batch_size: int = 1, num_workers: int = 0) -> float:
    """Mean over readable images of MSE(student's image embedding, teacher's), once (TeacherEmbeddings to reuse)."""
    return TeacherEmbeddings(teacher, paths, processor, batch_size, num_workers).mse(student)


@dataclass(frozen=True)
class Validation:
    """How a phase is validated: `measure(student) -> value`, and whether higher values are better."""

    metric: str
    higher_is_better: bool
    measure: Callable[[SamModel], float]


def validation_annotations(val_paths: list[Path], annotations: str | Path | None = None
                           ) -> AnnotationSource | None:
    """The validation images' annotations, in any format of slimsam.data.formats, or None when some have none.

    Without `annotations` (a COCO file), the format is detected from the images' folder, and images that are
    not all annotated mean plain images (None). With it, every validation image must be in the file:
    DatasetError otherwise, since the user asked for mIoU.
    """
    if not val_paths:
        return None
    try:
        source = open_annotations(val_paths[0].parent, annotations)
    except NoAnnotationsError:
        return None
    annotated = set(source.paths)
    missing = [path for path in val_paths if path not in annotated]
    if missing and annotations is not None:
        raise DatasetError(f"{len(missing)} of the {len(val_paths)} validation images are not in {annotations} "
                           f"(first: {missing[0].name})")
    return None if missing else source


def make_validation(val_paths: list[Path], teacher: SamModel, processor: SamProcessor, batch_size: int = 1,
                    num_workers: int = 0, annotations: str | Path | None = None, precision: str = "fp32"
                    ) -> Validation:
    """mIoU with point prompts when every validation image is annotated (validation_annotations), else embedding MSE
    (computed with features.autocast_for(device, precision); mIoU always in full precision)."""
    source = validation_annotations(val_paths, annotations)
    if source is None:
        if is_main():
            log.info("validation: %d images without annotations, so the best checkpoint and the lr schedule "
                     "follow the embedding MSE to the teacher (lower is better) instead of mIoU", len(val_paths))
        targets = TeacherEmbeddings(teacher, val_paths, processor, batch_size, num_workers, precision)
        return Validation("embedding_mse", False, targets.mse)
    dataset = AnnotatedDataset(source, processor, val_paths)
    return Validation("miou", True, lambda student: _miou(student, processor, dataset))


def _miou(student: SamModel, processor: SamProcessor, dataset: AnnotatedDataset) -> float:
    was_training = student.vision_encoder.training
    student.vision_encoder.eval()
    result = evaluate(student, processor, dataset, prompt="point", progress=False)
    student.vision_encoder.train(was_training)
    return result.miou
