"""Real sample photos that need no download: the ones matplotlib and scikit-image ship with.

Found on disk without importing either library (importing matplotlib costs the app and the CLI ~0.2 s
and is not needed to read a JPEG). Used by the app's examples, the tutorials and the tests.
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from PIL import Image

from slimsam.data.images import open_rgb

# (package, path inside it): Grace Hopper (512x600 JPEG), and astronaut, coffee and Chelsea the cat (PNGs)
SAMPLE_PHOTOS = (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"), ("skimage", "data/astronaut.png"),
                 ("skimage", "data/coffee.png"), ("skimage", "data/chelsea.png"))


def _package_folder(package: str) -> Path | None:
    spec = find_spec(package)  # a top-level name: located, not imported
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def sample_photo_paths() -> list[Path]:
    """The sample photos that are installed here (matplotlib's always; scikit-image's with the app extra)."""
    paths = []
    for package, relative in SAMPLE_PHOTOS:
        folder = _package_folder(package)
        if folder is not None and (folder / relative).is_file():
            paths.append(folder / relative)
    return paths


def sample_photos() -> list[Image.Image]:
    """The sample photos as upright RGB PIL images, Grace Hopper first."""
    return [open_rgb(path) for path in sample_photo_paths()]
