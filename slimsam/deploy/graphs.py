"""The two graphs an ONNX export holds, as PyTorch modules over a SamModel's own submodules.

`VisionEncoderGraph` and `PromptEncoderMaskDecoderGraph` compute exactly what transformers' SamModel computes
(`get_image_embeddings`, and `forward` on image embeddings), with the inputs and outputs transformers.js feeds
and reads (names and shapes: slimsam.infer.onnx_runtime). Three things differ from calling SamModel:
- a box comes as two points labelled 2 and 3 (there is no optional input in an ONNX graph that
  transformers.js could leave out), and SAM's "not a point" padding token is added only when no box is there,
  as SamModel adds it only without input_boxes;
- all four mask tokens are decoded, so one call gives both the three-mask output and the single mask;
- `repeat_interleave` is written as expand + reshape: onnxscript 0.7.2 translates it with a symbolic count onto
  the wrong axis, which fails at run time whenever batch != point_batch and both are above 1.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import SamModel


class VisionEncoderGraph(nn.Module):
    """pixel_values (B, 3, S, S) -> image_embeddings (B, C, h, w), image_positional_embeddings (B, C, h, w).

    The positional embeddings depend on parameters only; transformers.js needs them from the encoder and hands
    them to the decoder with every prompt.
    """

    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_embeddings = self.model.vision_encoder(pixel_values).last_hidden_state
        positions = self.model.get_image_wide_positional_embeddings()  # (1, C, h, w)
        return image_embeddings, positions.expand(pixel_values.shape[0], -1, -1, -1)


class PromptEncoderMaskDecoderGraph(nn.Module):
    """(image embeddings, positions, points (B, P, n, 2), labels (B, P, n)) -> iou_scores (B, P, 3),
    pred_masks (B, P, 3, 4h, 4w), single_iou_scores (B, P, 1), single_pred_masks (B, P, 1, 4h, 4w).

    Points are x, y in model-input pixels; labels as in slimsam.infer.onnx_runtime (2 and 3: box corners).
    """

    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SamPromptEncoder's point and box embeddings in one: (B, P, n, 2), (B, P, n) -> (B, P, T, C) tokens,
        T = n + 1 without a box (the padding token) and n with one."""
        encoder = self.prompt_encoder
        batch, point_batch, count = labels.shape
        points = torch.cat([points + 0.5, points.new_zeros(batch, point_batch, 1, 2)], dim=2)  # pixel centres
        labels = torch.cat([labels, labels.new_full((batch, point_batch, 1), -1)], dim=2)
        size = encoder.input_image_size
        embedding = encoder.shared_embedding(points, (size, size))
        label = labels[..., None]
        embedding = torch.where(label == -1, encoder.not_a_point_embed.weight, embedding)
        embedding = torch.where(label == -10, torch.zeros_like(embedding), embedding)
        for value in range(4):  # 0 background, 1 foreground, 2 and 3 a box's corners
            embedding = torch.where(label == value, embedding + encoder.point_embed[value].weight, embedding)
        has_box = (labels >= 2).any()
        keep = torch.arange(count + 1, device=labels.device) < count + 1 - has_box.to(torch.int64)
        return embedding[:, :, keep]

    def forward(self, image_embeddings: torch.Tensor, image_positional_embeddings: torch.Tensor,
                input_points: torch.Tensor, input_labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sparse = self.embed_points(input_points, input_labels)
        batch, _, height, width = image_embeddings.shape
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        masks, iou = decode_all_masks(self.mask_decoder, image_embeddings, image_positional_embeddings, sparse, dense)
        return iou[:, :, 1:], masks[:, :, 1:], iou[:, :, :1], masks[:, :, :1]


def decode_all_masks(decoder, image_embeddings: torch.Tensor, image_positional_embeddings: torch.Tensor,
                     sparse_prompt_embeddings: torch.Tensor,
                     dense_prompt_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' SamMaskDecoder.forward (5.24) without its final choice of masks: masks (B, P, 4, 4h, 4w) and
    IoU predictions (B, P, 4); index 0 is the single-mask output, 1: the three-mask output."""
    batch, channels, height, width = image_embeddings.shape
    point_batch = sparse_prompt_embeddings.shape[1]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.repeat(batch, point_batch, 1, 1), sparse_prompt_embeddings), dim=2)
    image_embeddings = _repeat_per_prompt(image_embeddings + dense_prompt_embeddings, point_batch)
    image_positional_embeddings = _repeat_per_prompt(image_positional_embeddings, point_batch)
    point_embedding, image_embeddings = decoder.transformer(
        point_embeddings=tokens, image_embeddings=image_embeddings,
        image_positional_embeddings=image_positional_embeddings, attention_similarity=None)
    iou_token_out = point_embedding[:, :, 0, :]
    mask_tokens_out = point_embedding[:, :, 1:1 + decoder.num_mask_tokens, :]

    image_embeddings = image_embeddings.transpose(2, 3).reshape(batch * point_batch, channels, height, width)
    upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(image_embeddings)))
    upscaled = decoder.activation(decoder.upscale_conv2(upscaled))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, :, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=2)
    _, channels, height, width = upscaled.shape
    upscaled = upscaled.reshape(batch, point_batch, channels, height * width)
    masks = (hyper_in @ upscaled).reshape(batch, point_batch, -1, height, width)
    return masks, decoder.iou_prediction_head(iou_token_out)


def _repeat_per_prompt(x: torch.Tensor, repeats: int) -> torch.Tensor:
    """x.repeat_interleave(repeats, 0): (B, ...) -> (B * repeats, ...)."""
    return x[:, None].expand(x.shape[0], repeats, *x.shape[1:]).reshape(-1, *x.shape[1:])
