"""How distillation validates: mIoU when the validation images are annotated in any format, else embedding MSE."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_tiny_model
from own_data import coco_from_sa1b, write_mask_folder
from sa1b import make_sa1b_folder

from slimsam.cli.main import main
from slimsam.data.annotations import AnnotatedDataset, DatasetError
from slimsam.data.formats import open_annotations
from slimsam.data.images import list_images
from slimsam.distill.validation import make_validation
from slimsam.evaluate.miou import evaluate
from slimsam.model.configs import processor_for


@pytest.fixture(scope="module")
def teacher():
    model = make_tiny_model().eval()
    return model, processor_for(model.config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same three annotated images as SA-1B, as a mask folder, and as COCO (images + instances.json)."""
    root = tmp_path_factory.mktemp("validation")
    sa1b = make_sa1b_folder(root / "sa1b", num_images=3, size=(48, 64), seed=1)
    source = open_annotations(sa1b)
    masks = [list(source.read(path, (48, 64)).masks) for path in source.paths]
    mask_folder = write_mask_folder(root / "masks", source.paths, masks)
    coco_images = root / "coco"
    coco_images.mkdir()
    for path in source.paths:
        shutil.copy(path, coco_images / path.name)
    return {"sa1b": sa1b, "masks": mask_folder, "coco": coco_images,
            "instances": coco_from_sa1b(sa1b, root / "instances.json", point_coords=False)}


def test_annotated_validation_images_in_every_format_give_miou(teacher, folders):
    model, processor = teacher
    values = {}
    for name, coco_file in (("sa1b", None), ("masks", None), ("coco", folders["instances"])):
        paths = list_images(folders[name])
        validation = make_validation(paths, model, processor, annotations=coco_file)
        assert (validation.metric, validation.higher_is_better) == ("miou", True)
        values[name] = validation.measure(model)
        dataset = AnnotatedDataset(open_annotations(folders[name], coco_file), processor, paths)
        assert values[name] == evaluate(model, processor, dataset, progress=False).miou
    # COCO without points and the mask folder both prompt with interior points: the same mIoU.
    assert values["masks"] == values["coco"] and 0 < values["masks"] < 1


def test_plain_or_partly_annotated_images_give_embedding_mse(teacher, folders, photo_dir, tmp_path, caplog):
    model, processor = teacher
    with caplog.at_level("INFO"):
        assert make_validation(list_images(photo_dir), model, processor).metric == "embedding_mse"
    assert "without annotations" in caplog.text
    partial = shutil.copytree(folders["sa1b"], tmp_path / "partial")
    (partial / "sa_2.json").unlink()
    assert make_validation(list_images(partial), model, processor).metric == "embedding_mse"
    # A held-out subset of an annotated folder is annotated.
    assert make_validation(list_images(folders["masks"])[1:], model, processor).metric == "miou"


def test_a_coco_file_missing_validation_images_is_an_error(teacher, folders, tmp_path):
    model, processor = teacher
    images = shutil.copytree(folders["coco"], tmp_path / "images")
    shutil.copy(images / "sa_1.jpg", images / "extra.jpg")
    with pytest.raises(DatasetError, match="1 of the 4 validation images are not in"):
        make_validation(list_images(images), model, processor, annotations=folders["instances"])


@pytest.mark.parametrize("command", ["distill", "slim"])
def test_bad_val_annotations_fail_before_any_work(folders, tmp_path, capsys, command):
    (tmp_path / "bad.json").write_text(json.dumps({"images": "not a list"}))
    args = [command, "no-such-model", "--train", str(folders["coco"]), "--val", str(folders["coco"]),
            "--val-annotations", str(tmp_path / "bad.json"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    args += ["--teacher", "no-such-teacher", "--stage", "1"] if command == "distill" else ["--ratio", "0.5"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimsam: error: ") and "is not a COCO annotation file" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
