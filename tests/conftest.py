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
from PIL import Image  # noqa: E402
from transformers import SamModel  # noqa: E402

from slimsam.data.samples import sample_photos  # noqa: E402
from slimsam.model.configs import tiny_config  # noqa: E402
from slimsam.model.random_weights import random_model  # noqa: E402


def make_tiny_model(seed: int = 0, **config_kwargs) -> SamModel:
    """A tiny random SAM (slimsam.model.random_weights: every weight random, rel-pos and pos_embed included)."""
    return random_model(tiny_config(**config_kwargs), seed)[0]


def save_tiny_model(folder, seed: int = 0, **config_kwargs):
    model, processor = random_model(tiny_config(**config_kwargs), seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def real_photos() -> list[Image.Image]:
    """Real photographs that ship with matplotlib (no download): Grace Hopper (512x600) and a crop of it
    at another aspect ratio."""
    hopper = sample_photos()[0]
    return [hopper, hopper.crop((100, 50, 500, 350))]


def require_or_fail_in_ci(available: bool, message: str) -> None:
    """For tests that need something outside Python (a browser, Node packages): skip here without it, but fail
    under CI, where .ci/run installs it (a skipped test must not count as passing there)."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"this test must run in CI: {message}")
    pytest.skip(message)


@pytest.fixture
def tiny_model() -> SamModel:
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_sam"))


@pytest.fixture(scope="session")
def tiny_onnx_export(tiny_model_dir, tmp_path_factory):
    """tiny_model_dir exported by `slimsam export --format onnx --quantize none int8` (about a minute): the folder
    and what the command printed."""
    import contextlib
    import io

    from slimsam.cli.main import main

    folder = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", str(tiny_model_dir), "--format", "onnx", "--quantize", "none", "int8",
                     "--out", str(folder)]) == 0
    return folder, stdout.getvalue()


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
