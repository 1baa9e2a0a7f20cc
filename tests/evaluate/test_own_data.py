"""mIoU on COCO and mask folders, agreement with a teacher, many models at once, and the report.

The same annotations in three formats must give the same numbers; a model scored against its own masks
gives exactly 1; a perturbation of known size gives its known IoU; a model agrees with itself exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tiny_model
from own_data import coco_from_sa1b, mixed_coco, write_coco, write_mask_folder
from sa1b import encode_rle, make_sa1b_folder

from slimsam.data.annotations import AnnotatedDataset, bounding_box
from slimsam.data.coco import CROWD, FEW_POINTS
from slimsam.data.formats import open_annotations
from slimsam.data.images import list_images, open_rgb
from slimsam.evaluate import report
from slimsam.evaluate.agreement import compare_with_teacher, point_prompts
from slimsam.evaluate.miou import compare_on_annotations
from slimsam.evaluate.scores import ModelScores
from slimsam.infer.predictor import SamPredictor
from slimsam.model.configs import processor_for, tiny_config

SIZE = (96, 128)


@pytest.fixture(scope="module")
def models():
    processor = processor_for(tiny_config())
    return {"a": (make_tiny_model(seed=0).eval(), processor), "b": (make_tiny_model(seed=1).eval(), processor)}


@pytest.fixture(scope="module")
def sa1b_dir(tmp_path_factory):
    return make_sa1b_folder(tmp_path_factory.mktemp("sa1b"), num_images=5, size=SIZE, seed=3)


def scores(models, folder, prompt, annotations=None, worst=0):
    dataset = AnnotatedDataset(open_annotations(folder, annotations), next(iter(models.values()))[1])
    return compare_on_annotations(models, dataset, prompt, worst, progress=False)


def assert_same_numbers(first, second):
    """Every model's IoU on every prompt of every image, and so every figure but the timing, identical."""
    assert [p.name for p in first.images] == [p.name for p in second.images]
    for name in first.models:
        assert len(first.models[name].ious) == len(second.models[name].ious)
        for a, b in zip(first.models[name].ious, second.models[name].ious):
            np.testing.assert_array_equal(a, b)
    untimed = [[{k: v for k, v in s.items() if k != "seconds_per_image"} for s in c.summaries()]
               for c in (first, second)]
    assert untimed[0] == untimed[1]


def masks_of(folder) -> list[list[np.ndarray]]:
    source = open_annotations(folder)
    return [list(source.read(path, SIZE).masks) for path in source.paths]


# ---- the same annotations in three formats ----------------------------------------------------------

@pytest.mark.parametrize("prompt", ["point", "box"])
def test_sa1b_and_the_same_annotations_as_coco_give_the_same_numbers(models, sa1b_dir, tmp_path, prompt):
    coco = coco_from_sa1b(sa1b_dir, tmp_path / "instances.json", point_coords=True)
    assert_same_numbers(scores(models, sa1b_dir, prompt), scores(models, sa1b_dir, prompt, coco))


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_coco_and_a_mask_folder_give_the_same_numbers(models, sa1b_dir, tmp_path, prompt):
    """Polygons, compressed and uncompressed RLE (no stored points: interior points), against PNGs."""
    coco, expected = mixed_coco(sa1b_dir, tmp_path / "instances.json")
    folder = write_mask_folder(tmp_path / "masks", list_images(sa1b_dir), expected)
    from_coco, from_folder = scores(models, sa1b_dir, prompt, coco), scores(models, folder, prompt)
    assert_same_numbers(from_coco, from_folder)
    assert from_coco.left_out == {CROWD: 1, FEW_POINTS: 1, "mask size differs from its image": 1}
    assert not from_folder.left_out
    assert 0 < from_coco.summaries()[0]["miou"] < 1
    if prompt == "box":  # SA-1B's bbox is its mask's box: SA-1B's numbers are a mask folder's too
        sa1b_as_folder = write_mask_folder(tmp_path / "sa1b_masks", list_images(sa1b_dir), masks_of(sa1b_dir))
        assert_same_numbers(scores(models, sa1b_dir, "box"), scores(models, sa1b_as_folder, "box"))


