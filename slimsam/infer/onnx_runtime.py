"""Running a SAM exported to ONNX on onnxruntime: the export's layout, its graphs' tensor names, and the reader.

The layout is the one transformers.js's `SamModel.from_pretrained(DIR)` and `AutoProcessor.from_pretrained(DIR)`
read (4.3.2: `models/sam/modeling_sam.js`, `models/session_config.js`, `utils/dtypes.js`); these names are
defined here once, `slimsam.deploy.onnx_export` writes them and `OnnxSam` reads them:

    DIR/config.json                  SamConfig (model_type "sam")
    DIR/preprocessor_config.json     the image processor, processor_class SamProcessor (transformers.js, transformers 4)
    DIR/processor_config.json        the processor as transformers 5 saves it
    DIR/export_report.json           the equivalence report against PyTorch (slimsam.deploy.onnx_export)
    DIR/onnx/vision_encoder.onnx                  fp32 (transformers.js dtype "fp32")
    DIR/onnx/prompt_encoder_mask_decoder.onnx
    DIR/onnx/*_quantized.onnx                     int8 (dtype "q8", transformers.js's default in browsers)
    DIR/onnx/*_fp16.onnx                          fp16 inside, float32 inputs and outputs (dtype "fp16")
    DIR/onnx/vision_encoder.onnx_data             the weights of a graph over 2 GiB (SAM-H's fp32 encoder): one
                                                  protobuf file holds at most 2 GiB; config.json's
                                                  "transformers.js_config" names such graphs

Graphs (S = vision_config.image_size, C = output channels, h = w = S / 16; batch, point_batch and num_points
are dynamic axes):

    vision_encoder:  pixel_values f32 (batch, 3, S, S)
                  -> image_embeddings f32 (batch, C, h, w), image_positional_embeddings f32 (batch, C, h, w)
    prompt_encoder_mask_decoder:
        image_embeddings, image_positional_embeddings (as above),
        input_points f32 (batch, point_batch, num_points, 2): x, y in model-input pixels (after resizing to S),
        input_labels int64 (batch, point_batch, num_points): 1 foreground, 0 background, -1 not a point,
            -10 padding, 2 / 3 a box's top-left / bottom-right corner
     -> iou_scores f32 (batch, point_batch, 3), pred_masks f32 (batch, point_batch, 3, 4h, 4w)   three masks
        single_iou_scores f32 (batch, point_batch, 1), single_pred_masks (batch, point_batch, 1, 4h, 4w)   one mask

A box travels as two extra points labelled 2 and 3 (`box_as_points`): transformers.js feeds every graph input
on every call and cannot send a box without points, so the graph has no optional box input. Box or not is
decided for the whole call: every prompt of one call has a box, or none has (as SamModel's input_boxes).
onnxruntime is imported only when an export is opened.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import SamConfig, SamProcessor

ONNX_SUBFOLDER = "onnx"
ENCODER = "vision_encoder"
DECODER = "prompt_encoder_mask_decoder"
# variant -> file-name suffix, which is how transformers.js names its dtypes fp32, q8 and fp16
VARIANT_SUFFIXES = {"fp32": "", "int8": "_quantized", "fp16": "_fp16"}
ENCODER_INPUTS = ("pixel_values",)
ENCODER_OUTPUTS = ("image_embeddings", "image_positional_embeddings")
DECODER_INPUTS = ("image_embeddings", "image_positional_embeddings", "input_points", "input_labels")
DECODER_OUTPUTS = ("iou_scores", "pred_masks", "single_iou_scores", "single_pred_masks")
BOX_CORNER_LABELS = (2, 3)
# a graph too big for one file keeps its weights in "<graph file>_data", the name transformers.js asks for when
# config.json's TRANSFORMERS_JS_CONFIG has {"use_external_data_format": {"<graph file>": 1}}
EXTERNAL_DATA_SUFFIX = "_data"
TRANSFORMERS_JS_CONFIG = "transformers.js_config"
PREPROCESSOR_FILE = "preprocessor_config.json"
REPORT_FILE = "export_report.json"


class NotAnExportError(ValueError):
    """Raised when a folder opened as an ONNX export is not one (or lacks the variant asked for)."""


def graph_path(folder: str | Path, part: str, variant: str = "fp32") -> Path:
    """Where the `part` graph (ENCODER or DECODER) of `variant` (a VARIANT_SUFFIXES key) lives in an export."""
    return Path(folder) / ONNX_SUBFOLDER / f"{part}{VARIANT_SUFFIXES[variant]}.onnx"


def external_data_path(graph: str | Path) -> Path:
    """Where a graph file's weights are when they do not fit in the file itself (see EXTERNAL_DATA_SUFFIX)."""
    graph = Path(graph)
    return graph.with_name(graph.name + EXTERNAL_DATA_SUFFIX)


