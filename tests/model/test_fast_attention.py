"""The fast encoder attention computes what transformers' attention computes, forward and backward."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import make_tiny_model
from transformers.models.sam.modeling_sam import SamVisionSdpaAttention

import slimsam
from slimsam.model import fast_attention
from slimsam.model.fast_attention import FastVisionAttention, enable_fast_attention, restore_stock_attention

TOLERANCE = 1e-4  # relative to the largest output value


@pytest.fixture(params=[True, False], ids=["fold", "row_chunks"])
def fold(request, monkeypatch):
    """Run the test through each of the two exact paths."""
    monkeypatch.setattr(fast_attention, "CHUNK_BIAS_ELEMENTS", 1)  # row chunks: one query row per SDPA call
    return request.param


@functools.cache
def pruned_models() -> dict[str, torch.nn.Module]:
    """Tiny models (never modify them, copy them): plain; 96 px with windows that need padding;
    step 1 + local step 2; global step 2 (per-layer head dims)."""
    plain = make_tiny_model()
    padded = make_tiny_model(image_size=96, num_heads=3, hidden_size=36, mlp_dim=72)
    padded.vision_encoder.layers[0].window_size = 4  # 6x6 grid: windows padded to 8x8
    local = make_tiny_model(seed=1)
    slimsam.prune(local, "embedding", 0.5, criterion="magnitude", progress=False)
    slimsam.prune(local, "bottleneck", 0.5, criterion="magnitude", progress=False)
    global_ = make_tiny_model(seed=2, mlp_dim=192, hidden_size=96)
    slimsam.prune(global_, "bottleneck", 0.6, scope="global", criterion="random", progress=False)
    head_dims = {layer.head_dim for layer in slimsam.read_dims(global_).layers}
    assert len(head_dims) > 1, "the global model should have per-layer head dims"
    return {"plain": plain, "padded windows": padded, "step 1 + local step 2": local, "global step 2": global_}


def assert_close(fast: torch.Tensor, stock: torch.Tensor) -> None:
    difference = (fast - stock).abs().max().item()
    assert difference <= TOLERANCE * stock.abs().max().item(), f"max abs difference {difference:.2e}"


@pytest.mark.parametrize("name", ["plain", "padded windows", "step 1 + local step 2", "global step 2"])
def test_fast_encoder_matches_stock(name, fold):
    stock = pruned_models()[name]
    fast = copy.deepcopy(stock)
    assert enable_fast_attention(fast, fold) == len(fast.vision_encoder.layers)
    size = stock.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert_close(fast.vision_encoder(pixels).last_hidden_state, stock.vision_encoder(pixels).last_hidden_state)


def test_gradients_match_stock(fold):
    stock = copy.deepcopy(pruned_models()["global step 2"]).train()
    fast = copy.deepcopy(stock)
    enable_fast_attention(fast, fold)
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for model in (stock, fast):
        model.vision_encoder(pixels).last_hidden_state.square().mean().backward()
    fast_params = dict(fast.vision_encoder.named_parameters())
    assert fast_params.keys() == dict(stock.vision_encoder.named_parameters()).keys()
    assert all(param.grad is not None for param in fast_params.values())
    # One scale for all: some parameters' gradients are ~1e-7 here, pure rounding noise relative to the rest.
    assert_close(torch.cat([param.grad.flatten() for param in fast_params.values()]),
                 torch.cat([stock.vision_encoder.get_parameter(name).grad.flatten() for name in fast_params]))


def test_swap_keeps_parameters_and_is_idempotent():
    model = make_tiny_model()
    before = {name: tensor for name, tensor in model.state_dict().items()}
    assert enable_fast_attention(model) == 4
    assert enable_fast_attention(model) == 0
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[name] is before[name] or after[name].data_ptr() == before[name].data_ptr() for name in before)


@pytest.mark.parametrize("name", ["plain", "global step 2"])
def test_restore_stock_attention_undoes_the_swap_over_the_same_parameters(name):
    stock = pruned_models()[name]
    model = copy.deepcopy(stock)
    before = model.state_dict()
    enable_fast_attention(model)
    assert restore_stock_attention(model) == len(model.vision_encoder.layers)
    assert restore_stock_attention(model) == 0
    assert {type(layer.attn) for layer in model.vision_encoder.layers} == {SamVisionSdpaAttention}
    assert all(model.state_dict()[key].data_ptr() == tensor.data_ptr() for key, tensor in before.items())
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(model.vision_encoder(pixels).last_hidden_state,
                                   stock.vision_encoder(pixels).last_hidden_state, rtol=0, atol=0)


def test_load_model_fast_by_default(tiny_model_dir):
    def attention_types(**kwargs):
        model, _ = slimsam.load_model(str(tiny_model_dir), **kwargs)
        return {type(layer.attn) for layer in model.vision_encoder.layers}

    assert attention_types() == {FastVisionAttention}
    assert attention_types(fast=False) == {SamVisionSdpaAttention}
    assert FastVisionAttention not in attention_types(attn_implementation="eager")
