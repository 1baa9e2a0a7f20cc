"""The annotation formats this project reads, and how the format of a dataset is found from the arguments.

    source = open_annotations("data/")                               # SA-1B or mask folders, detected
    source = open_annotations("images/", "instances.json")           # COCO
    dataset = AnnotatedDataset(source, processor)                    # slimsam.data.annotations

An annotation file means COCO. Without one, the folder's images say it: `sa_<n>.jpg` with `sa_<n>.json` beside
it is SA-1B, `photo.jpg` with a folder `photo/` of PNGs beside it is a mask folder. A folder that holds both
kinds is refused (which images belong to which would be a guess), and so is one that holds neither.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slimsam.data import coco, mask_folder, sa1b
from slimsam.data.annotations import AnnotationSource, DatasetError
from slimsam.data.images import list_images


class NoAnnotationsError(DatasetError):
    """A folder of images with no annotations in any format (fine for distillation, not for mIoU)."""


@dataclass(frozen=True)
class Format:
    """One annotation format: its name, its layout in one line, and how to open a dataset in it."""

    name: str
    layout: str
    open: Callable[[Path, Path | None], AnnotationSource]  # (image folder, annotation file or None)
    annotates: Callable[[Path], bool] | None  # per-image formats: whether an image has its annotations beside it


FORMATS = {known.name: known for known in (
    Format("sa1b", sa1b.LAYOUT, lambda folder, _: sa1b.SA1B(folder), sa1b.annotates),
    Format("masks", mask_folder.LAYOUT, lambda folder, _: mask_folder.MaskFolder(folder), mask_folder.annotates),
    Format("coco", coco.LAYOUT, coco.Coco, None),
)}


def layouts() -> str:
    return "; ".join(known.layout for known in FORMATS.values())


def detect_format(data: str | Path, annotations: str | Path | None = None) -> Format:
    """The format of the dataset in folder `data` (with an annotation file, COCO); DatasetError if unclear."""
    if annotations is not None:
        return FORMATS["coco"]
    images = list_images(data)
    found = {known.name: sum(map(known.annotates, images)) for known in FORMATS.values() if known.annotates}
    present = {name: count for name, count in found.items() if count}
    if len(present) > 1:
        counts = "; ".join(f"{count} images in {FORMATS[name].layout}" for name, count in present.items())
        raise DatasetError(f"{data} mixes annotation formats ({counts}); keep one format per folder")
    if not present:
        stray = sorted(p.name for p in Path(data).glob("*.json"))
        hint = f" ({stray[0]} is not beside an image of the same name: if it is COCO, pass --annotations)" \
            if stray else ""
        raise NoAnnotationsError(f"{data} has {len(images)} images but no annotations{hint}; annotated data is "
                                 f"one of: {layouts()}")
    return FORMATS[next(iter(present))]


def open_annotations(data: str | Path, annotations: str | Path | None = None) -> AnnotationSource:
    """The annotated dataset in folder `data` (and `annotations`, a COCO file), its format detected."""
    return detect_format(data, annotations).open(Path(data), None if annotations is None else Path(annotations))
