"""slimsam.evaluate and `slimsam eval`: the paper's mIoU protocol on a generated SA-1B folder.

Ground truth that *is* the model's own prediction must score exactly 1.0. The predictions are made
here the way Hugging Face documents SamModel (processor with the JSON's raw prompts, model,
post_process_masks), independently of slimsam.evaluate's own code path.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sa1b import make_sa1b_folder

from slimsam import load_model
from slimsam.cli.main import main
from slimsam.data.annotations import AnnotatedDataset
from slimsam.data.formats import open_annotations
from slimsam.evaluate.masks import mask_iou
from slimsam.evaluate.miou import evaluate

NUM_IMAGES = 6


def score(model_and_processor, folder, prompt: str = "point"):
    """slimsam.evaluate.miou.evaluate on the annotated folder (its format detected)."""
    model, processor = model_and_processor
    return evaluate(model, processor, AnnotatedDataset(open_annotations(folder), processor), prompt, progress=False)


def reference_masks(model, processor, folder, prompt: str) -> list[list[np.ndarray]]:
    """Per image, the model's single-mask prediction for each annotation's prompt, via plain transformers."""
    predictions = []
    for n in range(1, NUM_IMAGES + 1):
        annotations = json.loads((folder / f"sa_{n}.json").read_text())["annotations"]
        image = Image.open(folder / f"sa_{n}.jpg").convert("RGB")
        if prompt == "point":
            prompts = dict(input_points=[[a["point_coords"] for a in annotations]],
                           input_labels=[[[1] for _ in annotations]])
        else:
            prompts = dict(input_boxes=[[[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]])
        inputs = processor(images=image, return_tensors="pt", **prompts)
        with torch.no_grad():
            pred = model(pixel_values=inputs["pixel_values"], multimask_output=False,
                         **{k: inputs[k] for k in ("input_points", "input_labels", "input_boxes") if k in inputs})
        masks = processor.post_process_masks(pred.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
        predictions.append(list(masks[0][:, 0].numpy()))
    return predictions


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory):
    return make_sa1b_folder(tmp_path_factory.mktemp("sa1b_prompts"), num_images=NUM_IMAGES, seed=3)


@pytest.fixture(scope="module")
def own_masks(model_and_processor, prompts_dir):
    return reference_masks(*model_and_processor, prompts_dir, "point")


@pytest.fixture(scope="module")
def own_dir(tmp_path_factory, own_masks):
    """The prompts folder with each annotation's mask replaced by the model's own point prediction."""
    return make_sa1b_folder(tmp_path_factory.mktemp("sa1b_own"), seed=3, masks=own_masks)


def test_mask_iou_known_values():
    predicted = torch.zeros(3, 4, 4, dtype=torch.bool)
    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    predicted[0, 0:2], target[0, 1:3] = True, True   # 4 shared of 12 pixels
    predicted[1, :, 0] = True                         # nothing shared
    # mask 2: both empty, perfect agreement
    torch.testing.assert_close(mask_iou(predicted, target), torch.tensor([1 / 3, 0.0, 1.0]))


def test_own_predictions_score_one(model_and_processor, own_dir, own_masks):
    # The predictions are neither empty nor whole-image, so a score of 1 is informative.
    assert 0 < np.mean([m.mean() for masks in own_masks for m in masks]) < 1
    result = score(model_and_processor, own_dir)
    assert result.miou == 1.0
    assert (result.images, result.annotations, result.skipped) == (NUM_IMAGES, sum(map(len, own_masks)), 0)


def test_masks_from_the_project_predictor_score_one(tiny_model_dir, model_and_processor, prompts_dir, tmp_path):
    """The app's SamPredictor and `slimsam eval` agree on what the model segments for a point."""
    from slimsam.infer.predictor import SamPredictor
    predictor = SamPredictor.from_pretrained(str(tiny_model_dir), device="cpu")
    masks = []
    for n in range(1, NUM_IMAGES + 1):
        predictor.set_image(Image.open(prompts_dir / f"sa_{n}.jpg"))
        annotations = json.loads((prompts_dir / f"sa_{n}.json").read_text())["annotations"]
        masks.append([predictor.predict(points=a["point_coords"], multimask_output=False)[0][0] for a in annotations])
    folder = make_sa1b_folder(tmp_path, seed=3, masks=masks)
    assert score(model_and_processor, folder).miou == 1.0


