"""The one builder of random-weight SAMs: tests and benchmarks all use it.

Random weights are enough wherever values do not matter (speed, shapes, exactness of rewrites), and no
Hub weights are needed. The initialisation is chosen so that every part of the computation is exercised:
- Linear and Conv weights ~ N(0, 1/fan_in): inner features stay O(1) through the blocks, as in a trained
  network (SAM's own N(0, 0.02) leaves a tiny model's features near zero);
- biases ~ N(0, 0.02) and LayerNorm scales ~ 1 + N(0, 0.1): a rewrite that drops a bias or a scale shows;
- relative-position tables and pos_embed ~ N(0, 0.1): SAM initialises them to zero, which would hide
  every rel-pos bug.
"""
from __future__ import annotations

import torch
from transformers import SamConfig, SamModel, SamProcessor

from slimsam.model.configs import CONFIG_NAMES, processor_for, sam_config, tiny_config
from slimsam.model.structure import empty_model

# Real-size architectures plus "tiny" (a 64-px test model: seconds for anything).
RANDOM_CONFIGS = (*CONFIG_NAMES, "tiny")


def _config(config: str | SamConfig) -> SamConfig:
    if isinstance(config, SamConfig):
        return config
    if config not in RANDOM_CONFIGS:
        raise ValueError(f"no random-weight config {config!r}; choose one of {', '.join(RANDOM_CONFIGS)}")
    return tiny_config() if config == "tiny" else sam_config(config)


@torch.no_grad()
def randomize_(model: SamModel, seed: int = 0) -> SamModel:
    """Overwrite every parameter of `model` in place with the random values described above; returns it."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if "rel_pos" in name or "pos_embed" in name:
            param.normal_(0.0, 0.1, generator=generator)
        elif param.dim() > 1:
            param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
        elif "norm" in name and name.endswith("weight"):
            param.normal_(1.0, 0.1, generator=generator)
        else:
            param.normal_(0.0, 0.02, generator=generator)
    return model


def random_model(config: str | SamConfig = "tiny", seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[SamModel, SamProcessor]:
    """A SAM with random weights (see the module docstring) and its processor, in eval mode.

    config: a SamConfig or a name from RANDOM_CONFIGS ("sam-h", ..., "tiny"). Built directly on `device`
    (no initialisation pass, so even SAM-H takes a second or two); the same seed gives the same weights.
    Uses transformers' own attention; `slimsam.model.fast_attention.enable_fast_attention` swaps it.
    """
    config = _config(config)
    model = empty_model(config).to_empty(device=device)
    model.tie_weights()  # to_empty gives every module its own tensor, tied ones included
    randomize_(model, seed)
    return model.to(dtype).eval(), processor_for(config)
