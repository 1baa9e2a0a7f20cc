"""Support for the tutorial notebooks (notebooks/): full vs fast mode, photos, a scratch folder, stand-ins.

Full mode (the default): real Hub weights through `slimsam.load_model`, the user's photos or the bundled
ones, GPU when present. Fast mode (`SLIMSAM_FAST=1`, or `CI` set): tiny random SAMs ("stand-ins") shaped
like scaled-down versions of the real ones, 256-px images, CPU, offline.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from PIL import Image, ImageOps
from transformers import SamModel, SamProcessor

from slimsam.data.images import list_images, open_rgb
from slimsam.data.samples import sample_photos
from slimsam.model.checkpoints import default_device, load_model, save_model
from slimsam.model.configs import tiny_config
from slimsam.model.fast_attention import enable_fast_attention
from slimsam.model.random_weights import random_model
from slimsam.model.stats import encoder_macs_by_module
from slimsam.pruning.steps import prune

FAST_ENV = "SLIMSAM_FAST"
STAND_IN_IMAGE_SIZE = 256
# Tiny shapes that keep the real models' proportions (4 heads; SAM-H is wider and deeper than SAM-B).
_STAND_IN_SHAPES = {
    "sam-b": dict(hidden_size=48, num_layers=4, mlp_dim=192),
    "sam-l": dict(hidden_size=64, num_layers=6, mlp_dim=256),
    "sam-h": dict(hidden_size=80, num_layers=8, mlp_dim=320),
}
# SlimSAM stand-ins: the SAM-B stand-in pruned in both steps at the released ratios (no distillation).
_STAND_IN_RATIOS = {"slimsam-50": 0.5, "slimsam-77": 0.77}
DISPLAY_NAMES = {"sam-b": "SAM-B", "sam-l": "SAM-L", "sam-h": "SAM-H", "slimsam-50": "SlimSAM-50",
                 "slimsam-77": "SlimSAM-77"}
# Prompts that fit the bundled portrait (grace_hopper.jpg, 512x600): a point on the face, a box round the head.
_PORTRAIT_SIZE = (512, 600)
_PORTRAIT_PROMPTS = ([260, 260], [150, 20, 380, 340])


def fast_mode() -> bool:
    """True when SLIMSAM_FAST is set to a true value, or when running under CI."""
    flag = os.environ.get(FAST_ENV, "").strip().lower()
    return flag in ("1", "true", "yes", "on") or bool(os.environ.get("CI"))


def label(name: str, fast: bool) -> str:
    """How figures name a model: "SAM-B", or "SAM-B (tiny random stand-in)" in fast mode."""
    pretty = DISPLAY_NAMES.get(name, name)
    return f"{pretty} (tiny random stand-in)" if fast else pretty


def setup(fast: bool, seed: int = 0) -> str:
    """Seed torch and pick the device: cuda when present in full mode; cpu in fast mode, on one thread
    (tiny models gain nothing from threads, and on a busy machine spinning threads slow them 10-100x)."""
    torch.manual_seed(seed)
    if fast:
        torch.set_num_threads(1)
        return "cpu"
    return default_device()


def work_dir(name: str, root: str | Path = "_work") -> Path:
    """A scratch folder `root/name`, emptied now so that a second run starts from the same state."""
    folder = Path(root) / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def bundled_photos() -> list[Image.Image]:
    """A handful of real photos with no download: matplotlib's Grace Hopper portrait, cropped and mirrored."""
    hopper = sample_photos()[0]
    return [hopper, hopper.crop((120, 0, 400, 360)), ImageOps.mirror(hopper), hopper.crop((0, 250, 512, 600))]


def photos(folder: str | Path | None = None, limit: int | None = None) -> list[Image.Image]:
    """Photos from `folder` (upright RGB, sorted by name), or the bundled ones when folder is None."""
    images = bundled_photos() if folder is None else [open_rgb(path) for path in list_images(folder)]
    return images[:limit]


def photo_files(folder: str | Path | None, work: Path) -> list[Path]:
    """Image files for a training run: those in `folder`, or the bundled photos written to `work`/photos."""
    if folder is not None:
        return list_images(folder)
    target = work / "photos"
    target.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(bundled_photos()):
        image.save(target / f"photo_{i}.jpg", quality=95)
    return list_images(target)


