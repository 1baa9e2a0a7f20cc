"""The `slimsam` command line: the prune -> export path and every bad input named in the issue."""
from __future__ import annotations

import shutil

import pytest
import torch
from transformers import SamModel

from slimsam.cli.main import main
from slimsam.model.checkpoints import load_model, read_history
from slimsam.pruning.importance import embedding_scores
from slimsam.pruning.steps import select_embedding_channels


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_both_steps_then_export_loads_in_vanilla_transformers(tiny_model_dir, photo_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "prune", tiny_model_dir, "--target", "embedding", "--ratio", 0.5, "--images", photo_dir,
                       "--grad-size", 2, "--out", tmp_path / "s1")
    assert code == 0 and "before:" in out and "after:" in out and "2 images" in out
    code, _, _ = run(capsys, "prune", tmp_path / "s1", "--target", "bottleneck", "--ratio", 0.5, "--images", photo_dir,
                     "--grad-size", 2, "--out", tmp_path / "s2")
    assert code == 0
    code, out, _ = run(capsys, "info", tmp_path / "s2")
    assert code == 0 and "hidden size 24" in out and "uniform" in out and "target=bottleneck" in out
    assert run(capsys, "export", tmp_path / "s2", "--out", tmp_path / "hf")[0] == 0
    vanilla = SamModel.from_pretrained(tmp_path / "hf")
    assert vanilla.config.vision_config.hidden_size == 24


@pytest.mark.parametrize("selection,tensors", [("head-blocks", "weights"), ("channels", "all")])
def test_prune_applies_and_records_its_recipe_options(tiny_model_dir, tmp_path, capsys, selection, tensors):
    original, _ = load_model(str(tiny_model_dir))
    expected = select_embedding_channels(embedding_scores(original, "magnitude", tensors=tensors), 0.5, heads=4,
                                         selection=selection)
    options = [] if selection == "head-blocks" else ["--embedding-selection", selection, "--score-tensors", tensors]
    assert run(capsys, "prune", tiny_model_dir, "--target", "embedding", "--ratio", 0.5, "--importance", "magnitude",
               *options, "--out", tmp_path / "s1")[0] == 0
    record = read_history(tmp_path / "s1")[-1]
    assert (record["embedding_selection"], record["score_tensors"]) == (selection, tensors)
    pruned, _ = load_model(str(tmp_path / "s1"))
    norm = original.vision_encoder.layers[2].layer_norm1.weight
    assert torch.equal(pruned.vision_encoder.layers[2].layer_norm1.weight, norm[expected])


def test_ratio_outside_unit_interval_exits_2(tiny_model_dir, tmp_path, capsys):
    for bad in ("0", "1", "1.5", "-0.2", "half"):
        with pytest.raises(SystemExit) as info:
            main(["prune", str(tiny_model_dir), "--target", "embedding", "--ratio", bad, "--importance", "random",
                  "--out", str(tmp_path / "o")])
        assert info.value.code == 2
        assert "ratio" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["missing", "empty", "all-unreadable"])
def test_bad_image_folders_exit_2_with_one_line(tiny_model_dir, tmp_path, capsys, problem):
    images = tmp_path / "images"
    if problem != "missing":
        images.mkdir()
    if problem == "all-unreadable":
        (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    code, _, err = run(capsys, "prune", tiny_model_dir, "--target", "embedding", "--ratio", 0.5, "--images", images,
                       "--out", tmp_path / "o")
    assert code == 2 and err.strip().splitlines()[-1].startswith("slimsam: error:") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_unreadable_images_are_skipped_and_counted(tiny_model_dir, photo_dir, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(photo_dir, images)
    (images / "broken.png").write_bytes(b"garbage")
    code, out, _ = run(capsys, "prune", tiny_model_dir, "--target", "embedding", "--ratio", 0.5, "--images", images,
                       "--out", tmp_path / "o")
    assert code == 0 and "2 images, 1 unreadable skipped" in out


def test_unknown_model_exits_2_naming_it(tmp_path, capsys):
    code, _, err = run(capsys, "prune", "no-such-org/no-such-sam", "--target", "embedding", "--ratio", 0.5,
                       "--importance", "magnitude", "--out", tmp_path / "o")
    assert code == 2 and "no-such-org/no-such-sam" in err and "local folder" in err


def test_existing_output_folder_is_refused_unless_overwrite(tiny_model_dir, tmp_path, capsys):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    args = ["prune", tiny_model_dir, "--target", "embedding", "--ratio", 0.5, "--importance", "magnitude", "--out", out_dir]
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert run(capsys, *args, "--overwrite")[0] == 0
    assert (out_dir / "slimsam.json").exists()


def test_info_on_random_weight_config_needs_no_download(capsys):
    code, out, _ = run(capsys, "info", "slimsam-77", "--random-weights")
    assert code == 0 and "9,723,784 total" in out and "hidden size 168" in out
