#!/usr/bin/env bash
# The "Runtimes and dtypes on the CPU" figures of BENCHMARKS.md: PyTorch (fast paths) fp32 / bf16 / fp16 against
# onnxruntime fp32 / int8 / fp16 of the same model (exported on the fly, with its equivalence report against
# PyTorch in the log), every row compared with the model's PyTorch fp32 row (encoder speed-up, embedding, mask
# IoU on 8 clicks). The machine is shared with other jobs, so each model's rows are held at once and timed in
# rotating rounds (--interleave), all on the same two cores.
#  1. SlimSAM-77 (random weights): every runtime and dtype;
#  2. SAM-H (random weights): SAM_H_DTYPES (default fp32 bf16 int8; all six ways at once need more memory than
#     this 24 GiB machine has to spare), 3 rounds (an fp32 encode takes about 40 s here).
#   bash benchmarks/runtimes_cpu.sh [OUT_DIR]        (default benchmarks/results/runtimes-cpu)
set -euo pipefail
out=${1:-benchmarks/results/runtimes-cpu}
mkdir -p "$out"
pin="taskset -c 0,1"
lscpu | grep -E "^Model name|^Flags" > "$out/lscpu.txt"
uptime | tee "$out/load.txt"
$pin slimsam bench slimsam-77 --random-weights --runtime pytorch onnxruntime --dtype fp32 bf16 fp16 int8 \
    --interleave --threads 2 --repeats 7 --batch 0 --decode-repeats 35 \
    --json "$out/slimsam-77.json" --markdown "$out/slimsam-77.md" 2> "$out/slimsam-77.log"
uptime | tee -a "$out/load.txt"
$pin slimsam bench sam-h --random-weights --runtime pytorch onnxruntime --dtype ${SAM_H_DTYPES:-fp32 bf16 int8} \
    --interleave --threads 2 --repeats 3 --batch 0 --decode-repeats 9 \
    --json "$out/sam-h.json" --markdown "$out/sam-h.md" 2> "$out/sam-h.log"
uptime | tee -a "$out/load.txt"
