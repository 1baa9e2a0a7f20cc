"""torch.distributed, used directly: the few calls the trainer needs, each a no-op in a single process.

Started by `torchrun --nproc_per_node N`, every process joins one group (gloo on CPU, nccl on GPU, one GPU
per process) and gets its rank; rank 0 is the one that validates and writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str) -> torch.device:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); returns this process's device.

    gloo on CPU, nccl on CUDA (one GPU per process, chosen by LOCAL_RANK). A no-op for a single process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda") and dist.is_initialized():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_main(value):
    """rank 0's `value` on every process (any picklable object)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
