"""The equivalence report: does each variant of an ONNX export compute what the PyTorch model computes?

Two photos (Grace Hopper and a landscape crop of her; each encoded alone, since SAM-H's global attention
needs gigabytes per image, then decoded as one batch of 2) and five prompts per photo: one point, a point and a
negative point, a box, a box and a point, and three prompts of two points at once; each with three masks and
with one. Every variant runs on onnxruntime through `slimsam.infer.onnx_runtime.OnnxSam` (the reader
SamPredictor uses) and is compared with the PyTorch model (float32, CPU) on the same pixels and prompts:

- embeddings, mask logits, IoU scores: the max abs difference, and relative = max abs difference / max |PyTorch|
  (the worst over the prompts);
- mask IoU: IoU of the thresholded low-res masks (logit > 0), on the part that covers the photo, against
  PyTorch's; the mean (and the min) over every mask of every prompt.

fp32 passes within FP32_TOLERANCE relative on all three tensors. int8 and fp16 are reported as they are, with
a warning when their mean mask IoU falls below MIN_MASK_IOU.
"""
from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import SamModel, SamProcessor

from slimsam.data.samples import sample_photos
from slimsam.evaluate.masks import mask_iou
from slimsam.infer.onnx_runtime import DECODER, ENCODER, OnnxSam, graph_files
from slimsam.model.stats import count_parameters, encoder_macs
from slimsam.model.structure import read_dims

FP32_TOLERANCE = 1e-4
MIN_MASK_IOU = 0.9

# Prompts as fractions of each photo's width and height: x, y (points), x1, y1, x2, y2 (boxes).
POINT = (0.5, 0.4)
NEGATIVE = (0.2, 0.85)
BOX = (0.25, 0.1, 0.8, 0.95)
THREE_PROMPTS = (((0.3, 0.3), (0.6, 0.5)), ((0.5, 0.4), (0.1, 0.1)), ((0.7, 0.8), (0.4, 0.6)))
THREE_LABELS = ((1, 1), (1, 0), (0, 1))


def report_photos():
    """The report's photos: Grace Hopper (600 x 512, portrait) and a 300 x 400 landscape crop of her."""
    hopper = sample_photos()[0]
    return [hopper, hopper.crop((100, 50, 500, 350))]


def prompt_cases(input_sizes: list[tuple[int, int]]) -> dict[str, dict[str, torch.Tensor]]:
    """SamModel prompt arguments for each case, one row per photo: points in model-input pixels of each photo's
    (H, W) after resizing (input_points (B, P, n, 2), input_labels (B, P, n), input_boxes (B, P, 4))."""
    scales = torch.tensor([[width, height] for height, width in input_sizes], dtype=torch.float32)  # (B, 2) x, y

    def points(fractions) -> torch.Tensor:  # (P, n, 2) fractions -> (B, P, n, 2) pixels
        return torch.tensor(fractions, dtype=torch.float32)[None] * scales[:, None, None, :]

    def labels(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64).expand(len(input_sizes), -1, -1)

    box = torch.tensor(BOX, dtype=torch.float32)[None, None] * scales.repeat(1, 2)[:, None, :]  # (B, 1, 4)
    return {
        "point": {"input_points": points([[POINT]]), "input_labels": labels([[1]])},
        "point + negative point": {"input_points": points([[POINT, NEGATIVE]]), "input_labels": labels([[1, 0]])},
        "box": {"input_boxes": box},
        "box + point": {"input_points": points([[POINT]]), "input_labels": labels([[1]]), "input_boxes": box},
        "3 prompts of 2 points": {"input_points": points(THREE_PROMPTS), "input_labels": labels(THREE_LABELS)},
    }


