"""Distillation throughput (images/s) of SlimSAM's step 1 and step 2, tuned against a naive loop, in one run.

    python benchmarks/distill_throughput.py --device cuda --batch 8        # the real measurement (GPU)
    python benchmarks/distill_throughput.py --size tiny --steps 2          # smoke check: runs, nothing more

One training step is what `slimsam.distill.train` does per optimizer step, with the heaviest loss (alpha > 0):
the teacher (SAM-B) and, in step 2, the step-1 model run without gradients, the student runs forward and
backward, Adam steps. Step 1's student is SAM-B with its embedding dim pruned (the step-1 shape), step 2's is
that model with its bottlenecks pruned too (the SlimSAM-77 shape); random weights, random images (timing
does not depend on values).
- naive: one image per step, fp32, transformers' stock attention;
- tuned: `--batch` images per step, bf16 autocast on GPU (`--precision bf16`; fp32 on CPU),
  slimsam.model.fast_attention.
"""
from __future__ import annotations

import argparse
import copy

import torch

import slimsam
from slimsam.bench.speed import time_calls
from slimsam.distill.train import TrainConfig, phase_loss
from slimsam.model.checkpoints import default_device
from slimsam.model.fast_attention import enable_fast_attention
from slimsam.model.random_weights import random_model


def make_models(size: str, ratio: float, device: str) -> dict[str, torch.nn.Module]:
    """Teacher, step-1 student (embedding pruned) and step-2 student (bottlenecks pruned too), random weights."""
    teacher, _ = random_model(size, device=device)
    step1 = copy.deepcopy(teacher)
    slimsam.prune(step1, "embedding", ratio, criterion="random", progress=False)
    step2 = copy.deepcopy(step1)
    slimsam.prune(step2, "bottleneck", ratio, criterion="random", progress=False)
    return {"teacher": teacher, "step1": step1, "step2": step2}


def train_step(step: int, models: dict, student, optimizer, pixels: torch.Tensor, bf16: bool) -> None:
    """One optimizer step of distillation step 1 or 2, as slimsam.distill.train takes it (alpha = 0.5: every loss term on)."""
    config = TrainConfig(stage=step, precision="bf16" if bf16 else "fp32")
    loss, _ = phase_loss(config, 0.5, student.vision_encoder, models["teacher"],
                         models["step1"] if step == 2 else None, pixels, pixels.device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def images_per_second(step: int, models: dict, batch: int, bf16: bool, steps: int, device: str) -> float:
    """Throughput of `steps` timed training steps after one warm-up step."""
    student = copy.deepcopy(models[f"step{step}"]).train()
    optimizer = torch.optim.Adam(student.vision_encoder.parameters(), lr=1e-4)
    size = student.config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    times_ms = time_calls(lambda: train_step(step, models, student, optimizer, pixels, bf16), pixels.device,
                          warmup=1, repeats=steps)
    return steps * batch / (sum(times_ms) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--size", default="sam-b", choices=("sam-b", "tiny"), help="teacher architecture")
    parser.add_argument("--ratio", type=float, default=0.77, help="pruning ratio of both steps (SlimSAM-77)")
    parser.add_argument("--batch", type=int, default=8, help="images per step of the tuned loop")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = make_models(args.size, args.ratio, args.device)
    print(f"| step | naive (batch 1, fp32, stock attention) | tuned (batch {args.batch}, "
          f"{'bf16' if args.device == 'cuda' else 'fp32'}, fast attention) | speed-up |")
    print("|---|---|---|---|")
    tuned_models = copy.deepcopy(models)
    for model in tuned_models.values():
        enable_fast_attention(model)
    for step in (1, 2):
        naive = images_per_second(step, models, 1, False, args.steps, args.device)
        tuned = images_per_second(step, tuned_models, args.batch, args.device == "cuda", args.steps, args.device)
        print(f"| {step} | {naive:.3g} images/s | {tuned:.3g} images/s | {tuned / naive:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
