"""`slimsam slim`, the whole method: killed with SIGKILL mid-phase and rerun, it ends with the same weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from sa1b import make_sa1b_folder
from transformers import SamModel

from slimsam.cli.main import main
from slimsam.distill.slim import BOTTLENECK_ALIGNING, EMBEDDING_ALIGNING, EMBEDDING_PRUNED, FINAL, SETTINGS_FILE
from slimsam.distill.train import CHECKPOINT_FILE
from slimsam.model.checkpoints import read_history

SLIMSAM = str(Path(sys.executable).with_name("slimsam"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models, shared cores: one thread is fastest


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("slim")
    teacher = save_tiny_model(root / "teacher")
    train = make_sa1b_folder(root / "train", num_images=16, size=(48, 64))
    val = make_sa1b_folder(root / "val", num_images=3, size=(48, 64), seed=1)  # annotated: mIoU validation
    return teacher, train, val


def slim_command(inputs, out: Path, ratio: str = "0.5") -> list[str]:
    teacher, train, val = inputs
    return [SLIMSAM, "slim", str(teacher), "--ratio", ratio, "--train", str(train), "--val", str(val),
            "--epochs", "2", "--grad-size", "8", "--num-workers", "0", "--checkpoint-every", "1", "--out", str(out)]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    result = run(slim_command(inputs, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def killed_and_rerun(inputs, tmp_path_factory):
    """The same command, SIGKILLed as soon as the step-1 distillation has a checkpoint, then run again."""
    out = tmp_path_factory.mktemp("killed") / "out"
    log = out.with_name("killed_run.log")
    with open(log, "w") as stderr:
        process = subprocess.Popen(slim_command(inputs, out), env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while not (out / BOTTLENECK_ALIGNING / CHECKPOINT_FILE).exists() and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]  # it was killed, not finished
    assert not (out / BOTTLENECK_ALIGNING / "model").exists()
    rerun = run(slim_command(inputs, out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming" in rerun.stderr, rerun.stderr[-2000:]
    return out


def test_killed_and_rerun_slim_ends_with_the_same_weights(uninterrupted, killed_and_rerun):
    reference = SamModel.from_pretrained(uninterrupted / FINAL).state_dict()  # vanilla transformers loads it
    resumed = SamModel.from_pretrained(killed_and_rerun / FINAL).state_dict()
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert not list(killed_and_rerun.rglob(".*"))  # no temporaries left behind


def test_slim_records_the_embedding_mse_of_every_phase(uninterrupted, killed_and_rerun):
    reference = json.loads((uninterrupted / SETTINGS_FILE).read_text())["embedding_mse"]
    resumed = json.loads((killed_and_rerun / SETTINGS_FILE).read_text())["embedding_mse"]
    assert list(reference) == ["1_embedding_pruned", "2_bottleneck_aligning", "3_bottleneck_pruned",
                               "4_embedding_aligning"]
    settings = json.loads((uninterrupted / SETTINGS_FILE).read_text())["settings"]
    assert {k: settings[k] for k in ("embedding_selection", "score_tensors", "alpha_epochs", "lr_patience",
                                     "step2_features", "precision")} == {
        "embedding_selection": "head-blocks", "score_tensors": "weights", "alpha_epochs": [10, 11],
        "lr_patience": [3, 4], "step2_features": "official", "precision": "fp32"}
    history = read_history(uninterrupted / EMBEDDING_ALIGNING / "model")  # what made the slim model, step by step
    prunings = [(r.get("embedding_selection"), r.get("score_tensors")) for r in history if r["step"] == "prune"]
    assert prunings == [("head-blocks", "weights"), (None, "weights")]
    assert [r["settings"]["lr_patience"] for r in history if r["step"] == "distill"] == [3, 4]
    assert resumed == reference
    assert reference[BOTTLENECK_ALIGNING] < reference[EMBEDDING_PRUNED]
    assert reference[EMBEDDING_ALIGNING] < reference["3_bottleneck_pruned"]
    final = SamModel.from_pretrained(uninterrupted / FINAL).config.vision_config
    assert (final.hidden_size, final.mlp_dim) == (24, 48)  # 48 -> 24 hidden, 96 -> 48 MLP at ratio 0.5


def test_slim_refuses_an_output_folder_made_with_other_settings(inputs, uninterrupted, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*")}
    assert main(slim_command(inputs, uninterrupted, ratio="0.6")[1:]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slimsam: error:")]
    assert len(errors) == 1 and "ratio 0.5 -> 0.6" in errors[0]
    for option, change in [(["--embedding-selection", "channels"], "embedding_selection 'head-blocks' -> 'channels'"),
                           (["--alpha-epochs", "10", "10"], "alpha_epochs [10, 11] -> [10, 10]"),
                           (["--lr-patience", "4", "4"], "lr_patience [3, 4] -> [4, 4]")]:
        assert main(slim_command(inputs, uninterrupted)[1:] + option) == 2  # other recipe options: refused
        assert change in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*")} == before  # nothing touched

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(slim_command(inputs, tmp_path / "other")[1:]) == 2
    assert "not a slim run folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_bad_data_settings_fail_before_anything_is_written(inputs, tmp_path, capsys):
    teacher, train, _ = inputs
    out = tmp_path / "out"
    base = ["slim", str(teacher), "--ratio", "0.5", "--epochs", "1", "--out", str(out)]
    assert main(base + ["--train", str(train), "--val-size", "16"]) == 2  # all 16 images held out
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slimsam: error:")]
    assert len(errors) == 1 and "--val" in errors[0]
    assert main(base + ["--train", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()  # a corrected rerun is not refused as "other settings"


@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_slim_scores_both_prunings_with_the_chosen_importance(inputs, tmp_path, importance):
    """--importance reaches both pruning steps (the ablations compare criteria through `slim` itself)."""
    out = tmp_path / "out"
    assert main(slim_command(inputs, out)[1:] + ["--epochs", "1", "--importance", importance]) == 0
    assert json.loads((out / SETTINGS_FILE).read_text())["settings"]["importance"] == importance
    history = read_history(out / EMBEDDING_ALIGNING / "model")
    prunings = [(r["target"], r["importance"], r["images"]) for r in history if r["step"] == "prune"]
    used = 8 if importance == "taylor" else 0  # --grad-size 8 annotated images; magnitude needs none
    assert prunings == [("embedding", importance, used), ("bottleneck", importance, used)]


def test_labelled_taylor_needs_annotated_training_images(inputs, tmp_path, photo_dir, capsys):
    teacher, _, val = inputs
    out = tmp_path / "out"
    assert main(["slim", str(teacher), "--ratio", "0.5", "--train", str(photo_dir), "--val", str(val), "--epochs", "1",
                 "--importance", "taylor", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slimsam: error:")]
    assert len(errors) == 1 and "no annotations" in errors[0]
    assert not out.exists()
