"""Example photos that ship with matplotlib and scikit-image, and toy-shape photos (the toy SAM's kind, made by
slimsam.data.synthetic: test split, seed 0, images 3, 5 and 8), so the gallery works offline."""
from __future__ import annotations

import shutil
from pathlib import Path

from slimsam.data.samples import sample_photo_paths

TOY_PHOTOS = sorted((Path(__file__).parent / "toy_photos").glob("*.jpg"))


def example_photos(folder: Path) -> list[Path]:
    """Copy the example photos into `folder` and return their paths there.

    Gradio only serves and passes on files under the working or temp directory, not site-packages.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(source, folder / source.name)) for source in [*sample_photo_paths(), *TOY_PHOTOS]]
