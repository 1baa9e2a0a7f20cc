"""onnxruntime's memory pattern: encoder latency and resident memory with and without it.

slimsam.infer.onnx_runtime opens its sessions with `enable_mem_pattern = False`; this is the measurement behind
that choice. Each setting runs in a process of its own (resident memory is per process), the two alternating
`--pairs` times; each process runs the export's fp32 image encoder `--runs` times on one random image and prints
its times and its resident memory after every run.

    python benchmarks/onnxruntime_memory.py runs/slimsam-77-onnx --pairs 2 --runs 4 --threads 2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

SETTINGS = ("pattern on (onnxruntime's default)", "pattern off (slimsam)")


def rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2 ** 30


def child(folder: str, pattern: bool, runs: int, threads: int) -> None:
    import onnxruntime

    from slimsam.infer.onnx_runtime import ENCODER, graph_path

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = pattern
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(graph_path(folder, ENCODER), options, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[-1]
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    cells = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"pixel_values": pixels})
        cells.append(f"{time.perf_counter() - start:.2f} s / {rss_gib():.2f} GiB")
    print(f"| {SETTINGS[not pattern]} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="an ONNX export (slimsam export MODEL --format onnx)")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.folder, args.child == "on", args.runs, args.threads)
        return
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.threads} threads; each cell: encoder "
          f"time / process resident memory after the run\n")
    print("| memory pattern | " + " | ".join(f"run {i + 1}" for i in range(args.runs)) + " |")
    print("|---|" + "---|" * args.runs)
    for _ in range(args.pairs):
        for setting in ("on", "off"):
            subprocess.run([sys.executable, __file__, args.folder, "--child", setting, "--runs", str(args.runs),
                            "--threads", str(args.threads)], check=True)


if __name__ == "__main__":
    main()
