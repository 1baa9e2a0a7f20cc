"""Speed benchmarks of SAM image encoders and mask decoders, measured as ratios within one run.

For each model: encoder latency at batch 1 (median and spread over repeated runs after a warm-up run),
encoder throughput at a larger batch, decode latency per click with a cached image embedding (through
`SamPredictor.predict`), peak memory, parameters and MACs. `benchmark_models` runs every model in one
process, so the ratios to the reference model are taken on the same machine under the same load.

Each model runs on PyTorch (fp32, bf16 or fp16 weights; transformers' attention or slimsam's fast paths) and/or
on onnxruntime (an ONNX export's fp32, int8 or fp16 graphs: an export folder given as the model, or the model
exported on the fly). Every row is also compared with its model's first fp32 row (the same random image and
clicks): how far its embedding is, and how well its masks agree.

Timing does not depend on weight values, so real-size random-weight models (`slimsam.model.random_weights.random_model("sam-h")`)
stand in for checkpoints that are not downloaded.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import SamModel, SamProcessor

from slimsam.deploy.equivalence import summary_line
from slimsam.deploy.onnx_export import ExportError, export_onnx
from slimsam.evaluate.masks import mask_iou
from slimsam.infer.onnx_runtime import (
    OnnxSam,
    exported_variants,
    is_onnx_export,
    load_export,
    read_report,
)
from slimsam.infer.predictor import ONNX_DTYPES, TORCH_DTYPES, SamPredictor
from slimsam.model.checkpoints import load_model
from slimsam.model.compiled import compile_encoder
from slimsam.model.fast_attention import enable_fast_attention
from slimsam.model.random_weights import random_model
from slimsam.model.stats import count_parameters, encoder_macs

DTYPES = TORCH_DTYPES  # PyTorch weights
ATTENTIONS = ("fast", "stock")
AGREEMENT_CLICKS = 8  # single-point prompts every row answers, to compare its masks with its model's fp32 row


class NothingToMeasure(ValueError):
    """Raised when no runtime asked for runs any dtype asked for on the models given."""


@dataclass
class BenchSettings:
    device: str = "cpu"
    # each runtime measures those it has (PyTorch: fp32 bf16 fp16; onnxruntime: fp32 int8 fp16)
    dtypes: tuple[str, ...] = ("fp32",)
    runtimes: tuple[str, ...] = ("pytorch",)  # for models that are not ONNX exports (those run on onnxruntime)
    repeats: int = 5  # timed batch-1 encoder runs, after one untimed run (which measures peak memory) ...
    budget_s: float = math.inf  # ... fewer (at least 2) once the timed runs of a model have taken this long
    batch: int = 8  # throughput batch; 0 skips the throughput measurement
    decode_repeats: int = 20  # 0 skips the decode measurement (and the masks' comparison)
    seed: int = 0
    compile: bool = False  # torch.compile the fast rows' encoders (slimsam.model.compiled); compiling is not timed
    interleave: bool = False  # every row's model in memory at once, timed in turns (measure_interleaved)
    heap_kept: bool = False  # whether slimsam.infer.heap.keep_freed_memory_in_heap was in effect (the CLI's default)


@dataclass
class ModelResult:
    """One row of the benchmark: times in milliseconds, memory in MiB, MACs of one 1024x1024 encoder pass."""

    name: str
    # "fast" (slimsam.model.fast_attention encoding, slimsam.infer.fast_decoder clicks) or "stock" (SamModel as
    # is; ONNX graphs)
    attention: str
    compiled: bool  # the encoder ran under torch.compile (fast rows with BenchSettings.compile)
    params: int | None  # whole SamModel (None: an ONNX export without its report)
    encoder_params: int | None
    macs: int | None  # encoder Linear + conv MACs (the SlimSAM paper's convention)
    macs_with_attention: int | None
    encoder_ms_median: float = math.nan  # batch-1 runs (filled in when measured)
    encoder_ms_min: float = math.nan
    encoder_ms_max: float = math.nan
    encoder_ms_runs: list[float] = field(default_factory=list)  # in the order timed (in rounds, when interleaved)
    peak_memory_mb: float = math.nan
    throughput_images_per_s: float | None = None
    decode_ms_median: float | None = None
    decode_ms_min: float | None = None
    decode_ms_max: float | None = None
    max_abs_diff_vs_stock: float | None = None  # fast entries' image embedding, when the stock one is measured too
    decode_max_abs_diff_vs_stock: float | None = None  # fast entries' mask logits against SamModel's decoder
    speedup_vs_reference: float | None = None  # reference encoder ms (same attention, runtime, dtype) / this encoder ms
    macs_ratio_vs_reference: float | None = None  # reference MACs / these MACs
    runtime: str = "pytorch"  # or "onnxruntime"
    dtype: str = "fp32"  # PyTorch's weights, or the ONNX export's variant (fp32, int8, fp16)
    # against the model's first fp32 row (same image, same clicks): encoder speed-up (fp32 ms / these ms; interleaved:
    # the median of each round's ratio), embedding, low-res mask logits, mean mask IoU
    speedup_vs_fp32: float | None = None
    embedding_max_abs_diff_vs_fp32: float | None = None
    mask_logits_max_abs_diff_vs_fp32: float | None = None
    mask_iou_vs_fp32: float | None = None
    extra: dict = field(default_factory=dict)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(function: Callable[[], object], device: torch.device, warmup: int, repeats: int,
               budget_s: float = math.inf) -> list[float]:
    """Milliseconds of each of `repeats` calls after `warmup` untimed ones (GPU work waited for).

    Stops early, after at least 2 timed calls, once the timed calls have taken `budget_s` seconds.
    """
    for _ in range(warmup):
        function()
    _synchronize(device)
    times = []
    while len(times) < repeats and (len(times) < 2 or sum(times) < budget_s * 1000):
        start = time.perf_counter()
        function()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(function: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Extra memory one call needs at its peak, in MiB, and what the call returned.

    CUDA: peak bytes allocated by torch during the call, above what was allocated before it.
    CPU: peak growth of the process's resident memory, sampled every millisecond (Linux /proc).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = function()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20, result
    before = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = function()
    finally:
        done.set()
        sampler.join()
    return (max(peak, _rss_bytes()) - before) / 2 ** 20, result


def time_decode(predictor: SamPredictor, repeats: int, rng: np.random.Generator) -> list[float]:
    """Milliseconds per click: `predictor.predict` with one point on its current (already encoded) image.

    Each click is at a new random position (masks at the image's size, 3 per click).
    """
    height, width = predictor.require_image().original_size
    clicks = iter(rng.uniform(0, 1, (repeats + 3, 1, 2)) * [width, height])
    return time_calls(lambda: predictor.predict(points=next(clicks)), predictor.device, warmup=3, repeats=repeats)


def decoder_difference(fast: SamPredictor, image: np.ndarray, rng: np.random.Generator, clicks: int = 5
                       ) -> tuple[float, float]:
    """Max abs difference of slimsam.infer.fast_decoder's mask logits from SamModel's decoder's, for random clicks
    on `image` (the fast predictor's current image), and the largest stock logit (for scale)."""
    stock = SamPredictor(fast.model, fast.processor, cache=fast.cache, fast_decoder=False)
    stock.set_image(image)  # a cache hit: the same model and image
    height, width = image.shape[:2]
    points = rng.uniform(0, 1, (clicks, 1, 2)) * [width, height]  # single-point prompts
    labels = np.ones((clicks, 1), dtype=np.int64)
    fast_logits, stock_logits = (predictor.decode_low_res(points, labels)[0] for predictor in (fast, stock))
    return (fast_logits - stock_logits).abs().max().item(), stock_logits.abs().max().item()


@dataclass
class Way:
    """One row to measure: a PyTorch model with one dtype and attention, or one variant of an ONNX export on
    onnxruntime, ready to encode and to answer clicks; and what its measurement keeps for the comparisons."""

    result: ModelResult  # what is known before timing; the measurements are filled in
    encode: Callable[[torch.Tensor], torch.Tensor] | None  # pixel_values (B, 3, S, S) -> image embeddings (B, C, h, w)
    pixels: torch.Tensor | None  # (max(batch, 1), 3, S, S) random, in the dtype and on the device the encoder takes
    predictor: SamPredictor | None  # the same model (or export), for the clicks
    warmup: int = 1  # untimed encoder runs first (a compiled encoder compiles, then records CUDA graphs: 4)
    embedding: torch.Tensor | None = None  # (1, C, h, w) float32, the last untimed run's output
    agreement_logits: torch.Tensor | None = None  # (AGREEMENT_CLICKS, 3, h', w') low-res mask logits, float32

    def release(self) -> None:
        """Let the model go once measured (the numbers, the embedding and the logits stay)."""
        self.encode = self.pixels = self.predictor = None


def _dtype_name(model: SamModel) -> str:
    dtype = next(model.parameters()).dtype
    return next(name for name, torch_dtype in DTYPES.items() if torch_dtype == dtype)


def _random_pixels(settings: BenchSettings, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(settings.seed)
    return torch.randn(max(settings.batch, 1), 3, size, size, generator=generator)


def pytorch_way(name: str, model: SamModel, processor: SamProcessor, attention: str, settings: BenchSettings) -> Way:
    """A PyTorch model as it is (its attention modules and dtype already chosen)."""
    parameter = next(model.parameters())
    encoder = model.vision_encoder
    compiled = settings.compile and attention == "fast"

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return encoder(pixel_values).last_hidden_state

    params, macs = count_parameters(model), encoder_macs(model)
    result = ModelResult(name=name, attention=attention, compiled=compiled, params=params["total"],
                         encoder_params=params["encoder"], macs=macs["linear_conv"],
                         macs_with_attention=macs["total"], dtype=_dtype_name(model))
    pixels = _random_pixels(settings, model.config.vision_config.image_size).to(parameter.device, parameter.dtype)
    predictor = SamPredictor(model, processor, cache_size=1, fast_decoder=attention == "fast")
    # A compiled encoder compiles on its first call per shape, and records CUDA graphs on the next ones.
    return Way(result, encode, pixels, predictor, warmup=4 if compiled else 1)


def export_way(name: str, export: OnnxSam, processor: SamProcessor, settings: BenchSettings) -> Way:
    """One variant of an ONNX export on onnxruntime; parameters and MACs come from the export's report."""
    report = read_report(export.folder)
    result = ModelResult(name=name, attention="stock", compiled=False, params=report.get("params"),
                         encoder_params=report.get("encoder_params"), macs=report.get("encoder_macs"),
                         macs_with_attention=report.get("encoder_macs_with_attention"), runtime="onnxruntime",
                         dtype=export.variant)
    pixels = _random_pixels(settings, processor.image_processor.pad_size["height"])
    return Way(result, lambda pixel_values: export.encode(pixel_values)[0], pixels,
               SamPredictor(export, processor, cache_size=1))


def prepare(way: Way, settings: BenchSettings) -> None:
    """The untimed part of a row: warm-up runs (the last one measures peak memory and keeps the batch-1
    embedding), the throughput run at settings.batch, and for clicks the random image encoded, the fast decoder
    checked against SamModel's (fast rows), and the agreement clicks' low-res logits."""
    one, device, result = way.pixels[:1], way.predictor.device, way.result
    for _ in range(way.warmup - 1):
        way.encode(one)
    result.peak_memory_mb, output = peak_memory_mb(lambda: way.encode(one), device)
    way.embedding = output.float().clone()
    if settings.batch:
        batch_runs = time_calls(lambda: way.encode(way.pixels), device, warmup=way.warmup - 1, repeats=1)
        result.throughput_images_per_s = settings.batch / (batch_runs[0] / 1000)
    if not settings.decode_repeats:
        return
    size = way.pixels.shape[-1]
    rng = np.random.default_rng(settings.seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # the same for every row of a model
    way.predictor.set_image(image)  # encoded once, for the timed clicks and the comparisons
    if way.predictor.fast_decoder:
        result.decode_max_abs_diff_vs_stock, result.extra["stock_mask_logits_max_abs"] = \
            decoder_difference(way.predictor, image, rng)
    points = np.random.default_rng(settings.seed + 1).uniform(0, size, (AGREEMENT_CLICKS, 1, 2))
    labels = np.ones((AGREEMENT_CLICKS, 1), dtype=np.int64)
    way.agreement_logits = way.predictor.decode_low_res(points, labels)[0].float()


def _record(result: ModelResult, encoder_runs: list[float], clicks: list[float]) -> None:
    result.encoder_ms_runs = encoder_runs
    result.encoder_ms_median, result.encoder_ms_min, result.encoder_ms_max = \
        statistics.median(encoder_runs), min(encoder_runs), max(encoder_runs)
    if clicks:
        result.decode_ms_median, result.decode_ms_min, result.decode_ms_max = \
            statistics.median(clicks), min(clicks), max(clicks)


def _label(result: ModelResult, device: str) -> str:
    attention = f", {result.attention} attention, {device}" if result.runtime == "pytorch" else ""
    return f"{result.name} ({result.runtime} {result.dtype}{attention})"


def measure_alone(way: Way, settings: BenchSettings, log: Callable[[str], None]) -> Way:
    """Measure one row by itself: prepare, settings.repeats batch-1 encoder runs (fewer, at least 2, past
    settings.budget_s), settings.decode_repeats clicks; then release its model."""
    log(f"{_label(way.result, settings.device)}...")
    prepare(way, settings)
    runs = time_calls(lambda: way.encode(way.pixels[:1]), way.predictor.device, 0, settings.repeats,
                      settings.budget_s)
    clicks = time_decode(way.predictor, settings.decode_repeats, np.random.default_rng(settings.seed)) \
        if settings.decode_repeats else []
    _record(way.result, runs, clicks)
    log(f"  encoder {way.result.encoder_ms_median:.1f} ms median")
    way.release()
    return way


def measure_interleaved(ways: list[Way], settings: BenchSettings, log: Callable[[str], None]) -> list[Way]:
    """Measure rows held in memory all at once, in turns, so that a change of load on a shared machine hits
    every row alike: each is prepared, then settings.repeats rounds (fewer, at least 2, once a row's timed runs
    have taken settings.budget_s) each time one batch-1 encoder run and a share of settings.decode_repeats
    clicks of every row, in an order rotated by one each round."""
    for way in ways:
        log(f"{_label(way.result, settings.device)}: warm-up...")
        prepare(way, settings)
    runs: list[list[float]] = [[] for _ in ways]
    clicks: list[list[float]] = [[] for _ in ways]
    clicks_per_round = -(-settings.decode_repeats // settings.repeats)
    rngs = [np.random.default_rng(settings.seed) for _ in ways]
    for round_index in range(settings.repeats):
        if round_index >= 2 and max(sum(times) for times in runs) >= settings.budget_s * 1000:
            break
        order = list(range(len(ways)))
        for index in order[round_index % len(ways):] + order[:round_index % len(ways)]:
            way = ways[index]
            runs[index] += time_calls(lambda way=way: way.encode(way.pixels[:1]), way.predictor.device, 0, 1)
            if clicks_per_round:
                clicks[index] += time_decode(way.predictor, clicks_per_round, rngs[index])
        latest = ", ".join(f"{times[-1]:,.0f}" for times in runs)
        log(f"round {round_index + 1}/{settings.repeats}: encoder ms {latest}")
    for way, way_runs, way_clicks in zip(ways, runs, clicks):
        _record(way.result, way_runs, way_clicks)
        way.release()
    return ways


def pytorch_ways(name: str, settings: BenchSettings, random_weights: bool, attentions: tuple[str, ...]
                 ) -> Iterator[Way]:
    """Each PyTorch dtype asked for, with each attention (stock first: it is the model as loaded). Made one at a
    time as they are consumed: the fast attention goes into the same model once its stock row is measured (in
    an interleaved run, where every row is held at once, the stock row gets a copy)."""
    for dtype in (d for d in settings.dtypes if d in DTYPES):
        if random_weights:
            model, processor = random_model(name, settings.seed, settings.device, DTYPES[dtype])
        else:
            model, processor = load_model(name, device=settings.device, dtype=DTYPES[dtype], fast=False)
        for attention in sorted(attentions, key=ATTENTIONS.index, reverse=True):
            if attention == "fast":
                enable_fast_attention(model)
                if settings.compile:
                    compile_encoder(model)
            copied = attention == "stock" and "fast" in attentions and settings.interleave
            yield pytorch_way(name, copy.deepcopy(model) if copied else model, processor, attention, settings)
        del model
        if settings.device.startswith("cuda"):
            torch.cuda.empty_cache()


def export_ways(name: str, folder: str | Path, settings: BenchSettings) -> Iterator[Way]:
    """Each variant asked for that the export in `folder` has, on onnxruntime (as many threads as torch)."""
    for variant in (v for v in exported_variants(folder) if v in settings.dtypes):
        export, processor = load_export(folder, variant, threads=torch.get_num_threads())
        yield export_way(name, export, processor, settings)


def exported_ways(name: str, settings: BenchSettings, random_weights: bool, log: Callable[[str], None]
                  ) -> Iterator[Way]:
    """onnxruntime rows of a PyTorch model: exported on the fly (fp32 and the other variants asked for, with
    the equivalence report) into a temporary folder; none, with a line saying why, when the export fails."""
    variants = [v for v in ONNX_DTYPES if v in settings.dtypes]
    if not variants:
        return
    if random_weights:
        model, processor = random_model(name, settings.seed)
    else:
        model, processor = load_model(name, fast=False)
    quantize = ["none"] + [v for v in variants if v != "fp32"]
    with tempfile.TemporaryDirectory(prefix="slimsam-bench-") as tmp:
        log(f"{name}: exporting to ONNX ({', '.join(variants)}) for onnxruntime...")
        try:
            report = export_onnx(model, processor, Path(tmp) / "onnx", quantize=quantize, log_progress=log)
        except ExportError as error:
            log(f"{name}: no onnxruntime rows: {error}")
            return
        log(f"{name}: exported; against PyTorch: {summary_line(report)}")
        del model
        # onnxruntime holds the graphs once a session is open, so an interleaved run may close the folder early
        yield from export_ways(name, Path(tmp) / "onnx", settings)


def model_ways(name: str, settings: BenchSettings, random_weights: bool, attentions: tuple[str, ...],
               log: Callable[[str], None]) -> Iterator[Way]:
    """The rows of one model: an ONNX export folder's variants on onnxruntime; any other model on each of
    settings.runtimes."""
    if is_onnx_export(name):
        yield from export_ways(name, name, settings)
        return
    if "pytorch" in settings.runtimes:
        yield from pytorch_ways(name, settings, random_weights, attentions)
    if "onnxruntime" in settings.runtimes:
        yield from exported_ways(name, settings, random_weights, log)


def benchmark_model(name: str, model: SamModel, processor: SamProcessor, attention: str,
                    settings: BenchSettings) -> tuple[ModelResult, torch.Tensor]:
    """Measure one PyTorch model as it is (its attention modules and dtype already chosen); returns the row and
    its batch-1 image embedding (1, C, h, w)."""
    way = measure_alone(pytorch_way(name, model, processor, attention, settings), settings, lambda message: None)
    return way.result, way.embedding


def encoder_speedup(base: ModelResult, result: ModelResult, paired: bool) -> float:
    """base's encoder time / result's: with `paired` runs (interleaved rounds), the median of the ratios of the
    runs of each round; otherwise the ratio of the medians."""
    if paired and len(base.encoder_ms_runs) == len(result.encoder_ms_runs):
        return statistics.median(b / t for b, t in zip(base.encoder_ms_runs, result.encoder_ms_runs))
    return base.encoder_ms_median / result.encoder_ms_median


def compare_ways(ways: list[Way], paired: bool) -> None:
    """Fill in each row's comparisons: with its model's first fp32 row (encoder speed-up; embedding, mask logits
    and IoU on the same image and clicks) and, for a fast row, with the stock row of the same model and dtype
    (embedding)."""
    fp32: dict[str, Way] = {}
    stock: dict[tuple[str, str, str], Way] = {}
    for way in ways:
        result = way.result
        if result.dtype == "fp32":
            fp32.setdefault(result.name, way)
        if result.attention == "stock":
            stock.setdefault((result.name, result.runtime, result.dtype), way)
    for way in ways:
        result, base = way.result, fp32.get(way.result.name)
        if base is not None and base is not way:
            result.speedup_vs_fp32 = encoder_speedup(base.result, result, paired)
            result.embedding_max_abs_diff_vs_fp32 = (way.embedding - base.embedding).abs().max().item()
            if way.agreement_logits is not None and base.agreement_logits is not None:
                difference = (way.agreement_logits - base.agreement_logits).abs().max().item()
                result.mask_logits_max_abs_diff_vs_fp32 = difference
                result.mask_iou_vs_fp32 = mask_iou(way.agreement_logits > 0, base.agreement_logits > 0).mean().item()
        twin = stock.get((result.name, result.runtime, result.dtype))
        if result.attention == "fast" and twin is not None:
            result.max_abs_diff_vs_stock = (way.embedding - twin.embedding).abs().max().item()
            result.extra["stock_embedding_max_abs"] = twin.embedding.abs().max().item()


def benchmark_models(names: list[str], settings: BenchSettings, random_weights: bool = False,
                     attentions: tuple[str, ...] = ("fast",), reference: str | None = None,
                     log: Callable[[str], None] = print) -> list[ModelResult]:
    """Benchmark each model with each runtime, dtype and attention; fill in the ratios and the comparisons.

    names: aliases, Hub ids or folders, or with random_weights names from RANDOM_CONFIGS; ONNX export folders
    run on onnxruntime (their variants among settings.dtypes). Other models run on each of settings.runtimes
    (onnxruntime: exported on the fly). One row's model in memory at a time, or with settings.interleave all
    of them at once, timed in turns (measure_interleaved).
    reference: the model the ratios are to (default: sam-h when benchmarked, else the first name), each
    row's ratio taken to the reference row with the same attention, runtime and dtype. Each row is compared
    with its model's fp32 row, and each fast row with its stock twin (compare_ways).
    """
    ways = (way for name in names for way in model_ways(name, settings, random_weights, attentions, log))
    if settings.interleave:
        measured = measure_interleaved(list(ways), settings, log)
    else:
        measured = [measure_alone(way, settings, log) for way in ways]
    if not measured:
        raise NothingToMeasure(f"nothing to measure: no runtime among {settings.runtimes} runs dtypes "
                               f"{settings.dtypes} of {', '.join(names)}")
    compare_ways(measured, paired=settings.interleave)
    results = [way.result for way in measured]
    reference = reference or ("sam-h" if "sam-h" in names else names[0])
    bases = {(r.attention, r.runtime, r.dtype): r for r in results if r.name == reference}
    if not bases:
        raise ValueError(f"reference {reference!r} is not among the benchmarked models {names}")
    for result in results:
        base = bases.get((result.attention, result.runtime, result.dtype))
        if base is not None:
            result.speedup_vs_reference = encoder_speedup(base, result, paired=settings.interleave)
            if base.macs and result.macs:
                result.macs_ratio_vs_reference = base.macs / result.macs
    return results


# CPU features that decide which dtypes run fast: bf16 and fp16 arithmetic, int8 dot products, AMX tiles
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8")


def cpu_description() -> dict:
    """The CPU's model name and which of CPU_FLAGS it has (Linux /proc/cpuinfo, what `lscpu` reads; {} elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", "?"), "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags]}


def machine_description(device: str) -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            **cpu_description(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _scaled(value: float | None, scale: float, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}{unit}"


def _vs_fp32(r: ModelResult) -> str:
    if r.embedding_max_abs_diff_vs_fp32 is None:
        return "-"
    iou = "-" if r.mask_iou_vs_fp32 is None else f"{r.mask_iou_vs_fp32:.3f}"
    return f"{r.speedup_vs_fp32:.2f}x; {r.embedding_max_abs_diff_vs_fp32:.1e}; {iou}"


def markdown_table(results: list[ModelResult], reference: str) -> str:
    """One row per (model, runtime and dtype, attention); ratios are to `reference` measured the same way."""
    header = (f"| model | runtime | attention | params | encoder MACs | encoder ms (median, min-max) "
              f"| speed-up vs {reference} | MACs ratio vs {reference} | images/s (batch) | decode ms/click (median) "
              f"| peak MiB | max abs diff vs stock (embedding; mask logits) "
              f"| vs fp32 (encoder speed-up; embedding max abs diff; mask IoU) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = "; ".join("-" if d is None else f"{d:.1e}" for d in (r.max_abs_diff_vs_stock,
                                                                   r.decode_max_abs_diff_vs_stock))
        throughput = "-" if r.throughput_images_per_s is None else f"{r.throughput_images_per_s:.3g}"
        attention = f"{r.attention}, compiled" if r.compiled else r.attention
        speedup = "-" if r.speedup_vs_reference is None else f"{r.speedup_vs_reference:.2f}x"
        macs_ratio = "-" if r.macs_ratio_vs_reference is None else f"{r.macs_ratio_vs_reference:.1f}x"
        lines.append(f"| {r.name} | {r.runtime} {r.dtype} | {attention} | {_scaled(r.params, 1e6, 'M')} "
                     f"| {_scaled(r.macs, 1e9, 'G', 1)} "
                     f"| {_ms(r.encoder_ms_median)} ({_ms(r.encoder_ms_min)}-{_ms(r.encoder_ms_max)}) "
                     f"| {speedup} | {macs_ratio} | {throughput} "
                     f"| {_ms(r.decode_ms_median)} | {r.peak_memory_mb:,.0f} | {diff} | {_vs_fp32(r)} |")
    return "\n".join(lines)


def write_json(results: list[ModelResult], path: str | Path, settings: BenchSettings, reference: str,
               command: str) -> None:
    """{"machine", "settings", "command", "reference", "models": [one object per row]}."""
    data = {"machine": machine_description(settings.device), "settings": asdict(settings), "command": command,
            "reference": reference, "models": [asdict(r) for r in results]}
    Path(path).write_text(json.dumps(data, indent=2))


def plot_chart(results: list[ModelResult], path: str | Path, title: str) -> None:
    """Encoder latency against parameters, both on log scales; one marker per (runtime and dtype, attention)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    ways = list(dict.fromkeys((r.runtime, r.dtype, r.attention) for r in results if r.params))
    for (runtime, dtype, attention), marker in zip(ways, "os^vD<>ph*"):
        rows = [r for r in results if (r.runtime, r.dtype, r.attention) == (runtime, dtype, attention) and r.params]
        axes.scatter([r.params for r in rows], [r.encoder_ms_median for r in rows], marker=marker,
                     label=f"{runtime} {dtype}, {attention} attention")
        for r in rows:
            axes.annotate(r.name, (r.params, r.encoder_ms_median), textcoords="offset points", xytext=(5, 3),
                          fontsize=8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("parameters (whole SamModel)")
    axes.set_ylabel("encoder latency, batch 1 (ms, median)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def profile_encoder(model: SamModel, pixel_values: torch.Tensor) -> dict[str, float]:
    """Milliseconds of one encoder forward by kind of work (CPU self time of each aten op, summed).

    Kinds: "Linear and conv", "attention kernel" (SDPA, or the eager path's softmax and batched matmuls),
    "rel-pos bias" (the einsums and the additions that build the bias; the residual additions, under 1%
    for SAM's shapes, land here too), "copies" (reshapes into contiguous memory, padding, concatenation),
    "layer norms", "other".
    """
    from torch.profiler import ProfilerActivity, profile

    kinds = {"aten::addmm": "Linear and conv", "aten::mm": "Linear and conv",
             "aten::mkldnn_convolution": "Linear and conv", "aten::_slow_conv2d_forward": "Linear and conv",
             "aten::convolution": "Linear and conv",
             "aten::bmm": "attention kernel", "aten::_softmax": "attention kernel",
             "aten::add": "rel-pos bias", "aten::add_": "rel-pos bias",
             "aten::copy_": "copies", "aten::cat": "copies", "aten::constant_pad_nd": "copies",
             "aten::fill_": "copies", "aten::clone": "copies",
             "aten::native_layer_norm": "layer norms"}
    encoder = model.vision_encoder
    with torch.inference_mode():
        encoder(pixel_values)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            encoder(pixel_values)
    totals: dict[str, float] = {}
    for event in profiler.key_averages():
        if "scaled_dot_product" in event.key and "attention_math" not in event.key:
            kind = "attention kernel"
        else:
            kind = kinds.get(event.key, "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1000
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def profile_table(profiles: dict[str, dict[str, float]]) -> str:
    """Markdown: one column per profiled variant, ms and share of its total."""
    kinds = list(next(iter(profiles.values())))
    for totals in profiles.values():
        kinds += [k for k in totals if k not in kinds]
    lines = ["| work | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    for kind in kinds:
        cells = []
        for totals in profiles.values():
            ms, total = totals.get(kind, 0.0), sum(totals.values())
            cells.append(f"{ms:,.0f} ms ({100 * ms / total:.0f}%)")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(f"{sum(t.values()):,.0f} ms" for t in profiles.values()) + " |")
    return "\n".join(lines)


def stock_and_fast_profiles(model: SamModel, pixel_values: torch.Tensor) -> dict[str, dict[str, float]]:
    """profile_encoder of the model with transformers' attention, then with the fast one (on a copy)."""
    fast = copy.deepcopy(model)
    enable_fast_attention(fast)
    return {"stock attention": profile_encoder(model, pixel_values),
            "fast attention": profile_encoder(fast, pixel_values)}
