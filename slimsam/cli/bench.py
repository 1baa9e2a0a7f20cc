"""`slimsam bench MODEL... [--random-weights] [--runtime pytorch onnxruntime] [--dtype fp32 bf16 int8 ...]
[--interleave] [--json PATH]`: encoder and decoder speed, on PyTorch and on onnxruntime (ONNX export folders, or
models exported on the fly)."""
from __future__ import annotations

import math
import shlex
import sys

import torch

from slimsam.bench.speed import (
    ATTENTIONS,
    BenchSettings,
    NothingToMeasure,
    benchmark_models,
    markdown_table,
    plot_chart,
    write_json,
)
from slimsam.cli.args import add_device, non_negative_int, positive_int
from slimsam.cli.errors import CliError
from slimsam.infer.heap import keep_freed_memory_in_heap
from slimsam.infer.onnx_runtime import is_onnx_export
from slimsam.infer.predictor import ALL_DTYPES, RUNTIMES
from slimsam.model.random_weights import RANDOM_CONFIGS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="encoder latency/throughput, decode latency, memory, params, MACs")
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="aliases, Hub ids or local folders; ONNX export folders run on onnxruntime")
    parser.add_argument("--random-weights", action="store_true",
                        help=f"real-size architectures with random weights, no download ({', '.join(RANDOM_CONFIGS)})")
    add_device(parser)
    parser.add_argument("--runtime", nargs="+", choices=RUNTIMES, default=["pytorch"],
                        help="for models that are not ONNX exports: pytorch (default) and/or onnxruntime (the model is "
                             "exported to a temporary folder first, with the variants --dtype asks for)")
    parser.add_argument("--dtype", nargs="+", choices=ALL_DTYPES, default=["fp32"],
                        help="one or more; each runtime measures those it has: pytorch fp32, bf16, fp16 (weights); "
                             "onnxruntime fp32, int8, fp16 (the export's variants). Default fp32")
    parser.add_argument("--attention", choices=(*ATTENTIONS, "both"), default="fast",
                        help="fast (default, as load_model and SamPredictor give): slimsam.model.fast_attention in the "
                             "encoder and slimsam.infer.fast_decoder for clicks; stock: transformers' SamModel as it is; "
                             "both: each model twice, fast checked against stock")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the fast rows' encoders (CUDA graphs on a GPU; slimsam.model.compiled); "
                             "compiling happens in untimed warm-up runs")
    parser.add_argument("--reference", help="model the ratios are to (default: sam-h if benchmarked, else the first)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed batch-1 encoder runs after one untimed warm-up run (default 5)")
    parser.add_argument("--interleave", action="store_true",
                        help="hold every row's model at once and time them in turns (--repeats rounds of one encoder "
                             "run and a few clicks each, in rotating order), so a shared machine's changing load hits "
                             "every row alike; ratios are then medians of per-round ratios")
    parser.add_argument("--budget", type=float, default=math.inf, metavar="SECONDS",
                        help="fewer timed runs (at least 2) once a model's have taken this long (default: no limit)")
    parser.add_argument("--batch", type=non_negative_int, default=8,
                        help="batch size of the throughput run (default 8; 0 skips it)")
    parser.add_argument("--decode-repeats", type=non_negative_int, default=20,
                        help="timed clicks with a cached embedding (default 20; 0 skips decoding)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the markdown table to a file")
    parser.add_argument("--chart", metavar="PNG", help="plot encoder latency against parameters (log-log)")
    parser.set_defaults(run=run)


def run(args) -> None:
    exports = [m for m in args.models if is_onnx_export(m)]
    if args.random_weights and (unknown := [m for m in args.models if m not in RANDOM_CONFIGS and m not in exports]):
        raise CliError(f"--random-weights needs names from {', '.join(RANDOM_CONFIGS)} (or ONNX export folders), "
                       f"got {', '.join(unknown)}")
    if args.device != "cpu" and (exports or "onnxruntime" in args.runtime):
        raise CliError("onnxruntime runs on the CPU here (its CPU provider): measure ONNX exports with --device cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CliError("--device cuda, but torch sees no CUDA GPU")
    if args.reference and args.reference not in args.models:
        raise CliError(f"--reference {args.reference!r} must be one of the benchmarked models")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchSettings(device=args.device, dtypes=tuple(args.dtype), runtimes=tuple(args.runtime),
                             repeats=args.repeats, budget_s=args.budget,
                             batch=args.batch, decode_repeats=args.decode_repeats, compile=args.compile,
                             interleave=args.interleave,
                             heap_kept=keep_freed_memory_in_heap())  # as the app serves clicks
    attentions = ATTENTIONS if args.attention == "both" else (args.attention,)
    reference = args.reference or ("sam-h" if "sam-h" in args.models else args.models[0])
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731  (the table alone goes to stdout)
    try:
        results = benchmark_models(args.models, settings, args.random_weights, attentions, reference, log)
    except NothingToMeasure as error:
        raise CliError(str(error)) from None
    table = markdown_table(results, reference)
    print(table)
    command = "slimsam bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else args.models)
    if args.json:
        write_json(results, args.json, settings, reference, command)
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(table + "\n")
    if args.chart:
        plot_chart(results, args.chart, f"SAM image encoders, {args.device}, batch 1")
