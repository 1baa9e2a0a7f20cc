"""Pruning engine: exactness of every index, channel selection, real-size dims."""
from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn
from transformers import SamModel

from slimsam.model.configs import sam_config
from slimsam.model.stats import count_parameters
from slimsam.model.structure import read_dims
from slimsam.pruning.groups import attention_group, embedding_group, mlp_group, prune_group
from slimsam.pruning.importance import accumulate_disturbed_taylor_gradients, bottleneck_scores, embedding_scores
from slimsam.pruning.steps import kept_count, prune, prune_bottlenecks, prune_embedding_dim


def embed(model, pixels):
    with torch.no_grad():
        return model.vision_encoder(pixels).last_hidden_state


def scores_keeping(n: int, keep: torch.Tensor) -> torch.Tensor:
    """Scores under which exactly `keep` are the top channels."""
    scores = torch.zeros(n)
    scores[keep] = 1.0 + torch.rand(len(keep))
    return scores


class KeptChannelLayerNorm(nn.Module):
    """LayerNorm over the kept channels only, zeros elsewhere: the original model's view of a pruned LN."""

    def __init__(self, norm: nn.LayerNorm, keep: torch.Tensor):
        super().__init__()
        self.norm, self.keep = norm, keep

    def forward(self, x):
        out = torch.zeros_like(x)
        kept = nn.functional.layer_norm(x[..., self.keep], (len(self.keep),), self.norm.weight[self.keep],
                                        self.norm.bias[self.keep], self.norm.eps)
        out[..., self.keep] = kept
        return out


def zero_removed_hidden(model: SamModel, keep: torch.Tensor) -> SamModel:
    reference = copy.deepcopy(model)
    encoder = reference.vision_encoder
    removed = torch.ones(encoder.config.hidden_size, dtype=torch.bool)
    removed[keep] = False
    with torch.no_grad():
        encoder.patch_embed.projection.weight[removed] = 0
        encoder.patch_embed.projection.bias[removed] = 0
        encoder.pos_embed[..., removed] = 0
        for layer in encoder.layers:
            for linear in (layer.attn.proj, layer.mlp.lin2):
                linear.weight[removed] = 0
                linear.bias[removed] = 0
            layer.layer_norm1 = KeptChannelLayerNorm(layer.layer_norm1, keep)
            layer.layer_norm2 = KeptChannelLayerNorm(layer.layer_norm2, keep)
    return reference


def zero_removed_bottlenecks(model: SamModel, attn_keep: list, mlp_keep: list) -> SamModel:
    """Original model with removed q/k/v head-dim channels (all heads) and MLP units zeroed."""
    reference = copy.deepcopy(model)
    heads = reference.vision_encoder.config.num_attention_heads
    with torch.no_grad():
        for layer, a_keep, m_keep in zip(reference.vision_encoder.layers, attn_keep, mlp_keep):
            qkv = layer.attn.qkv
            head_dim = qkv.out_features // (3 * heads)
            removed = torch.ones(head_dim, dtype=torch.bool)
            removed[a_keep] = False
            rows = removed.repeat(3 * heads)
            qkv.weight[rows] = 0
            qkv.bias[rows] = 0
            lin1 = layer.mlp.lin1
            removed_units = torch.ones(lin1.out_features, dtype=torch.bool)
            removed_units[m_keep] = False
            lin1.weight[removed_units] = 0
            lin1.bias[removed_units] = 0
    return reference


