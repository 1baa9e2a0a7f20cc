"""Distillation: feature hooks, the two SlimSAM losses, the trainer (MSE drop, resume, bad files, 2-process DDP)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from sa1b import make_sa1b_folder

import slimsam.distill.train
from slimsam.data.images import iter_pixel_values, list_images
from slimsam.distill.features import encode
from slimsam.distill.losses import STEP2_FEATURES, alpha_schedule, bottleneck_aligning_loss, embedding_aligning_loss
from slimsam.distill.train import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CURVES_FILE,
    METRICS_FILE,
    MODEL_FOLDER,
    SettingsError,
    TrainConfig,
    distill,
)
from slimsam.distill.validation import Validation, embedding_mse
from slimsam.model.checkpoints import load_model, read_history, save_model
from slimsam.model.configs import processor_for
from slimsam.pruning.steps import prune

SLIMSAM = str(Path(sys.executable).with_name("slimsam"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and this machine's cores are shared: one thread is much faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _perturb(parameter: torch.Tensor, rows: slice = slice(None)) -> None:
    with torch.no_grad():
        parameter[rows] += 0.5 * torch.randn_like(parameter[rows])


# ---- features ------------------------------------------------------------------------------------------

def test_block_outputs_are_the_models_own_hidden_states(tiny_model, pixels):
    features = encode(tiny_model.vision_encoder, pixels, ("blocks",))
    own = tiny_model.vision_encoder(pixels, output_hidden_states=True).hidden_states[1:]
    assert len(features.block_outputs) == len(own) == 4
    for hooked, reference in zip(features.block_outputs, own):
        assert torch.equal(hooked, reference)


def test_qkv_split_follows_the_layout_q_k_v(tiny_model, pixels):
    width = tiny_model.config.vision_config.hidden_size  # heads * head_dim before pruning
    with torch.no_grad():  # zero the key rows of block 0 only: only its keys may become zero
        tiny_model.vision_encoder.layers[0].attn.qkv.weight[width:2 * width] = 0
        tiny_model.vision_encoder.layers[0].attn.qkv.bias[width:2 * width] = 0
    features = encode(tiny_model.vision_encoder, pixels, ("qkv",))
    assert features.keys[0].abs().max() == 0
    assert features.queries[0].abs().max() > 0 and features.values[0].abs().max() > 0
    assert features.keys[1].abs().max() > 0
    # Windowed block 0: 4 windows of 2 x 2 tokens per image; global block 1: the whole 4 x 4 grid.
    assert features.queries[0].shape == (2 * 4, 2, 2, width) and features.queries[1].shape == (2, 4, 4, width)


def test_mlp_hidden_is_taken_after_the_activation(tiny_model, pixels):
    features = encode(tiny_model.vision_encoder, pixels, ("mlp",))
    plain = encode(tiny_model.vision_encoder, pixels, ())
    assert len(features.mlp_hidden) == 4 and features.mlp_hidden[0].shape == (2, 4, 4, 96)
    # GELU(x) >= -0.17 everywhere, while lin1's raw output has large negative values.
    assert min(h.min().item() for h in features.mlp_hidden) > -0.171
    assert torch.equal(features.embedding, plain.embedding)  # hooks do not change the result


def test_hooks_are_removed_after_the_forward(tiny_model, pixels):
    encode(tiny_model.vision_encoder, pixels, ("qkv", "mlp", "blocks"))
    for module in tiny_model.vision_encoder.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


# ---- losses --------------------------------------------------------------------------------------------

def test_alpha_schedules_follow_the_official_code():
    assert [alpha_schedule(1, n) for n in range(12)] == [0.5] * 10 + [0.0, 0.0]
    # Stage 2: a = (N - n - 1) / N with N = 11: 10/11 in epoch 0, 1/11 in epoch 9, 0 from epoch 10.
    step2 = [alpha_schedule(2, n) for n in range(13)]
    assert step2[0] == pytest.approx(10 / 11) and step2[9] == pytest.approx(1 / 11) and step2[10:] == [0.0] * 3
    assert all(a > b for a, b in zip(step2[:10], step2[1:11]))
    # The paper's text: N = 10.
    assert alpha_schedule(2, 0, alpha_epochs=10) == pytest.approx(0.9) and alpha_schedule(2, 9, alpha_epochs=10) == 0
    with pytest.raises(ValueError):
        alpha_schedule(3, 0)


def test_train_config_defaults_are_the_official_codes_per_stage():
    step1, step2 = TrainConfig(stage=1), TrainConfig(stage=2)
    assert (step1.lr_patience, step1.alpha_epochs) == (3, 10)  # prune_distill_step1.py: patience=3, epoch < 10
    assert (step2.lr_patience, step2.alpha_epochs) == (4, 11)  # prune_distill_step2.py: patience=4, epoch < 11
    assert (step1.step2_features, step1.precision) == ("official", "fp32")
    assert TrainConfig(stage=2, lr_patience=7, alpha_epochs=10).result_settings()["lr_patience"] == 7
    with pytest.raises(ValueError, match="step-2 features"):
        TrainConfig(stage=2, step2_features="blocks")


def _step1_terms(student, teacher, pixels, alpha=0.5):
    kinds = ("qkv", "mlp")
    return bottleneck_aligning_loss(encode(student.vision_encoder, pixels, kinds),
                                    encode(teacher.vision_encoder, pixels, kinds), alpha)


def test_bottleneck_aligning_terms_are_zero_for_the_teacher_itself(tiny_model, pixels):
    loss, terms = _step1_terms(copy.deepcopy(tiny_model), tiny_model, pixels)
    assert loss.item() == 0 and terms == {"embedding": 0.0, "qkv": 0.0, "mlp": 0.0}


def test_bottleneck_aligning_qkv_term_sees_a_global_block(tiny_model, pixels):
    """The original code compared the student's global-block q/k/v with themselves; here they count."""
    student = copy.deepcopy(tiny_model)
    global_block = tiny_model.config.vision_config.global_attn_indexes[-1]
    width = tiny_model.config.vision_config.hidden_size
    _perturb(student.vision_encoder.layers[global_block].attn.qkv.weight, slice(2 * width, 3 * width))  # v only
    _, terms = _step1_terms(student, tiny_model, pixels)
    assert terms["qkv"] > 0 and terms["embedding"] > 0
    assert terms["mlp"] > 0  # the changed v flows into the same block's MLP


