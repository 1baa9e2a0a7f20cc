"""slimsam.infer.fast_decoder computes SamModel's mask decoder, only in another order: compare them."""
from __future__ import annotations

import pytest
import torch
from transformers import SamConfig, SamModel

from slimsam.infer.fast_decoder import (
    fast_decode,
    fast_decode_confident,
    image_to_token,
    prepare_decoder,
    token_to_image,
)
from slimsam.model.configs import tiny_config


def randomised(model: SamModel, seed: int = 0) -> SamModel:
    """Every decoder and prompt-encoder weight random, biases included (SAM initialises biases to zero,
    which would hide a mishandled bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("vision_encoder"):
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if param.dim() > 1 else 0.2))
    return model.eval()


def full_size_decoder_model() -> SamModel:
    """SAM's real prompt encoder and mask decoder (256 channels, 64x64 image tokens, 8 heads) on a
    one-layer vision encoder, which these tests never run."""
    vision = tiny_config().vision_config.to_dict() | dict(image_size=1024, num_hidden_layers=1,
                                                          global_attn_indexes=[0], output_channels=256,
                                                          num_pos_feats=128)
    return randomised(SamModel(SamConfig(vision_config=vision)))


def prompts(size: int, generator: torch.Generator) -> dict[str, dict]:
    """SamModel prompt arguments (model-input pixels) of every kind the predictor sends."""
    def points(batch, count):
        return torch.rand(1, batch, count, 2, generator=generator) * size

    box = torch.tensor([[[0.1, 0.2, 0.6, 0.9]]]) * size
    return {"one point": dict(input_points=points(1, 1), input_labels=torch.ones(1, 1, 1, dtype=torch.long)),
            "positive and negative points": dict(input_points=points(1, 3), input_labels=torch.tensor([[[1, 0, 1]]])),
            "box": dict(input_boxes=box),
            "box and point": dict(input_points=points(1, 1), input_labels=torch.zeros(1, 1, 1, dtype=torch.long),
                                  input_boxes=box),
            "a batch of 5 prompts": dict(input_points=points(5, 1), input_labels=torch.ones(1, 5, 1, dtype=torch.long)),
            "a batch of 3 boxes": dict(input_boxes=box.repeat(1, 3, 1) * torch.tensor([[[1.0], [0.8], [0.5]]]))}


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> None:
    assert actual.shape == expected.shape
    error = (actual - expected).abs().max().item() / expected.abs().max().item()
    assert error < tolerance, f"max abs difference {error:.2e} of the largest value"


@pytest.mark.parametrize("make_model", [lambda: randomised(SamModel(tiny_config())), full_size_decoder_model],
                         ids=["tiny", "full-size decoder"])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_fast_decode_equals_the_stock_decoder(make_model, multimask_output):
    model = make_model()
    grid = model.config.prompt_encoder_config.image_embedding_size
    channels = model.config.mask_decoder_config.hidden_size
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(1, channels, grid, grid, generator=generator)
    context = prepare_decoder(model, embedding)
    for name, prompt in prompts(model.config.prompt_encoder_config.image_size, generator).items():
        with torch.inference_mode():
            stock = model(image_embeddings=embedding, multimask_output=multimask_output, **prompt)
        masks, scores = fast_decode(model, context, multimask_output=multimask_output, **prompt)
        assert_close_relative(masks, stock.pred_masks)
        assert_close_relative(scores, stock.iou_scores)


def test_prompt_side_attention_equals_samattention_with_and_without_cached_projections():
    """Both rewrites, against the module they replace, on random tokens and image tokens."""
    layer = full_size_decoder_model().mask_decoder.transformer.layers[0]
    generator = torch.Generator().manual_seed(2)
    tokens, tokens_pos = (torch.randn(3, 7, 256, generator=generator) for _ in range(2))
    image, image_pos = (torch.randn(1, 4096, 256, generator=generator) for _ in range(2))
    with torch.inference_mode():
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        heads = t2i.num_attention_heads
        batch = (image + image_pos).expand(3, -1, -1)[:, None]
        expected = t2i(tokens_pos[:, None], batch, image.expand(3, -1, -1)[:, None])[0][:, 0]
        cached = tuple(p(x).unflatten(-1, (heads, -1)).transpose(1, 2)
                       for p, x in ((t2i.k_proj, image + image_pos), (t2i.v_proj, image)))
        assert_close_relative(token_to_image(t2i, tokens_pos, image + image_pos, image), expected)
        assert_close_relative(token_to_image(t2i, tokens_pos, image + image_pos, image, cached), expected)

        expected = image + i2t(batch, tokens_pos[:, None], tokens[:, None])[0].reshape(3, 4096, 256)
        cached_query = i2t.q_proj(image + image_pos).unflatten(-1, (heads, -1)).transpose(1, 2)
        assert_close_relative(image_to_token(i2t, image + image_pos, tokens_pos, tokens, image), expected)
        assert_close_relative(image_to_token(i2t, image + image_pos, tokens_pos, tokens, image, cached_query), expected)


@pytest.mark.parametrize("make_model", [lambda: randomised(SamModel(tiny_config())), full_size_decoder_model],
                         ids=["tiny", "full-size decoder"])
def test_confident_decode_gives_exactly_the_masks_above_the_threshold(make_model):
    """Segment-everything's path: the IoU filter before the upscaling, and the same logits for what passes."""
    model = make_model()
    grid = model.config.prompt_encoder_config.image_embedding_size
    generator = torch.Generator().manual_seed(3)
    context = prepare_decoder(model, torch.randn(1, model.config.mask_decoder_config.hidden_size, grid, grid,
                                                 generator=generator))
    size = model.config.prompt_encoder_config.image_size
    prompt = dict(input_points=torch.rand(1, 20, 1, 2, generator=generator) * size,
                  input_labels=torch.ones(1, 20, 1, dtype=torch.long))
    masks, scores = fast_decode(model, context, multimask_output=True, **prompt)
    ordered = scores.flatten().sort().values
    threshold = (ordered[29] + ordered[30]).item() / 2  # half of the 60 candidates pass
    logits, kept_scores, index = fast_decode_confident(model, context, min_score=threshold, upscale_batch=3, **prompt)
    expected = torch.nonzero(scores[0] > threshold)
    assert 0 < len(expected) < 60 and torch.equal(index, expected)
    assert_close_relative(kept_scores, scores[0][expected[:, 0], expected[:, 1]])
    assert_close_relative(logits, masks[0][expected[:, 0], expected[:, 1]])
    none, none_scores, none_index = fast_decode_confident(model, context, min_score=scores.max().item() + 1, **prompt)
    assert none.shape == (0, 4 * grid, 4 * grid) and none_scores.shape == (0,) and none_index.shape == (0, 2)
