#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, in one go (fits the device tool's 30-minute budget on an H100/H200):
#  1. SAM-H, SAM-B and SlimSAM-77, transformers' SamModel against slimsam's fast paths, fp32 and bf16
#     (batch-1 latency, batch-8 throughput, decode per click, peak memory, max abs differences);
#  2. the fast paths under torch.compile with CUDA graphs (bf16);
#  3. distillation throughput of steps 1 and 2, tuned against the naive loop.
#   bash benchmarks/gpu.sh [OUT_DIR]        (default benchmarks/results/gpu)
set -euo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
models="sam-h sam-b slimsam-77"
for dtype in fp32 bf16; do
    slimsam bench $models --random-weights --device cuda --dtype $dtype --attention both --repeats 20 \
        --json "$out/encoders-$dtype.json" --markdown "$out/encoders-$dtype.md" --chart "$out/encoders-$dtype.png"
done
slimsam bench $models --random-weights --device cuda --dtype bf16 --compile --repeats 20 \
    --json "$out/encoders-bf16-compiled.json" --markdown "$out/encoders-bf16-compiled.md"
python benchmarks/distill_throughput.py --device cuda --batch 8 > "$out/distill.md"
