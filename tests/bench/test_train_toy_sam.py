"""benchmarks/train_toy_sam.py reproduces its model from the seed (a miniature run: 2 steps, tiny widths)."""
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_toy_sam.py"
TINY = ["--train-count", "6", "--val-count", "2", "--test-count", "2", "--unseen-count", "2", "--workers", "1",
        "--steps", "2", "--batch", "2", "--eval-every", "1", "--val-limit", "2", "--image-size", "128",
        "--hidden", "24", "--depth", "2", "--global-blocks", "1", "--window", "4", "--decoder-dim", "32",
        "--decoder-mlp", "64", "--iou-hidden", "32", "--no-final-eval"]


@pytest.fixture(scope="module")
def trainer():
    spec = importlib.util.spec_from_file_location("train_toy_sam", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the data writers run in a process pool, which looks functions up by module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run(trainer, tmp_path: Path, seed: int, name: str) -> str:
    out = tmp_path / name
    trainer.main(TINY + ["--seed", str(seed), "--data", str(tmp_path / "data"), "--out", str(out),
                         "--log", str(tmp_path / f"{name}.log")])
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_weights_other_seed_other_weights(trainer, tmp_path):
    first, again = run(trainer, tmp_path, 0, "a"), run(trainer, tmp_path, 0, "b")
    assert first == again
    assert run(trainer, tmp_path, 1, "c") != first
    events = [json.loads(line)["event"] for line in (tmp_path / "a.log").read_text().splitlines()]
    assert events.count("train") == 1 and events.count("val") == 1 and events[-1] == "done"
