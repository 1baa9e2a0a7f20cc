"""Prompted segmentation that encodes each image once: `SamPredictor` and its embedding cache.

Modelled on segment-anything's SamPredictor:

    predictor = SamPredictor.from_pretrained("slimsam-77")
    predictor.set_image(photo)                       # the image encoder: seconds (once per image)
    masks, scores = predictor.predict(points=[[250, 300]], labels=[1])   # the decoder: milliseconds

Coordinates are (x, y) pixels of the image given to `set_image`; masks come back at that image's size.
The model runs on PyTorch, or on onnxruntime for an ONNX export (slimsam.infer.onnx_runtime): the same API,
the same embedding cache.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SamModel, SamProcessor

from slimsam.data.images import shrink, to_rgb
from slimsam.infer.fast_decoder import DecoderContext, fast_decode, fast_decode_confident, prepare_decoder
from slimsam.infer.onnx_runtime import OnnxSam, is_onnx_export, load_export
from slimsam.model.checkpoints import default_device, load_model

# The encoder sees 1024 px anyway; a bigger working copy only costs memory. Masks are computed at
# most this size and enlarged (nearest neighbour, as booleans) for bigger images.
MAX_WORKING_SIDE = 2048
RUNTIMES = ("pytorch", "onnxruntime")
# dtype names -> the weights' torch dtype (PyTorch) or the export's variant (onnxruntime)
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ONNX_DTYPES = ("fp32", "int8", "fp16")
ALL_DTYPES = (*TORCH_DTYPES, *(dtype for dtype in ONNX_DTYPES if dtype not in TORCH_DTYPES))  # and int8

# progress(fraction, stage): what a long computation reports to a UI (fraction of its work done, 0..1)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ImageEmbedding:
    """What the decoder needs to know about one encoded image."""

    embedding: torch.Tensor  # (1, C, h, w) image-encoder output (C=256, h=w=64 for SAM), float32
    original_size: tuple[int, int]  # (H, W) of the image given to set_image
    working_size: tuple[int, int]  # (H, W) after shrinking to MAX_WORKING_SIDE (== original_size if smaller)
    input_size: tuple[int, int]  # (H, W) after resizing to the model's input size, before padding
    # the prompt-independent part of the mask decoder: fast_decoder's, or with onnxruntime the (1, C, h, w)
    # image-wide positional embeddings the encoder graph returns
    decoder_context: DecoderContext | torch.Tensor
    encode_seconds: float  # how long the image encoder took to make `embedding` (cache hits reuse it)


class EmbeddingCache:
    """Thread-safe LRU of image embeddings, keyed by (model key, image hash).

    Two threads asking for the same missing key compute it once: the second waits for the first.
    Copying a cache (gradio deep-copies per-session state) gives a new, empty cache.
    """

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[tuple[str, str], threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._entries

    def __deepcopy__(self, memo) -> "EmbeddingCache":
        return EmbeddingCache(self.capacity)

    def _lookup(self, key):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            return None

    def get_or_compute(self, key: tuple[str, str],
                       compute: Callable[[], ImageEmbedding]) -> tuple[ImageEmbedding, bool]:
        """The cached value for `key`, or compute() stored under it; also says whether compute() ran."""
        if (hit := self._lookup(key)) is not None:
            return hit, False
        with self._lock:
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            if (hit := self._lookup(key)) is not None:  # another thread computed it while we waited
                return hit, False
            try:
                value = compute()
                with self._lock:
                    self._entries[key] = value
                    while len(self._entries) > self.capacity:
                        self._entries.popitem(last=False)
            finally:
                with self._lock:
                    self._computing.pop(key, None)
        return value, True


def model_key(model: SamModel | OnnxSam) -> str:
    """What identifies a model's current weights in cache keys.

    Where it was loaded from (else the object itself), plus every parameter's storage and in-place
    modification count (tensor._version): a model pruned (new parameter tensors) or trained (in-place
    updates) under the same name never gets its former self's embeddings. Microseconds, even for SAM-H.
    An ONNX export: its folder, variant and files (OnnxSam.cache_key).
    """
    if isinstance(model, OnnxSam):
        return model.cache_key
    name = getattr(model, "name_or_path", None) or model.config._name_or_path
    weights = hash(tuple((param.data_ptr(), param._version) for param in model.parameters()))
    return f"{name or f'in-memory-{id(model)}'}#{weights & 0xFFFFFFFFFFFF:012x}"


def image_hash(image: np.ndarray) -> str:
    """Content hash of an (H, W, 3) uint8 image, shape included."""
    digest = hashlib.blake2b(repr(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL image or array -> upright 8-bit RGB PIL image.

    Arrays are read as (H, W) grayscale or (H, W, C) with C = 1, 3 or 4 channels last (uint8 or uint16),
    whatever their size: a (1, W, 3) strip is one row of W RGB pixels, never 1 channel of 3 x W.
    """
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"image arrays are (H, W) or (H, W, 1|3|4) with channels last; got shape {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image))
    return to_rgb(image)


