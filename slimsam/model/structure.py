"""What shape a (possibly pruned) SAM image encoder has, and how to build one of that shape.

A vanilla `SamVisionEncoder` derives every layer's dims from `hidden_size`, `num_attention_heads`
and `mlp_dim`. SlimSAM breaks that in two ways, which this module records in `EncoderDims`:
- after step 1 (embedding pruning) the attention head dim is no longer hidden_size / heads;
- after global bottleneck pruning every layer has its own head dim and MLP width.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import SamConfig, SamModel


@dataclass(frozen=True)
class LayerDims:
    """Bottleneck widths of one ViT block: per-head q/k/v dim and MLP hidden width."""

    head_dim: int
    mlp_dim: int


@dataclass(frozen=True)
class EncoderDims:
    hidden_size: int
    num_heads: int
    layers: tuple[LayerDims, ...]

    @property
    def is_uniform(self) -> bool:
        """True when a plain `SamConfig` can describe the encoder (what `export` needs)."""
        return all(layer == LayerDims(self.hidden_size // self.num_heads, self.layers[0].mlp_dim)
                   for layer in self.layers) and self.hidden_size % self.num_heads == 0

    def to_dict(self) -> dict:
        return {"hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderDims":
        return cls(data["hidden_size"], data["num_heads"], tuple(LayerDims(**layer) for layer in data["layers"]))


def read_dims(model: SamModel) -> EncoderDims:
    """Read the dims off the encoder's actual parameter shapes (not off its config)."""
    encoder = model.vision_encoder
    heads = encoder.config.num_attention_heads
    layers = tuple(LayerDims(head_dim=layer.attn.qkv.out_features // (3 * heads), mlp_dim=layer.mlp.lin1.out_features)
                   for layer in encoder.layers)
    return EncoderDims(encoder.patch_embed.projection.out_channels, heads, layers)


def sync_config(model: SamModel) -> None:
    """Write the encoder's real hidden size (and MLP width, when uniform) into its config."""
    dims = read_dims(model)
    config = model.config.vision_config  # the very object model.vision_encoder.config is
    config.hidden_size = dims.hidden_size
    config.mlp_dim = max(layer.mlp_dim for layer in dims.layers)


def resize_layers(model: SamModel, dims: EncoderDims) -> None:
    """Re-create each block's attention and MLP linears at the given dims (weights uninitialised).

    Used to build an empty model of a pruned shape before loading its saved weights.
    The attention scale is set for the new head dim, as vanilla SAM would compute it.
    """
    encoder = model.vision_encoder
    for layer, layer_dims in zip(encoder.layers, dims.layers, strict=True):
        attn, mlp = layer.attn, layer.mlp
        width = dims.num_heads * layer_dims.head_dim
        device = attn.qkv.weight.device
        attn.qkv = nn.Linear(dims.hidden_size, 3 * width, bias=attn.qkv.bias is not None, device=device)
        attn.proj = nn.Linear(width, dims.hidden_size, device=device)
        if attn.use_rel_pos:
            attn.rel_pos_h = nn.Parameter(torch.empty(attn.rel_pos_h.shape[0], layer_dims.head_dim, device=device))
            attn.rel_pos_w = nn.Parameter(torch.empty(attn.rel_pos_w.shape[0], layer_dims.head_dim, device=device))
        attn.scale = layer_dims.head_dim ** -0.5
        mlp.lin1 = nn.Linear(dims.hidden_size, layer_dims.mlp_dim, device=device)
        mlp.lin2 = nn.Linear(layer_dims.mlp_dim, dims.hidden_size, device=device)


def empty_model(config: SamConfig, dims: EncoderDims | None = None) -> SamModel:
    """A SamModel of the given shape on the meta device: no memory, no init time.

    Fill it with `model.load_state_dict(state, assign=True)`.
    """
    with torch.device("meta"):
        model = SamModel(config)
        if dims is not None:
            resize_layers(model, dims)
    return model
