"""Which channels each step keeps, against references worked out by hand (the official code's rules)."""
from __future__ import annotations

import math

import pytest
import torch

from slimsam.pruning.steps import global_selection, select_bottleneck_channels, select_embedding_channels, zscore


def test_step1_keeps_the_offsets_with_the_best_block_sums_in_every_head_block():
    # hidden 8, 2 heads: blocks [0..3] and [4..7]. Block sums per offset j: 0+6, 9+0, 1+4, 3+1 = 6, 9, 5, 4.
    scores = torch.tensor([0.0, 9.0, 1.0, 3.0, 6.0, 0.0, 4.0, 1.0])
    # ratio 0.5 keeps 4 channels = 2 offsets per block: offsets 1 (9) and 0 (6).
    assert select_embedding_channels(scores, 0.5, heads=2).tolist() == [0, 1, 4, 5]
    # Ranking channels freely keeps the 4 best channels: 9, 6, 4, 3.
    assert select_embedding_channels(scores, 0.5, heads=2, selection="channels").tolist() == [1, 3, 4, 6]
    with pytest.raises(ValueError, match="embedding selection"):
        select_embedding_channels(scores, 0.5, heads=2, selection="heads")


@pytest.mark.parametrize("ratio,offsets", [(0.5, 32), (0.77, 14)])
def test_step1_head_blocks_on_sam_b_sizes_equal_the_top_offsets_of_the_block_sums(ratio, offsets):
    """768 hidden channels, 12 heads: 12 blocks of 64; SlimSAM-50 keeps 32 offsets, SlimSAM-77 14."""
    scores = torch.rand(768, generator=torch.Generator().manual_seed(0))
    block_sums = [sum(scores[h * 64 + j].item() for h in range(12)) for j in range(64)]
    best = sorted(range(64), key=lambda j: -block_sums[j])[:offsets]
    expected = sorted(h * 64 + j for h in range(12) for j in best)
    assert select_embedding_channels(scores, ratio, heads=12).tolist() == expected


def test_zscore_is_the_official_gaussian_normaliser_over_the_head_repeated_scores():
    # [1, 2, 3] repeated twice: mean 2, unbiased std sqrt((1 + 0 + 1) * 2 / 5) = sqrt(0.8).
    torch.testing.assert_close(zscore(torch.tensor([1.0, 2.0, 3.0]), repeats=2),
                               torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(0.8))
    torch.testing.assert_close(zscore(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_global_selection_cuts_below_one_threshold_in_index_order():
    z = [torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0]), torch.tensor([-2.5, 5.0, 6.0, 7.0, 8.0, 9.0])]
    # 12 channels, ratio 0.5: 6 pruned; the 6th lowest z is 1.0. Layer 0 has 5 at or below it (indices 0-4),
    # cut to a multiple of 2: indices 0-3 go and index 4 (z = 1.0) stays. Layer 1 has 1, cut to 0: nothing goes.
    kept = global_selection(z, 0.5, round_to=2)
    assert [k.tolist() for k in kept] == [[4, 5], [0, 1, 2, 3, 4, 5]]
    # Without rounding exactly the 6 lowest go.
    assert [k.tolist() for k in global_selection(z, 0.5)] == [[5], [1, 2, 3, 4, 5]]


def test_global_selection_leaves_a_layer_whole_instead_of_emptying_it():
    z = [torch.tensor([-5.0, -4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])]
    # 6 channels, ratio 0.5: 3 pruned below 1.0, which would empty layer 0: it keeps both; layer 1 loses index 0.
    assert [k.tolist() for k in global_selection(z, 0.5)] == [[0, 1], [1, 2, 3]]


@pytest.mark.parametrize("ratio,attention_total,mlp_target", [(0.5, 384, 18432), (0.77, 176, 8478)])
def test_global_totals_on_sam_b_sizes(ratio, attention_total, mlp_target):
    """12 blocks of head dim 64 and MLP 3072, 12 heads. Attention keeps floor(768 (1 - r)) head-dim channels in all
    (176 at 0.77, where local pruning keeps 12 x 14 = 168); MLP blocks lose a multiple of 12 units each, so together
    they keep at least floor(36864 (1 - r)) units."""
    generator = torch.Generator().manual_seed(0)
    attention = [torch.rand(64, generator=generator) * (i + 1) for i in range(12)]
    mlp = [torch.rand(3072, generator=generator) + i for i in range(12)]
    head_dims, units = select_bottleneck_channels(attention, mlp, ratio, heads=12, scope="global")
    assert sum(map(len, head_dims)) == attention_total
    assert all((3072 - len(u)) % 12 == 0 for u in units)
    assert mlp_target <= sum(map(len, units)) < mlp_target + 12 * 12
    local_dims, local_units = select_bottleneck_channels(attention, mlp, ratio, heads=12, scope="local")
    assert {len(d) for d in local_dims} == {32 if ratio == 0.5 else 14}
    assert {len(u) for u in local_units} == {1536 if ratio == 0.5 else 696}