def graph_files(folder: str | Path, part: str, variant: str = "fp32") -> list[Path]:
    """The files of one graph: the graph, and its external weights when it has them."""
    graph = graph_path(folder, part, variant)
    return [graph] + [path for path in (external_data_path(graph),) if path.is_file()]


def exported_variants(folder: str | Path) -> list[str]:
    """The variants whose two graphs are both in `folder`, in VARIANT_SUFFIXES order ([] for other folders)."""
    return [variant for variant in VARIANT_SUFFIXES
            if graph_path(folder, ENCODER, variant).is_file() and graph_path(folder, DECODER, variant).is_file()]


def is_onnx_export(name_or_path: str | Path) -> bool:
    """Whether `name_or_path` is a folder holding an ONNX export (any variant)."""
    return Path(name_or_path).expanduser().is_dir() and bool(exported_variants(Path(name_or_path).expanduser()))


def box_as_points(points: np.ndarray | None, labels: np.ndarray | None,
                  boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append each prompt's box as its two corners, labelled 2 and 3: the graph's way of taking a box.

    points (..., n, 2) or None, labels (..., n) or None, boxes (..., 4) x1, y1, x2, y2 ->
    points (..., n + 2, 2) float32, labels (..., n + 2) int64. Exactly how SAM embeds a box.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
    corner_labels = np.broadcast_to(np.array(BOX_CORNER_LABELS, dtype=np.int64), corners.shape[:-1])
    if points is None:
        return corners, np.ascontiguousarray(corner_labels)
    return (np.concatenate([np.asarray(points, dtype=np.float32), corners], axis=-2),
            np.concatenate([np.asarray(labels, dtype=np.int64), corner_labels], axis=-1))


def _choose_variant(folder: Path, variant: str | None) -> str:
    available = exported_variants(folder)
    if not available:
        raise NotAnExportError(f"{folder} is not an ONNX export: no {ONNX_SUBFOLDER}/{ENCODER}.onnx and "
                               f"{ONNX_SUBFOLDER}/{DECODER}.onnx (or their _quantized / _fp16 variants); "
                               f"write one with `slimsam export MODEL --format onnx --out DIR`")
    if variant is None:
        return available[0]
    if variant not in VARIANT_SUFFIXES:
        raise NotAnExportError(f"unknown ONNX variant {variant!r}; choose one of {', '.join(VARIANT_SUFFIXES)}")
    if variant not in available:
        raise NotAnExportError(f"{folder} has no {variant} graphs ({graph_path(folder, ENCODER, variant).name}); "
                               f"it has {', '.join(available)}. Export them with --quantize "
                               f"{'none' if variant == 'fp32' else variant}")
    return variant


class OnnxSam:
    """An exported SAM on onnxruntime (CPU): `encode` an image batch, `decode` prompts on its embedding.

    folder: an export (see the module docstring); variant: "fp32", "int8" or "fp16" (default: fp32 when
    exported, else the first exported); threads: onnxruntime's intra-op threads (default: its own choice).
    The two sessions are opened at once, so a broken file fails here and not on the first click.
    """

    def __init__(self, folder: str | Path, variant: str | None = None, threads: int | None = None) -> None:
        import onnxruntime

        self.folder = Path(folder).expanduser()
        self.variant = _choose_variant(self.folder, variant)
        # (transformers 5 gives a default SamConfig for a folder without config.json, without a word)
        if not (self.folder / "config.json").is_file():
            raise NotAnExportError(f"{self.folder} has ONNX graphs but no config.json")
        try:
            self.config = SamConfig.from_pretrained(self.folder)
        except (OSError, ValueError) as error:
            raise NotAnExportError(f"{self.folder} has ONNX graphs but no readable config.json: "
                                   f"{str(error).splitlines()[0]}") from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: fp16 graphs warn that MatMuls cannot be constant-folded
        # onnxruntime's memory pattern plans a second, whole-run block on the second run and keeps both: SlimSAM-77's
        # encoder then holds 5.75 GiB instead of 3.2, and runs ~5% faster after (BENCHMARKS.md, "memory pattern")
        options.enable_mem_pattern = False
        if threads:
            options.intra_op_num_threads = threads
        self.encoder, self.decoder = (
            onnxruntime.InferenceSession(graph_path(self.folder, part, self.variant), options,
                                         providers=["CPUExecutionProvider"]) for part in (ENCODER, DECODER))
        files = [path.stat() for part in (ENCODER, DECODER) for path in graph_files(self.folder, part, self.variant)]
        # what identifies these weights in embedding caches: the files, as they are now
        self.cache_key = f"onnx:{self.folder.resolve()}:{self.variant}:" + ":".join(
            f"{stat.st_size}-{stat.st_mtime_ns}" for stat in files)
        self.name_or_path = str(folder)

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values (B, 3, S, S) float32, as SamProcessor makes them -> image embeddings (B, C, h, w) and the
        image-wide positional embeddings (B, C, h, w), float32."""
        embeddings, positions = self.encoder.run(
            list(ENCODER_OUTPUTS), {"pixel_values": pixel_values.detach().cpu().float().numpy()})
        return torch.from_numpy(embeddings), torch.from_numpy(positions)

    def decode(self, image_embeddings: torch.Tensor, image_positional_embeddings: torch.Tensor,
               input_points: torch.Tensor | None = None, input_labels: torch.Tensor | None = None,
               input_boxes: torch.Tensor | None = None,
               multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """SamModel's prompt arguments for the B images of `image_embeddings`: input_points (B, P, n, 2) and
        input_labels (B, P, n) in model-input pixels, input_boxes (B, P, 4). Returns pred_masks (B, P, K, 4h, 4w)
        low-res logits and iou_scores (B, P, K), K = 3 if multimask_output else 1, as SamModel returns them."""
        points = None if input_points is None else input_points.cpu().numpy()
        labels = None if input_labels is None else input_labels.cpu().numpy()
        if input_boxes is not None:
            points, labels = box_as_points(points, labels, input_boxes.cpu().numpy())
        if points is None:
            raise ValueError("give input_points or input_boxes")
        wanted = DECODER_OUTPUTS[:2] if multimask_output else DECODER_OUTPUTS[2:]
        scores, masks = self.decoder.run(list(wanted), {
            "image_embeddings": image_embeddings.cpu().float().numpy(),
            "image_positional_embeddings": image_positional_embeddings.cpu().float().numpy(),
            "input_points": np.ascontiguousarray(points, dtype=np.float32),
            "input_labels": np.ascontiguousarray(labels, dtype=np.int64)})
        return torch.from_numpy(masks), torch.from_numpy(scores)


def load_export(folder: str | Path, variant: str | None = None,
                threads: int | None = None) -> tuple[OnnxSam, SamProcessor]:
    """An ONNX export and its processor (raises NotAnExportError for other folders)."""
    model = OnnxSam(folder, variant, threads)
    try:
        processor = SamProcessor.from_pretrained(model.folder)
    except (OSError, ValueError) as error:
        raise NotAnExportError(f"{model.folder} has ONNX graphs but no readable processor config: "
                               f"{str(error).splitlines()[0]}") from error
    return model, processor


def read_report(folder: str | Path) -> dict:
    """An export's export_report.json ({} when it has none)."""
    path = Path(folder) / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
