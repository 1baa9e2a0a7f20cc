"""The synthetic shapes generator: seeded, split-disjoint, SA-1B files the project's own reader takes."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from slimsam.data import synthetic
from slimsam.data.formats import detect_format


def test_an_image_is_a_pure_function_of_seed_split_and_index():
    first, again = synthetic.sample(3, "train", 5), synthetic.sample(3, "train", 5)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.masks, again.masks)
    for other in (synthetic.sample(3, "test", 5), synthetic.sample(4, "train", 5), synthetic.sample(3, "train", 6)):
        assert other.image.shape != first.image.shape or not np.array_equal(other.image, first.image)


@pytest.mark.parametrize("index", range(6))
def test_masks_are_visible_parts_with_their_point_inside_and_their_box_around(index):
    item = synthetic.sample(0, "val", index)
    height, width = item.image.shape[:2]
    assert item.image.dtype == np.uint8 and item.masks.shape[1:] == (height, width) and len(item.masks) >= 1
    assert item.masks.sum(0).max() <= 1, "visible parts never overlap"
    for mask, (x, y), (bx, by, bw, bh) in zip(item.masks, item.points, item.boxes):
        assert mask[int(y), int(x)], "the point prompt lies on its own mask"
        assert mask.sum() >= synthetic.MIN_AREA * height * width
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert (bx, by, bw, bh) == (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)


def test_fills_range_from_flat_to_textured():
    """Flat and gradient fills (all of a plain scene's) and textured ones both occur: textured fills vary much more inside
    a mask than solid and gradient ones."""
    spreads = []
    for index in range(24):
        item = synthetic.sample(1, "train", index)
        spreads += [float(item.image[mask].std(0).max()) for mask in item.masks]
    assert min(spreads) < 12 and max(spreads) > 40


def test_written_split_is_read_by_the_sa1b_reader(tmp_path):
    paths = synthetic.write_split(tmp_path, "test", 3, seed=2)
    source = detect_format(tmp_path).open(tmp_path, None)
    assert sorted(source.paths) == sorted(paths)
    record = json.loads(paths[1].with_suffix(".json").read_text())
    decoded = mask_utils.decode(record["annotations"][0]["segmentation"]).astype(bool)
    assert np.array_equal(decoded, synthetic.sample(2, "test", 1).masks[0])
    found = source.read(paths[1], decoded.shape)
    assert len(found.masks) == len(record["annotations"])


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        synthetic.write_split(tmp_path, "holdout", 1)