def example_prompts(image: Image.Image) -> tuple[list[int], list[int]]:
    """A point ([x, y]) and a box ([x0, y0, x1, y1]) for `image`: the face and head of the bundled portrait,
    else the image centre and the box around its middle half."""
    if image.size == _PORTRAIT_SIZE:
        return _PORTRAIT_PROMPTS
    w, h = image.size
    return [w // 2, h // 2], [w // 4, h // 4, 3 * w // 4, 3 * h // 4]


def stand_in(name: str, seed: int = 0) -> tuple[SamModel, SamProcessor]:
    """A tiny random SAM shaped like a scaled-down `name` (sam-b, sam-l, sam-h, slimsam-50, slimsam-77).

    Every weight is random (`slimsam.model.random_weights`), relative-position tables included, so the
    masks are noise: stand-ins exercise every step of the method, they do not segment anything. Like
    `load_model`, they use slimsam.model.fast_attention's (exact) encoder attention.
    """
    if name in _STAND_IN_RATIOS:
        model, processor = stand_in("sam-b", seed)
        for target in ("embedding", "bottleneck"):
            prune(model, target, _STAND_IN_RATIOS[name], criterion="magnitude", progress=False)
        return model, processor
    if name not in _STAND_IN_SHAPES:
        raise ValueError(f"no stand-in for {name!r}; choose one of {', '.join([*_STAND_IN_SHAPES, *_STAND_IN_RATIOS])}")
    model, processor = random_model(tiny_config(image_size=STAND_IN_IMAGE_SIZE, **_STAND_IN_SHAPES[name]), seed)
    enable_fast_attention(model)
    return model, processor


def load(name: str, fast: bool, device: str = "cpu") -> tuple[SamModel, SamProcessor]:
    """Full mode: `slimsam.load_model(name)` (Hub or local weights). Fast mode: `stand_in(name)`."""
    if fast:
        model, processor = stand_in(name)
        return model.to(device), processor
    return load_model(name, device=device)


def model_source(name: str, fast: bool, work: Path) -> str:
    """What `slimsam.load_model` and the `slimsam` commands accept as model `name`: in full mode the name itself
    (Hub id, alias or folder); in fast mode the model `load` gives, saved into `work`/name (stand-ins have no name)."""
    if not fast:
        return name
    model, processor = load(name, fast)
    return str(save_model(model, processor, work / name))


def parameter_breakdown(model: SamModel) -> dict[str, int]:
    """Parameters of SAM's three parts (the shared positional embedding is counted with the prompt encoder)."""
    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())
    return {"image encoder": count(model.vision_encoder),
            "prompt encoder": count(model.prompt_encoder, model.shared_image_embedding),
            "mask decoder": count(model.mask_decoder)}


def encoder_breakdown(model: SamModel) -> list[dict]:
    """Per part of the image encoder (patch + position embedding, each block, neck): parameters and MACs.

    MACs are for one image at the model's input size (1024x1024 for SAM).

    Each row: {"part", "params", "linear_macs" (Linear/Conv layers), "attention_macs" (q@k, attn@v, rel-pos),
    "global" (True for the blocks with global attention)}. Counted on a weightless meta-device copy.
    """
    encoder = model.vision_encoder
    macs = encoder_macs_by_module(model)
    global_blocks = set(encoder.config.global_attn_indexes)
    parts = [("patch+pos embed", "patch_embed", encoder.patch_embed, False)]
    parts += [(f"block {i}", f"layers.{i}", layer, i in global_blocks) for i, layer in enumerate(encoder.layers)]
    parts.append(("neck", "neck", encoder.neck, False))
    rows = []
    for label, module_name, module, is_global in parts:
        linear, attention = macs[module_name]["linear_conv"], macs[module_name]["attention"]
        params = sum(p.numel() for p in module.parameters())
        if module is encoder.patch_embed and encoder.pos_embed is not None:
            params += encoder.pos_embed.numel()
        rows.append({"part": label, "params": params,
                     "linear_macs": linear, "attention_macs": attention, "global": is_global})
    return rows
