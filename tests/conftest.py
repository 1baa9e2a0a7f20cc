"""Shared fixtures: tiny random SAMs saved like real checkpoints, and folders of real photos.

Everything is offline: HF_HUB_OFFLINE=1 makes Hub ids fail fast instead of retrying a network
that is not there.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib import cbook  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import SamModel  # noqa: E402

from slimsam.configs import processor_for, tiny_config  # noqa: E402


def make_tiny_model(seed: int = 0, **config_kwargs) -> SamModel:
    """A tiny SAM with every weight random, rel-pos and pos_embed included (SAM inits those to zero)."""
    torch.manual_seed(seed)
    model = SamModel(tiny_config(**config_kwargs))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(std=0.1)
    return model.eval()


def save_tiny_model(folder, seed: int = 0, **config_kwargs):
    model = make_tiny_model(seed, **config_kwargs)
    model.save_pretrained(folder)
    processor_for(model.config).save_pretrained(folder)
    return folder


def real_photos() -> list[Image.Image]:
    """Real photographs that ship with matplotlib (no download)."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    # A second, different photo: a crop of the first at another aspect ratio.
    return [hopper, hopper.crop((100, 50, 500, 350))]


@pytest.fixture
def tiny_model() -> SamModel:
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_sam"))


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i, photo in enumerate(real_photos()):
        photo.save(folder / f"photo_{i}.jpg")
    return folder


@pytest.fixture
def random_pixels():
    """A few (1, 3, 64, 64) normalised images for the tiny config."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, 3, 64, 64, generator=generator) for _ in range(3)]


@pytest.fixture
def rgb_array():
    return np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
