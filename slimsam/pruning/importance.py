"""Channel importance: disturbed Taylor (SlimSAM's label-free criterion), magnitude, random.

Taylor importance of a channel group is sum |w * dL/dw| over the weights the group owns. SlimSAM's
twist is the loss L: labels are not needed, the target is the model's own image embedding plus a small
Gaussian disturbance, which aligns the pruning criterion with the distillation objective that follows
(match the teacher's embedding).

Which tensors score (`tensors`, one of SCORE_TENSORS): "weights" (default) sums over the Conv/Linear
weights of the group only, as the official SlimSAM code does (its torch-pruning fork scores Conv/Linear
members; biases, LayerNorms, pos_embed and rel-pos score nothing). "all" adds every other tensor the
group owns (biases, LayerNorm scales and shifts, pos_embed, rel-pos columns). The official code averages
a group's members where this sums them: a constant factor, which changes no ranking.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import SamModel

from slimsam.pruning.groups import ChannelGroup, bottleneck_groups, embedding_group

CRITERIA = ("disturbed-taylor", "taylor", "magnitude", "random")  # "taylor": labels, see slimsam.pruning.label_taylor
SCORE_TENSORS = ("weights", "all")
NOISE_STD = 0.01


def disturbed_taylor_loss(embedding: torch.Tensor, target: torch.Tensor, noise_std: float = NOISE_STD,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """MSE(embedding, target + N(0, noise_std^2)).

    embedding, target: (batch, 256, 64, 64) image embeddings (any equal shapes).
    Without the noise this loss and its gradients are exactly zero at pruning time: the
    student *is* the teacher (target = the same network's embedding), so there is nothing
    to differentiate. The noise gives each weight a gradient that says how much the
    embedding moves when that weight moves: the sensitivity Taylor importance needs.
    """
    noise = torch.randn(target.shape, generator=generator, device="cpu").to(target) * noise_std
    return F.mse_loss(embedding, target.detach() + noise)


@contextmanager
def lean_backward(model: SamModel) -> Iterator[None]:
    """Recompute each encoder block's activations during backward instead of storing them all.

    A gradient pass through SAM-B at 1024x1024 otherwise keeps every block's activations, the four
    global blocks' (heads, 4096, 4096) attention tensors among them: 9.7 GB peak for one image on CPU,
    4.7 GB with this (measured), about twice the compute. Checkpointing only engages in training mode,
    which changes nothing else here: SAM's encoder has no dropout or batch norm.
    """
    encoder = model.vision_encoder
    was_training = encoder.training
    encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    encoder.train()
    try:
        yield
    finally:
        encoder.activation_checkpointing_disable()
        encoder.train(was_training)


def accumulate_disturbed_taylor_gradients(model: SamModel, pixel_values: Iterable[torch.Tensor],
                                          noise_std: float = NOISE_STD, seed: int = 0, total: int | None = None,
                                          progress: bool = True) -> int:
    """Sum d(disturbed_taylor_loss)/dw over images into the encoder's `.grad`; returns the image count.

    pixel_values: iterable of (1, 3, S, S) processed images. The target is the model's own embedding
    (a frozen copy of itself, without the memory of one).
    """
    encoder = model.vision_encoder
    encoder.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(seed)
    device = next(encoder.parameters()).device
    count = 0
    with lean_backward(model):
        for pixels in tqdm(pixel_values, total=total, desc="disturbed-taylor gradients", disable=not progress):
            pixels = pixels.to(device)
            embedding = encoder(pixels).last_hidden_state
            disturbed_taylor_loss(embedding, embedding.detach(), noise_std, generator).backward()
            count += 1
    return count


def _per_index(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a tensor over every dim but `dim`: shape (tensor.shape[dim],)."""
    return tensor.detach().movedim(dim, 0).reshape(tensor.shape[dim], -1).sum(1)


def group_importance(group: ChannelGroup, criterion: str, generator: torch.Generator | None = None,
                     tensors: str = "weights") -> torch.Tensor:
    """Importance of each channel of `group`: shape (group.num_channels,), float32 on CPU.

    criterion: "taylor" (sum |w * grad|; needs gradients accumulated first), "magnitude"
    (L2 norm of the group's weights) or "random". tensors: which tensors score, one of SCORE_TENSORS.
    """
    if tensors not in SCORE_TENSORS:
        raise ValueError(f"score tensors must be one of {SCORE_TENSORS}, got {tensors!r}")
    if criterion == "random":
        return torch.rand(group.num_channels, generator=generator)
    score = torch.zeros(group.num_channels)
    for member in group.members:
        for tensor, dim in member.weights() if tensors == "weights" else member.tensors():
            if criterion == "taylor":
                if tensor.grad is None:
                    raise RuntimeError(f"{group.name}: no gradients; accumulate them before Taylor scoring")
                values = (tensor.detach() * tensor.grad).abs()
            elif criterion == "magnitude":
                values = tensor.detach() ** 2
            else:
                raise ValueError(f"unknown criterion {criterion!r}")
            score += _per_index(values.float(), dim).cpu()[member.index_map].sum(1)
    return score.sqrt() if criterion == "magnitude" else score


def embedding_scores(model: SamModel, criterion: str, generator: torch.Generator | None = None,
                     tensors: str = "weights") -> torch.Tensor:
    """(hidden_size,) importance of each hidden channel; criterion and tensors as in `group_importance`."""
    return group_importance(embedding_group(model), criterion, generator, tensors)


def bottleneck_scores(model: SamModel, criterion: str, generator: torch.Generator | None = None,
                      tensors: str = "weights") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per block: (head_dim,) attention scores and (mlp_dim,) MLP scores; arguments as in `group_importance`.

    A head-dim channel j scores over q, k and v rows j of every head and proj columns j of every head.
    """
    attn_groups, mlp_groups = bottleneck_groups(model)
    # Every attention group before any MLP group: "random" draws from `generator` in this order.
    attention = [group_importance(g, criterion, generator, tensors) for g in attn_groups]
    mlp = [group_importance(g, criterion, generator, tensors) for g in mlp_groups]
    return attention, mlp
