"""The packaged toy SAM: loadable both ways, within its size budget, and the checksum README states."""
import hashlib
import re
from pathlib import Path

import torch
from transformers import SamModel

import slimsam
from slimsam.model.checkpoints import TOY_SAM_FOLDER

README = Path(__file__).resolve().parents[2] / "README.md"
WEIGHTS = TOY_SAM_FOLDER / "model.safetensors"


def test_loads_with_load_model_and_with_plain_transformers():
    model, processor = slimsam.load_model("toy-sam", fast=False)
    plain = SamModel.from_pretrained(TOY_SAM_FOLDER).eval()
    assert processor.image_processor.size["longest_edge"] == model.config.vision_config.image_size == 256
    assert model.config.vision_config.num_attention_heads == 12 and model.config.vision_config.use_rel_pos
    assert len(model.config.vision_config.global_attn_indexes) >= 1
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_weights_fit_the_budget_and_match_the_readme_checksum():
    assert WEIGHTS.stat().st_size <= 10 * 1024 * 1024
    stated = re.search(r"toy SAM.s weights: `model\.safetensors`, sha256\s+`([0-9a-f]{64})`", README.read_text())
    assert stated, "README states the toy SAM's checksum"
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == stated.group(1)