def model_input(working: np.ndarray, longest_edge: int) -> np.ndarray:
    """The (H, W, 3) working copy as SamProcessor may resize it to `longest_edge` px on its longest side.

    The processor rounds the short side to the nearest pixel, so an image over 2 * longest_edge times longer
    than high would become 0 px high; such a strip is stretched just enough to keep 1 px (a no-op for
    SAM's 1024 px input and working copies of at most 2048 px).
    """
    height, width = working.shape[:2]
    least = -(-max(height, width) // (2 * longest_edge))  # the side that rounds to 1 px at the input size
    if min(height, width) >= least:
        return working
    size = (max(width, least), max(height, least))  # PIL's (W, H)
    return np.asarray(Image.fromarray(working).resize(size, Image.Resampling.BILINEAR))


# The encoder's progress: forward hooks on the encoder's blocks (installed once per model) report to the
# callback set in this context (thread), so concurrent encodes of one model report to their own callers.
_encode_progress: ContextVar[Progress | None] = ContextVar("encode_progress", default=None)
_hooks_lock = threading.Lock()


def _block_done(done: int, total: int, *_) -> None:
    report = _encode_progress.get()
    if report is not None:
        report(done / total, "encoding")


def _watch_encoder_blocks(model: SamModel) -> None:
    """Install the progress hooks on `model`'s image encoder blocks (once; a model without blocks reports nothing)."""
    layers = getattr(getattr(model, "vision_encoder", None), "layers", None)
    with _hooks_lock:
        if layers is None or getattr(model, "_slimsam_progress_hooks", False):
            return
        for index, layer in enumerate(layers):
            layer.register_forward_hook(partial(_block_done, index + 1, len(layers)))
        model._slimsam_progress_hooks = True


class SamPredictor:
    """One model, one current image, any number of prompts.

    model, processor: a SamModel (any size, pruned ones included), or an ONNX export on onnxruntime
    (slimsam.infer.onnx_runtime.OnnxSam), and its SamProcessor.
    cache_size: how many image embeddings to keep (LRU); pass `cache=` instead to share one
    EmbeddingCache between predictors (its keys include the model).
    fast_decoder: decode clicks with `slimsam.infer.fast_decoder` (the same function as SamModel's decoder,
    about half the work: the prompt-independent part is computed once per image); False calls
    SamModel itself, and is needed for nothing but comparisons (an OnnxSam decodes with its own graph).
    On CUDA the image encoder runs under float16 autocast (weights stay float32, so LayerNorms,
    softmax and the small mask decoder keep full precision); on CPU everything is float32.
    """

    def __init__(self, model: SamModel | OnnxSam, processor: SamProcessor, cache_size: int = 8,
                 cache: EmbeddingCache | None = None, fast_decoder: bool = True) -> None:
        self.runtime = "onnxruntime" if isinstance(model, OnnxSam) else "pytorch"
        self.model = model if self.runtime == "onnxruntime" else model.eval()
        self.processor = processor
        self.cache = cache if cache is not None else EmbeddingCache(cache_size)
        self.fast_decoder = fast_decoder and self.runtime == "pytorch"
        self.current: ImageEmbedding | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.runtime == "onnxruntime" else next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype: bf16/fp16 weights (load_model(dtype=...)) get their inputs cast to match
        (an ONNX export takes float32 whatever its variant)."""
        return torch.float32 if self.runtime == "onnxruntime" else next(self.model.parameters()).dtype

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device | None = None, cache_size: int = 8,
                        runtime: str | None = None, dtype: str | None = None) -> "SamPredictor":
        """Load a model: with `slimsam.load_model` (alias, Hub id or folder; device defaults to CUDA when
        available), or an ONNX export folder on onnxruntime (CPU).

        runtime: "pytorch" or "onnxruntime" (default: onnxruntime for an ONNX export folder, else pytorch;
        onnxruntime for any other folder raises slimsam.infer.onnx_runtime.NotAnExportError).
        dtype: PyTorch's weights "fp32" (default), "bf16" or "fp16"; with onnxruntime the export's variant,
        "fp32", "int8" or "fp16" (default: fp32 if exported, else the first exported).
        """
        runtime = runtime or ("onnxruntime" if is_onnx_export(name_or_path) else "pytorch")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        allowed = ONNX_DTYPES if runtime == "onnxruntime" else tuple(TORCH_DTYPES)
        if dtype is not None and dtype not in allowed:
            raise ValueError(f"dtype with {runtime} must be one of {', '.join(allowed)}, got {dtype!r}")
        if runtime == "onnxruntime":
            model, processor = load_export(name_or_path, dtype)
        else:
            model, processor = load_model(name_or_path, device=device or default_device(),
                                          dtype=TORCH_DTYPES[dtype or "fp32"])
        return cls(model, processor, cache_size=cache_size)

    # ----------------------------------------------------------------------------------- encoding

    def set_image(self, image: Image.Image | np.ndarray, image_id: str | None = None,
                  progress: Progress | None = None) -> float:
        """Make `image` the current image, encoding it unless cached; returns encoder seconds (0.0 on a hit;
        `current.encode_seconds` keeps the time of the encode that made the embedding).

        image: a PIL image, or an (H, W) / (H, W, C) array with channels last (see as_rgb_image).
        progress: called as progress(fraction, "encoding") after each encoder block, when it encodes.

        image_id: `image_hash(image)` of this very array, from a caller that has it already (the app hashes
        each upload once). A cache hit then neither converts nor hashes the image (about 20 ms for a
        2048x1536 photo); the conversion to a working copy happens only if it must be encoded. For an
        (H, W, 3) uint8 array of at most MAX_WORKING_SIDE px, which is its own working copy, the cache key
        is the same as without image_id. Arrays only: a PIL image's upright size needs its conversion.
        """
        if image_id is None:
            rgb = as_rgb_image(image)
            original_size = (rgb.height, rgb.width)
            working = np.asarray(shrink(rgb, MAX_WORKING_SIDE))
            image_id = image_hash(working)
        elif isinstance(image, np.ndarray):
            # An array has no EXIF orientation: its shape is its upright size.
            original_size, working = tuple(image.shape[:2]), None
        else:
            raise TypeError(f"image_id is for numpy arrays (image_hash hashes one), got {type(image).__name__}")
        key = self._cache_key(image_id, original_size)
        seconds = 0.0

        def encode() -> ImageEmbedding:
            nonlocal seconds, working
            if working is None:
                working = np.asarray(shrink(as_rgb_image(image), MAX_WORKING_SIDE))
            start = time.perf_counter()  # the encoder's time only, as without image_id
            longest = self.processor.image_processor.size["longest_edge"]
            # The layout, always: the processor guesses (1, W, 3) or (3, W, 3) to be channels-first.
            inputs = self.processor(images=model_input(working, longest), return_tensors="pt",
                                    input_data_format="channels_last")
            pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
            if self.runtime == "onnxruntime":
                embedding, context = self.model.encode(pixel_values)
            else:
                if progress is not None:
                    _watch_encoder_blocks(self.model)
                token = _encode_progress.set(progress)
                try:
                    with torch.inference_mode(), torch.autocast("cuda", torch.float16,
                                                                enabled=self.device.type == "cuda"):
                        # clone: a compiled encoder (CUDA graphs) reuses its output buffer on the next call
                        embedding = self.model.get_image_embeddings(pixel_values).float().clone()
                finally:
                    _encode_progress.reset(token)
                context = prepare_decoder(self.model, embedding)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            return ImageEmbedding(embedding, original_size, working.shape[:2],
                                  tuple(int(v) for v in inputs["reshaped_input_sizes"][0]), context, seconds)

        self.current, _ = self.cache.get_or_compute(key, encode)
        return seconds

    def _cache_key(self, image_id: str, original_size: tuple[int, int]) -> tuple[str, str]:
        return model_key(self.model), f"{image_id}@{original_size}"

    def is_encoded(self, image: np.ndarray, image_id: str) -> bool:
        """Whether set_image(image, image_id) would find its embedding in the cache, and so not encode
        (image: an (H, W, ...) array, image_id its image_hash, as set_image takes them)."""
        return self._cache_key(image_id, tuple(image.shape[:2])) in self.cache

    def require_image(self) -> ImageEmbedding:
        if self.current is None:
            raise RuntimeError("no image set: call set_image(image) before predicting")
        return self.current

    # ----------------------------------------------------------------------------------- decoding

    def _prompt_arguments(self, points: np.ndarray | None, labels: np.ndarray | None,
                          boxes: np.ndarray | None) -> dict[str, torch.Tensor]:
        """SamModel's prompt arguments (model-input pixels, a batch of one image) from original-image pixels."""
        current = self.require_image()
        (height, width), (input_h, input_w) = current.original_size, current.input_size
        scale = torch.tensor([input_w / width, input_h / height], dtype=torch.float32)
        kwargs = {}
        if points is not None:
            kwargs["input_points"] = (torch.as_tensor(points, dtype=torch.float32) * scale)[None].to(self.device)
            kwargs["input_labels"] = torch.as_tensor(labels, dtype=torch.long)[None].to(self.device)
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32) * scale.repeat(2)
            kwargs["input_boxes"] = boxes[None].to(self.device)
        return kwargs

    def decode_low_res(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                       boxes: np.ndarray | None = None,
                       multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt encoder and mask decoder on B prompts at once, for the current image.

        points: (B, N, 2) xy in original-image pixels; labels: (B, N) 1 positive / 0 negative;
        boxes: (B, 4) xyxy pixels. Returns low-res logits (B, K, 256, 256) covering the padded model
        input (see `masks_from_logits`) and predicted IoUs (B, K), K = 3 if multimask_output else 1.
        """
        current = self.require_image()
        kwargs = self._prompt_arguments(points, labels, boxes)
        if self.runtime == "onnxruntime":
            masks, scores = self.model.decode(current.embedding, current.decoder_context,
                                              multimask_output=multimask_output, **kwargs)
        elif self.fast_decoder:
            masks, scores = fast_decode(self.model, current.decoder_context, multimask_output=multimask_output,
                                        **kwargs)
        else:
            with torch.inference_mode():
                output = self.model(image_embeddings=current.embedding.to(self.dtype),
                                    multimask_output=multimask_output, **kwargs)
            masks, scores = output.pred_masks, output.iou_scores
        return masks[0].float(), scores[0].float()

    def decode_confident(self, points: np.ndarray, labels: np.ndarray,
                         min_score: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The multimask outputs of B prompts whose predicted IoU exceeds `min_score` (segment-everything's filter).

        points: (B, N, 2) xy original-image pixels; labels: (B, N). Returns low-res logits (M, 256, 256),
        their predicted IoUs (M,) and (prompt, candidate) indices (M, 2) into decode_low_res's (B, 3) outputs:
        the same values. The fast decoder upscales only the confident masks' prompts (most of the work).
        """
        current = self.require_image()
        kwargs = self._prompt_arguments(points, labels, None)
        if self.fast_decoder:
            logits, scores, index = fast_decode_confident(self.model, current.decoder_context, min_score=min_score,
                                                          **kwargs)
            return logits.float(), scores.float(), index
        logits, scores = self.decode_low_res(points, labels, multimask_output=True)
        index = torch.nonzero(scores > min_score)
        return logits[index[:, 0], index[:, 1]], scores[index[:, 0], index[:, 1]], index

    def masks_from_logits(self, low_res_logits: torch.Tensor) -> np.ndarray:
        """(M, 256, 256) decoder logits -> (M, H, W) bool masks at the current image's original size.

        Upscaled bilinearly (as SAM does) to at most the working size; bigger originals get the
        thresholded mask enlarged by nearest neighbour, so no full-size float array ever exists.
        """
        current = self.require_image()
        pad = self.processor.image_processor.pad_size
        logits = F.interpolate(low_res_logits[None], (pad["height"], pad["width"]), mode="bilinear",
                               align_corners=False)
        logits = logits[..., :current.input_size[0], :current.input_size[1]]
        if current.working_size != current.input_size:  # (bilinear to the same size is the identity)
            logits = F.interpolate(logits, current.working_size, mode="bilinear", align_corners=False)
        masks = (logits[0] > 0).cpu().numpy()
        if current.working_size != current.original_size:
            (h, w), (height, width) = current.working_size, current.original_size
            rows = np.arange(height) * h // height
            cols = np.arange(width) * w // width
            masks = masks[:, rows[:, None], cols[None, :]]
        return masks

    def predict(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                box: np.ndarray | None = None, multimask_output: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Masks for one prompt (points and/or a box) on the current image.

        points: (N, 2) xy pixels; labels: (N,) 1 positive / 0 negative (default: all positive);
        box: (4,) x1, y1, x2, y2 pixels. Returns masks (K, H, W) bool at the original image size
        and their predicted IoUs (K,), K = 3 if multimask_output else 1, best first.
        """
        if points is None and box is None:
            raise ValueError("give at least one point or a box")
        point_batch = label_batch = box_batch = None
        if points is not None:
            points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            labels = np.ones(len(points), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
            if len(labels) != len(points) or not np.isin(labels, (0, 1)).all():
                raise ValueError(f"labels must be one 0 or 1 per point, got {labels.tolist()} for {len(points)} points")
            point_batch, label_batch = points[None], labels[None]
        if box is not None:
            box_batch = np.asarray(box, dtype=np.float32).reshape(1, 4)
        logits, scores = self.decode_low_res(point_batch, label_batch, box_batch, multimask_output)
        order = torch.argsort(scores[0], descending=True)
        return self.masks_from_logits(logits[0, order]), scores[0, order].cpu().numpy()
