"""Support for the tutorial notebooks (notebooks/): full vs fast mode, photos and prompts, a scratch folder, models.

Full mode (the default): real Hub weights through `slimsam.load_model`, the user's photos or the bundled
ones, GPU when present. Fast mode (`SLIMSAM_FAST=1`, or `CI` set): the toy SAM shipped with the package
(`slimsam.load_model("toy-sam")`, a small SamModel trained here on synthetic shapes) plays SAM-B, SlimSAMs are
pruned from it, and the photos are synthetic shapes with their masks (slimsam.data.synthetic, seeded), at the
toy's 256-px input size; CPU, offline. So fast mode's masks are real masks that pruning spoils and
distillation repairs, on a small scale.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import SamModel, SamProcessor

from slimsam.data import synthetic
from slimsam.data.annotations import AnnotatedDataset
from slimsam.data.datasets import train_val_split
from slimsam.data.formats import NoAnnotationsError, open_annotations
from slimsam.data.images import list_images, open_rgb
from slimsam.data.samples import sample_photos
from slimsam.evaluate.agreement import compare_with_teacher
from slimsam.evaluate.miou import compare_on_annotations
from slimsam.evaluate.scores import Comparison
from slimsam.infer.predictor import SamPredictor
from slimsam.model.checkpoints import default_device, load_model, save_model
from slimsam.model.stats import encoder_macs_by_module
from slimsam.pruning.steps import prune

FAST_ENV = "SLIMSAM_FAST"
DISPLAY_NAMES = {"sam-b": "SAM-B", "sam-l": "SAM-L", "sam-h": "SAM-H", "slimsam-50": "SlimSAM-50",
                 "slimsam-77": "SlimSAM-77"}
TOY = "toy-sam"  # slimsam.load_model's alias of the toy SAM, fast mode's SAM-B
TOY_LABEL = "toy SAM (trained on synthetic shapes)"
# The toy SAM learnt from images 0-2999 of split "train" of seed 0 (benchmarks/train_toy_sam.py). Fast mode
# prunes and distils on the next train images and measures on split "test": photos the toy never saw.
TOY_SEED, TOY_TRAINED_ON = 0, 3000
# Fast mode's SlimSAMs: the toy pruned in both steps at the released ratios (no distillation).
TOY_SLIMSAM_RATIOS = {"slimsam-50": 0.5, "slimsam-77": 0.77}
TOY_GRADIENT_PHOTOS = 8  # photos in the disturbed-Taylor gradient pass of those SlimSAMs
# Prompts that fit the bundled portrait (grace_hopper.jpg, 512x600): a point on the face, a box round the head.
_PORTRAIT_SIZE = (512, 600)
_PORTRAIT_PROMPTS = ([260, 260], [150, 20, 380, 340])


def fast_mode() -> bool:
    """True when SLIMSAM_FAST is set to a true value, or when running under CI."""
    flag = os.environ.get(FAST_ENV, "").strip().lower()
    return flag in ("1", "true", "yes", "on") or bool(os.environ.get("CI"))


def label(name: str, fast: bool) -> str:
    """How figures name a model: "SAM-B"; in fast mode "toy SAM (trained on synthetic shapes)" for SAM-B and
    "toy SlimSAM-50 (pruned, not distilled)" for the SlimSAMs."""
    pretty = DISPLAY_NAMES.get(name, name)
    if not fast:
        return pretty
    return TOY_LABEL if name == "sam-b" else f"toy {pretty} (pruned, not distilled)"


def setup(fast: bool, seed: int = 0) -> str:
    """Seed torch and pick the device: cuda when present in full mode; cpu in fast mode, on one thread
    (small models gain little from threads, and on a busy machine spinning threads slow them 10-100x)."""
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


def toy_photo_files(folder: Path, split: str, count: int) -> list[Path]:
    """`count` photos of synthetic shapes with their masks (SA-1B layout: sa_<n>.jpg + .json), written to `folder`.

    split "test": held out from the toy's training; "train": the train images after those it learnt from.
    """
    start = TOY_TRAINED_ON if split == "train" else 0
    return synthetic.write_split(folder, split, count, TOY_SEED, start)


def photo_files(folder: str | Path | None, work: Path, fast: bool = False, count: int | None = 4) -> list[Path]:
    """Image files: those in `folder`; else, written to `work`/photos, `count` toy test photos with their masks
    (fast mode) or the bundled photos (full mode)."""
    if folder is not None:
        return list_images(folder)
    target = work / "photos"
    if fast:
        return toy_photo_files(target, "test", count)
    target.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(bundled_photos()):
        image.save(target / f"photo_{i}.jpg", quality=95)
    return list_images(target)


def training_photos(folder: str | Path | None, work: Path, fast: bool, count: int | None, held_out: int
                    ) -> tuple[list[Path], list[Path]]:
    """(training, held-out) image files for pruning and distillation.

    Fast mode: `count` toy train photos and `held_out` toy test photos, with masks (so distillation validates with
    mIoU). Full mode: `folder`'s photos (or the bundled ones), `held_out` of them set aside (seeded).
    """
    if fast:
        return toy_photo_files(work / "train", "train", count), toy_photo_files(work / "held_out", "test", held_out)
    return train_val_split(photo_files(folder, work), val_size=held_out)


def example(path: Path) -> tuple[Image.Image, list[float], list[float], np.ndarray | None]:
    """The photo at `path` with a point ([x, y]) and a box ([x0, y0, x1, y1]) to prompt it, and the mask they ask for.

    Annotated photos (any format of slimsam.data.formats): the largest annotated object's point and box, and its
    (H, W) bool mask. Otherwise no mask, and the face and head of the bundled portrait, or the image centre and
    the box around its middle half.
    """
    image = open_rgb(path)
    try:
        annotated = AnnotatedDataset(open_annotations(path.parent), processor=None, paths=[path]).load(0)
    except NoAnnotationsError:
        annotated = None
    if annotated is not None and len(annotated.masks):
        largest = int(np.argmax(annotated.masks.sum(axis=(1, 2))))
        return image, annotated.points[largest].tolist(), annotated.boxes[largest].tolist(), annotated.masks[largest]
    if image.size == _PORTRAIT_SIZE:
        return (image, *_PORTRAIT_PROMPTS, None)
    w, h = image.size
    return image, [w // 2, h // 2], [w // 4, h // 4, 3 * w // 4, 3 * h // 4], None


def toy_slimsam(ratio: float) -> tuple[SamModel, SamProcessor]:
    """The toy SAM pruned in both SlimSAM steps at `ratio` (disturbed Taylor on TOY_GRADIENT_PHOTOS unseen toy
    train photos), not distilled."""
    model, processor = load_model(TOY)
    images = [synthetic.sample(TOY_SEED, "train", TOY_TRAINED_ON + i).image for i in range(TOY_GRADIENT_PHOTOS)]
    pixels = [processor(images=image, return_tensors="pt")["pixel_values"] for image in images]
    for target in ("embedding", "bottleneck"):
        prune(model, target, ratio, pixel_values=pixels, progress=False)
    return model.eval(), processor


def load(name: str, fast: bool, device: str = "cpu") -> tuple[SamModel, SamProcessor]:
    """Full mode: `slimsam.load_model(name)` (Hub or local weights). Fast mode: the toy SAM for sam-b,
    `toy_slimsam` for slimsam-50 and slimsam-77; there is no toy SAM-L or SAM-H."""
    if not fast:
        return load_model(name, device=device)
    if name == "sam-b":
        return load_model(TOY, device=device)
    if name in TOY_SLIMSAM_RATIOS:
        model, processor = toy_slimsam(TOY_SLIMSAM_RATIOS[name])
        return model.to(device), processor
    raise ValueError(f"fast mode has no {DISPLAY_NAMES.get(name, name)}: the toy SAM plays SAM-B, and the "
                     f"SlimSAMs ({', '.join(TOY_SLIMSAM_RATIOS)}) are pruned from it")


def model_source(name: str, fast: bool, work: Path) -> str:
    """What `slimsam.load_model` and the `slimsam` commands accept as model `name`: in full mode the name itself
    (Hub id, alias or folder); in fast mode "toy-sam" for sam-b, else the model `load` gives, saved into
    `work`/name."""
    if not fast:
        return name
    if name == "sam-b":
        return TOY
    model, processor = load(name, fast)
    return str(save_model(model, processor, work / name))


def mask_quality(models: dict[str, tuple[SamModel, SamProcessor]], paths: list[Path], teacher: str,
                 points: int = 9) -> Comparison:
    """How good each model's masks are on the photos `paths`: point-prompt mIoU when they are annotated (any
    format of slimsam.data.formats), else agreement with the model named `teacher` (`points` grid points per
    photo, and boxes around the teacher's masks; the teacher scores 1 against itself)."""
    try:
        source = open_annotations(paths[0].parent)
    except NoAnnotationsError:
        predictors = {name: SamPredictor(*model) for name, model in models.items()}
        return compare_with_teacher(predictors[teacher], predictors, paths, points=points, progress=False,
                                    teacher_name=teacher)
    dataset = AnnotatedDataset(source, models[teacher][1], paths)
    return compare_on_annotations(models, dataset, prompt="point", progress=False)


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
