"""Where the time goes in one image-encoder forward, with transformers' attention and with the fast one.

    python benchmarks/profile_encoder.py slimsam-77 --threads 2

Random weights (timing does not depend on them); prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse

import torch

from slimsam.bench.speed import profile_table, stock_and_fast_profiles
from slimsam.model.random_weights import RANDOM_CONFIGS, random_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=RANDOM_CONFIGS, nargs="?", default="slimsam-77")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = random_model(args.model)
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    print(f"{args.model}, one {size}x{size} image, CPU, {torch.get_num_threads()} threads, fp32")
    print(profile_table(stock_and_fast_profiles(model, pixels)))


if __name__ == "__main__":
    main()
