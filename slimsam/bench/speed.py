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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import SamModel, SamProcessor

from slimsam.deploy.onnx_export import ExportError, export_onnx
from slimsam.evaluate.masks import mask_iou
from slimsam.infer.onnx_runtime import OnnxSam, exported_variants, is_onnx_export, load_export, read_report
from slimsam.infer.predictor import ONNX_DTYPES, TORCH_DTYPES, SamPredictor
from slimsam.model.checkpoints import load_model
from slimsam.model.compiled import compile_encoder
from slimsam.model.fast_attention import enable_fast_attention
from slimsam.model.random_weights import random_model
from slimsam.model.stats import count_parameters, encoder_macs

DTYPES = TORCH_DTYPES  # PyTorch weights
ALL_DTYPES = (*DTYPES, *(dtype for dtype in ONNX_DTYPES if dtype not in DTYPES))  # fp32, bf16, fp16, int8
ATTENTIONS = ("fast", "stock")
AGREEMENT_CLICKS = 8  # single-point prompts every row answers, to compare its masks with its model's fp32 row


class NothingToMeasure(ValueError):
    """Raised when no runtime asked for runs any dtype asked for on the models given."""


@dataclass
class BenchSettings:
    device: str = "cpu"
    dtypes: tuple[str, ...] = ("fp32",)  # each runtime measures those it has (PyTorch: fp32 bf16 fp16; onnxruntime: fp32 int8 fp16)
    runtimes: tuple[str, ...] = ("pytorch",)  # for models that are not ONNX exports (those run on onnxruntime)
    repeats: int = 5  # timed batch-1 encoder runs, after one untimed run (which measures peak memory) ...
    budget_s: float = math.inf  # ... fewer (at least 2) once the timed runs of a model have taken this long
    batch: int = 8  # throughput batch; 0 skips the throughput measurement
    decode_repeats: int = 20  # 0 skips the decode measurement (and the masks' comparison)
    seed: int = 0
    compile: bool = False  # torch.compile the fast rows' encoders (slimsam.model.compiled); compiling is not timed
    heap_kept: bool = False  # whether slimsam.infer.heap.keep_freed_memory_in_heap was in effect (the CLI's default)


@dataclass
class ModelResult:
    """One row of the benchmark: times in milliseconds, memory in MiB, MACs of one 1024x1024 encoder pass."""

    name: str
    attention: str  # "fast" (slimsam.model.fast_attention encoding, slimsam.infer.fast_decoder clicks) or "stock" (SamModel as is; ONNX graphs)
    compiled: bool  # the encoder ran under torch.compile (fast rows with BenchSettings.compile)
    params: int | None  # whole SamModel (None: an ONNX export without its report)
    encoder_params: int | None
    macs: int | None  # encoder Linear + conv MACs (the SlimSAM paper's convention)
    macs_with_attention: int | None
    encoder_ms_median: float
    encoder_ms_min: float
    encoder_ms_max: float
    encoder_ms_runs: list[float]
    peak_memory_mb: float
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
    # against the model's first fp32 row (same image, same clicks): embedding, low-res mask logits, mean mask IoU
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
class Measured:
    """What a row keeps beyond its ModelResult, to compare later rows of the same model with it."""

    result: ModelResult
    embedding: torch.Tensor  # (1, C, h, w) float32, batch-1 encoder output on the benchmark's pixels
    agreement_logits: torch.Tensor | None  # (AGREEMENT_CLICKS, 3, h', w') low-res logits, None without decoding


def time_encoder(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, device: torch.device,
                 settings: BenchSettings, extra_warmup: int = 0) -> dict:
    """Peak memory (the warm-up run), batch-1 runs, throughput at settings.batch, and the batch-1 embedding."""
    one = pixels[:1]
    for _ in range(extra_warmup):
        encode(one)
    memory, output = peak_memory_mb(lambda: encode(one), device)  # also the warm-up run
    timed = {"peak_memory_mb": memory, "embedding": output.float().clone(),
             "runs": time_calls(lambda: encode(one), device, 0, settings.repeats, settings.budget_s),
             "throughput": None}
    if settings.batch:
        batch_runs = time_calls(lambda: encode(pixels), device, warmup=extra_warmup, repeats=1)
        timed["throughput"] = settings.batch / (batch_runs[0] / 1000)
    return timed


