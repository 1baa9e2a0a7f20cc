"""Disturbed Taylor importance: why the noise is needed, and scoring errors."""
from __future__ import annotations

import copy

import pytest
import torch

from slimsam.pruning.groups import embedding_group
from slimsam.pruning.importance import accumulate_disturbed_taylor_gradients, disturbed_taylor_loss, group_importance


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
