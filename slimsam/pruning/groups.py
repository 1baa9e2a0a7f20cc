"""The channel groups of SAM's ViT image encoder, declared explicitly.

A *channel group* is a set of tensor slices that must be removed together for the network to
stay well-formed. SlimSAM prunes three kinds (H = heads, d = head dim, C = hidden size):

- embedding (1 group): hidden channel c lives in patch_embed.projection (out), pos_embed (last dim),
  every LayerNorm, every qkv (in), proj (out), lin1 (in), lin2 (out), and neck.conv1 (in);
- attention bottleneck (1 group per block): head-dim channel j lives in qkv rows
  s*H*d + h*d + j for s in {q, k, v} and every head h, in rel_pos_h/w column j, and in proj
  columns h*d + j. Every head keeps the same j, so the decomposed rel-pos stays exact;
- MLP bottleneck (1 group per block): hidden unit m lives in lin1 (out) and lin2 (in).

The groups are declared rather than traced: torch-pruning's DependencyGraph stalls on this
encoder's 4-D reshapes and mis-handles rel-pos, and its LayerNorm pruner reorders channels
(see `prune_group`). Importance scoring and pruning both read these declarations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from transformers import SamModel


@dataclass(frozen=True)
class Member:
    """One tensor-owning module that a group's channels run through.

    kind: "linear_out" | "linear_in" | "conv_out" | "conv_in" | "layernorm" | "param:<attr>".
    index_map: (num_channels, k) long tensor; row c lists the k indices that channel c owns
        along the pruned dim of that tensor (k > 1 for qkv rows and proj columns).
    """

    module: nn.Module
    kind: str
    index_map: torch.Tensor

    def tensors(self) -> list[tuple[torch.Tensor, int]]:
        """(tensor, pruned dim) pairs whose slices belong to the group."""
        m, kind = self.module, self.kind
        if kind in ("linear_out", "conv_out", "layernorm"):
            return [(t, 0) for t in (m.weight, m.bias) if t is not None]
        if kind in ("linear_in", "conv_in"):
            return [(m.weight, 1)]
        return [(getattr(m, kind.removeprefix("param:")), -1)]

    def weights(self) -> list[tuple[torch.Tensor, int]]:
        """The Conv/Linear weight among `tensors()`, as a (tensor, pruned dim) pair: biases, LayerNorms and plain
        parameters (pos_embed, rel-pos) have none. The official SlimSAM code scores only these."""
        if self.kind in ("linear_out", "conv_out"):
            return [(self.module.weight, 0)]
        if self.kind in ("linear_in", "conv_in"):
            return [(self.module.weight, 1)]
        return []


@dataclass(frozen=True)
class ChannelGroup:
    name: str
    num_channels: int
    members: tuple[Member, ...]


def _identity(n: int) -> torch.Tensor:
    return torch.arange(n).unsqueeze(1)


def embedding_group(model: SamModel) -> ChannelGroup:
    encoder = model.vision_encoder
    n = encoder.patch_embed.projection.out_channels
    ident = _identity(n)
    members = [Member(encoder.patch_embed.projection, "conv_out", ident)]
    if encoder.pos_embed is not None:
        members.append(Member(encoder, "param:pos_embed", ident))
    for layer in encoder.layers:
        members += [Member(layer.layer_norm1, "layernorm", ident), Member(layer.attn.qkv, "linear_in", ident),
                    Member(layer.attn.proj, "linear_out", ident), Member(layer.layer_norm2, "layernorm", ident),
                    Member(layer.mlp.lin1, "linear_in", ident), Member(layer.mlp.lin2, "linear_out", ident)]
    members.append(Member(encoder.neck.conv1, "conv_in", ident))
    return ChannelGroup("embedding", n, tuple(members))


def attention_group(model: SamModel, index: int) -> ChannelGroup:
    encoder = model.vision_encoder
    attn = encoder.layers[index].attn
    heads = encoder.config.num_attention_heads
    head_dim = attn.qkv.out_features // (3 * heads)
    j = torch.arange(head_dim)
    # qkv rows are laid out (q|k|v, head, j); proj columns (head, j).
    qkv_rows = (torch.arange(3 * heads) * head_dim).unsqueeze(0) + j.unsqueeze(1)
    proj_cols = (torch.arange(heads) * head_dim).unsqueeze(0) + j.unsqueeze(1)
    members = [Member(attn.qkv, "linear_out", qkv_rows), Member(attn.proj, "linear_in", proj_cols)]
    if attn.use_rel_pos:
        members += [Member(attn, "param:rel_pos_h", _identity(head_dim)), Member(attn, "param:rel_pos_w", _identity(head_dim))]
    return ChannelGroup(f"layers.{index}.attn", head_dim, tuple(members))


def mlp_group(model: SamModel, index: int) -> ChannelGroup:
    mlp = model.vision_encoder.layers[index].mlp
    ident = _identity(mlp.lin1.out_features)
    return ChannelGroup(f"layers.{index}.mlp", mlp.lin1.out_features,
                        (Member(mlp.lin1, "linear_out", ident), Member(mlp.lin2, "linear_in", ident)))


def bottleneck_groups(model: SamModel) -> tuple[list[ChannelGroup], list[ChannelGroup]]:
    """The attention groups and the MLP groups of every block, each list in layer order."""
    n = len(model.vision_encoder.layers)
    return [attention_group(model, i) for i in range(n)], [mlp_group(model, i) for i in range(n)]


# Our own instance, always along the last dim. Not tp.prune_parameter_out_channels: that is one shared
# object whose pruning dim torch-pruning's DependencyGraph overwrites while tracing unwrapped parameters,
# after which it slices pos_embed / rel_pos along the wrong dim.
_LAST_DIM_PARAMETER_PRUNER = tp.pruner.function.ParameterPruner(pruning_dim=-1)


def _prune_layernorm(norm: nn.LayerNorm, keep: torch.Tensor) -> None:
    # Not tp.prune_layernorm_out_channels: in torch-pruning 1.6.1 it builds its keep list from a
    # Python set and calls Tensor.sort() without using the result, so with few channels left the
    # kept channels come back permuted (silently wrong weights).
    norm.weight = nn.Parameter(norm.weight.data[keep].clone())
    if norm.bias is not None:
        norm.bias = nn.Parameter(norm.bias.data[keep].clone())
    norm.normalized_shape = (len(keep),)


def prune_group(group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep channels `keep` of the group (any order; applied sorted) and remove the rest, in place."""
    keep = torch.as_tensor(keep, dtype=torch.long).unique(sorted=True)
    if keep.numel() == 0 or keep.max() >= group.num_channels:
        raise ValueError(f"{group.name}: need 1..{group.num_channels} channels in range, got {keep.numel()}")
    for member in group.members:
        total = member.tensors()[0][0].shape[member.tensors()[0][1]]
        kept = member.index_map[keep].flatten().sort().values
        removed = sorted(set(range(total)) - set(kept.tolist()))
        if not removed:
            continue
        module, kind = member.module, member.kind
        if kind == "linear_out":
            tp.prune_linear_out_channels(module, removed)
        elif kind == "linear_in":
            tp.prune_linear_in_channels(module, removed)
        elif kind == "conv_out":
            tp.prune_conv_out_channels(module, removed)
        elif kind == "conv_in":
            tp.prune_conv_in_channels(module, removed)
        elif kind == "layernorm":
            _prune_layernorm(module, kept)
        else:
            attr = kind.removeprefix("param:")
            setattr(module, attr, _LAST_DIM_PARAMETER_PRUNER.prune_out_channels(getattr(module, attr), removed))
