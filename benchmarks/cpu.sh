#!/usr/bin/env bash
# The CPU figures of BENCHMARKS.md, pinned to two cores: encoder latency of SAM-H, SAM-B and SlimSAM-77 with
# transformers' attention and the fast one (ratios from one run), decode per click, the encoder profile,
# the distillation smoke check, and SAM-B / SlimSAM-77 again with glibc malloc told to keep freed memory.
#   bash benchmarks/cpu.sh [OUT_DIR]        (default benchmarks/results/cpu)
set -euo pipefail
out=${1:-benchmarks/results/cpu}
mkdir -p "$out"
pin="taskset -c 0,1"
uptime | tee "$out/load.txt"
$pin slimsam bench sam-h sam-b slimsam-77 --random-weights --device cpu --attention both --threads 2 \
    --repeats 5 --budget 90 --batch 0 --decode-repeats 20 \
    --json "$out/encoders.json" --markdown "$out/encoders.md" --chart "$out/encoders.png"
uptime | tee -a "$out/load.txt"
$pin python benchmarks/profile_encoder.py slimsam-77 --threads 2 2>/dev/null > "$out/profile.md"
$pin python benchmarks/distill_throughput.py --size tiny --steps 3 --batch 2 --threads 2 > "$out/distill-smoke.md"
uptime | tee -a "$out/load.txt"
# Freed blocks below 32 MB stay in the heap instead of going back to the OS (no page faults when reused).
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 \
    $pin slimsam bench sam-b slimsam-77 --random-weights --device cpu --attention both --threads 2 \
    --repeats 5 --batch 0 --decode-repeats 20 --json "$out/encoders-malloc.json" --markdown "$out/encoders-malloc.md"
uptime | tee -a "$out/load.txt"
