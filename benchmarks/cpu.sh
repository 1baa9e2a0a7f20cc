#!/usr/bin/env bash
# The CPU figures of BENCHMARKS.md, pinned to two cores:
#  1. encoder latency (batch 1) and decode per click of SAM-H, SAM-B and SlimSAM-77, transformers' SamModel
#     as it is against slimsam's fast paths (ratios from one run);
#  2. encoder throughput at batch 8, fast paths only (stock SAM-H at batch 8 needs ~9 GB per bias tensor);
#  3. the SlimSAM-77 encoder profile; 4. the distillation smoke check.
# `slimsam bench` keeps freed memory in glibc's heap (slimsam.infer.heap), as the app does.
#   bash benchmarks/cpu.sh [OUT_DIR]        (default benchmarks/results/cpu)
set -euo pipefail
out=${1:-benchmarks/results/cpu}
mkdir -p "$out"
pin="taskset -c 0,1"
uptime | tee "$out/load.txt"
$pin slimsam bench sam-h sam-b slimsam-77 --random-weights --device cpu --attention both --threads 2 \
    --repeats 5 --budget 90 --batch 0 --decode-repeats 40 \
    --json "$out/encoders.json" --markdown "$out/encoders.md" --chart "$out/encoders.png"
uptime | tee -a "$out/load.txt"
$pin slimsam bench sam-h sam-b slimsam-77 --random-weights --device cpu --attention fast --threads 2 \
    --repeats 2 --batch 8 --decode-repeats 0 --json "$out/throughput.json" --markdown "$out/throughput.md"
uptime | tee -a "$out/load.txt"
$pin python benchmarks/profile_encoder.py slimsam-77 --threads 2 2>/dev/null > "$out/profile.md"
$pin python benchmarks/distill_throughput.py --size tiny --steps 3 --batch 2 --threads 2 > "$out/distill-smoke.md"
uptime | tee -a "$out/load.txt"