def test_bottleneck_aligning_mlp_term_alone_sees_the_last_mlp(tiny_model, pixels):
    student = copy.deepcopy(tiny_model)
    _perturb(student.vision_encoder.layers[-1].mlp.lin1.weight)
    loss, terms = _step1_terms(student, tiny_model, pixels)
    assert terms["qkv"] == 0  # every q/k/v is computed before the last MLP
    assert terms["mlp"] > 0 and terms["embedding"] > 0
    assert loss.item() == pytest.approx(0.5 * terms["embedding"] + 0.5 * (terms["qkv"] + terms["mlp"]), rel=1e-5)


def test_bottleneck_aligning_compares_a_pruned_student(tiny_model, pixels):
    student = copy.deepcopy(tiny_model)
    prune(student, "embedding", 0.5, criterion="magnitude")
    loss, terms = _step1_terms(student, tiny_model, pixels)
    assert all(value > 0 for value in terms.values())
    loss.backward()  # the loss reaches the student's weights
    assert student.vision_encoder.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    _, embedding_only = _step1_terms(student, tiny_model, pixels, alpha=0.0)
    assert set(embedding_only) == {"embedding"} and embedding_only["embedding"] == terms["embedding"]


def _step2_terms(student, teacher, step1_model, pixels, alpha=0.5, which="official"):
    kinds = (STEP2_FEATURES[which],)
    return embedding_aligning_loss(encode(student.vision_encoder, pixels, kinds),
                                   encode(teacher.vision_encoder, pixels),
                                   encode(step1_model.vision_encoder, pixels, kinds), alpha, which)


def test_stream_features_are_the_2_depth_plus_1_points_the_official_step_2_aligns(tiny_model, pixels):
    encoder = tiny_model.vision_encoder
    stream = encode(encoder, pixels, ("stream",)).residual_stream
    assert len(stream) == 2 * 4 + 1
    with torch.no_grad():
        torch.testing.assert_close(stream[0], encoder.patch_embed(pixels) + encoder.pos_embed)  # before block 0
        outputs = encoder(pixels, output_hidden_states=True).hidden_states[1:]
        for i, layer in enumerate(encoder.layers):
            after_attention, output = stream[2 * i + 1], stream[2 * i + 2]
            torch.testing.assert_close(output, outputs[i])
            # A block is output = r + MLP(LayerNorm2(r)), r = x + attention(LayerNorm1(x)): r is the stream there.
            torch.testing.assert_close(after_attention + layer.mlp(layer.layer_norm2(after_attention)), output)


