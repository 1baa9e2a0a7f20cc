"""Example photos that ship with matplotlib and scikit-image, so the gallery works offline."""
from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from matplotlib import cbook

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea")


def example_photos(folder: Path) -> list[Path]:
    """Copy the example photos into `folder` and return their paths there.

    Gradio only serves and passes on files under the working or temp directory, not site-packages.
    """
    sources = [Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]
    sources += [Path(str(files("skimage.data") / f"{name}.png")) for name in SKIMAGE_PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(source, folder / source.name)) for source in sources]
