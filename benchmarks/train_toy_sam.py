"""Train a toy SAM (transformers SamModel, random init) on the synthetic SA-1B-style data, on CPU.

SAM's structure is kept (12-head ViT with windowed + global blocks, relative positions, neck,
prompt encoder, two-way mask decoder) at a size that trains on 2 CPU cores in under an hour and
stores in <= 10 MB as float32 safetensors. SAM's recipe, in small: per image, prompts sampled from
its masks (one positive point; the mask's jittered box; point + 1-2 extra positive / negative
points); loss: dice on the low-res (S / 4) mask logits against each mask's area fraction per low-res
pixel (SAM adds 20 x focal: from a random init it parks the decoder at an all-background mask, so
`--focal-weight` is 0 by default), plus MSE between the IoU head and each mask's actual IoU; for single points the three multimask outputs back-propagate only the lowest-loss one,
and mask token 0 (multimask_output=False) is trained on every prompt type.

Evaluation is the project's (slimsam.evaluate.miou, the SlimSAM paper's protocol): per annotation its
point_coords as one positive point (or its bbox), multimask_output=False, IoU averaged per image, then
over images.

    python benchmarks/train_toy_sam.py --seed 0 --out /tmp/toy/toy-sam   (the command of README's toy SAM)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

from slimsam.data import synthetic as SYN
from slimsam.data.annotations import AnnotatedDataset
from slimsam.data.formats import open_annotations
from slimsam.data.images import open_rgb
from slimsam.data.sa1b import SA1B
from slimsam.evaluate.miou import evaluate as project_miou

GENERATOR = Path(SYN.__file__)


# ----------------------------------------------------------------------------- model


def toy_config(args: argparse.Namespace) -> SamConfig:
    """SamConfig of the toy model: 12 heads, windowed + global blocks, relative positions."""
    size, dim = args.image_size, args.decoder_dim
    vision = dict(hidden_size=args.hidden, num_hidden_layers=args.depth, num_attention_heads=12,
                  mlp_dim=4 * args.hidden, image_size=size, patch_size=16, output_channels=dim,
                  num_pos_feats=dim // 2, window_size=args.window, global_attn_indexes=list(args.global_blocks),
                  use_abs_pos=True, use_rel_pos=True, initializer_range=0.02)
    prompt = dict(hidden_size=dim, image_size=size, patch_size=16, mask_input_channels=16)
    decoder = dict(hidden_size=dim, mlp_dim=args.decoder_mlp, num_attention_heads=8, num_hidden_layers=2,
                   iou_head_hidden_dim=args.iou_hidden, iou_head_depth=3, num_multimask_outputs=3)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder,
                     initializer_range=0.02)


def make_processor(size: int) -> SamProcessor:
    """SAM's processor at input size S: longest side to S, pad to S x S; masks at S / 4."""
    image_processor = SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                           mask_size={"longest_edge": size // 4},
                                           mask_pad_size={"height": size // 4, "width": size // 4})
    return SamProcessor(image_processor=image_processor)


def decode_all(model: SamModel, embeddings: torch.Tensor, points=None, labels=None, boxes=None):
    """All 4 mask outputs of the decoder in one pass (SamModel.forward slices 1..3 or 0 of them).

    embeddings: (B, C, s, s); points: (B, K, n, 2) and labels (B, K, n), or boxes (B, K, 4), in the
    S x S input frame. Returns logits (B, K, 4, S/4, S/4) and IoU predictions (B, K, 4)."""
    decoder = model.mask_decoder
    sparse, dense = model.prompt_encoder(input_points=points, input_labels=labels, input_boxes=boxes,
                                         input_masks=None)
    batch, channels, height, width = embeddings.shape
    prompts = sparse.shape[1]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], 0).repeat(batch, prompts, 1, 1)
    tokens = torch.cat([tokens, sparse], 2)
    image = (embeddings + dense).repeat_interleave(prompts, 0)
    position = model.get_image_wide_positional_embeddings().repeat(batch * prompts, 1, 1, 1)
    queries, keys = decoder.transformer(point_embeddings=tokens, image_embeddings=image,
                                        image_positional_embeddings=position, attention_similarity=None)
    keys = keys.transpose(2, 3).reshape(batch * prompts, channels, height, width)
    upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(keys)))
    upscaled = decoder.activation(decoder.upscale_conv2(upscaled))
    hyper = torch.stack([mlp(queries[:, :, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 2)
    upscaled = upscaled.reshape(batch, prompts, upscaled.shape[1], -1)
    masks = (hyper @ upscaled).reshape(batch, prompts, -1, 4 * height, 4 * width)
    return masks, decoder.iou_prediction_head(queries[:, :, 0])


@torch.no_grad()
def check_decode_all(model: SamModel, size: int) -> None:
    """decode_all agrees with SamModel.forward (single and multimask) on random inputs."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, model.config.vision_config.output_channels, size // 16, size // 16,
                             generator=generator)
    points = torch.rand(2, 3, 2, 2, generator=generator) * size
    labels = torch.tensor([1, 0]).repeat(2, 3, 1)
    masks, ious = decode_all(model, embeddings, points, labels)
    for multimask, select in ((False, slice(0, 1)), (True, slice(1, None))):
        out = model(image_embeddings=embeddings, input_points=points, input_labels=labels,
                    multimask_output=multimask)
        assert torch.allclose(out.pred_masks, masks[:, :, select], atol=1e-4), "decode_all != SamModel masks"
        assert torch.allclose(out.iou_scores, ious[:, :, select], atol=1e-5), "decode_all != SamModel IoU"


# ----------------------------------------------------------------------------- data on disk


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ensure_split(folder: Path, split: str, count: int, seed: int, workers: int, writer=None) -> Path:
    """Write `count` images of `split` into `folder` unless a matching _meta.json says they are there.
    writer(folder, split, index, seed) writes one image (default: the synthetic generator's)."""
    writer = writer or SYN.write_image
    meta = {"split": split, "count": count, "seed": seed, "writer": writer.__name__,
            "generator_sha256": _file_sha256(GENERATOR if writer is SYN.write_image else __file__)}
    meta_path = folder / "_meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written back only once every image is there
    jobs = [(folder, split, index, seed) for index in range(count)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.starmap(writer, jobs, chunksize=8)
    meta_path.write_text(json.dumps(meta))
    return folder


def split_paths(folder: Path) -> list[Path]:
    """sa_<n>.jpg files of a split folder, in order of n."""
    return sorted(folder.glob("sa_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))


def frame_masks(masks: np.ndarray, reshaped: tuple[int, int], size: int) -> np.ndarray:
    """(N, S, S) bool: masks (N, H, W) resized (PIL bilinear, >= 0.5, as the image) to reshaped (h, w),
    zero-padded bottom / right to S x S: the model's input frame."""
    out = np.zeros((len(masks), size, size), bool)
    for k, mask in enumerate(masks):
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize(reshaped[::-1], Image.BILINEAR)
        out[k, :reshaped[0], :reshaped[1]] = np.asarray(small) >= 128
    return out


def _cache_one(source: SA1B, path: Path, processor: SamProcessor, size: int):
    image = open_rgb(path)
    masks = source.read(path, (image.height, image.width)).masks
    encoded = processor(images=image, return_tensors="pt")
    reshaped = tuple(int(v) for v in encoded["reshaped_input_sizes"][0])
    framed = frame_masks(masks, reshaped, size)
    framed = framed[framed.reshape(len(framed), -1).sum(1) >= 4]
    return encoded["pixel_values"][0].half(), reshaped, np.packbits(framed.reshape(len(framed), -1), axis=1)


def build_cache(folder: Path, processor: SamProcessor, size: int) -> dict:
    """Training tensors of a split, cached in folder/_cache_<S>.pt: pixels (N, 3, S, S) float16 as the
    processor makes them, reshaped (N, 2) ints (h, w), packed (M, S*S/8) uint8 masks in the input frame,
    offsets (N + 1,): image i owns packed rows offsets[i]:offsets[i + 1]."""
    cache_path = folder / f"_cache_{size}.pt"
    meta = (folder / "_meta.json").read_text()
    if cache_path.is_file():
        cache = torch.load(cache_path, weights_only=False)
        if cache["meta"] == meta:
            return cache
    count, source = json.loads(meta)["count"], SA1B(folder)
    items = [_cache_one(source, path, processor, size) for path in split_paths(folder)[:count]]
    counts = [len(item[2]) for item in items]
    cache = {"meta": meta, "pixels": torch.stack([item[0] for item in items]),
             "reshaped": torch.tensor([item[1] for item in items]),
             "packed": np.concatenate([item[2] for item in items]), "offsets": np.cumsum([0] + counts)}
    torch.save(cache, cache_path)
    return cache


# ----------------------------------------------------------------------------- batches and prompts


class Batches:
    """Seeded training batches from a cache: epochs of shuffled images, K masks per image (with
    replacement when an image has fewer), random horizontal flips of the image's valid region."""

    def __init__(self, cache: dict, images: int, masks: int, seed: int) -> None:
        self.cache, self.images, self.masks = cache, images, masks
        self.rng = np.random.default_rng([seed, 7])
        self.order: list[int] = []
        self.size = cache["pixels"].shape[-1]

    def _next_images(self) -> list[int]:
        while len(self.order) < self.images:
            self.order += self.rng.permutation(len(self.cache["pixels"])).tolist()
        chosen, self.order = self.order[:self.images], self.order[self.images:]
        return chosen

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixels (B, 3, S, S) float32, targets (B, K, S, S) bool, coverage (B, K, S/4, S/4) float32:
        the targets' area fraction in each low-res mask pixel, valid (B, 2) reshaped (h, w))."""
        chosen, size = self._next_images(), self.size
        pixels = self.cache["pixels"][chosen].float()
        valid = self.cache["reshaped"][chosen]
        targets = np.zeros((len(chosen), self.masks, size, size), bool)
        for b, i in enumerate(chosen):
            start, stop = self.cache["offsets"][i], self.cache["offsets"][i + 1]
            pick = self.rng.choice(stop - start, self.masks, replace=stop - start < self.masks)
            rows = np.unpackbits(self.cache["packed"][start + pick], axis=1, count=size * size)
            targets[b] = rows.reshape(self.masks, size, size).astype(bool)
            if self.rng.random() < 0.5:
                h, w = valid[b].tolist()
                pixels[b, :, :h, :w] = pixels[b, :, :h, :w].flip(-1)
                targets[b, :, :h, :w] = targets[b, :, :h, :w][..., ::-1]
        targets = torch.from_numpy(targets)
        coverage = F.avg_pool2d(targets.float().flatten(0, 1)[:, None], 4).reshape(*targets.shape[:2], size // 4, -1)
        return pixels, targets, coverage, valid


def sample_pixels(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, K, count, 2) xy points drawn uniformly (with replacement) from the non-zero pixels of
    weights (B, K, S, S), each jittered uniformly inside its pixel (SAM's index convention)."""
    batch, prompts, size, _ = weights.shape
    index = torch.multinomial(weights.reshape(-1, size * size).float(), count, replacement=True,
                              generator=generator)
    xy = torch.stack([index % size, index // size], -1).float()
    xy = xy + torch.rand(xy.shape, generator=generator) - 0.5
    return xy.reshape(batch, prompts, count, 2)


def mask_boxes(targets: torch.Tensor) -> torch.Tensor:
    """(B, K, 4) XYXY pixel extents (x1, y1 exclusive) of non-empty masks (B, K, S, S)."""
    size = targets.shape[-1]
    rows, cols = targets.any(3), targets.any(2)  # (B, K, S)
    first = lambda line: line.float().argmax(-1)
    last = lambda line: size - line.flip(-1).float().argmax(-1)
    return torch.stack([first(cols), first(rows), last(cols), last(rows)], -1).float()


def jitter_boxes(boxes: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """SAM's box noise, scaled to S: std 7 % of the side, at most 6 * S / 256 pixels per coordinate."""
    side = torch.cat([boxes[..., 2:] - boxes[..., :2]] * 2, -1)
    noise = (torch.randn(boxes.shape, generator=generator) * 0.07 * side).clamp(-6 * size / 256, 6 * size / 256)
    noisy = (boxes + noise).clamp(0, size)
    return torch.cat([torch.minimum(noisy[..., :2], noisy[..., 2:] - 1), noisy[..., 2:]], -1)


def negative_region(targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K, S, S) bool: inside the image, outside the mask, within its box grown by 25 % + 4 px
    (the whole image outside the mask where that region is empty)."""
    size = targets.shape[-1]
    boxes = mask_boxes(targets)
    grow = torch.cat([-(boxes[..., 2:] - boxes[..., :2]) * 0.25 - 4] * 2, -1) * torch.tensor([1, 1, -1, -1])
    x0, y0, x1, y1 = (boxes + grow).unbind(-1)
    line = torch.arange(size, dtype=torch.float32)
    inside = (line >= y0[..., None]) & (line < y1[..., None])
    inside = inside[..., :, None] & ((line >= x0[..., None]) & (line < x1[..., None]))[..., None, :]
    image = (line[:, None] < valid[:, None, None, 0:1]) & (line[None, :] < valid[:, None, None, 1:2])
    outside = ~targets & image
    near = outside & inside
    return torch.where(near.flatten(2).any(-1)[..., None, None], near, outside)


def extra_points(targets: torch.Tensor, valid: torch.Tensor, first: torch.Tensor, generator: torch.Generator):
    """Point prompts of 3 points: `first` (B, K, 1, 2) positive, then 2 more, each positive (p = 0.5,
    uniform in the mask) or negative (uniform in `negative_region`). Returns points (B, K, 3, 2), labels."""
    positive = sample_pixels(targets, 2, generator)
    negative_weights = negative_region(targets, valid)
    has_negative = negative_weights.flatten(2).any(-1)  # (B, K): a mask filling the whole image has none
    negative = sample_pixels(torch.where(has_negative[..., None, None], negative_weights, targets), 2, generator)
    is_positive = (torch.rand(positive.shape[:3], generator=generator) < 0.5) | ~has_negative[..., None]
    points = torch.where(is_positive[..., None], positive, negative)
    return torch.cat([first, points], 2), torch.cat([torch.ones_like(is_positive[..., :1]), is_positive], 2).long()


# ----------------------------------------------------------------------------- losses and steps


def mask_losses(logits: torch.Tensor, coverage: torch.Tensor, focal_weight: float = 20.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask SAM loss and actual IoU at the low-res mask resolution (S / 4). logits: (..., s, s);
    coverage: (..., s, s) soft targets, the mask's area fraction per low-res pixel (so the zero
    crossing of the logits, which post_process_masks interpolates bilinearly, can sit between
    pixels). Returns (focal_weight x focal + dice, IoU of logits > 0 vs coverage >= 0.5), each (...).
    Focal: alpha 0.25, gamma 2, mean over pixels; dice on the probabilities."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, coverage, reduction="none")
    p_t = prob * coverage + (1 - prob) * (1 - coverage)
    alpha = 0.25 * coverage + 0.75 * (1 - coverage)
    focal = (alpha * ce * (1 - p_t) ** 2).mean((-1, -2))
    dice = 1 - (2 * (prob * coverage).sum((-1, -2)) + 1) / (prob.sum((-1, -2)) + coverage.sum((-1, -2)) + 1)
    with torch.no_grad():
        hard, truth = logits > 0, coverage >= 0.5
        iou = (hard & truth).sum((-1, -2)) / (hard | truth).sum((-1, -2)).clamp(min=1)
    return focal_weight * focal + dice, iou


def prompt_loss(model, embeddings, coverage, all_masks: bool, focal_weight: float,
                **prompts) -> tuple[torch.Tensor, dict]:
    """Loss of one prompt type for coverage targets (B, k, s, s). all_masks: single-point prompts, where
    mask 0 and the best of masks 1..3 both count; otherwise mask 0 only. IoU head: MSE on the masks used."""
    logits, iou_pred = decode_all(model, embeddings, **prompts)
    if not all_masks:
        logits, iou_pred = logits[:, :, :1], iou_pred[:, :, :1]
    loss, iou = mask_losses(logits, coverage[:, :, None].expand_as(logits), focal_weight)
    mask_loss = loss[..., 0].mean()
    if all_masks:
        mask_loss = mask_loss + loss[..., 1:].min(-1).values.mean()
    iou_loss = F.mse_loss(iou_pred, iou)
    return mask_loss + iou_loss, {"mask": mask_loss.item(), "iou_mse": iou_loss.item(), "iou0": iou[..., 0].mean().item()}


def train_step(model, batch, generator: torch.Generator, boxes_per_image: int,
               focal_weight: float = 20.0) -> tuple[torch.Tensor, dict]:
    """SAM's loss on one batch of K masks per image: a single point on each (multimask + mask 0); a
    jittered box on the first `boxes_per_image`, 3 points on the others (mask 0)."""
    pixels, targets, coverage, valid = batch
    size, split = targets.shape[-1], boxes_per_image
    embeddings = model.vision_encoder(pixels).last_hidden_state
    first = sample_pixels(targets, 1, generator)
    ones = torch.ones(first.shape[:3], dtype=torch.long)
    point, point_log = prompt_loss(model, embeddings, coverage, True, focal_weight, points=first, labels=ones)
    boxes = jitter_boxes(mask_boxes(targets[:, :split]), size, generator)
    box, box_log = prompt_loss(model, embeddings, coverage[:, :split], False, focal_weight,
                                boxes=boxes)
    points, labels = extra_points(targets[:, split:], valid, first[:, split:], generator)
    multi, multi_log = prompt_loss(model, embeddings, coverage[:, split:], False, focal_weight,
                                     points=points, labels=labels)
    logs = {f"{name}_{key}": value for name, log in (("point", point_log), ("box", box_log), ("multi", multi_log))
            for key, value in log.items()}
    return point + box + multi, logs


def focal_weight(step: int, start: int, ramp: int, full: float = 20.0) -> float:
    """0 for the first `start` steps (dice only), then linear up to SAM's 20 over `ramp` steps. From
    a random init, focal from step 0 (even at weight 5) parks the decoder at a prompt-independent
    all-background mask it does not leave; dice alone first makes the masks follow the prompts."""
    return full * min(1.0, max(0.0, (step - start) / max(1, ramp)))


def learning_rate(step: int, steps: int, peak: float, warmup: int, floor: float = 0.02) -> float:
    """Linear warmup to `peak`, then cosine decay to floor x peak at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: SamModel, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and kernels only (not norms, biases, position tables, tokens)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim < 2 or id(parameter) in tables or "pos" in name
        (plain if no_decay else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


# ----------------------------------------------------------------------------- evaluation


def evaluate(model: SamModel, processor: SamProcessor, folder: Path, prompt: str, limit: int | None = None) -> dict:
    """mIoU over the images of `folder` (the first `limit`), prompt 'point' or 'box': slimsam.evaluate.miou."""
    model.eval()
    source = open_annotations(folder)
    dataset = AnnotatedDataset(source, processor, split_paths(folder)[:limit])
    result = project_miou(model, processor, dataset, prompt, progress=False)
    return {"miou": result.miou, "images": result.images, "annotations": result.annotations}


# ----------------------------------------------------------------------------- unseen simple shapes


def simple_shapes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A held-out style the model never trains on: 1-4 solid axis-aligned ellipses / rectangles and
    triangles over a smooth two-colour gradient with mild noise (PIL drawing, not the generator).
    Returns ((H, W, 3) uint8, (N, H, W) bool visible masks, (N, 2) xy points: the mask pixel
    nearest the mask's centroid)."""
    height, width = (int(v) for v in rng.integers(200, 561, 2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    low, high = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    canvas = low + (high - low) * ramp[..., None] + rng.normal(0, 3, (height, width, 3))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    label = Image.new("L", (width, height), 0)
    drawn = int(rng.integers(1, 5))
    for k in range(drawn):
        kind, geometry, colour = _simple_object(rng, (height, width), (low, high))
        for target, value in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(label), k + 1)):
            getattr(target, kind)(geometry, fill=value)
    labels = np.asarray(label)
    masks = np.stack([labels == k + 1 for k in range(drawn)])
    masks = masks[masks.reshape(drawn, -1).sum(1) >= 0.01 * height * width]
    points = np.array([_nearest_to_centroid(m) for m in masks], np.float32).reshape(-1, 2)
    return np.asarray(image), masks, points


def _simple_object(rng: np.random.Generator, size: tuple[int, int], ends: tuple[np.ndarray, np.ndarray]):
    """(ImageDraw method, its xy argument, RGB colour) of one solid ellipse / rectangle / triangle of
    20-60 % of the shorter side, coloured >= 60 (RGB distance) away from both gradient `ends`."""
    height, width = size
    side = min(size) * rng.uniform(0.2, 0.6)
    x0, y0 = rng.uniform(-0.1 * side, width - 0.9 * side), rng.uniform(-0.1 * side, height - 0.9 * side)
    w, h = side * rng.uniform(0.6, 1.0), side * rng.uniform(0.6, 1.0)
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if min(np.linalg.norm(colour - end) for end in ends) >= 60:
            break
    kind = ("ellipse", "rectangle", "polygon")[int(rng.integers(3))]
    if kind == "polygon":  # a triangle
        geometry = [(x0 + w * rng.uniform(0, 0.3), y0 + h), (x0 + w, y0 + h * rng.uniform(0.5, 1)),
                    (x0 + w * rng.uniform(0.3, 0.7), y0)]
    else:
        geometry = [x0, y0, x0 + w, y0 + h]
    return kind, geometry, tuple(int(v) for v in colour)


def _nearest_to_centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return float(xs[k]), float(ys[k])


def write_simple_shapes(folder: Path, split: str, index: int, seed: int) -> None:
    """sa_<index>.jpg/.json of the unseen simple-shapes set (redraws until an object is annotated)."""
    rng = np.random.default_rng([seed, 99, index])
    masks = np.zeros((0,))
    while len(masks) == 0:
        image, masks, points = simple_shapes(rng)
    path = folder / f"sa_{index}.jpg"
    Image.fromarray(image).save(path, quality=92)
    record = {"image": {"image_id": index, "width": image.shape[1], "height": image.shape[0],
                        "file_name": path.name},
              "annotations": [SYN.annotation(m, p, index * 100 + k) for k, (m, p) in enumerate(zip(masks, points))]}
    path.with_suffix(".json").write_text(json.dumps(record))


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--seed", type=int, default=0, help="seeds the data splits, the init and the training stream")
    add("--threads", type=int, default=1, help="torch.set_num_threads (1 is fastest on the shared 2 cores)")
    add("--data", type=Path, default=Path("/tmp/toy/data"))
    add("--out", type=Path, default=Path("/tmp/toy/toy-sam"))
    add("--log", type=Path, default=Path("/tmp/toy/logs/train.log"))
    add("--train-count", type=int, default=3000)
    add("--val-count", type=int, default=48)
    add("--test-count", type=int, default=200)
    add("--unseen-count", type=int, default=100)
    add("--workers", type=int, default=2, help="processes writing the data splits")
    add("--steps", type=int, default=1500)
    add("--batch", type=int, default=8, help="images per step")
    add("--masks-per-image", type=int, default=4, help="K masks per image: a point prompt on each")
    add("--boxes-per-image", type=int, default=2, help="of the K, box prompts on these, 3 points on the rest")
    add("--lr", type=float, default=8e-4)
    add("--warmup", type=int, default=60)
    add("--weight-decay", type=float, default=0.05)
    add("--clip", type=float, default=1.0)
    add("--focal-weight", type=float, default=0.0, help="SAM's focal weight (20) after the ramp; 0: dice only")
    add("--focal-start", type=int, default=50, help="steps of dice-only loss before focal comes in")
    add("--focal-ramp", type=int, default=100, help="steps over which the focal weight rises to --focal-weight")
    add("--image-size", type=int, default=256)
    add("--hidden", type=int, default=144)
    add("--depth", type=int, default=6)
    add("--window", type=int, default=8)
    add("--global-blocks", type=int, nargs="+", default=[2, 5])
    add("--decoder-dim", type=int, default=128)
    add("--decoder-mlp", type=int, default=256)
    add("--iou-hidden", type=int, default=128)
    add("--qk-scale", type=float, default=3.0, help="decoder attention init q = k = scale x random (0: off)")
    add("--eval-every", type=int, default=150, help="steps between val point mIoU checks (0: never)")
    add("--val-limit", type=int, default=48)
    add("--max-minutes", type=float, default=58.0, help="safety stop of the training loop (breaks reproducibility)")
    add("--no-final-eval", action="store_true")
    return parser.parse_args(argv)


class Log:
    """Appends JSON lines to a file and echoes them."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a")

    def __call__(self, **record) -> None:
        line = json.dumps(record)
        self.file.write(line + "\n")
        self.file.flush()
        print(line, flush=True)


def build_model(args: argparse.Namespace) -> SamModel:
    """The seeded, randomly initialised toy SAM, eager attention (fastest on CPU here).

    SAM's random-Fourier position matrix (2, C/2) is redrawn from N(0, 1), as the original SAM's
    PositionEmbeddingRandom does (transformers initialises it with std hidden_size / 2 = 72 here,
    which aliases to noise at 16 x 16 tokens and leaves prompts unlocatable), and frozen (a buffer
    in the original SAM). It is shared by the image and prompt position encodings."""
    torch.manual_seed(args.seed)
    model = SamModel._from_config(toy_config(args), attn_implementation="eager")
    table = model.shared_image_embedding.positional_embedding
    assert table is model.prompt_encoder.shared_embedding.positional_embedding
    with torch.no_grad():
        table.copy_(torch.randn(table.shape, generator=torch.Generator().manual_seed(args.seed)))
    table.requires_grad_(False)
    for module in (model.prompt_encoder, model.mask_decoder):
        sam_default_init(module)
    if args.qk_scale > 0:
        align_decoder_attention(model.mask_decoder, args.qk_scale)
    return model


@torch.no_grad()
def align_decoder_attention(decoder: torch.nn.Module, scale: float) -> None:
    """Init each decoder attention with k_proj = q_proj = scale x its random q_proj, so attention
    logits start as a positive semi-definite similarity x^T W^T W y: a prompt token attends first to
    image tokens whose position encoding matches its own, and vice versa, instead of at random.
    With random q / k the decoder needs hundreds of steps to discover where the prompt is."""
    for module in decoder.modules():
        if type(module).__name__ == "SamAttention":
            module.q_proj.weight.mul_(scale)
            module.k_proj.weight.copy_(module.q_proj.weight)
            module.k_proj.bias.copy_(module.q_proj.bias)


def sam_default_init(root: torch.nn.Module) -> None:
    """PyTorch's default init (as the original SAM code leaves its layers; embeddings N(0, 1)) for
    every Linear / Conv / ConvTranspose / Embedding / LayerNorm under `root`. transformers' std-0.02
    normal init makes the decoder's product of hypernetwork and upscaled features start ~100x
    smaller, and training stalls at an all-background mask."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Embedding, torch.nn.LayerNorm)
    for module in root.modules():
        if isinstance(module, kinds):
            module.reset_parameters()


def prepare_data(args: argparse.Namespace, log: Log) -> dict[str, Path]:
    """Write (or find) the train / val / test splits and the unseen simple-shapes set."""
    started = time.time()
    folders = {}
    for split, count in (("train", args.train_count), ("val", args.val_count), ("test", args.test_count)):
        folders[split] = ensure_split(args.data / f"{split}_s{args.seed}", split, count, args.seed, args.workers)
    folders["unseen"] = ensure_split(args.data / f"unseen_s{args.seed}", "test", args.unseen_count, args.seed,
                                     args.workers, writer=write_simple_shapes)
    log(event="data", seconds=round(time.time() - started, 1), folders={k: str(v) for k, v in folders.items()})
    return folders


def train(model: SamModel, cache: dict, args: argparse.Namespace, log: Log, val: Path | None,
          processor: SamProcessor) -> dict:
    """The training loop; returns timing and curve summaries."""
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    batches = Batches(cache, args.batch, args.masks_per_image, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    started, window, curve = time.time(), [], []
    for step in range(args.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        weight = focal_weight(step, args.focal_start, args.focal_ramp, args.focal_weight)
        loss, logs = train_step(model, batches(), generator, args.boxes_per_image, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.clip).item()
        optimizer.step()
        window.append(dict(logs, loss=loss.item(), grad_norm=grad_norm))
        if (step + 1) % 10 == 0 or step + 1 == args.steps:
            mean = {k: round(float(np.mean([w[k] for w in window])), 4) for k in window[0]}
            log(event="train", step=step + 1, lr=round(optimizer.param_groups[0]["lr"], 7), focal_weight=weight,
                minutes=round((time.time() - started) / 60, 2), **mean)
            curve.append(dict(step=step + 1, **mean))
            window = []
        if val is not None and args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            tick = time.time()
            result = evaluate(model, processor, val, "point", args.val_limit)
            log(event="val", step=step + 1, point_miou=round(result["miou"], 4), seconds=round(time.time() - tick, 1))
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), args.out / "checkpoint.pt")  # scratch: inspect a run in progress
        if (time.time() - started) / 60 > args.max_minutes:
            log(event="stopped", step=step + 1, reason="max-minutes reached")
            break
    return {"train_seconds": round(time.time() - started, 1), "steps_done": step + 1, "curve": curve}


def save_and_reload(model: SamModel, processor: SamProcessor, folder: Path) -> tuple[SamModel, dict]:
    """save_pretrained the model + processor, reload with SamModel.from_pretrained, check fp32 and
    that the reload computes the same masks; returns (reloaded model, file facts)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    reloaded = SamModel.from_pretrained(folder).eval()
    assert reloaded.dtype == torch.float32, reloaded.dtype
    with torch.no_grad():
        x = torch.randn(1, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
        points = torch.tensor([[[[100.0, 80.0]]]])
        a = model.eval()(pixel_values=x, input_points=points, multimask_output=False).pred_masks
        b = reloaded(pixel_values=x, input_points=points, multimask_output=False).pred_masks
    weights = folder / "model.safetensors"
    facts = {"dtype": str(reloaded.dtype), "reload_max_abs_diff": float((a - b).abs().max()),
             "safetensors_bytes": weights.stat().st_size, "safetensors_sha256": _file_sha256(weights),
             "parameters": sum(p.numel() for p in reloaded.parameters())}
    return reloaded, facts


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = Log(args.log)
    log(event="start", command=" ".join([sys.executable] + sys.argv), args={k: str(v) for k, v in vars(args).items()},
        torch=torch.__version__, threads=torch.get_num_threads())
    started = time.time()
    folders = prepare_data(args, log)
    processor = make_processor(args.image_size)
    tick = time.time()
    cache = build_cache(folders["train"], processor, args.image_size)
    log(event="cache", seconds=round(time.time() - tick, 1), images=len(cache["pixels"]),
        masks=int(cache["offsets"][-1]))
    model = build_model(args)
    check_decode_all(model, args.image_size)
    summary = train(model, cache, args, log, folders["val"], processor)
    reloaded, facts = save_and_reload(model, processor, args.out)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "config": reloaded.config.to_dict(), **facts,
               **summary}
    if not args.no_final_eval:
        for name in ("test", "unseen"):
            for prompt in ("point", "box"):
                tick = time.time()
                results[f"{name}_{prompt}"] = evaluate(reloaded, processor, folders[name], prompt)
                log(event="eval", set=name, prompt=prompt, seconds=round(time.time() - tick, 1),
                    **results[f"{name}_{prompt}"])
    results["total_seconds"] = round(time.time() - started, 1)
    (args.log.parent / f"results_{args.log.stem}.json").write_text(json.dumps(results, indent=1))
    log(event="done", total_seconds=results["total_seconds"], train_seconds=summary["train_seconds"], **facts)


if __name__ == "__main__":
    torch.set_num_interop_threads(1)  # only before any parallel work: not in main(), which tests call in-process
    main()