def _worst(differences: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Max abs difference and the worst relative one (max abs difference / max |reference|) over (got, want)."""
    max_abs = [float((got - want).abs().max()) for got, want in differences]
    relative = [d / max(float(want.abs().max()), 1e-30) for d, (_, want) in zip(max_abs, differences)]
    return {"max_abs": max(max_abs), "relative": max(relative)}


def _mask_ious(got: torch.Tensor, want: torch.Tensor, covered: list[tuple[int, int]]) -> list[float]:
    """IoUs of every thresholded (B, P, K, h, w) low-res mask, each photo's masks cropped to the (h, w) it covers."""
    ious = []
    for index, (rows, cols) in enumerate(covered):
        crop = (slice(None), slice(None), slice(0, rows), slice(0, cols))
        ious += mask_iou(got[index][crop] > 0, want[index][crop] > 0).flatten().tolist()
    return ious


def compare_variant(onnx_model: OnnxSam, pixel_values: torch.Tensor, reference: dict, cases: dict,
                    covered: list[tuple[int, int]]) -> dict:
    """One variant's entry of the report (see the module docstring); reference from `reference_outputs`."""
    embeddings, positions = (torch.cat(outputs) for outputs in zip(*map(onnx_model.encode, pixel_values[:, None])))
    logits, scores, ious = [], [], []
    for (name, multimask), (want_masks, want_scores) in reference["decoded"].items():
        masks, iou_scores = onnx_model.decode(embeddings, positions, multimask_output=multimask, **cases[name])
        if masks.shape != want_masks.shape or iou_scores.shape != want_scores.shape:
            raise ValueError(f"{name}: ONNX outputs {tuple(masks.shape)}, {tuple(iou_scores.shape)} where PyTorch "
                             f"gives {tuple(want_masks.shape)}, {tuple(want_scores.shape)}")
        logits.append((masks, want_masks))
        scores.append((iou_scores, want_scores))
        ious += _mask_ious(masks, want_masks, covered)
    files = [path for part in (ENCODER, DECODER) for path in graph_files(onnx_model.folder, part, onnx_model.variant)]
    return {"files": [f"{path.parent.name}/{path.name}" for path in files], "written": True,
            "size_mb": round(sum(path.stat().st_size for path in files) / 1e6, 2),
            "embeddings": _worst([(embeddings, reference["embeddings"])]), "mask_logits": _worst(logits),
            "iou_scores": _worst(scores), "mask_iou": sum(ious) / len(ious), "mask_iou_min": min(ious)}


@torch.inference_mode()
def reference_outputs(model: SamModel, pixel_values: torch.Tensor, cases: dict) -> dict:
    """PyTorch's image embeddings and, per (case, multimask), its (pred_masks, iou_scores)."""
    embeddings = torch.cat([model.get_image_embeddings(pixels[None]) for pixels in pixel_values])
    decoded = {}
    for name, prompts in cases.items():
        for multimask in (True, False):
            output = model(image_embeddings=embeddings, multimask_output=multimask, **prompts)
            decoded[name, multimask] = (output.pred_masks, output.iou_scores)
    return {"embeddings": embeddings, "decoded": decoded}


def equivalence_report(model: SamModel, processor: SamProcessor, folder: str | Path, variants: list[str]) -> dict:
    """Run each variant of the export in `folder` against `model` (float32, on the CPU) and report (a dict, as
    export_report.json holds it: what was exported and compared, and one entry per variant)."""
    photos = report_photos()
    inputs = processor(images=photos, return_tensors="pt")
    pixel_values = inputs["pixel_values"]
    input_sizes = [tuple(size) for size in inputs["reshaped_input_sizes"].tolist()]
    cases = prompt_cases(input_sizes)
    reference = reference_outputs(model, pixel_values, cases)
    low_res = next(iter(reference["decoded"].values()))[0].shape[-1]
    size = model.config.vision_config.image_size
    covered = [(-(-height * low_res // size), -(-width * low_res // size)) for height, width in input_sizes]
    entries = {}
    for variant in variants:
        entry = compare_variant(OnnxSam(folder, variant), pixel_values, reference, cases, covered)
        if variant == "fp32":
            entry["passed"] = all(entry[key]["relative"] <= FP32_TOLERANCE
                                  for key in ("embeddings", "mask_logits", "iou_scores"))
        elif entry["mask_iou"] < MIN_MASK_IOU:
            entry["warning"] = (f"{variant}: mean mask IoU {entry['mask_iou']:.3f} against fp32 is below "
                                f"{MIN_MASK_IOU}; its masks often differ from the model's")
        entries[variant] = entry
    params, macs = count_parameters(model), encoder_macs(model)
    return {"model": getattr(model, "name_or_path", None) or model.config._name_or_path or "in-memory model",
            "exported_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "versions": {package: version(package) for package in ("torch", "transformers", "onnx", "onnxruntime")},
            "params": params["total"], "encoder_params": params["encoder"],
            "encoder_macs": macs["linear_conv"], "encoder_macs_with_attention": macs["total"],
            "encoder_dims": read_dims(model).to_dict(),
            "photos": [f"{photo.width}x{photo.height}" for photo in photos], "prompts": list(cases),
            "fp32_tolerance": FP32_TOLERANCE, "min_mask_iou": MIN_MASK_IOU, "variants": entries}


def summary_line(report: dict) -> str:
    """One line per export: each variant's relative differences and mean mask IoU against PyTorch fp32."""
    parts = []
    for variant, entry in report["variants"].items():
        verdict = "" if variant != "fp32" else (" (within 1e-4)" if entry["passed"] else " (over 1e-4)")
        kept = "" if entry["written"] else ", checked, not kept"
        parts.append(f"{variant}{kept}: relative difference {entry['embeddings']['relative']:.1e} (embeddings), "
                     f"{entry['mask_logits']['relative']:.1e} (mask logits){verdict}, mask IoU {entry['mask_iou']:.3f}")
    return "; ".join(parts)