def test_embedding_aligning_terms(tiny_model, pixels):
    step1_model = copy.deepcopy(tiny_model)
    _perturb(step1_model.vision_encoder.neck.conv2.weight)  # differs from the teacher after the blocks only
    student = copy.deepcopy(step1_model)
    for which in STEP2_FEATURES:
        loss, terms = _step2_terms(student, tiny_model, step1_model, pixels, which=which)
        assert terms["step1_features"] == 0 and terms["step1_embedding"] == 0 and terms["embedding"] > 0
        assert loss.item() == pytest.approx(0.5 * terms["embedding"], rel=1e-6)

    prune(student, "bottleneck", 0.5, criterion="magnitude")
    _, terms = _step2_terms(student, tiny_model, step1_model, pixels)
    assert terms["step1_features"] > 0 and terms["step1_embedding"] > 0
    # The official term is the mean MSE over the 9 stream points; "block-outputs" over the 4 block outputs.
    ours, theirs = (encode(m.vision_encoder, pixels, ("stream",)).residual_stream for m in (student, step1_model))
    per_point = [torch.nn.functional.mse_loss(a, b).item() for a, b in zip(ours, theirs)]
    assert per_point[0] == 0  # the patch embedding is the same: step 2 keeps the hidden dim
    assert terms["step1_features"] == pytest.approx(sum(per_point) / 9, rel=1e-5)
    _, paper = _step2_terms(student, tiny_model, step1_model, pixels, which="block-outputs")
    assert paper["step1_features"] == pytest.approx(sum(per_point[2::2]) / 4, rel=1e-5)
    _, same = _step2_terms(student, tiny_model, student, pixels)
    assert same["step1_features"] == 0 and same["step1_embedding"] == 0


# ---- trainer -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_data")
    train = make_sa1b_folder(root / "train", num_images=8, size=(48, 64))
    val = make_sa1b_folder(root / "val", num_images=3, size=(48, 64), seed=1)
    for annotation in val.glob("*.json"):  # plain images: validation falls back to embedding MSE
        annotation.unlink()
    return train, val


@pytest.fixture(scope="module")
def embedding_pruned(tmp_path_factory, images):
    """(teacher, folder of the teacher after embedding pruning with disturbed-Taylor importance)."""
    teacher = make_tiny_model()
    processor = processor_for(teacher.config)
    student = copy.deepcopy(teacher)
    prune(student, "embedding", 0.5, pixel_values=iter_pixel_values(list_images(images[0]), processor),
          progress=False)
    folder = save_model(student, processor, tmp_path_factory.mktemp("pruned") / "student")
    return teacher, folder


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{"stage": 1, "epochs": 2, "lr": 1e-3, "num_workers": 0, "checkpoint_every": 1,
                          "log_every": 1, **overrides})


def test_distillation_reduces_the_embedding_mse_and_skips_corrupt_images(tmp_path, images, embedding_pruned, caplog):
    train, val = images
    teacher, folder = embedding_pruned
    student, processor = load_model(str(folder))
    (tmp_path / "train").mkdir()
    train_paths = list_images(train) + [tmp_path / "train" / "broken.jpg"]
    train_paths[-1].write_bytes(b"\xff\xd8\xff not a jpeg")
    val_paths = list_images(val)
    before = embedding_mse(student, teacher, val_paths, processor)
    with caplog.at_level("INFO"):
        model_dir = distill(student, processor, teacher, train_paths, val_paths, tmp_path / "run",
                            _config(epochs=6))
    after = embedding_mse(load_model(str(model_dir))[0], teacher, val_paths, processor)
    assert after < 0.5 * before
    assert "embedding MSE" in caplog.text  # the fallback is announced
    rows = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    val_rows = [row for row in rows if row["kind"] == "val"]
    assert [row["epoch"] for row in val_rows] == list(range(6))
    assert val_rows[-1]["metric"] == "embedding_mse" and val_rows[-1]["best"] == pytest.approx(after, rel=1e-4)
    assert val_rows[-1]["skipped_images"] == 6  # the broken file, once per epoch
    assert all(row["images_per_s"] > 0 for row in val_rows)
    assert (tmp_path / "run" / CURVES_FILE).read_bytes()[:4] == b"\x89PNG"


