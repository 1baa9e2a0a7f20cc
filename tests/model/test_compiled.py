"""slimsam.model.compiled: a torch.compile'd encoder computes what the eager one does (CPU inductor here;
CUDA graphs are the GPU's mode and are measured in BENCHMARKS.md when a GPU is lent)."""
from __future__ import annotations

import torch

from slimsam.model.checkpoints import load_model


def test_compiled_encoder_matches_eager(tiny_model_dir, random_pixels):
    eager, _ = load_model(str(tiny_model_dir))
    compiled, _ = load_model(str(tiny_model_dir), compile=True)
    with torch.inference_mode():
        for pixels in random_pixels[:2]:  # the second call reuses the compiled graph
            expected = eager.get_image_embeddings(pixels)
            assert torch.allclose(compiled.get_image_embeddings(pixels), expected, rtol=1e-4,
                                  atol=1e-5 * expected.abs().max().item())
