"""Label-based Taylor importance: SAM's mask loss, its gradients, and `--importance taylor`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from own_data import coco_from_sa1b
from sa1b import make_sa1b_folder

from slimsam import load_model, read_history
from slimsam.cli.main import main
from slimsam.data.annotations import AnnotatedDataset, iter_annotated
from slimsam.data.formats import open_annotations
from slimsam.evaluate.masks import focal_dice_loss
from slimsam.model.configs import processor_for, tiny_config
from slimsam.pruning.groups import embedding_group
from slimsam.pruning.importance import group_importance
from slimsam.pruning.label_taylor import accumulate_label_taylor_gradients
from slimsam.pruning.steps import prune, select_embedding_channels


@pytest.fixture(scope="module")
def sa1b_dir(tmp_path_factory):
    return make_sa1b_folder(tmp_path_factory.mktemp("sa1b_taylor"), num_images=3)


@pytest.fixture(scope="module")
def processor():
    return processor_for(tiny_config())


def test_focal_dice_loss_known_values():
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2] = True  # half the pixels
    # Logits 0 (p = 0.5 everywhere): focal = mean(alpha_t) * 0.5**2 * ln 2 = 0.5 * 0.25 * ln 2 per pixel;
    # dice = 1 - (2 * 4 + 1) / (8 + 8 + 1).
    expected = 20 * 0.125 * math.log(2) + 1 - 9 / 17
    assert focal_dice_loss(torch.zeros(1, 4, 4), target).item() == pytest.approx(expected, rel=1e-6)
    confident = torch.where(target, 30.0, -30.0)
    assert focal_dice_loss(confident, target).item() == pytest.approx(0, abs=1e-6)
    assert focal_dice_loss(-confident, target).item() > expected


def samples(folder, processor, annotations=None):
    return iter_annotated(AnnotatedDataset(open_annotations(folder, annotations), processor))


def test_gradients_depend_on_the_labels(sa1b_dir, processor, tmp_path):
    model = make_tiny_model()
    assert accumulate_label_taylor_gradients(model, processor, samples(sa1b_dir, processor), progress=False) == 3
    scores = group_importance(embedding_group(model), "taylor")
    assert scores.shape == (48,) and (scores > 0).all()
    # Same images and prompts, complemented masks: different loss, different gradients.
    complemented = [dict(s, masks=~s["masks"]) for s in samples(sa1b_dir, processor)]
    accumulate_label_taylor_gradients(model, processor, complemented, progress=False)
    assert not torch.allclose(group_importance(embedding_group(model), "taylor"), scores)
    # Images without annotations are passed over, not counted.
    empty = [dict(complemented[0], masks=np.zeros((0, 96, 128), bool))]
    assert accumulate_label_taylor_gradients(model, processor, empty, progress=False) == 0


def test_prune_with_taylor_keeps_the_highest_mask_loss_scores(sa1b_dir, processor):
    reference = make_tiny_model()
    accumulate_label_taylor_gradients(reference, processor, samples(sa1b_dir, processor), progress=False)
    scores = group_importance(embedding_group(reference), "taylor")
    keep = select_embedding_channels(scores, 0.5, heads=4)
    model = make_tiny_model()
    original_norm = model.vision_encoder.layers[0].layer_norm1.weight.detach().clone()
    record = prune(model, "embedding", 0.5, criterion="taylor", samples=samples(sa1b_dir, processor),
                   processor=processor, progress=False)
    assert record["importance"] == "taylor" and record["images"] == 3
    torch.testing.assert_close(model.vision_encoder.layers[0].layer_norm1.weight, original_norm[keep])
    with pytest.raises(ValueError, match="annotated samples"):
        prune(make_tiny_model(), "embedding", 0.5, criterion="taylor")


def test_cli_prune_taylor(tiny_model_dir, sa1b_dir, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    for path in sa1b_dir.iterdir():
        (tmp_path / "data" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "data" / "sa_3.jpg").write_bytes(b"corrupt")
    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir), "--target", "bottleneck", "--ratio", "0.5", "--importance", "taylor",
                 "--images", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]) == 0
    assert "gradient pass: 2 images, 1 unreadable skipped" in capsys.readouterr().out
    assert read_history(out)[-1]["importance"] == "taylor"
    model, _ = load_model(str(out))
    assert model.vision_encoder.layers[0].mlp.lin1.out_features == 48


@pytest.mark.parametrize("images", [None, "photos"])
def test_cli_prune_taylor_needs_an_sa1b_folder(tiny_model_dir, photo_dir, tmp_path, capsys, images):
    args = ["prune", str(tiny_model_dir), "--target", "embedding", "--ratio", "0.5", "--importance", "taylor",
            "--out", str(tmp_path / "out")]
    if images:
        args += ["--images", str(photo_dir)]  # plain photos: no annotations
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimsam: error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_prune_taylor_on_coco(tiny_model_dir, sa1b_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in sa1b_dir.glob("*.jpg"):
        (images / path.name).write_bytes(path.read_bytes())
    coco = coco_from_sa1b(sa1b_dir, tmp_path / "instances.json")
    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir), "--target", "embedding", "--ratio", "0.5", "--importance", "taylor",
                 "--images", str(images), "--annotations", str(coco), "--out", str(out), "--device", "cpu"]) == 0
    assert "gradient pass: 3 images, 0 unreadable skipped" in capsys.readouterr().out
    # The same annotations as SA-1B beside the images: the same gradients, so the same kept channels.
    reference = tmp_path / "reference"
    assert main(["prune", str(tiny_model_dir), "--target", "embedding", "--ratio", "0.5", "--importance", "taylor",
                 "--images", str(sa1b_dir), "--out", str(reference), "--device", "cpu"]) == 0
    for a, b in zip(load_model(str(out))[0].parameters(), load_model(str(reference))[0].parameters()):
        assert torch.equal(a, b)
