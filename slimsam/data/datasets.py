"""Datasets for distillation: plain image folders, read robustly, split into training and validation.

Images go through the model's own `SamProcessor` (longest side to S, pad to S x S, normalise), so every
model sees exactly what `SamProcessor` would give it. A file that cannot be read yields `None` (logged);
`collate_pixels` drops and counts those, so one bad file never stops a long run.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import SamProcessor

from slimsam.data.images import read_pixel_values


def train_val_split(paths: list[Path], val_size: int | float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split into (train, val), each in the input's order; the same paths and seed give the same split.

    val_size: a count (int, 0 <= n < len(paths)) or a fraction (float, 0 < f < 1; at least one image).
    """
    total = len(paths)
    if isinstance(val_size, float):
        if not 0 < val_size < 1:
            raise ValueError(f"val fraction must be between 0 and 1, got {val_size}")
        count = max(1, round(total * val_size))
    else:
        count = val_size
    if not 0 <= count < total:
        raise ValueError(f"cannot hold out {count} of {total} images for validation and still train on some")
    chosen = set(random.Random(seed).sample(range(total), count))
    train = [p for i, p in enumerate(paths) if i not in chosen]
    val = [p for i, p in enumerate(paths) if i in chosen]
    return train, val


class ImageDataset(Dataset):
    """Images for distillation: item i is a (3, S, S) float tensor, or None when the file is unreadable."""

    def __init__(self, paths: list[Path], processor: SamProcessor) -> None:
        self.paths = list(paths)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        pixels = read_pixel_values(self.paths[index], self.processor)
        return None if pixels is None else pixels[0]


def collate_pixels(batch: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, int]:
    """DataLoader collate_fn for ImageDataset: ((B, 3, S, S) readable images or None if none, skipped count)."""
    images = [item for item in batch if item is not None]
    return (torch.stack(images) if images else None), len(batch) - len(images)
