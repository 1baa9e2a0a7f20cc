"""`slimsam eval` on your own data: COCO and mask folders, several models, --agreement, the report, bad input."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import save_tiny_model
from own_data import mixed_coco, write_mask_folder
from sa1b import make_sa1b_folder

from slimsam.cli.main import main
from slimsam.evaluate import report


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [str(save_tiny_model(root / name, seed=seed)) for seed, name in enumerate("ABC")]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """(image folder, COCO file with a crowd annotation, a 2-point polygon and a wrong-size RLE, expected masks)."""
    folder = make_sa1b_folder(tmp_path_factory.mktemp("coco"), num_images=4, size=(48, 64), seed=2)
    file, masks = mixed_coco(folder, folder.parent / "instances.json")
    for sidecar in folder.glob("*.json"):
        sidecar.unlink()  # only the COCO file annotates the images
    return folder, file, masks


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_many_models_on_coco_write_the_report(models, coco, tmp_path, capsys):
    folder, file, masks = coco
    code, out, _ = run(capsys, "eval", *models, "--data", folder, "--annotations", file, "--device", "cpu",
                       "--out", tmp_path / "report", "--worst", 2)
    assert code == 0
    lines = out.splitlines()
    annotations = sum(map(len, masks))
    assert lines[0] == f"data: {folder}, 4 images, {annotations} annotations, point prompts, 0 unreadable skipped"
    assert [line.split()[0] for line in lines[1:4]] == ["mIoU:"] * 3 and lines[3].endswith(models[2])
    assert "left out: 1 crowd annotation, 1 mask size differs from its image, 1 polygon with fewer than 3 points" \
        in lines
    assert sum(line.startswith(f"| {m} |") for m in models for line in lines) == 3  # the table
    record = json.loads((tmp_path / "report" / report.JSON).read_text())
    assert record["format"] == "coco" and record["annotations"] == str(file)
    assert [m["model"] for m in record["models"]] == models
    assert all(m["images"] == 4 and m["annotations"] == annotations and m["seconds_per_image"] > 0
               for m in record["models"])
    assert [f"{m['miou']:.4f}" for m in record["models"]] == [line.split()[1] for line in lines[1:4]]
    assert len(record["worst_images"]) == 2
    for name in (report.TABLE, report.CSV, report.CHART, report.WORST):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_the_same_masks_as_a_folder_print_the_same_miou(models, coco, tmp_path, capsys):
    folder, file, masks = coco
    mask_folder = write_mask_folder(tmp_path / "masks", sorted(folder.glob("*.jpg")), masks)
    shutil.copy(next(folder.glob("*.jpg")), mask_folder / "unlabelled.jpg")  # no masks: not scored, but counted
    outputs = []
    for data in (["--data", folder, "--annotations", file], ["--data", mask_folder]):
        code, out, _ = run(capsys, "eval", models[0], *data, "--prompt", "box", "--device", "cpu")
        assert code == 0
        outputs.append(out.splitlines())
    assert outputs[0][1] == outputs[1][1] and outputs[0][1].startswith("mIoU: ")
    assert outputs[1][0].endswith("0 unreadable skipped, 1 without annotations")


def test_agreement_on_plain_photos(models, photo_dir, capsys):
    code, out, _ = run(capsys, "eval", models[0], models[1], "--teacher", models[0], "--data", photo_dir,
                       "--agreement", "--points", 4, "--device", "cpu")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"data: {photo_dir}, 2 images, ") and "4 grid points + boxes" in lines[0]
    assert lines[1] == f"agreement: 1.0000  {models[0]}  (mean IoU with {models[0]}'s masks)"
    assert lines[2].startswith("agreement: ") and float(lines[2].split()[1]) < 1
    assert lines[3].startswith("worst images: ")


def test_seeded_random_points_repeat(models, photo_dir, capsys):
    outputs = [run(capsys, "eval", models[1], "--teacher", models[0], "--data", photo_dir, "--agreement",
                   "--points", 5, "--seed", seed, "--device", "cpu")[1].splitlines()[1] for seed in (7, 7, 8)]
    assert outputs[0] == outputs[1] != outputs[2]


@pytest.mark.parametrize("problem", [
    "coco_not_json", "coco_images_missing", "empty_folder", "missing_folder", "mixed_formats", "plain_photos",
    "agreement_without_teacher", "agreement_with_annotations", "points_not_square", "points_without_agreement",
    "out_exists", "all_unreadable"])
def test_bad_input_is_one_line(models, coco, photo_dir, tmp_path, capsys, problem):
    folder, file, _ = coco
    data = tmp_path / "data"
    args = ["--data", data]
    if problem == "coco_not_json":
        shutil.copytree(folder, data)
        (tmp_path / "bad.json").write_bytes(b"\x00\x01 binary, not json")
        args += ["--annotations", tmp_path / "bad.json"]
    elif problem == "coco_images_missing":
        data.mkdir()
        (data / "other.jpg").write_bytes(next(folder.glob("*.jpg")).read_bytes())
        args += ["--annotations", file]
    elif problem == "empty_folder":
        data.mkdir()
    elif problem == "mixed_formats":
        make_sa1b_folder(data, num_images=1, size=(48, 64))  # sa_1.jpg + sa_1.json ...
        shutil.copy(data / "sa_1.jpg", data / "other.jpg")  # ... beside other.jpg + other/0.png
        (data / "other").mkdir()
        (data / "other" / "0.png").write_bytes((data / "sa_1.jpg").read_bytes())
    elif problem == "plain_photos":
        args = ["--data", photo_dir]
    elif problem.startswith(("agreement", "points")):
        args = ["--data", photo_dir, "--agreement", "--teacher", models[0]]
        args = {"agreement_without_teacher": args[:3],
                "agreement_with_annotations": args + ["--annotations", file],
                "points_not_square": args + ["--points", 5],
                "points_without_agreement": ["--data", photo_dir, "--points", 4]}[problem]
    elif problem == "out_exists":
        args = ["--data", folder, "--annotations", file, "--out", tmp_path]
    elif problem == "all_unreadable":
        data.mkdir()
        (data / "sa_1.jpg").write_bytes(b"junk")
        (data / "sa_1.json").write_text("{}")
    code, out, err = run(capsys, "eval", models[0], *args, "--device", "cpu")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()  # progress bars may come before the error line
    assert lines[-1].startswith("slimsam: error: ") and sum("slimsam:" in line for line in lines) == 1, err
    assert "Traceback" not in err
    if problem == "plain_photos":
        assert "--agreement" in err
