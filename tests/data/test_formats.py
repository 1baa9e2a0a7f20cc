"""slimsam.data's annotation formats: SA-1B, COCO and mask folders read into one item, their registry, bad input.

The COCO files and mask folders are written by tests/own_data.py with pycocotools and PIL directly.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from own_data import decode, mixed_coco, sa1b_annotations, write_coco, write_mask_folder
from PIL import Image
from pycocotools import mask as mask_utils
from sa1b import encode_rle, make_sa1b_folder

from slimsam.data.annotations import AnnotatedDataset, DatasetError, bounding_box, interior_point, iter_annotated
from slimsam.data.coco import CROWD, FEW_POINTS, MISSING_IMAGE, UNKNOWN_IMAGE
from slimsam.data.formats import NoAnnotationsError, detect_format, open_annotations
from slimsam.data.images import ImageFolderError, list_images
from slimsam.data.mask_folder import UNREADABLE
from slimsam.model.configs import processor_for, tiny_config

SIZE = (96, 128)


@pytest.fixture(scope="module")
def processor():
    return processor_for(tiny_config())


@pytest.fixture(scope="module")
def sa1b_dir(tmp_path_factory):
    return make_sa1b_folder(tmp_path_factory.mktemp("sa1b"), num_images=4, size=SIZE, seed=5)


def sa1b_masks(folder) -> list[list[np.ndarray]]:
    return [[decode(a["segmentation"], *SIZE) for a in image] for image in sa1b_annotations(folder).values()]


# ---- the prompt rules ----------------------------------------------------------------------------------

def _square(top: int, left: int, side: int, shape=(10, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def brute_force_interior(mask: np.ndarray) -> tuple[float, float]:
    """The rule written out: the largest distance to a background pixel, outside the image included, first in
    row-major order."""
    height, width = mask.shape
    outside = [(y, x) for y in range(-1, height + 1) for x in range(-1, width + 1)
               if not (0 <= y < height and 0 <= x < width) or not mask[y, x]]
    background = np.array(outside, dtype=float)
    best, where = -1.0, None
    for y, x in zip(*np.nonzero(mask)):  # row-major order
        distance = np.sqrt(((background - (y, x)) ** 2).sum(axis=1)).min()
        if distance > best:
            best, where = distance, (x + 0.5, y + 0.5)
    return where


def test_interior_point_on_hand_made_masks():
    assert interior_point(_square(2, 3, 5)).tolist() == [5.5, 4.5]  # an odd square: its centre pixel
    # An even square: four central pixels tie at distance 2; the topmost, then leftmost, wins.
    assert interior_point(_square(2, 2, 4)).tolist() == [3.5, 3.5]
    # The whole image: outside counts as background, so the point is the middle, not a corner.
    assert interior_point(np.ones((5, 5), bool)).tolist() == [2.5, 2.5]
    # Two blobs: the point is in the wider one, whatever comes first.
    two = _square(0, 0, 2) | _square(4, 4, 5)
    assert interior_point(two).tolist() == [6.5, 6.5]
    # A ring: the point lies on the ring, never in its hole.
    ring = _square(1, 1, 8) & ~_square(3, 3, 4)
    x, y = interior_point(ring)
    assert ring[int(y), int(x)]


def test_interior_point_equals_the_rule_written_out():
    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = np.zeros((12, 15), bool)
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, 10), rng.integers(0, 13)
            mask[top:top + rng.integers(1, 8), left:left + rng.integers(1, 9)] = True
        assert tuple(interior_point(mask)) == brute_force_interior(mask)


def test_bounding_box_is_pycocotools_bbox(sa1b_dir):
    for masks in sa1b_masks(sa1b_dir):
        for mask in masks:
            x, y, w, h = mask_utils.toBbox(encode_rle(mask))
            assert bounding_box(mask).tolist() == [x, y, x + w, y + h]


# ---- SA-1B -----------------------------------------------------------------------------------------------

def test_sa1b_item_matches_the_json(sa1b_dir, processor):
    source = open_annotations(sa1b_dir)
    assert source.format == "sa1b" and [p.name for p in source.paths] == [f"sa_{n}.jpg" for n in range(1, 5)]
    for path, item in zip(source.paths, AnnotatedDataset(source, processor)):
        annotations = json.loads(path.with_suffix(".json").read_text())["annotations"]
        assert item["masks"].shape == (len(annotations), *SIZE) and item["masks"].dtype == bool
        assert item["original_size"] == SIZE and item["reshaped_size"] == (48, 64) and item["path"] == path
        for mask, point, box, annotation in zip(item["masks"], item["points"], item["boxes"], annotations):
            assert mask.sum() == annotation["area"]
            assert point.tolist() == annotation["point_coords"][0]  # the stored prompts, not derived ones
            x, y, w, h = annotation["bbox"]
            assert box.tolist() == [x, y, x + w, y + h]
        # Model frame: longest side 128 -> 64, so prompts halve.
        np.testing.assert_allclose(item["input_points"][:, 0].numpy(), item["points"] / 2)
        np.testing.assert_allclose(item["input_boxes"].numpy(), item["boxes"] / 2)


def test_sa1b_mask_of_another_size_is_left_out_and_a_corrupt_file_skipped(sa1b_dir, tmp_path, processor, caplog):
    for path in sa1b_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    record = json.loads((tmp_path / "sa_1.json").read_text())
    record["annotations"][0]["segmentation"] = encode_rle(np.ones((SIZE[0], SIZE[1] + 2), bool))
    (tmp_path / "sa_1.json").write_text(json.dumps(record))
    (tmp_path / "sa_2.json").write_text("{ not json")
    (tmp_path / "sa_3.jpg").write_bytes(b"garbage")
    skipped = []
    items = list(iter_annotated(AnnotatedDataset(open_annotations(tmp_path), processor), skipped))
    assert [p.name for p in skipped] == ["sa_2.jpg", "sa_3.jpg"] and "sa_2.jpg" in caplog.text
    assert items[0]["left_out"] == Counter({"mask size differs from its image": 1})
    assert len(items[0]["masks"]) == len(record["annotations"]) - 1


# ---- COCO ------------------------------------------------------------------------------------------------

def test_coco_polygons_and_rle_crowd_and_bad_polygon(sa1b_dir, tmp_path, processor):
    file, expected = mixed_coco(sa1b_dir, tmp_path / "instances.json")
    source = open_annotations(sa1b_dir, file)
    assert source.format == "coco" and source.paths == list_images(sa1b_dir)
    items = list(AnnotatedDataset(source, processor))
    for item, masks in zip(items, expected):
        assert len(item["masks"]) == len(masks)
        for mask, read, point, box in zip(masks, item["masks"], item["points"], item["boxes"]):
            np.testing.assert_array_equal(read, mask)
            np.testing.assert_array_equal(point, interior_point(mask))  # no point_coords: derived
            np.testing.assert_array_equal(box, bounding_box(mask))
    assert items[0]["left_out"] == Counter({CROWD: 1, FEW_POINTS: 1})
    assert items[1]["left_out"] == Counter({"mask size differs from its image": 1})
    assert not items[2]["left_out"] and not source.left_out


def test_coco_annotations_of_missing_images_are_counted(sa1b_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("sa_1.jpg", "sa_2.jpg"):
        (photos / name).write_bytes((sa1b_dir / name).read_bytes())
    (photos / "extra.jpg").write_bytes((sa1b_dir / "sa_3.jpg").read_bytes())
    mask = np.zeros(SIZE, bool)
    mask[10:30, 10:30] = True
    one = [{"segmentation": encode_rle(mask)}]
    file = write_coco(tmp_path / "instances.json", [(f"sa_{n}.jpg", *SIZE) for n in (1, 2, 3)], [one, one, one * 2])
    record = json.loads(file.read_text())
    record["annotations"].append({"id": 99, "image_id": 42, "segmentation": encode_rle(mask)})
    file.write_text(json.dumps(record))
    source = open_annotations(photos, file)
    assert [p.name for p in source.paths] == ["sa_1.jpg", "sa_2.jpg"]
    assert source.left_out == Counter({MISSING_IMAGE: 2, UNKNOWN_IMAGE: 1})
    assert source.unannotated == 1  # extra.jpg


@pytest.mark.parametrize("content, message", [
    ("{ not json", "not JSON"), (b"\x89PNG\r\n\x1a\n binary", "not JSON"), ('{"images": []}', "'annotations' lists"),
    ("[1, 2]", "'images' and 'annotations'"), (None, "does not exist"),
    ('{"images": [{"id": 1, "file_name": "gone.jpg", "height": 4, "width": 4}], "annotations": []}',
     "none of the 1 images"),
    ('{"images": [{"id": 1}], "annotations": []}', "needs id, file_name"),
])
def test_bad_coco_files_are_one_clear_error(sa1b_dir, tmp_path, content, message):
    file = tmp_path / "instances.json"
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        file.write_text(content)
    with pytest.raises(DatasetError, match=message):
        open_annotations(sa1b_dir, file)


# ---- mask folders ----------------------------------------------------------------------------------------

def test_mask_folder_reads_any_non_zero_pixel_in_name_order(sa1b_dir, tmp_path, processor):
    masks = sa1b_masks(sa1b_dir)
    folder = write_mask_folder(tmp_path / "data", list_images(sa1b_dir), masks)
    # Other encodings of the same masks: 16-bit labels, a palette, RGB with colour only in one channel,
    # and RGBA with an opaque black background (alpha ignored).
    Image.fromarray(masks[0][0].astype(np.uint16) * 7).save(folder / "sa_1" / "0.png")
    palette = Image.fromarray(masks[1][0].astype(np.uint8) * 3)
    palette.putpalette([0, 0, 0] * 3 + [255, 255, 255])  # index 3 is white: the indices are the labels
    palette.save(folder / "sa_2" / "0.png")
    rgb = np.zeros((*SIZE, 3), np.uint8)
    rgb[masks[2][0], 2] = 1
    Image.fromarray(rgb).save(folder / "sa_3" / "0.png")
    rgba = np.zeros((*SIZE, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[masks[3][0], :3] = 200
    Image.fromarray(rgba).save(folder / "sa_4" / "0.png")
    assert [Image.open(folder / f"sa_{n}" / "0.png").mode for n in range(1, 5)] == ["I;16", "P", "RGB", "RGBA"]
    source = open_annotations(folder)
    assert source.format == "masks" and source.unannotated == 0
    for item, expected in zip(AnnotatedDataset(source, processor), masks):
        np.testing.assert_array_equal(item["masks"], np.stack(expected))


def test_mask_folder_order_and_bad_masks(sa1b_dir, tmp_path, processor):
    photo = list_images(sa1b_dir)[0]
    squares = [np.zeros(SIZE, bool) for _ in range(3)]
    for k, square in enumerate(squares):
        square[10 * k:10 * k + 8, 5:13] = True
    folder = write_mask_folder(tmp_path / "data", [photo], [[]])
    for name, square in zip(("2", "10", "b"), squares):  # numbers by value, then names
        Image.fromarray(square).save(folder / photo.stem / f"{name}.png")
    Image.fromarray(np.ones((SIZE[0], SIZE[1] // 2), np.uint8)).save(folder / photo.stem / "3.png")  # wrong size
    (folder / photo.stem / "4.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(folder / photo.stem / "5.png")  # empty
    (folder / "unlabelled.jpg").write_bytes(photo.read_bytes())
    source = open_annotations(folder)
    assert [p.name for p in source.paths] == [photo.name] and source.unannotated == 1
    item = AnnotatedDataset(source, processor)[0]
    np.testing.assert_array_equal(item["masks"], np.stack(squares))
    assert item["left_out"] == Counter({"mask size differs from its image": 1, UNREADABLE: 1,
                                        "empty or tiny mask (< 16 px)": 1})


def test_tiny_masks_are_left_out_and_counted(sa1b_dir, tmp_path, processor):
    photo = list_images(sa1b_dir)[0]
    sizes = [1, 15, 16, 40]
    masks = []
    for side in sizes:
        mask = np.zeros(SIZE, bool)
        mask.ravel()[:side] = True
        masks.append(mask)
    folder = write_mask_folder(tmp_path / "data", [photo], [masks])
    item = AnnotatedDataset(open_annotations(folder), processor)[0]
    assert item["masks"].sum(axis=(1, 2)).tolist() == [16, 40]
    assert item["left_out"] == Counter({"empty or tiny mask (< 16 px)": 2})
    small = AnnotatedDataset(open_annotations(folder), processor, min_area=1)[0]
    assert len(small["masks"]) == 4 and not small["left_out"]


# ---- the registry ----------------------------------------------------------------------------------------

def test_format_detection_and_its_errors(sa1b_dir, tmp_path, photo_dir):
    assert detect_format(sa1b_dir).name == "sa1b"
    assert detect_format(photo_dir, tmp_path / "any.json").name == "coco"
    mixed = write_mask_folder(tmp_path / "mixed", list_images(sa1b_dir)[:1], [[np.ones(SIZE, bool)]])
    for name in ("sa_2.jpg", "sa_2.json"):
        (mixed / name).write_bytes((sa1b_dir / name).read_bytes())
    with pytest.raises(DatasetError, match="mixes annotation formats"):
        detect_format(mixed)
    with pytest.raises(NoAnnotationsError, match="2 images but no annotations; annotated data is one of"):
        detect_format(photo_dir)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "photo.jpg").write_bytes((sa1b_dir / "sa_1.jpg").read_bytes())
    (stray / "instances.json").write_text("{}")
    with pytest.raises(NoAnnotationsError, match="instances.json is not beside an image.*--annotations"):
        detect_format(stray)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="no images"):
        open_annotations(tmp_path / "empty")
    with pytest.raises(ImageFolderError, match="does not exist"):
        open_annotations(tmp_path / "missing", tmp_path / "any.json")
