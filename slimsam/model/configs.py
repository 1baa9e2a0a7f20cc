"""Named SAM configurations and the processor that matches each.

`sam_config("sam-b")` etc. give real-size architectures (random weights are fine for
structure and speed checks); `tiny_config()` gives a model small enough for unit tests
and the notebooks' fast mode. Pruned sizes follow the released SlimSAM checkpoints.
"""
from __future__ import annotations

from transformers import SamConfig, SamImageProcessorPil, SamProcessor

# ViT backbones of the three SAM sizes (segment-anything's build_sam.py).
_BACKBONES = {
    "sam-b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_dim=3072,
                  global_attn_indexes=[2, 5, 8, 11]),
    "sam-l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_dim=4096,
                  global_attn_indexes=[5, 11, 17, 23]),
    "sam-h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120,
                  global_attn_indexes=[7, 15, 23, 31]),
}
# Released uniform SlimSAM checkpoints: SAM-B with a narrower hidden size and MLP.
_BACKBONES["slimsam-50"] = dict(_BACKBONES["sam-b"], hidden_size=384, mlp_dim=1536)
_BACKBONES["slimsam-77"] = dict(_BACKBONES["sam-b"], hidden_size=168, mlp_dim=696)

CONFIG_NAMES = tuple(_BACKBONES)


def sam_config(name: str) -> SamConfig:
    """Real-size `SamConfig` for one of CONFIG_NAMES (no weights involved)."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIG_NAMES)}")
    return SamConfig(vision_config=dict(_BACKBONES[name], initializer_range=0.02))


def tiny_config(image_size: int = 64, hidden_size: int = 48, num_layers: int = 4,
                num_heads: int = 4, mlp_dim: int = 96) -> SamConfig:
    """A few-thousand-parameter SAM for tests: 16-px patches, windowed and global blocks.

    With the defaults the image embedding is (batch, 32, 4, 4) and the masks are 16x16.
    """
    vision = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  mlp_dim=mlp_dim, image_size=image_size, patch_size=16, output_channels=32, num_pos_feats=16,
                  window_size=2, global_attn_indexes=list(range(1, num_layers, 2)),
                  initializer_range=0.02)
    prompt = dict(hidden_size=32, image_size=image_size, image_embedding_size=image_size // 16,
                  mask_input_channels=4)
    decoder = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, num_hidden_layers=2,
                   iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def processor_for(config: SamConfig) -> SamProcessor:
    """The standard SAM processor (resize longest side, pad, normalise) at the config's image size."""
    size = config.vision_config.image_size
    image_processor = SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                        mask_size={"longest_edge": size // 4},
                                        mask_pad_size={"height": size // 4, "width": size // 4})
    return SamProcessor(image_processor=image_processor)
