"""Example photos that ship with matplotlib and scikit-image, so the gallery works offline."""
from __future__ import annotations

import shutil
from pathlib import Path

from slimsam.data.samples import sample_photo_paths


def example_photos(folder: Path) -> list[Path]:
    """Copy the example photos into `folder` and return their paths there.

    Gradio only serves and passes on files under the working or temp directory, not site-packages.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(source, folder / source.name)) for source in sample_photo_paths()]