# ---- own masks and a known perturbation -------------------------------------------------------------

def own_box_masks(model, processor, photos) -> list[list[np.ndarray]]:
    """Per photo, masks that the model gives back for their own bounding box (iterated to a fixed point from
    the generated objects), computed with SamPredictor, independently of slimsam.evaluate."""
    predictor = SamPredictor(model, processor)
    result = []
    for photo, masks in zip(photos, masks_of(photos[0].parent)):
        predictor.set_image(open_rgb(photo))
        own = []
        for mask in masks:
            for _ in range(8):
                answer = predictor.predict(box=bounding_box(mask), multimask_output=False)[0][0]
                if (answer == mask).all() or answer.sum() < 16:
                    break
                mask = answer
            if (answer == mask).all() and answer.sum() >= 16:
                own.append(answer)
        result.append(own)
    return result


def test_own_masks_score_one_and_a_known_perturbation_its_value(models, sa1b_dir, tmp_path):
    model, processor = models["a"]
    photos = list_images(sa1b_dir)
    own = own_box_masks(model, processor, photos)
    assert sum(map(len, own)) >= 5 and all(own)
    assert 0 < np.mean([m.mean() for masks in own for m in masks]) < 1  # neither empty nor the whole image
    folder = write_mask_folder(tmp_path / "own", photos, own)
    coco = write_coco(tmp_path / "own.json", [(p.name, *SIZE) for p in photos],
                      [[{"segmentation": encode_rle(m)} for m in masks] for masks in own])
    single = {"a": models["a"]}
    assert scores(single, folder, "box").summaries()[0]["miou"] == 1.0
    assert scores(single, sa1b_dir, "box", coco).summaries()[0]["miou"] == 1.0
    # Perturb the first mask of every other image: remove half of its pixels that are not on its box's edge
    # rows and columns. The box stays, so the prediction stays, and the IoU is exactly kept / original.
    perturbed, expected = [], []
    for i, masks in enumerate(own):
        ious = [1.0] * len(masks)
        if i % 2 == 0:
            mask = masks[0].copy()
            x0, y0, x1, y1 = bounding_box(mask).astype(int)
            inner = np.zeros_like(mask)
            inner[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = True
            ys, xs = np.nonzero(mask & inner)
            half = len(ys) // 2
            assert half > 0 and mask.sum() - half >= 16
            mask[ys[:half], xs[:half]] = False
            ious[0] = (masks[0].sum() - half) / masks[0].sum()
            masks = [mask, *masks[1:]]
        perturbed.append(masks)
        expected.append(np.mean(ious))
    folder = write_mask_folder(tmp_path / "perturbed", photos, perturbed)
    miou = scores(single, folder, "box").summaries()[0]["miou"]
    assert miou == pytest.approx(np.mean(expected), abs=1e-6)  # IoUs are float32
    assert np.mean(expected) < 0.99


# ---- agreement --------------------------------------------------------------------------------------

def test_point_prompts_grid_and_seeded_random():
    np.testing.assert_array_equal(point_prompts((4, 8), 4), [[2, 1], [6, 1], [2, 3], [6, 3]])
    first = point_prompts((50, 70), 7, seed=3, index=2)
    assert first.shape == (7, 2) and (first >= 0).all() and (first[:, 0] < 70).all() and (first[:, 1] < 50).all()
    np.testing.assert_array_equal(first, point_prompts((50, 70), 7, seed=3, index=2))
    assert not np.array_equal(first, point_prompts((50, 70), 7, seed=3, index=3))  # each image its own points
    assert not np.array_equal(first, point_prompts((50, 70), 7, seed=4, index=2))
    with pytest.raises(ValueError, match="square number"):
        point_prompts((50, 70), 7)


def predictors(models, *names):
    return {name: SamPredictor(*models[name]) for name in names}


def test_a_model_agrees_with_itself_exactly_and_less_with_another(models, photo_dir):
    teacher = SamPredictor(*models["a"])
    paths = list_images(photo_dir)
    comparison = compare_with_teacher(teacher, predictors(models, "a", "b"), paths, points=9, worst=1,
                                      progress=False, teacher_name="a")
    same, other = comparison.summaries()
    assert (same["agreement"], same["median_iou"], same["above_0.5"], same["above_0.9"]) == (1.0, 1.0, 1.0, 1.0)
    assert other["agreement"] < 1 and same["images"] == len(paths)
    assert 9 * len(paths) <= same["prompts"] <= 18 * len(paths)  # 9 points, and a box per non-tiny teacher mask
    assert comparison.worst[0].ious["a"] == 1.0 and comparison.worst[0].ious["b"] < 1
    # Seeded random points: the same seed, the same figures.
    again = [compare_with_teacher(teacher, predictors(models, "b"), paths, points=5, seed=1, progress=False)
             .summaries()[0]["agreement"] for _ in range(2)]
    assert again[0] == again[1] < 1


def test_agreement_is_the_iou_of_one_prompt_at_a_time(models, photo_dir):
    """The batched prompts give the IoU that one `predict` per point gives (first image, its grid points)."""
    teacher, student = SamPredictor(*models["a"]), SamPredictor(*models["b"])
    path = list_images(photo_dir)[0]
    comparison = compare_with_teacher(teacher, {"b": student}, [path], points=4, progress=False)
    image = open_rgb(path)
    expected = []
    for point in point_prompts((image.height, image.width), 4):
        masks = []
        for predictor in (teacher, student):
            predictor.set_image(image)
            masks.append(predictor.predict(points=[point], multimask_output=False)[0][0])
        union = (masks[0] | masks[1]).sum()
        expected.append((masks[0] & masks[1]).sum() / union if union else 1.0)
    np.testing.assert_allclose(comparison.models["b"].ious[0][:4], expected)


# ---- summaries and the report -----------------------------------------------------------------------

def test_summary_averages_per_image_then_over_images():
    scores_ = ModelScores("m")
    scores_.add(np.array([1.0, 0.0]), 2.0)
    scores_.add(np.array([0.5]), 4.0)
    summary = scores_.summary("miou")
    # Per image 0.5 and 0.5; pooled over prompts the mean would be 0.5 too, but the median is 0.5 and only
    # one prompt of three is above 0.5 (strictly), one above 0.9.
    assert summary == {"model": "m", "miou": 0.5, "median_iou": 0.5, "above_0.5": pytest.approx(1 / 3),
                       "above_0.9": pytest.approx(1 / 3), "images": 2, "annotations": 3, "seconds_per_image": 3.0}
    scores_.add(np.array([0.0, 0.0, 0.0, 0.0]), 0.0)
    assert scores_.summary("miou")["miou"] == pytest.approx(1 / 3)  # not the pooled 1.5 / 7


def test_report_writes_table_json_csv_and_two_pictures(models, sa1b_dir, tmp_path):
    three = {**models, "c": (make_tiny_model(seed=2).eval(), models["a"][1])}
    comparison = scores(three, sa1b_dir, "point", worst=2)
    folder = report.write_report(comparison, tmp_path / "report", {"data": str(sa1b_dir)})
    table = (folder / report.TABLE).read_text().splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| model | mIoU |")
    record = json.loads((folder / report.JSON).read_text())
    assert [m["model"] for m in record["models"]] == ["a", "b", "c"]
    assert record["models"][1]["miou"] == comparison.summaries()[1]["miou"] and record["data"] == str(sa1b_dir)
    assert {"images", "annotations", "seconds_per_image"} <= record["models"][0].keys()
    rows = (folder / report.CSV).read_text().splitlines()
    assert rows[0] == "image,annotations,a,b,c" and len(rows) == 1 + len(comparison.images)
    for name in (report.CHART, report.WORST):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    assert len(comparison.worst) == 2 and comparison.worst[0].score <= comparison.worst[1].score
    means = np.mean([s.image_means() for s in comparison.models.values()], axis=0)
    assert comparison.worst[0].score == pytest.approx(means.min())
    with pytest.raises(FileExistsError):
        report.write_report(comparison, folder, {})
