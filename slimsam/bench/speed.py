"""Speed benchmarks of SAM image encoders and mask decoders, measured as ratios within one run.

For each model: encoder latency at batch 1 (median and spread over repeated runs after a warm-up run),
encoder throughput at a larger batch, decode latency per click with a cached image embedding (through
`SamPredictor.predict`), peak memory, parameters and MACs. `benchmark_models` runs every model in one
process, so the ratios to the reference model are taken on the same machine under the same load.

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
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import SamModel, SamProcessor

from slimsam.infer.predictor import SamPredictor
from slimsam.model.checkpoints import load_model
from slimsam.model.compiled import compile_encoder
from slimsam.model.fast_attention import enable_fast_attention
from slimsam.model.random_weights import random_model
from slimsam.model.stats import count_parameters, encoder_macs

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTIONS = ("fast", "stock")


@dataclass
class BenchSettings:
    device: str = "cpu"
    dtype: str = "fp32"
    repeats: int = 5  # timed batch-1 encoder runs, after one untimed run (which measures peak memory) ...
    budget_s: float = math.inf  # ... fewer (at least 2) once the timed runs of a model have taken this long
    batch: int = 8  # throughput batch; 0 skips the throughput measurement
    decode_repeats: int = 20  # 0 skips the decode measurement
    seed: int = 0
    compile: bool = False  # torch.compile the fast rows' encoders (slimsam.model.compiled); compiling is not timed
    heap_kept: bool = False  # whether slimsam.infer.heap.keep_freed_memory_in_heap was in effect (the CLI's default)


@dataclass
class ModelResult:
    """One row of the benchmark: times in milliseconds, memory in MiB, MACs of one 1024x1024 encoder pass."""

    name: str
    attention: str  # "fast" (slimsam.model.fast_attention encoding, slimsam.infer.fast_decoder clicks) or "stock" (SamModel as is)
    compiled: bool  # the encoder ran under torch.compile (fast rows with BenchSettings.compile)
    params: int  # whole SamModel
    encoder_params: int
    macs: int  # encoder Linear + conv MACs (the SlimSAM paper's convention)
    macs_with_attention: int
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
    speedup_vs_reference: float | None = None  # reference encoder ms (same attention) / this encoder ms
    macs_ratio_vs_reference: float | None = None  # reference MACs / these MACs
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


def benchmark_model(name: str, model: SamModel, processor: SamProcessor, attention: str,
                    settings: BenchSettings) -> tuple[ModelResult, torch.Tensor]:
    """Measure one model as it is (its attention modules already chosen); returns the row and its embedding."""
    device = next(model.parameters()).device
    dtype = DTYPES[settings.dtype]
    size = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(settings.seed)
    pixels = torch.randn(max(settings.batch, 1), 3, size, size, generator=generator).to(device, dtype)
    encoder = model.vision_encoder
    compiled = settings.compile and attention == "fast"
    # A compiled encoder compiles on its first call per shape, and records CUDA graphs on the next ones.
    extra_warmup = 3 if compiled else 0
    with torch.inference_mode():
        one = pixels[:1]
        for _ in range(extra_warmup):
            encoder(one)
        memory, output = peak_memory_mb(lambda: encoder(one), device)  # also the warm-up run
        embedding = output.last_hidden_state.float().clone()
        runs = time_calls(lambda: encoder(one), device, 0, settings.repeats, settings.budget_s)
        throughput = None
        if settings.batch:
            batch_runs = time_calls(lambda: encoder(pixels), device, warmup=extra_warmup, repeats=1)
            throughput = settings.batch / (batch_runs[0] / 1000)
    params, macs = count_parameters(model), encoder_macs(model)
    result = ModelResult(name=name, attention=attention, compiled=compiled, params=params["total"],
                         encoder_params=params["encoder"], macs=macs["linear_conv"], macs_with_attention=macs["total"],
                         encoder_ms_median=statistics.median(runs), encoder_ms_min=min(runs),
                         encoder_ms_max=max(runs), encoder_ms_runs=runs, peak_memory_mb=memory,
                         throughput_images_per_s=throughput)
    if settings.decode_repeats:
        fast = attention == "fast"
        rng = np.random.default_rng(settings.seed)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        predictor = SamPredictor(model, processor, cache_size=1, fast_decoder=fast)
        predictor.set_image(image)  # encoded once, for the timed clicks and the comparison
        decode = time_decode(predictor, settings.decode_repeats, rng)
        result.decode_ms_median, result.decode_ms_min, result.decode_ms_max = \
            statistics.median(decode), min(decode), max(decode)
        if fast:
            result.decode_max_abs_diff_vs_stock, result.extra["stock_mask_logits_max_abs"] = \
                decoder_difference(predictor, image, rng)
    return result, embedding


def benchmark_models(names: list[str], settings: BenchSettings, random_weights: bool = False,
                     attentions: tuple[str, ...] = ("fast",), reference: str | None = None,
                     log: Callable[[str], None] = print) -> list[ModelResult]:
    """Benchmark each model with each attention, one model in memory at a time; fill in the ratios.

    names: aliases, Hub ids or folders, or with random_weights names from RANDOM_CONFIGS.
    reference: the model the ratios are to (default: sam-h when benchmarked, else the first name), each
    row's ratio taken to the reference row with the same attention. With both attentions, each fast row
    records its max abs difference from the stock row's image embedding (same weights, same input).
    """
    device, dtype = torch.device(settings.device), DTYPES[settings.dtype]
    results = []
    for name in names:
        if random_weights:
            model, processor = random_model(name, settings.seed, settings.device, dtype)
        else:
            model, processor = load_model(name, device=settings.device, dtype=dtype, fast=False)
        stock_embedding = None
        for attention in sorted(attentions, key=ATTENTIONS.index, reverse=True):  # stock first: it is unmodified
            if attention == "fast":
                enable_fast_attention(model)
                if settings.compile:
                    compile_encoder(model)
            log(f"{name} ({attention} attention, {settings.device}, {settings.dtype})...")
            result, embedding = benchmark_model(name, model, processor, attention, settings)
            if attention == "stock":
                stock_embedding = embedding
            elif stock_embedding is not None:
                result.max_abs_diff_vs_stock = (embedding - stock_embedding).abs().max().item()
                result.extra["stock_embedding_max_abs"] = stock_embedding.abs().max().item()
            log(f"  encoder {result.encoder_ms_median:.1f} ms median")
            results.append(result)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    reference = reference or ("sam-h" if "sam-h" in names else names[0])
    bases = {r.attention: r for r in results if r.name == reference}
    if not bases:
        raise ValueError(f"reference {reference!r} is not among the benchmarked models {names}")
    for result in results:
        base = bases[result.attention]
        result.speedup_vs_reference = base.encoder_ms_median / result.encoder_ms_median
        result.macs_ratio_vs_reference = base.macs / result.macs
    return results


def machine_description(device: str) -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def markdown_table(results: list[ModelResult], reference: str) -> str:
    """One row per (model, attention); ratios are to `reference` with the same attention."""
    lines = [f"| model | attention | params | encoder MACs | encoder ms (median, min-max) | speed-up vs {reference} "
             f"| MACs ratio vs {reference} | images/s (batch) | decode ms/click (median) | peak MiB "
             f"| max abs diff vs stock (embedding; mask logits) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = "; ".join("-" if d is None else f"{d:.1e}" for d in (r.max_abs_diff_vs_stock,
                                                                   r.decode_max_abs_diff_vs_stock))
        throughput = "-" if r.throughput_images_per_s is None else f"{r.throughput_images_per_s:.3g}"
        attention = f"{r.attention}, compiled" if r.compiled else r.attention
        lines.append(f"| {r.name} | {attention} | {r.params / 1e6:.2f}M | {r.macs / 1e9:.1f}G "
                     f"| {_ms(r.encoder_ms_median)} ({_ms(r.encoder_ms_min)}-{_ms(r.encoder_ms_max)}) "
                     f"| {r.speedup_vs_reference:.2f}x | {r.macs_ratio_vs_reference:.1f}x | {throughput} "
                     f"| {_ms(r.decode_ms_median)} | {r.peak_memory_mb:,.0f} | {diff} |")
    return "\n".join(lines)


def write_json(results: list[ModelResult], path: str | Path, settings: BenchSettings, reference: str,
               command: str) -> None:
    """{"machine", "settings", "command", "reference", "models": [one object per (model, attention)]}."""
    data = {"machine": machine_description(settings.device), "settings": asdict(settings), "command": command,
            "reference": reference, "models": [asdict(r) for r in results]}
    Path(path).write_text(json.dumps(data, indent=2))


def plot_chart(results: list[ModelResult], path: str | Path, title: str) -> None:
    """Encoder latency against parameters, both on log scales; one marker per (model, attention)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for attention, marker in zip(ATTENTIONS, ("o", "s")):
        rows = [r for r in results if r.attention == attention]
        if rows:
            axes.scatter([r.params for r in rows], [r.encoder_ms_median for r in rows], marker=marker,
                         label=f"{attention} attention")
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
