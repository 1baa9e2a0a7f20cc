#!/usr/bin/env bash
# The CPU figures of BENCHMARKS.md, pinned to two cores: encoder latency of SAM-H, SAM-B and SlimSAM-77 with
# transformers' attention and the fast one (ratios from this one run), decode per click, and the profile.
#   bash benchmarks/cpu.sh [OUT_DIR]        (default benchmarks/results/cpu)
set -euo pipefail
out=${1:-benchmarks/results/cpu}
mkdir -p "$out"
uptime | tee "$out/load-before.txt"
taskset -c 0,1 slimsam bench sam-h sam-b slimsam-77 --random-weights --device cpu --attention both --threads 2 \
    --repeats 5 --budget 120 --batch 0 --decode-repeats 20 \
    --json "$out/encoders.json" --markdown "$out/encoders.md" --chart "$out/encoders.png"
taskset -c 0,1 python benchmarks/profile_encoder.py slimsam-77 --threads 2 | grep -v USDT > "$out/profile.md"
uptime | tee "$out/load-after.txt"