def test_an_image_without_annotations_is_not_scored(model_and_processor, own_dir, own_masks, tmp_path):
    shutil.copytree(own_dir, tmp_path / "data")
    record = json.loads((tmp_path / "data" / "sa_1.json").read_text())
    (tmp_path / "data" / "sa_1.json").write_text(json.dumps(dict(record, annotations=[])))
    result = score(model_and_processor, tmp_path / "data")
    assert (result.miou, result.images, result.skipped) == (1.0, NUM_IMAGES - 1, 0)
    assert result.annotations == sum(map(len, own_masks[1:]))


def test_the_generated_masks_do_not_score_one(model_and_processor, prompts_dir):
    result = score(model_and_processor, prompts_dir)
    assert result.miou < 0.9


def test_box_prompts_use_the_bbox(model_and_processor, prompts_dir, tmp_path):
    box_masks = reference_masks(*model_and_processor, prompts_dir, "box")
    folder = make_sa1b_folder(tmp_path, seed=3, masks=box_masks)
    assert score(model_and_processor, folder, "box").miou == 1.0
    assert score(model_and_processor, folder, "point").miou < 1.0


def test_known_perturbation_averages_per_image_then_over_images(model_and_processor, own_masks, tmp_path):
    # Complementing a ground-truth mask makes its IoU exactly 0 whatever the prediction is.
    # Image i gets its first (i % 2 + 1) masks complemented, capped at its annotation count.
    perturbed, expected_per_image = [], []
    for i, masks in enumerate(own_masks):
        flipped = min(i % 2 + 1, len(masks))
        perturbed.append([~m if j < flipped else m for j, m in enumerate(masks)])
        expected_per_image.append((len(masks) - flipped) / len(masks))
    counts = [len(masks) for masks in own_masks]
    pooled = 1 - sum(min(i % 2 + 1, c) for i, c in enumerate(counts)) / sum(counts)
    assert not np.isclose(np.mean(expected_per_image), pooled)  # the data can tell the two averages apart
    folder = make_sa1b_folder(tmp_path, seed=3, masks=perturbed)
    result = score(model_and_processor, folder)
    assert result.miou == pytest.approx(np.mean(expected_per_image), abs=1e-6)


def test_cli_eval_own_predictions(tiny_model_dir, own_dir, own_masks, capsys):
    assert main(["eval", str(tiny_model_dir), "--data", str(own_dir), "--prompt", "point", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "\nmIoU: 1.0000" in out
    assert f"{NUM_IMAGES} images, {sum(map(len, own_masks))} annotations" in out


def test_cli_eval_teacher_limit_and_corrupt_image(tiny_model_dir, tmp_path, own_dir, own_masks, capsys):
    data = tmp_path / "data"
    shutil.copytree(own_dir, data)
    (data / "sa_2.jpg").write_bytes(b"not a jpeg")
    teacher = tmp_path / "teacher"
    from conftest import save_tiny_model
    save_tiny_model(teacher, seed=1)
    assert main(["eval", str(tiny_model_dir), "--data", str(data), "--limit", "3", "--teacher", str(teacher),
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # --limit 3 takes the first three files by name: sa_1, sa_2 (unreadable) and sa_3.
    annotations = len(own_masks[0]) + len(own_masks[2])
    assert f"2 images, {annotations} annotations, point prompts, 1 unreadable skipped" in lines[0]
    assert lines[1].startswith("mIoU: 1.0000")
    teacher_miou = float(lines[2].split()[2])
    assert lines[2].startswith("teacher mIoU: ") and 0 <= teacher_miou < 1


@pytest.mark.parametrize("make_bad", ["missing", "no_json", "all_unreadable"])
def test_cli_eval_bad_data_is_one_line_error(tiny_model_dir, tmp_path, photo_dir, own_dir, capsys, make_bad):
    data = tmp_path / "data"
    if make_bad == "no_json":
        shutil.copytree(photo_dir, data)
    elif make_bad == "all_unreadable":
        data.mkdir()
        (data / "sa_1.jpg").write_bytes(b"junk")
        (data / "sa_1.json").write_text("{}")
    assert main(["eval", str(tiny_model_dir), "--data", str(data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("slimsam: error: ") and "Traceback" not in "\n".join(err)
