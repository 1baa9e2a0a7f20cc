"""A faster, exact mask decoder for clicks on an already encoded image.

Per click, transformers' SamModel runs SAM's mask decoder on the image embedding from scratch:
1.78 GMAC, nearly all of it projections of the 64*64 = 4096 image tokens (256 -> 128 channels) in
the two-way transformer, and the two transposed convolutions that upscale the result. Two exact
rewrites remove most of the first part:

- **Cache what does not depend on the prompt** (`prepare_decoder`, once per image): the image-wide
  positional encoding, the image tokens plus the no-mask embedding, and the first layer's
  projections of them (its image tokens have not yet seen any prompt).
- **Project the few prompt tokens instead of the 4096 image tokens** (`token_to_image`,
  `image_to_token`): with T ~ 7 prompt tokens (iou + 4 mask tokens + points), an attention between
  them and the image is cheaper computed as (image tokens) x (256 x heads*T), because the 256 -> 128
  projection matrix can be multiplied onto the prompt side, e.g. softmax(q W_k^T X^T) X W_v instead of
  softmax(q (X W_k)^T) (X W_v). Same function, other order of multiplications (fp32 rounding only).

Two smaller ones: the final attention runs only for the tokens whose outputs are used (the iou token
and the chosen mask tokens), and the upscaling transposed convolutions run as matrix products on
channel-last pixels, put in place once on the few mask channels (`upscaled_masks`).
What is left per click is about 0.8 GMAC, half of it the upscaling, which depends on the prompt
through the image tokens. Segment-everything keeps only masks with a high predicted IoU, which the IoU
head gives before any upscaling: `fast_decode_confident` upscales only those prompts.
Mask prompts (dense embeddings other than "no mask"), `attention_similarity` and `target_embedding` are not
supported here: use the stock SamModel call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamAttention


@dataclass(frozen=True)
class DecoderContext:
    """Prompt-independent decoder inputs for one image, from `prepare_decoder`.

    keys: (1, N, C) image tokens plus the no-mask embedding (N = 4096 tokens, C = 256 channels);
    positions: (1, N, C) image-wide positional encoding; first_keys / first_values: (1, heads, N, d)
    first layer's token-to-image key and value projections; first_queries: (1, heads, N, d) its
    image-to-token query projection; size: (h, w) of the embedding grid (N = h * w).
    """

    keys: torch.Tensor
    positions: torch.Tensor
    first_keys: torch.Tensor
    first_values: torch.Tensor
    first_queries: torch.Tensor
    size: tuple[int, int]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, heads * d) -> (..., heads, n, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(-2, -3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, n, d) -> (..., n, heads * d)."""
    return x.transpose(-2, -3).flatten(-2)


