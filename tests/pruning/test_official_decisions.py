"""The default recipe keeps the channels the official SlimSAM code keeps, on the same weights and gradients.

official_decisions.json holds data only: the channels that the official code kept when it was run, unmodified,
on the setup `official_setup` builds (its "source" entry says which code, which calls and how the channels
were read back). The weights and gradients are built here again from fixed seeds (no forward pass), and the
SHA-256 digests in the fixture say whether they came out bit-identical. Step 1 (local, head-blocks), step 2
local and step 2 global must agree with the official choice except near-ties: channels whose decisive scores
are within NEAR_TIE of each other (relative to the mean |score|; in z units for global ranking).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import SamConfig, SamModel

from slimsam.model.random_weights import random_model
from slimsam.pruning.importance import bottleneck_scores, embedding_scores
from slimsam.pruning.steps import prune_bottlenecks, prune_embedding_dim, zscore

FIXTURE = Path(__file__).with_name("official_decisions.json")
HIDDEN_SIZES = (192, 48)
RATIOS = (0.5, 0.77)
HEADS = 12
NEAR_TIE = 1e-4


def official_setup(hidden: int) -> SamModel:
    """A SAM whose encoder has 12 heads and 12 blocks (hidden `hidden`, MLP 4 x hidden, 64-px images, global
    blocks 2, 5, 8, 11, a 256-channel neck, which the official step 1 needs to tell the neck apart), with
    random_model's weights (seed 0) and N(0, 1) gradients (torch.Generator seed 1, drawn in the encoder's
    named_parameters() order) in every encoder parameter's `.grad`."""
    vision = {"hidden_size": hidden, "num_hidden_layers": 12, "num_attention_heads": HEADS, "mlp_dim": 4 * hidden,
              "image_size": 64, "patch_size": 16, "output_channels": 256, "window_size": 2,
              "global_attn_indexes": [2, 5, 8, 11]}
    prompt = {"image_size": 64, "image_embedding_size": 4}
    model, _ = random_model(SamConfig(vision_config=vision, prompt_encoder_config=prompt), seed=0)
    generator = torch.Generator().manual_seed(1)
    for parameter in model.vision_encoder.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator)
    return model


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names (sorted) and float32 bytes, as recorded in the fixture."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def assert_same_except_near_ties(ours: list[int], official: list[int], statistic: torch.Tensor, what: str) -> None:
    """Same count; channels kept by one side only must all have decisive scores within NEAR_TIE of each other."""
    assert len(ours) == len(official), f"{what}: {len(ours)} kept here, {len(official)} by the official code"
    differing = sorted(set(ours) ^ set(official))
    if differing:
        spread = (statistic[differing].max() - statistic[differing].min()) / statistic.abs().mean()
        assert spread <= NEAR_TIE, f"{what}: {len(differing)} channels differ, scores {spread:.2g} apart (not a tie)"


@pytest.fixture(scope="module")
def official():
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module", params=HIDDEN_SIZES, ids=lambda h: f"hidden{h}")
def setup(request, official):
    model = official_setup(request.param)
    decisions = official["setups"][f"hidden{request.param}"]
    encoder = model.vision_encoder
    same_inputs = (digest(dict(encoder.named_parameters())) == decisions["weights_sha256"]
                   and digest({n: p.grad for n, p in encoder.named_parameters()}) == decisions["grads_sha256"])
    # Scores of the default recipe (Taylor |w * g| over Conv/Linear weights), before any pruning.
    return model, decisions, same_inputs, embedding_scores(model, "taylor"), bottleneck_scores(model, "taylor")


@pytest.mark.parametrize("ratio", RATIOS)
def test_step1_keeps_the_official_hidden_channels(setup, ratio):
    model, decisions, same_inputs, hidden_scores, _ = setup
    kept = prune_embedding_dim(copy.deepcopy(model), ratio, hidden_scores)
    block = hidden_scores.numel() // HEADS
    official = decisions[str(ratio)]["step1_hidden_kept"]
    # The decision is made on the offsets' block-summed scores: compare the offsets, then the channels.
    ours_offsets, official_offsets = sorted({c % block for c in kept.tolist()}), sorted({c % block for c in official})
    assert_same_except_near_ties(ours_offsets, official_offsets, hidden_scores.reshape(HEADS, block).sum(0),
                                 f"step 1 offsets (inputs bit-identical: {same_inputs})")
    if ours_offsets == official_offsets:
        assert kept.tolist() == official  # the same offsets in every block


@pytest.mark.parametrize("ratio", RATIOS)
def test_step2_local_keeps_the_official_channels(setup, ratio):
    model, decisions, same_inputs, _, (attention, mlp) = setup
    head_dims, units = prune_bottlenecks(copy.deepcopy(model), ratio, attention, mlp, scope="local")
    official = decisions[str(ratio)]["step2_local"]
    for i in range(len(head_dims)):
        assert_same_except_near_ties(head_dims[i].tolist(), official["head_dim_kept"][i], attention[i],
                                     f"block {i} head dims (inputs bit-identical: {same_inputs})")
        assert_same_except_near_ties(units[i].tolist(), official["mlp_kept"][i], mlp[i],
                                     f"block {i} MLP units (inputs bit-identical: {same_inputs})")


@pytest.mark.parametrize("ratio", RATIOS)
def test_step2_global_keeps_the_official_channels(setup, ratio):
    """Attention blocks are ranked together, MLP blocks together, on per-block z-scores."""
    model, decisions, same_inputs, _, (attention, mlp) = setup
    head_dims, units = prune_bottlenecks(copy.deepcopy(model), ratio, attention, mlp, scope="global")
    official = decisions[str(ratio)]["step2_global"]

    def flat(kept: list, sizes: list[int]) -> list[int]:  # (block, index) -> one index over all blocks
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [start + int(j) for start, block in zip(starts, kept) for j in block]

    sizes = [s.numel() for s in attention]
    z = torch.cat([zscore(s, HEADS) for s in attention])
    assert_same_except_near_ties(flat(head_dims, sizes), flat(official["head_dim_kept"], sizes), z,
                                 f"head dims (inputs bit-identical: {same_inputs})")
    # MLP: a near-tie at the threshold moves a block's below-threshold count by one, and with it which of that
    # block's units the multiple-of-heads rounding keeps; so a block may differ only if it holds such a tie.
    z_mlp = [zscore(s) for s in mlp]
    flat_mlp = torch.cat(z_mlp)
    threshold = flat_mlp.sort().values[flat_mlp.numel() - int(flat_mlp.numel() * (1 - ratio) + 1e-6) - 1]
    for i, (ours, theirs) in enumerate(zip(units, official["mlp_kept"])):
        if ours.tolist() != theirs:
            assert (z_mlp[i] - threshold).abs().min() <= NEAR_TIE, f"block {i} MLP units differ without a tie"
