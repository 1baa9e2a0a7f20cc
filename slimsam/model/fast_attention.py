"""A faster, exact attention for SAM's image encoder: no (heads, N, N) relative-position bias in memory.

SAM's ViT adds a decomposed relative-position bias to every attention logit:

    logits[q, k] = scale * q.k + rel_h[q, kh(k)] + rel_w[q, kw(k)]

with rel_h[q, :] = q . Rh[qh - :] of shape (tokens, h) and rel_w likewise (tokens, w); kh(k), kw(k) are
key k's row and column. Stock transformers builds the full (batch, heads, N, N) bias and hands it to
SDPA: for a global block (N = 64*64 = 4096) that is 800 MB per image written, reshaped and read back,
and it costs a pruned model as much as an unpruned one (it scales with heads * N^2, not with widths).
Two exact ways around it:

- **fold** (default on GPU): append the bias to the dot product, q' = [scale*q, rel_h, rel_w] and
  k' = [k, onehot(kh), onehot(kw)], so q'.k' is the biased logit and SDPA (scale 1) runs its fused
  kernel with no mask at all. It costs (h + w) extra multiply-adds per logit (128 in a global block):
  cheap on a GPU, where memory traffic is what counts, but 3-5x the attention work on a CPU.
- **row chunks** (default on CPU): run SDPA on a few query rows at a time, each chunk's bias written
  into one reused 16 MB buffer. Much of the stock path's CPU time is not arithmetic but memory:
  page-faulting in a fresh 800 MB tensor per block, copying it, reading it back from RAM.

`enable_fast_attention(model)` swaps each encoder block's attention module for `FastVisionAttention`,
which owns the very same parameters (state dict, pruning groups and training are unaffected).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamModel
from transformers.models.sam.modeling_sam import SAM_VISION_ATTENTION_CLASSES, SamVisionAttention

# Row chunks: bias elements per SDPA call (16 MB in fp32): measured fastest of 16 MB to 512 MB on a
# 2-core CPU (SlimSAM-77: 1.35 s against 1.47 s at 128 MB). Below glibc's largest mmap threshold (32 MB),
# so the buffer's memory is recycled by malloc rather than mapped and page-faulted in anew.
CHUNK_BIAS_ELEMENTS = 1 << 22


class FastVisionAttention(SamVisionAttention):
    """Drop-in replacement for transformers' SamVisionAttention / SamVisionSdpaAttention.

    Takes over `stock`'s parameters (qkv, proj, rel_pos_h, rel_pos_w: same names, same tensors) and its
    `scale`; returns (output, None) like the SDPA version (no attention weights).
    fold: True folds the bias into q.k, False uses row chunks, None (default) folds on GPU only.
    """

    def __init__(self, stock: SamVisionAttention, fold: bool | None = None):
        nn.Module.__init__(self)
        self.fold = fold
        self.num_attention_heads = stock.num_attention_heads
        self.scale = stock.scale
        self.dropout = stock.dropout
        self.qkv, self.proj = stock.qkv, stock.proj
        self.use_rel_pos = stock.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h, self.rel_pos_w = stock.rel_pos_h, stock.rel_pos_w

    def forward(self, hidden_states: torch.Tensor, output_attentions=None) -> tuple[torch.Tensor, None]:
        """hidden_states: (batch, h, w, hidden) windows or whole images -> ((batch, h, w, hidden), None)."""
        batch, height, width, _ = hidden_states.shape
        heads = self.num_attention_heads
        # (3, batch, heads, tokens, head_dim)
        qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        dropout = self.dropout if self.training else 0.0
        if not self.use_rel_pos:
            output = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=self.scale)
        else:
            rel_h, rel_w = self._rel_pos_logits(query, height, width)
            fold = query.is_cuda if self.fold is None else self.fold
            attention = folded_attention if fold else row_chunked_attention
            # self.scale is head_dim**-0.5 (pruning keeps it so), the scale stock SDPA applies.
            output = attention(query * self.scale, key, value, rel_h, rel_w, dropout)
        output = output.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(output), None

    def _rel_pos_logits(self, query: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """query: (batch, heads, h*w, d), unscaled -> rel_h (batch, heads, h*w, h), rel_w (batch, heads, h*w, w)."""
        batch, heads, tokens, dim = query.shape
        table_h = self.get_rel_pos(height, height, self.rel_pos_h)  # (q row, k row, d)
        table_w = self.get_rel_pos(width, width, self.rel_pos_w)  # (q col, k col, d)
        grid = query.reshape(batch, heads, height, width, dim)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, table_h).reshape(batch, heads, tokens, height)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, table_w).reshape(batch, heads, tokens, width)
        return rel_h, rel_w


def folded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rel_h: torch.Tensor,
                     rel_w: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Attention with the decomposed bias folded into the dot product; no mask, fused SDPA kernel.

    query (already scaled), key, value: (batch, heads, h*w, d); rel_h: (..., h*w, h); rel_w: (..., h*w, w).
    Returns (batch, heads, h*w, d).
    """
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    token = torch.arange(height * width, device=key.device)
    one_hot = torch.cat([F.one_hot(token // width, height), F.one_hot(token % width, width)], dim=-1)
    one_hot = one_hot.to(key.dtype).expand(*key.shape[:2], -1, -1)
    value_dim = value.shape[-1]
    query, key, value = _pad_head_dims(torch.cat([query, rel_h, rel_w], dim=-1), torch.cat([key, one_hot], dim=-1),
                                       value)
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=1.0)[..., :value_dim]


def row_chunked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rel_h: torch.Tensor,
                          rel_w: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Attention over a few query rows at a time, each chunk with only its own (heads, rows*w, h*w) bias.

    Same arguments and result as `folded_attention`. Every query attends to every key in each call,
    so the result is the same as one call with the whole bias.
    """
    batch, heads, tokens, value_dim = value.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    chunk = max(1, CHUNK_BIAS_ELEMENTS // (batch * heads * width * tokens)) * width
    query, key, value = _pad_head_dims(query, key, value)
    # Without autograd, every chunk's bias is written into one buffer: fresh large tensors would each
    # be page-faulted in anew, which costs several times the additions themselves.
    reuse = not (torch.is_grad_enabled() and (rel_h.requires_grad or rel_w.requires_grad))
    buffer = rel_h.new_empty(batch, heads, chunk, height, width) if reuse else None
    outputs = []
    for start in range(0, tokens, chunk):
        rows = slice(start, start + chunk)
        # (batch, heads, chunk, h, 1) + (batch, heads, chunk, 1, w) -> (batch, heads, chunk, h, w)
        parts = rel_h[:, :, rows, :, None], rel_w[:, :, rows, None, :]
        bias = torch.add(*parts, out=buffer[:, :, :parts[0].shape[2]]) if reuse else torch.add(*parts)
        outputs.append(F.scaled_dot_product_attention(query[:, :, rows], key, value, attn_mask=bias.flatten(-2),
                                                      dropout_p=dropout, scale=1.0))
    return torch.cat(outputs, dim=2)[..., :value_dim]


def _pad_head_dims(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zero-pad q, k and v to one width, a multiple of 8.

    The fused CPU and flash GPU kernels need q, k and v of one width (the fold widens q and k), and run
    faster on multiples of 8 (SlimSAM-77's head dim is 14: the CPU kernel is 30% faster at 16). Zero
    columns add nothing to q.k and come out as zero columns of the output, which callers drop.
    """
    width = -(-max(query.shape[-1], value.shape[-1]) // 8) * 8
    return tuple(F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] != width else t for t in (query, key, value))


def enable_fast_attention(model: SamModel, fold: bool | None = None) -> int:
    """Swap every image-encoder block's attention for FastVisionAttention, in place; returns how many.

    fold: as in FastVisionAttention (default: fold on GPU, row chunks on CPU). Already swapped blocks
    are skipped. Exact: the same function of the same parameters.
    """
    replaced = 0
    for layer in model.vision_encoder.layers:
        if not isinstance(layer.attn, FastVisionAttention):
            layer.attn = FastVisionAttention(layer.attn, fold)
            replaced += 1
    return replaced


def restore_stock_attention(model: SamModel) -> int:
    """Swap every FastVisionAttention back for the attention class of transformers the config names, in place;
    returns how many. The inverse of enable_fast_attention, over the very same parameters.

    For code that must trace the model: the row chunks are a Python loop over a batch-dependent number of
    chunks, so torch.onnx exports them only at one fixed batch (and silently so), and slowly.
    """
    stock_class = SAM_VISION_ATTENTION_CLASSES[model.config.vision_config._attn_implementation or "sdpa"]
    restored = 0
    for layer in model.vision_encoder.layers:
        fast = layer.attn
        if isinstance(fast, FastVisionAttention):
            stock = stock_class.__new__(stock_class)
            nn.Module.__init__(stock)
            stock.num_attention_heads, stock.scale, stock.dropout = fast.num_attention_heads, fast.scale, fast.dropout
            stock.qkv, stock.proj, stock.use_rel_pos = fast.qkv, fast.proj, fast.use_rel_pos
            if fast.use_rel_pos:
                stock.rel_pos_h, stock.rel_pos_w = fast.rel_pos_h, fast.rel_pos_w
            stock.train(fast.training)
            layer.attn = stock
            restored += 1
    return restored