def test_resumed_run_ends_with_the_same_weights(tmp_path, images, embedding_pruned, monkeypatch):
    train, val = images
    teacher, folder = embedding_pruned
    train_paths, val_paths = list_images(train), list_images(val)

    def run(run_dir, resume=False):
        student, processor = load_model(str(folder))
        distill(student, processor, teacher, train_paths, val_paths, run_dir, _config(epochs=2), resume=resume)
        return student.vision_encoder.state_dict()

    uninterrupted = run(tmp_path / "a")

    calls = 0
    real_loss = slimsam.distill.train.phase_loss

    def interrupting_loss(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 14:  # epoch 2, after its first optimizer step (and checkpoint) and two more batches
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(slimsam.distill.train, "phase_loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(slimsam.distill.train, "phase_loss", real_loss)
    checkpoint = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=False)
    assert (checkpoint["progress"]["epoch"], checkpoint["progress"]["batch"]) == (1, 4)
    assert checkpoint["scheduler"]["patience"] == 3  # stage 1's ReduceLROnPlateau patience, as the official code's
    recorded = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    assert recorded == checkpoint["config"]
    assert (recorded["alpha_epochs"], recorded["step2_features"]) == (10, "official")
    with pytest.raises(FileExistsError, match="--resume"):
        run(tmp_path / "b")
    with pytest.raises(SettingsError, match="lr"):
        student, processor = load_model(str(folder))
        distill(student, processor, teacher, train_paths, val_paths, tmp_path / "b", _config(lr=5e-4), resume=True)
    for option, value, message in [("lr_patience", 4, "lr_patience 3 -> 4"),
                                   ("alpha_epochs", 9, "alpha_epochs 10 -> 9"),
                                   ("step2_features", "block-outputs", "step2_features official -> block-outputs"),
                                   ("precision", "bf16", "precision fp32 -> bf16")]:
        with pytest.raises(SettingsError, match=message):  # a run made with other recipe options is refused
            student, processor = load_model(str(folder))
            distill(student, processor, teacher, train_paths, val_paths, tmp_path / "b", _config(**{option: value}),
                    resume=True)
    with pytest.raises(SettingsError, match="train images 8 files -> 7 files"):
        student, processor = load_model(str(folder))
        distill(student, processor, teacher, train_paths[:-1], val_paths, tmp_path / "b", _config(epochs=2),
                resume=True)
    with pytest.raises(SettingsError, match=r"val images \(other file names\)"):
        student, processor = load_model(str(folder))
        distill(student, processor, teacher, train_paths, val_paths[::-1], tmp_path / "b", _config(epochs=2),
                resume=True)
    (tmp_path / "b" / f".{CHECKPOINT_FILE}.999.tmp").write_bytes(b"half a checkpoint")  # as a kill leaves it
    (tmp_path / "b" / ".notes").write_text("the user's")
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert [p.name for p in (tmp_path / "b").iterdir() if p.name.startswith(".")] == [".notes"]


def test_of_equal_validation_values_the_later_epoch_is_kept(tmp_path, images, embedding_pruned, monkeypatch):
    """The official code saves the model when iou >= best_iou: a later epoch as good as the best replaces it."""
    train, val = images
    teacher, folder = embedding_pruned
    monkeypatch.setattr(slimsam.distill.train, "make_validation",
                        lambda *args: Validation("miou", True, lambda student: 0.5))
    student, processor = load_model(str(folder))
    model_dir = distill(student, processor, teacher, list_images(train), list_images(val), tmp_path / "run",
                        _config(epochs=2))
    last = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=False)["encoder"]  # after epoch 2
    kept = load_model(str(model_dir))[0].vision_encoder.state_dict()
    assert all(torch.equal(kept[k], last[k]) for k in last)
    assert read_history(model_dir)[-1]["settings"]["lr_patience"] == 3


def test_two_process_ddp_matches_one_process(tmp_path, images, embedding_pruned):
    """torchrun, 2 CPU processes (gloo), batch 4 = 2 processes x 2 accumulated: the same images per step as
    one process with 4 accumulated, so the same weights up to float rounding (only if the data is sharded)."""
    train, val = images
    teacher, folder = embedding_pruned
    teacher_dir = save_model(teacher, processor_for(teacher.config), tmp_path / "teacher")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "--no-python", SLIMSAM, "distill", str(folder), "--teacher", str(teacher_dir), "--stage", "1",
                "--train", str(train), "--val", str(val), "--epochs", "1", "--lr", "1e-3", "--num-workers", "0",
                "--device", "cpu", "--out", str(tmp_path / "ddp")]
    ddp = subprocess.run(torchrun, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=120)
    assert ddp.returncode == 0, ddp.stderr[-2000:]

    student, processor = load_model(str(folder))
    start = {k: v.clone() for k, v in student.vision_encoder.state_dict().items()}
    distill(student, processor, teacher, list_images(train), list_images(val), tmp_path / "one",
            _config(epochs=1, lr=1e-3))
    one_process = student.vision_encoder.state_dict()
    two_processes = load_model(str(tmp_path / "ddp" / MODEL_FOLDER))[0].vision_encoder.state_dict()
    assert any(not torch.equal(one_process[k], start[k]) for k in start)  # it trained
    for key in start:
        torch.testing.assert_close(two_processes[key], one_process[key], rtol=1e-4, atol=1e-5)
    rows = (tmp_path / "ddp" / METRICS_FILE).read_text().splitlines()
    assert sum(json.loads(row)["kind"] == "val" for row in rows) == 1  # one writer: no doubled rows
