"""slimsam.data: folders, split, SamProcessor-identical preprocessing, corrupt files (annotations: test_formats)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sa1b import make_sa1b_folder
from torch.utils.data import DataLoader

from slimsam.data.datasets import ImageDataset, collate_pixels, train_val_split
from slimsam.data.images import ImageFolderError, list_images, open_rgb, open_rgb_sized
from slimsam.model.configs import processor_for, tiny_config


@pytest.fixture(scope="module")
def processor():
    return processor_for(tiny_config())


@pytest.fixture(scope="module")
def sa1b_dir(tmp_path_factory):
    return make_sa1b_folder(tmp_path_factory.mktemp("sa1b"), num_images=4)


def test_list_images_sorted_not_recursive_and_errors(tmp_path, photo_dir):
    for name in ("b.jpg", "a.PNG", "val/c.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes((photo_dir / "photo_0.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_images(tmp_path) == [tmp_path / "a.PNG", tmp_path / "b.jpg"]  # val/ stays out of training
    with pytest.raises(ImageFolderError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="no images"):
        list_images(tmp_path / "empty")


def test_train_val_split_is_seeded_disjoint_and_complete(tmp_path):
    paths = [tmp_path / f"sa_{i}.jpg" for i in range(20)]
    train, val = train_val_split(paths, 5, seed=1)
    assert len(val) == 5 and sorted(train + val) == sorted(paths) and not set(train) & set(val)
    assert train_val_split(paths, 5, seed=1) == (train, val)
    assert train_val_split(paths, 5, seed=2)[1] != val
    assert len(train_val_split(paths, 0.1, seed=0)[1]) == 2
    assert train == [p for p in paths if p in set(train)]  # input order kept
    for bad in (20, -1, 0.0, 1.0):
        with pytest.raises(ValueError):
            train_val_split(paths, bad, seed=0)


def test_pixels_equal_sam_processor(photo_dir, processor):
    paths = list_images(photo_dir)
    dataset = ImageDataset(paths, processor)
    for path, item in zip(paths, dataset):
        expected = processor(images=open_rgb(path), return_tensors="pt")["pixel_values"][0]
        assert item.shape == (3, 64, 64) and torch.equal(item, expected)


def test_corrupt_images_are_skipped_and_counted(photo_dir, tmp_path, processor, caplog):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = (photo_dir / "photo_0.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "good.jpg").write_bytes(good)
    loader = DataLoader(ImageDataset(list_images(tmp_path), processor), batch_size=3, collate_fn=collate_pixels)
    (pixels, skipped), = list(loader)
    assert pixels.shape == (1, 3, 64, 64) and skipped == 2
    assert "broken.jpg" in caplog.text and "truncated.jpg" in caplog.text
    assert collate_pixels([None, None]) == (None, 2)


def test_make_sa1b_folder_with_supplied_masks_keeps_images_and_prompts(sa1b_dir, tmp_path):
    originals = [json.loads((sa1b_dir / f"sa_{n}.json").read_text())["annotations"] for n in range(1, 5)]
    replaced = [[np.ones((96, 128), bool) for _ in image_annotations] for image_annotations in originals]
    make_sa1b_folder(tmp_path, seed=0, masks=replaced)
    for n, image_annotations in enumerate(originals, start=1):
        assert (tmp_path / f"sa_{n}.jpg").read_bytes() == (sa1b_dir / f"sa_{n}.jpg").read_bytes()
        new = json.loads((tmp_path / f"sa_{n}.json").read_text())["annotations"]
        assert [a["point_coords"] for a in new] == [a["point_coords"] for a in image_annotations]
        assert [a["area"] for a in new] == [96 * 128] * len(image_annotations)


def test_open_rgb_sized_tells_the_upright_full_size_of_a_downscaled_photo(tmp_path):
    photo = Image.new("RGB", (3000, 1000), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": upright it is 1000 wide, 3000 high
    photo.save(tmp_path / "turned.jpg", exif=exif)
    image, size = open_rgb_sized(tmp_path / "turned.jpg", max_side=600)
    assert size == (3000, 1000) and image.size == (200, 600)
    image, size = open_rgb_sized(tmp_path / "turned.jpg")
    assert size == (3000, 1000) and image.size == (1000, 3000)