def _head_weights(linear: torch.nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight (heads * d, C) and bias as (heads, d, C) and (heads, d)."""
    return linear.weight.unflatten(0, (heads, -1)), linear.bias.unflatten(0, (heads, -1))


@torch.inference_mode()
def prepare_decoder(model: SamModel, image_embeddings: torch.Tensor) -> DecoderContext:
    """The prompt-independent part of the decoder for one image: image_embeddings (1, C, h, w)."""
    first = model.mask_decoder.transformer.layers[0]
    heads = first.cross_attn_token_to_image.num_attention_heads
    _, channels, height, width = image_embeddings.shape
    dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, channels, 1, 1)
    keys = (image_embeddings.to(dense.dtype) + dense).flatten(2).transpose(1, 2).contiguous()
    positions = model.get_image_wide_positional_embeddings().flatten(2).transpose(1, 2).to(keys.dtype)
    with_positions = keys + positions
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    return DecoderContext(keys=keys, positions=positions,
                          first_keys=_split_heads(t2i.k_proj(with_positions), heads),
                          first_values=_split_heads(t2i.v_proj(keys), heads),
                          first_queries=_split_heads(i2t.q_proj(with_positions), heads),
                          size=(height, width))


def _shared_image_logits(rows: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(P, heads, T, d) prompt-side rows @ (1, heads, N, d) image-side projections shared by all prompts, as
    one (P*T, d) @ (d, N) product per head (broadcasting the image side would copy it P times).
    Returns (heads, P, T, N)."""
    prompts, heads, count, _ = rows.shape
    flat = rows.transpose(0, 1).reshape(heads, prompts * count, -1)
    return (flat @ image[0].transpose(1, 2)).unflatten(1, (prompts, count))


def token_to_image(attention: SamAttention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   projected: tuple[torch.Tensor, torch.Tensor] | None = None,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """Prompt tokens attend to image tokens: the same function as `attention(queries, keys, values)`.

    queries: (P, T, C) tokens with positions; keys: (P or 1, N, C) image tokens with positions (or without,
    when `positions` (1, N, C) is given: q.(k + p) = q.k + q.p, the second product one matrix product for
    all prompts, and the (P, N, C) sum is never written); values: (P or 1, N, C) image tokens.
    projected: the (k, v) projections, each (1, heads, N, d), if cached (shared by all prompts);
    otherwise W_k goes onto the query side and W_v after the attention: softmax(q.k) does not see k's
    bias (a constant per query) and its rows sum to 1, so (a @ X) W_v^T + b_v = a @ (X W_v^T + b_v).
    Returns (P, T, C).
    """
    heads = attention.num_attention_heads
    query = _split_heads(attention.q_proj(queries), heads)  # (P, heads, T, d)
    prompts, _, count, _ = query.shape
    if projected is not None:
        key, value = projected
        weights = _shared_image_logits(query * attention.scaling, key).softmax(-1)  # (heads, P, T, N)
        mixed = (weights.flatten(1, 2) @ value[0]).unflatten(1, (prompts, count))  # (heads, P, T, d)
        return attention.out_proj(_merge_heads(mixed.transpose(0, 1)))
    weight_k, _ = _head_weights(attention.k_proj, heads)
    weight_v, bias_v = _head_weights(attention.v_proj, heads)
    # One (heads*T, C) @ (C, N) product: logits without ever projecting the N image tokens
    query_side = (query @ weight_k * attention.scaling).reshape(prompts, heads * count, -1)
    logits = query_side @ keys.transpose(1, 2)  # (P, heads*T, N)
    if positions is not None:
        logits += (query_side.flatten(0, 1) @ positions[0].T).view_as(logits)
    mixed = logits.softmax(-1) @ values  # (P, heads*T, C)
    output = mixed.unflatten(1, (heads, count)) @ weight_v.transpose(1, 2) + bias_v[:, None]  # (P, heads, T, d)
    return attention.out_proj(_merge_heads(output))


def image_to_token(attention: SamAttention, image: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor,
                   residual: torch.Tensor, projected_image: torch.Tensor | None = None) -> torch.Tensor:
    """Image tokens attend to prompt tokens: `residual + attention(image, tokens, values)`, the same function.

    image: (P or 1, N, C) image tokens with positions; tokens: (P, T, C) with positions; values: (P, T, C);
    residual: (P or 1, N, C). projected_image: q_proj(image) as (1, heads, N, d) if cached (shared by all
    prompts); otherwise W_q goes onto the token side. Either way out_proj is applied to the T values before
    mixing: a (N, heads*T) @ (heads*T, C) product replaces (N, heads*d) @ (heads*d, C), and it adds the
    residual in the same call. Returns (P, N, C).
    """
    heads = attention.num_attention_heads
    key = _split_heads(attention.k_proj(tokens), heads)  # (P, heads, T, d)
    value = _split_heads(attention.v_proj(values), heads)
    prompts, _, count, _ = key.shape
    # Logits laid out (P, heads, T, N), so that the softmax over T runs along N-long rows.
    if projected_image is not None:
        logits = _shared_image_logits(key * attention.scaling, projected_image).transpose(0, 1)
    else:
        weight_q, bias_q = _head_weights(attention.q_proj, heads)
        token_side = (key @ weight_q * attention.scaling).reshape(prompts, heads * count, -1)  # (P, heads*T, C)
        offset = (key @ bias_q[:, :, None] * attention.scaling)  # (P, heads, T, 1): q's bias
        logits = (token_side @ image.transpose(1, 2)).unflatten(1, (heads, count)) + offset
    weight_out = attention.out_proj.weight.unflatten(1, (heads, -1)).permute(1, 2, 0)  # (heads, d, C)
    # Each head's weights sum to 1 over its T tokens, so out_proj's bias is spread over the heads' rows.
    value_out = (value @ weight_out + attention.out_proj.bias / heads).reshape(prompts, heads * count, -1)
    weights = logits.softmax(2).reshape(prompts, heads * count, -1)  # (P, heads*T, N)
    return torch.baddbmm(residual.expand(prompts, -1, -1), weights.transpose(1, 2), value_out)


def _transposed_conv_as_linear(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel-2, stride-2 ConvTranspose2d as a Linear: (4*C_out, C_in) weight, rows (i, j, c_out), and bias.

    Each input pixel becomes its own 2x2 output patch, so on channel-last pixels the layer is one
    matrix product; the pixels are put back in place once, at the end, on the few mask channels.
    """
    return conv.weight.permute(2, 3, 1, 0).flatten(0, 2), conv.bias.repeat(4)


def upscaled_masks(decoder, image: torch.Tensor, hyper_in: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SAM's upscaling and mask product on channel-last image tokens.

    image: (P, h*w, C) tokens after the transformer; hyper_in: (P, K, C/8) per-mask weights.
    Returns mask logits (P, K, 4h, 4w), as decoder.upscale_conv1 -> layer norm -> GELU ->
    upscale_conv2 -> GELU -> hyper_in @ pixels would.
    """
    height, width = size
    prompts, masks_count = hyper_in.shape[:2]
    norm = decoder.upscale_layer_norm
    pixels = F.linear(image, *_transposed_conv_as_linear(decoder.upscale_conv1)).unflatten(-1, (4, -1))
    # pixels: (P, h*w, 2*2, C/4)
    pixels = decoder.activation(F.layer_norm(pixels, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
    pixels = decoder.activation(F.linear(pixels, *_transposed_conv_as_linear(decoder.upscale_conv2)))
    pixels = pixels.reshape(prompts, -1, hyper_in.shape[-1])  # (P, h*w*4*4, C/8)
    masks = (pixels @ hyper_in.transpose(1, 2))  # (P, h*w*2*2*2*2, K) in (y, x, i1, j1, i2, j2) order
    masks = masks.reshape(prompts, height, width, 2, 2, 2, 2, masks_count)
    # row 4y + 2*i1 + i2, column 4x + 2*j1 + j2
    return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(prompts, masks_count, 4 * height, 4 * width)


def _two_way_transformer(model: SamModel, context: DecoderContext, input_points: torch.Tensor | None,
                         input_labels: torch.Tensor | None, input_boxes: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's two-way transformer on P prompts: returns the tokens (P, T, C), the image tokens
    (P, N, C) and the tokens' positional part (P, T, C): the iou token, the mask tokens, then the prompt's."""
    decoder = model.mask_decoder
    sparse, _ = model.prompt_encoder(input_points, input_labels, input_boxes, None)
    prompts = sparse.shape[1]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
    token_positions = torch.cat([output_tokens.expand(prompts, -1, -1), sparse[0]], dim=1)  # (P, T, C)
    queries, keys = token_positions, context.keys
    for index, layer in enumerate(decoder.transformer.layers):
        first = index == 0
        if first:  # skip_first_layer_pe: no residual, no positions
            queries = layer.self_attn(queries[:, None], queries[:, None], queries[:, None])[0][:, 0]
        else:
            with_positions = (queries + token_positions)[:, None]
            queries = queries + layer.self_attn(with_positions, with_positions, queries[:, None])[0][:, 0]
        queries = layer.layer_norm1(queries)
        image = None if first else keys + context.positions  # the first layer's projections of it are cached
        cached = (context.first_keys, context.first_values) if first else None
        queries = layer.layer_norm2(queries + token_to_image(layer.cross_attn_token_to_image, queries + token_positions,
                                                             image, keys, cached))
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        cached_image = context.first_queries if first else None
        keys = layer.layer_norm4(image_to_token(layer.cross_attn_image_to_token, image, queries + token_positions,
                                                queries, keys, cached_image))
    return queries, keys, token_positions


def _final_tokens(model: SamModel, context: DecoderContext, queries: torch.Tensor, keys: torch.Tensor,
                  token_positions: torch.Tensor, used: list[int]) -> torch.Tensor:
    """The final attention for the tokens `used` only (it treats tokens independently): (P, len(used), C)."""
    transformer = model.mask_decoder.transformer
    queries, token_positions = queries[:, used], token_positions[:, used]
    return transformer.layer_norm_final_attn(queries + token_to_image(
        transformer.final_attn_token_to_image, queries + token_positions, keys, keys, positions=context.positions))


def _hyper_in(model: SamModel, mask_tokens: torch.Tensor, chosen: range) -> torch.Tensor:
    """(P, K, C) final mask tokens -> (P, K, C/8) per-mask weights of the upscaled image tokens."""
    mlps = model.mask_decoder.output_hypernetworks_mlps
    return torch.stack([mlps[i](mask_tokens[:, j]) for j, i in enumerate(chosen)], dim=1)


@torch.inference_mode()
def fast_decode(model: SamModel, context: DecoderContext, input_points: torch.Tensor | None = None,
                input_labels: torch.Tensor | None = None, input_boxes: torch.Tensor | None = None,
                multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """SamModel's masks and IoU predictions for prompts on the image of `context`.

    Same prompt arguments as `SamModel.forward` for one image: input_points (1, P, n, 2) and
    input_labels (1, P, n) in model-input pixels, input_boxes (1, P, 4). Returns pred_masks
    (1, P, K, 256, 256) logits and iou_scores (1, P, K), K = 3 if multimask_output else 1.
    """
    decoder = model.mask_decoder
    queries, keys, token_positions = _two_way_transformer(model, context, input_points, input_labels, input_boxes)
    # Only the iou token's and the chosen mask tokens' outputs are used (4 of ~7 tokens with multimask output).
    chosen = range(1, decoder.num_mask_tokens) if multimask_output else range(1)
    final = _final_tokens(model, context, queries, keys, token_positions, [0, *(1 + i for i in chosen)])
    masks = upscaled_masks(decoder, keys, _hyper_in(model, final[:, 1:], chosen), context.size)
    iou = decoder.iou_prediction_head(final[:, 0])
    iou = iou[:, 1:] if multimask_output else iou[:, :1]
    return masks[None], iou[None]


@torch.inference_mode()
def fast_decode_confident(model: SamModel, context: DecoderContext, input_points: torch.Tensor | None = None,
                          input_labels: torch.Tensor | None = None, input_boxes: torch.Tensor | None = None,
                          min_score: float = 0.0, upscale_batch: int = 16
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The multimask outputs of `fast_decode` whose predicted IoU exceeds `min_score`, and only those.

    The IoU head needs only the iou token, not the masks: the final attention runs for it alone first, and
    the mask tokens' attention and the upscaling (half of a click's work) only for the prompts with at least
    one confident mask, `upscale_batch` prompts at a time (each needs (N, 4, C/4) + (N, 4, 4, C/8) floats:
    6 MB for SAM). Same prompt arguments as fast_decode. Returns logits (M, 256, 256), predicted IoUs (M,)
    and each mask's (prompt, candidate) index (M, 2), in prompt order: fast_decode's values at those indices.
    """
    decoder = model.mask_decoder
    queries, keys, token_positions = _two_way_transformer(model, context, input_points, input_labels, input_boxes)
    iou = decoder.iou_prediction_head(_final_tokens(model, context, queries, keys, token_positions, [0])[:, 0])[:, 1:]
    index = torch.nonzero(iou > min_score)  # (M, 2), rows in prompt order
    confident = torch.unique(index[:, 0])
    chosen = range(1, decoder.num_mask_tokens)
    masks = []
    for start in range(0, len(confident), upscale_batch):
        group = confident[start:start + upscale_batch]
        final = _final_tokens(model, context, queries[group], keys[group], token_positions[group],
                              [1 + i for i in chosen])
        upscaled = upscaled_masks(decoder, keys[group], _hyper_in(model, final, chosen), context.size)
        rows = index[(index[:, 0] >= group[0]) & (index[:, 0] <= group[-1])]
        masks.append(upscaled[torch.searchsorted(group, rows[:, 0].contiguous()), rows[:, 1]])
    height, width = context.size
    logits = torch.cat(masks) if masks else iou.new_zeros(0, 4 * height, 4 * width)
    return logits, iou[index[:, 0], index[:, 1]], index
