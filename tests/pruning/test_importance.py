"""Disturbed Taylor importance: why the noise is needed, and scoring errors."""
from __future__ import annotations

import copy

import pytest
import torch

from slimsam.pruning.groups import embedding_group
from slimsam.pruning.importance import (
    accumulate_disturbed_taylor_gradients,
    bottleneck_scores,
    disturbed_taylor_loss,
    embedding_scores,
    group_importance,
)


def test_without_noise_loss_and_gradients_are_zero(tiny_model, random_pixels):
    accumulate_disturbed_taylor_gradients(tiny_model, random_pixels, noise_std=0.0, progress=False)
    grads = [p.grad for p in tiny_model.vision_encoder.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    assert group_importance(embedding_group(tiny_model), "taylor").abs().sum() == 0


def test_noise_gives_every_channel_a_score(tiny_model, random_pixels):
    accumulate_disturbed_taylor_gradients(tiny_model, random_pixels, progress=False)
    scores = group_importance(embedding_group(tiny_model), "taylor")
    assert scores.shape == (48,) and bool((scores > 0).all())


def test_disturbed_loss_is_the_noise_energy():
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(2, 32, 4, 4, generator=generator)
    loss = disturbed_taylor_loss(embedding, embedding, noise_std=0.5, generator=torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(0.25, rel=0.2)


def test_taylor_without_gradients_is_an_error(tiny_model):
    with pytest.raises(RuntimeError, match="no gradients"):
        group_importance(embedding_group(tiny_model), "taylor")


def test_lean_backward_gives_the_plain_gradients_and_restores_eval_mode(tiny_model, random_pixels):
    reference = copy.deepcopy(tiny_model)
    embedding = reference.vision_encoder(random_pixels[0]).last_hidden_state
    disturbed_taylor_loss(embedding, embedding, generator=torch.Generator().manual_seed(0)).backward()
    accumulate_disturbed_taylor_gradients(tiny_model, random_pixels[:1], progress=False)
    assert not tiny_model.vision_encoder.training
    assert not any(layer.gradient_checkpointing for layer in tiny_model.vision_encoder.layers)
    for (name, a), b in zip(tiny_model.vision_encoder.named_parameters(), reference.vision_encoder.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9, msg=name)


def _taylor(module: torch.nn.Module) -> torch.Tensor:
    return (module.weight * module.weight.grad).abs().detach()


def test_taylor_scores_only_conv_and_linear_weights_by_default(tiny_model, random_pixels):
    """Hand-written sums of |w * dL/dw| over the Conv/Linear weights, as the official code scores them."""
    accumulate_disturbed_taylor_gradients(tiny_model, random_pixels, progress=False)
    encoder = tiny_model.vision_encoder
    heads, head_dim = 4, 12  # tiny config: hidden 48, 4 heads
    hidden = _taylor(encoder.patch_embed.projection).sum((1, 2, 3)) + _taylor(encoder.neck.conv1).sum((0, 2, 3))
    for layer in encoder.layers:
        hidden += (_taylor(layer.attn.qkv).sum(0) + _taylor(layer.attn.proj).sum(1) + _taylor(layer.mlp.lin1).sum(0)
                   + _taylor(layer.mlp.lin2).sum(1))
    scores = embedding_scores(tiny_model, "taylor")
    torch.testing.assert_close(scores, hidden)
    attention, mlp = bottleneck_scores(tiny_model, "taylor")
    for i, layer in enumerate(encoder.layers):
        # head-dim channel j: q, k and v rows (s, h, j) of every head h, and proj columns (h, j)
        qkv_rows = _taylor(layer.attn.qkv).sum(1).reshape(3 * heads, head_dim).sum(0)
        proj_columns = _taylor(layer.attn.proj).sum(0).reshape(heads, head_dim).sum(0)
        torch.testing.assert_close(attention[i], qkv_rows + proj_columns)
        torch.testing.assert_close(mlp[i], _taylor(layer.mlp.lin1).sum(1) + _taylor(layer.mlp.lin2).sum(0))

    # Gradients of biases, LayerNorms, pos_embed and rel-pos change no default score; with tensors="all" they count.
    with_all = embedding_scores(tiny_model, "taylor", tensors="all")
    assert (with_all > scores).all()
    layer = encoder.layers[1]
    for parameter in (encoder.pos_embed, layer.layer_norm1.weight, layer.layer_norm2.bias, layer.attn.qkv.bias,
                      layer.attn.proj.bias, layer.mlp.lin1.bias, layer.attn.rel_pos_h, layer.attn.rel_pos_w):
        parameter.grad = parameter.grad * 100 + 1
    assert torch.equal(embedding_scores(tiny_model, "taylor"), scores)
    assert torch.equal(bottleneck_scores(tiny_model, "taylor")[0][1], attention[1])
    assert torch.equal(bottleneck_scores(tiny_model, "taylor")[1][1], mlp[1])
    assert (embedding_scores(tiny_model, "taylor", tensors="all") > with_all).all()
    assert (bottleneck_scores(tiny_model, "taylor", tensors="all")[0][1] > attention[1]).all()
    with pytest.raises(ValueError, match="score tensors"):
        embedding_scores(tiny_model, "taylor", tensors="biases")