def time_clicks(result: ModelResult, predictor: SamPredictor, settings: BenchSettings, size: int,
                compare_decoders: bool) -> torch.Tensor | None:
    """Decode latency into `result` (and fast vs stock decoder when `compare_decoders`); returns the low-res
    logits of the agreement clicks, on the same random image for every row of a model."""
    if not settings.decode_repeats:
        return None
    rng = np.random.default_rng(settings.seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    predictor.set_image(image)  # encoded once, for the timed clicks and the comparisons
    decode = time_decode(predictor, settings.decode_repeats, rng)
    result.decode_ms_median, result.decode_ms_min, result.decode_ms_max = \
        statistics.median(decode), min(decode), max(decode)
    if compare_decoders:
        result.decode_max_abs_diff_vs_stock, result.extra["stock_mask_logits_max_abs"] = \
            decoder_difference(predictor, image, rng)
    points = np.random.default_rng(settings.seed + 1).uniform(0, size, (AGREEMENT_CLICKS, 1, 2))
    return predictor.decode_low_res(points, np.ones((AGREEMENT_CLICKS, 1), dtype=np.int64))[0].float()


def _dtype_name(model: SamModel) -> str:
    dtype = next(model.parameters()).dtype
    return next(name for name, torch_dtype in DTYPES.items() if torch_dtype == dtype)


def benchmark_model(name: str, model: SamModel, processor: SamProcessor, attention: str,
                    settings: BenchSettings) -> tuple[ModelResult, torch.Tensor, torch.Tensor | None]:
    """Measure one PyTorch model as it is (its attention modules and dtype already chosen); returns the row, its
    batch-1 embedding and its agreement clicks' logits (see Measured)."""
    device = next(model.parameters()).device
    size = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(settings.seed)
    pixels = torch.randn(max(settings.batch, 1), 3, size, size, generator=generator).to(device,
                                                                                        next(model.parameters()).dtype)
    encoder = model.vision_encoder
    compiled = settings.compile and attention == "fast"
    # A compiled encoder compiles on its first call per shape, and records CUDA graphs on the next ones.
    with torch.inference_mode():
        timed = time_encoder(lambda x: encoder(x).last_hidden_state, pixels, device, settings,
                             extra_warmup=3 if compiled else 0)
    params, macs = count_parameters(model), encoder_macs(model)
    runs = timed["runs"]
    result = ModelResult(name=name, attention=attention, compiled=compiled, params=params["total"],
                         encoder_params=params["encoder"], macs=macs["linear_conv"], macs_with_attention=macs["total"],
                         encoder_ms_median=statistics.median(runs), encoder_ms_min=min(runs),
                         encoder_ms_max=max(runs), encoder_ms_runs=runs, peak_memory_mb=timed["peak_memory_mb"],
                         throughput_images_per_s=timed["throughput"], dtype=_dtype_name(model))
    fast = attention == "fast"
    predictor = SamPredictor(model, processor, cache_size=1, fast_decoder=fast)
    logits = time_clicks(result, predictor, settings, size, compare_decoders=fast)
    return result, timed["embedding"], logits


def benchmark_export(name: str, export: OnnxSam, processor: SamProcessor,
                     settings: BenchSettings) -> tuple[ModelResult, torch.Tensor, torch.Tensor | None]:
    """Measure one variant of an ONNX export on onnxruntime (CPU, as many threads as torch uses); parameters and
    MACs come from the export's report. Returns what benchmark_model returns."""
    size = processor.image_processor.pad_size["height"]
    generator = torch.Generator().manual_seed(settings.seed)
    pixels = torch.randn(max(settings.batch, 1), 3, size, size, generator=generator)
    timed = time_encoder(lambda x: export.encode(x)[0], pixels, torch.device("cpu"), settings)
    report = read_report(export.folder)
    runs = timed["runs"]
    result = ModelResult(name=name, attention="stock", compiled=False, params=report.get("params"),
                         encoder_params=report.get("encoder_params"), macs=report.get("encoder_macs"),
                         macs_with_attention=report.get("encoder_macs_with_attention"),
                         encoder_ms_median=statistics.median(runs), encoder_ms_min=min(runs),
                         encoder_ms_max=max(runs), encoder_ms_runs=runs, peak_memory_mb=timed["peak_memory_mb"],
                         throughput_images_per_s=timed["throughput"], runtime="onnxruntime", dtype=export.variant)
    logits = time_clicks(result, SamPredictor(export, processor, cache_size=1), settings, size, compare_decoders=False)
    return result, timed["embedding"], logits


def _pytorch_rows(name: str, settings: BenchSettings, random_weights: bool, attentions: tuple[str, ...],
                  log: Callable[[str], None]) -> list[Measured]:
    """Each PyTorch dtype asked for, with each attention (stock first: it is the model as loaded)."""
    rows = []
    for dtype in (d for d in settings.dtypes if d in DTYPES):
        if random_weights:
            model, processor = random_model(name, settings.seed, settings.device, DTYPES[dtype])
        else:
            model, processor = load_model(name, device=settings.device, dtype=DTYPES[dtype], fast=False)
        stock_embedding = None
        for attention in sorted(attentions, key=ATTENTIONS.index, reverse=True):
            if attention == "fast":
                enable_fast_attention(model)
                if settings.compile:
                    compile_encoder(model)
            log(f"{name} (pytorch {dtype}, {attention} attention, {settings.device})...")
            result, embedding, logits = benchmark_model(name, model, processor, attention, settings)
            if attention == "stock":
                stock_embedding = embedding
            elif stock_embedding is not None:
                result.max_abs_diff_vs_stock = (embedding - stock_embedding).abs().max().item()
                result.extra["stock_embedding_max_abs"] = stock_embedding.abs().max().item()
            log(f"  encoder {result.encoder_ms_median:.1f} ms median")
            rows.append(Measured(result, embedding, logits))
        del model
        if settings.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _export_rows(name: str, folder: str | Path, settings: BenchSettings, log: Callable[[str], None]) -> list[Measured]:
    """Each variant asked for that the export in `folder` has, on onnxruntime."""
    rows = []
    for variant in (v for v in exported_variants(folder) if v in settings.dtypes):
        export, processor = load_export(folder, variant, threads=torch.get_num_threads())
        log(f"{name} (onnxruntime {variant})...")
        result, embedding, logits = benchmark_export(name, export, processor, settings)
        log(f"  encoder {result.encoder_ms_median:.1f} ms median")
        rows.append(Measured(result, embedding, logits))
    return rows


def _exported_rows(name: str, settings: BenchSettings, random_weights: bool,
                   log: Callable[[str], None]) -> list[Measured]:
    """onnxruntime rows of a PyTorch model: exported on the fly (fp32 and the other variants asked for) into a
    temporary folder; none, with a line saying why, when the model cannot be exported (SAM-H: over 2 GiB)."""
    variants = [v for v in ONNX_DTYPES if v in settings.dtypes]
    if not variants:
        return []
    if random_weights:
        model, processor = random_model(name, settings.seed)
    else:
        model, processor = load_model(name, fast=False)
    quantize = ["none"] + [v for v in variants if v != "fp32"]
    with tempfile.TemporaryDirectory(prefix="slimsam-bench-") as tmp:
        log(f"{name}: exporting to ONNX ({', '.join(variants)}) for onnxruntime...")
        try:
            export_onnx(model, processor, Path(tmp) / "onnx", quantize=quantize, log_progress=log)
        except ExportError as error:
            log(f"{name}: no onnxruntime rows: {error}")
            return []
        del model
        return _export_rows(name, Path(tmp) / "onnx", settings, log)


def compare_with_fp32(rows: list[Measured]) -> None:
    """Fill in each row's differences from the first fp32 row of the same model (which is itself, for that one)."""
    baselines: dict[str, Measured] = {}
    for row in rows:
        base = baselines.setdefault(row.result.name, row) if row.result.dtype == "fp32" else \
            baselines.get(row.result.name)
        if base is None or base is row:
            continue
        result = row.result
        result.embedding_max_abs_diff_vs_fp32 = (row.embedding - base.embedding).abs().max().item()
        if row.agreement_logits is not None and base.agreement_logits is not None:
            result.mask_logits_max_abs_diff_vs_fp32 = (row.agreement_logits - base.agreement_logits).abs().max().item()
            result.mask_iou_vs_fp32 = mask_iou(row.agreement_logits > 0, base.agreement_logits > 0).mean().item()


def benchmark_models(names: list[str], settings: BenchSettings, random_weights: bool = False,
                     attentions: tuple[str, ...] = ("fast",), reference: str | None = None,
                     log: Callable[[str], None] = print) -> list[ModelResult]:
    """Benchmark each model with each runtime, dtype and attention, one model in memory at a time; fill in the
    ratios and the comparisons with each model's fp32 row.

    names: aliases, Hub ids or folders, or with random_weights names from RANDOM_CONFIGS; ONNX export folders
    run on onnxruntime (their variants among settings.dtypes). Other models run on each of settings.runtimes
    (onnxruntime: exported on the fly).
    reference: the model the ratios are to (default: sam-h when benchmarked, else the first name), each
    row's ratio taken to the reference row with the same attention, runtime and dtype. With both attentions,
    each fast row records its max abs difference from the stock row's image embedding (same weights, same input).
    """
    rows: list[Measured] = []
    for name in names:
        if is_onnx_export(name):
            rows += _export_rows(name, name, settings, log)
            continue
        if "pytorch" in settings.runtimes:
            rows += _pytorch_rows(name, settings, random_weights, attentions, log)
        if "onnxruntime" in settings.runtimes:
            rows += _exported_rows(name, settings, random_weights, log)
    if not rows:
        raise NothingToMeasure(f"nothing to measure: no runtime among {settings.runtimes} runs dtypes {settings.dtypes} "
                         f"of {', '.join(names)}")
    compare_with_fp32(rows)
    results = [row.result for row in rows]
    reference = reference or ("sam-h" if "sam-h" in names else names[0])
    bases = {(r.attention, r.runtime, r.dtype): r for r in results if r.name == reference}
    if not bases:
        raise ValueError(f"reference {reference!r} is not among the benchmarked models {names}")
    for result in results:
        base = bases.get((result.attention, result.runtime, result.dtype))
        if base is not None:
            result.speedup_vs_reference = base.encoder_ms_median / result.encoder_ms_median
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
    return f"{r.embedding_max_abs_diff_vs_fp32:.1e}; {iou}"


def markdown_table(results: list[ModelResult], reference: str) -> str:
    """One row per (model, runtime and dtype, attention); ratios are to `reference` measured the same way."""
    header = (f"| model | runtime | attention | params | encoder MACs | encoder ms (median, min-max) "
              f"| speed-up vs {reference} | MACs ratio vs {reference} | images/s (batch) | decode ms/click (median) "
              f"| peak MiB | max abs diff vs stock (embedding; mask logits) | vs fp32 (embedding max abs diff; mask IoU) |")
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
