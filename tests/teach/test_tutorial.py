"""The notebooks' helpers (slimsam.teach.tutorial): fast mode's toy photos, prompts, models and mask scores."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import real_photos

from slimsam.data import synthetic
from slimsam.data.formats import open_annotations
from slimsam.model.configs import tiny_config
from slimsam.model.random_weights import random_model
from slimsam.model.structure import read_dims
from slimsam.teach import tutorial


def test_fast_mode_trains_on_toy_photos_the_toy_never_saw_and_holds_out_test_photos(tmp_path):
    train, held_out = tutorial.training_photos(None, tmp_path, fast=True, count=2, held_out=3)
    assert len(train) == 2 and len(held_out) == 3
    # The toy SAM learnt from train images 0 .. TOY_TRAINED_ON - 1: fast mode trains on the ones after them.
    assert [int(path.stem.split("_")[1]) for path in train] == [tutorial.TOY_TRAINED_ON, tutorial.TOY_TRAINED_ON + 1]
    expected = synthetic.sample(tutorial.TOY_SEED, "train", tutorial.TOY_TRAINED_ON)
    assert open_annotations(train[0].parent).read(train[0], expected.image.shape[:2]).masks.shape == \
        expected.masks.shape
    assert open_annotations(held_out[0].parent).format == "sa1b", "held-out photos have masks: mIoU, not MSE"


def test_full_mode_holds_out_some_of_the_photos(tmp_path):
    train, held_out = tutorial.training_photos(None, tmp_path, fast=False, count=None, held_out=1)
    assert len(held_out) == 1 and held_out[0] not in train and len(train) == len(tutorial.bundled_photos()) - 1


def test_an_annotated_photo_is_prompted_on_its_largest_object(tmp_path):
    path = tutorial.toy_photo_files(tmp_path, "test", 1)[0]
    image, point, box, truth = tutorial.example(path)
    masks = open_annotations(tmp_path).read(path, (image.height, image.width)).masks
    assert len(masks) > 1 and np.array_equal(truth, max(masks, key=np.sum))
    assert truth[int(point[1]), int(point[0])], "the point lies on the mask"
    rows, cols = np.flatnonzero(truth.any(1)), np.flatnonzero(truth.any(0))
    assert box == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_an_unlabelled_photo_gets_fixed_prompts_and_no_mask(tmp_path):
    portrait, other = real_photos()[:2]
    portrait.save(tmp_path / "portrait.jpg")
    other.save(tmp_path / "other.jpg")
    _, point, box, truth = tutorial.example(tmp_path / "portrait.jpg")
    assert truth is None and point == [260, 260] and box == [150, 20, 380, 340]
    image, point, box, truth = tutorial.example(tmp_path / "other.jpg")
    assert truth is None and point == [image.width // 2, image.height // 2]


def test_mask_quality_is_miou_where_masks_exist_else_agreement_with_the_teacher(tmp_path):
    models = {"teacher": random_model(tiny_config(), 0), "student": random_model(tiny_config(), 1)}
    annotated = tutorial.toy_photo_files(tmp_path / "toy", "test", 2)
    quality = tutorial.mask_quality(models, annotated, "teacher")
    assert quality.metric == "miou" and len(quality.images) == 2
    unlabelled = tmp_path / "photos"
    unlabelled.mkdir()
    for i, photo in enumerate(real_photos()):
        photo.save(unlabelled / f"photo_{i}.jpg")
    quality = tutorial.mask_quality(models, sorted(unlabelled.iterdir()), "teacher", points=4)
    scores = {summary["model"]: summary["agreement"] for summary in quality.summaries()}
    assert quality.metric == "agreement" and scores["teacher"] == 1.0 and scores["student"] < 1.0


def test_fast_mode_slimsams_are_the_toy_pruned_in_both_steps():
    toy = read_dims(tutorial.load("sam-b", fast=True)[0])
    slim = read_dims(tutorial.load("slimsam-50", fast=True)[0])
    assert slim.hidden_size == toy.hidden_size // 2 and slim.num_heads == toy.num_heads
    assert [layer.mlp_dim for layer in slim.layers] == [layer.mlp_dim // 2 for layer in toy.layers]
    assert [layer.head_dim for layer in slim.layers] == [toy.hidden_size // toy.num_heads // 2] * len(toy.layers)


def test_fast_mode_has_no_toy_sam_h():
    with pytest.raises(ValueError, match="fast mode has no SAM-H"):
        tutorial.load("sam-h", fast=True)