@pytest.mark.parametrize("target", ["embedding", "bottleneck"])
def test_ratio_zero_leaves_outputs_identical(tiny_model, random_pixels, target):
    pixels = random_pixels[0]
    before = embed(tiny_model, pixels)
    prune(tiny_model, target, 0.0, criterion="magnitude")
    torch.testing.assert_close(embed(tiny_model, pixels), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("selection", ["head-blocks", "channels"])
def test_embedding_pruning_equals_original_with_removed_channels_zeroed(tiny_model, random_pixels, selection):
    if selection == "channels":  # any 24 of the 48 channels
        keep = torch.randperm(48, generator=torch.Generator().manual_seed(1))[:24].sort().values
    else:  # the same 6 offsets in each of the 4 head blocks of 12 channels
        offsets = torch.randperm(12, generator=torch.Generator().manual_seed(1))[:6].sort().values
        keep = torch.cat([offsets + 12 * h for h in range(4)])
    reference = zero_removed_hidden(tiny_model, keep)
    returned = prune_embedding_dim(tiny_model, 0.5, scores_keeping(48, keep), selection)
    assert torch.equal(returned, keep)
    assert read_dims(tiny_model).hidden_size == 24
    assert [layer.head_dim for layer in read_dims(tiny_model).layers] == [12] * 4  # bottlenecks untouched
    for pixels in random_pixels:
        torch.testing.assert_close(embed(tiny_model, pixels), embed(reference, pixels), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_bottleneck_pruning_equals_original_with_removed_channels_zeroed(tiny_model, random_pixels, scope):
    # Start from a step-1 model, as SlimSAM does: head dim (12) != hidden / heads (6).
    prune_embedding_dim(tiny_model, 0.5, embedding_scores(tiny_model, "magnitude"))
    generator = torch.Generator().manual_seed(2)
    attn_scores = [torch.rand(12, generator=generator) * (i + 1) for i in range(4)]
    mlp_scores = [torch.rand(96, generator=generator) for _ in range(4)]
    original = copy.deepcopy(tiny_model)
    attn_keep, mlp_keep = prune_bottlenecks(tiny_model, 0.5, attn_scores, mlp_scores, scope=scope)
    if scope == "local":
        assert [k.tolist() for k in attn_keep] == [s.argsort(descending=True)[:6].sort().values.tolist()
                                                   for s in attn_scores]
        assert [k.tolist() for k in mlp_keep] == [s.argsort(descending=True)[:48].sort().values.tolist()
                                                  for s in mlp_scores]
    else:
        assert sum(map(len, attn_keep)) == 24 and len({len(k) for k in attn_keep}) > 1  # widths differ by block
    reference = zero_removed_bottlenecks(original, attn_keep, mlp_keep)
    dims = read_dims(tiny_model)
    assert [layer.head_dim for layer in dims.layers] == [len(k) for k in attn_keep]
    assert [layer.mlp_dim for layer in dims.layers] == [len(k) for k in mlp_keep]
    for layer, keep in zip(tiny_model.vision_encoder.layers, attn_keep):
        assert layer.attn.rel_pos_h.shape[1] == len(keep)
        assert layer.attn.scale == pytest.approx(len(keep) ** -0.5)
    for pixels in random_pixels:
        torch.testing.assert_close(embed(tiny_model, pixels), embed(reference, pixels), rtol=1e-4, atol=1e-5)


def test_attention_implementations_agree_after_pruning(tiny_model, random_pixels):
    """Eager attention uses module.scale, SDPA derives it from the head dim: both must agree after pruning."""
    prune(tiny_model, "embedding", 0.5, criterion="magnitude")
    prune(tiny_model, "bottleneck", 0.5, scope="global", criterion="magnitude")
    eager = copy.deepcopy(tiny_model)
    from transformers.models.sam.modeling_sam import SamVisionAttention
    for layer in eager.vision_encoder.layers:
        layer.attn.__class__ = SamVisionAttention
    torch.testing.assert_close(embed(eager, random_pixels[0]), embed(tiny_model, random_pixels[0]), rtol=1e-4, atol=1e-5)


def make_channels_dead(model: SamModel, group, channels: torch.Tensor) -> None:
    with torch.no_grad():
        for member in group.members:
            for tensor, dim in member.tensors():
                tensor.index_fill_(dim % tensor.dim(), member.index_map[channels].flatten(), 0.0)


@pytest.mark.parametrize("criterion", ["magnitude", "disturbed-taylor"])
def test_unimportant_channels_are_the_ones_removed(tiny_model, random_pixels, criterion):
    # Dead hidden channels: offsets 3 and 10 in each of the 4 head blocks of 12 channels (head-block selection
    # removes whole offsets), and channel 17 (offset 5 of block 1 only).
    dead_hidden = torch.tensor([3, 10, 15, 22, 27, 34, 39, 46, 17])
    make_channels_dead(tiny_model, embedding_group(tiny_model), dead_hidden)
    dead_units = torch.tensor([0, 5, 50])
    make_channels_dead(tiny_model, mlp_group(tiny_model, 2), dead_units)
    dead_dims = torch.tensor([1, 7])
    make_channels_dead(tiny_model, attention_group(tiny_model, 1), dead_dims)
    if criterion == "disturbed-taylor":
        accumulate_disturbed_taylor_gradients(tiny_model, random_pixels, progress=False)
    kind = "taylor" if criterion == "disturbed-taylor" else criterion
    hidden = embedding_scores(tiny_model, kind)
    attn, mlp = bottleneck_scores(tiny_model, kind)
    # 48 -> 36 hidden: free ranking removes the 9 dead channels and nothing else; head-block selection removes
    # offsets 3, 10 and one more in every block.
    kept_freely = prune_embedding_dim(copy.deepcopy(tiny_model), 0.25, hidden, selection="channels")
    assert len(kept_freely) == 36 and not set(dead_hidden.tolist()) & set(kept_freely.tolist())
    kept = prune_embedding_dim(tiny_model, 0.25, hidden)
    assert len(kept) == 36 and not set(dead_hidden[:8].tolist()) & set(kept.tolist())
    assert [c % 12 for c in kept.tolist()] == [c % 12 for c in kept[:9].tolist()] * 4  # the same offsets per block
    assert hidden[dead_hidden].max() < hidden[kept_freely].min()
    assert attn[1][dead_dims].max() < attn[1].sort(descending=True).values[5]
    assert mlp[2][dead_units].max() < mlp[2].sort(descending=True).values[47]


def test_kept_counts_match_released_slimsam_dims():
    assert kept_count(768, 0.5, 12) == 384 and kept_count(3072, 0.5, 12) == 1536
    assert kept_count(768, 0.77, 12) == 168 and kept_count(3072, 0.77, 12) == 696
    assert kept_count(64, 0.77) == 14  # SlimSAM-77's head dim
    with pytest.raises(ValueError):
        kept_count(768, 1.0, 12)


def test_a_group_that_would_keep_nothing_is_left_whole():
    """The official code leaves such a group unpruned: floor(48 * 0.23) = 11 rounds down to 0 multiples of 12."""
    assert kept_count(48, 0.77, 12) == 48 and kept_count(4, 0.77) == 4
    assert kept_count(48, 0.75, 12) == 12


def dependency_graph_prune(model: SamModel, module, prune_fn, removed: list[int]) -> None:
    """The other route: torch-pruning's DependencyGraph, with rel-pos and pos_embed declared as unwrapped."""
    encoder = model.vision_encoder

    class EmbeddingOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, pixels):
            return self.encoder(pixels).last_hidden_state

    unwrapped = [(encoder.pos_embed, 3)]
    for layer in encoder.layers:
        unwrapped += [(layer.attn.rel_pos_h, 1), (layer.attn.rel_pos_w, 1)]
    graph = tp.DependencyGraph().build_dependency(EmbeddingOnly(), example_inputs=torch.randn(1, 3, 64, 64),
                                                  unwrapped_parameters=unwrapped)
    graph.get_pruning_group(module, prune_fn, idxs=removed).prune()


@pytest.mark.timeout(120)
def test_explicit_groups_match_dependency_graph_at_half_ratio(tiny_model, random_pixels):
    """Cross-check with the repaired-graph route. The graph runs first on purpose: it rewrites the pruning
    dim of torch-pruning's shared parameter pruner, which our route must not depend on."""
    keep_hidden = torch.arange(0, 48, 2)
    keep_units = [torch.randperm(96, generator=torch.Generator().manual_seed(i))[:48].sort().values for i in range(4)]
    via_graph = copy.deepcopy(tiny_model)
    enc = via_graph.vision_encoder
    dependency_graph_prune(via_graph, enc.patch_embed.projection, tp.prune_conv_out_channels,
                           sorted(set(range(48)) - set(keep_hidden.tolist())))
    for layer, keep in zip(enc.layers, keep_units):
        dependency_graph_prune(via_graph, layer.mlp.lin1, tp.prune_linear_out_channels,
                               sorted(set(range(96)) - set(keep.tolist())))
    prune_group(embedding_group(tiny_model), keep_hidden)
    for i, keep in enumerate(keep_units):
        prune_group(mlp_group(tiny_model, i), keep)
    ours, theirs = tiny_model.state_dict(), via_graph.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ratio,released_params", [(0.77, 9_723_784), (0.5, 27_962_032)])
def test_sam_b_pruned_twice_has_released_slimsam_shape(ratio, released_params):
    """Real-size SAM-B: both steps give the released checkpoint's dims and exact parameter count.

    The timeout guards against the DependencyGraph-style stall on this encoder; LayerNorm order is checked
    at 168 of 768 channels, where torch-pruning's own LayerNorm pruner reorders them.
    """
    torch.manual_seed(0)
    model = SamModel(sam_config("sam-b")).eval()
    norm_before = model.vision_encoder.layers[5].layer_norm2.weight.detach().clone()
    keep = prune_embedding_dim(model, ratio, embedding_scores(model, "magnitude"))
    assert torch.equal(model.vision_encoder.layers[5].layer_norm2.weight, norm_before[keep])
    prune_bottlenecks(model, ratio, *bottleneck_scores(model, "magnitude"))
    dims = read_dims(model)
    hidden = 168 if ratio == 0.77 else 384
    assert dims.is_uniform and dims.hidden_size == hidden
    assert {layer.mlp_dim for layer in dims.layers} == {696 if ratio == 0.77 else 1536}
    assert count_parameters(model)["total"] == released_params
