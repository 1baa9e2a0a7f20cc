"""The app's event handlers, called directly with tiny local models (no server, no browser)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import save_tiny_model
from PIL import Image

from demo import handlers
from demo.handlers import AppContext
from demo.models import STANDARD_MODELS, ModelStore, menu_with
from demo.prompts import BOX, NEGATIVE, POSITIVE, PromptError, parse_json_prompts
from demo.session import Session
from slimsam.evaluate.masks import mask_iou
from slimsam.model.checkpoints import ALIASES


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_models")
    store = ModelStore({"A": str(save_tiny_model(folder / "a", seed=0)), "B": str(save_tiny_model(folder / "b", seed=1)),
                        "Missing": "nobody/no-such-sam"}, device="cpu")
    return AppContext(store, {"left": "A", "right": "B"}, tmp_path_factory.mktemp("masks"))


@pytest.fixture
def photo_path(photo_dir):
    return str(photo_dir / "photo_0.jpg")  # Grace Hopper, 512 x 600


def loaded_session(path) -> Session:
    session = Session()
    handlers.load_photo(session, path)
    return session


def run_both(ctx, session, multimask=True):
    return [handlers.run_pane(ctx, side, ctx.defaults[side], multimask, session) for side in ("left", "right")]


def test_click_decodes_both_panes_with_timings_sizes_and_agreement(ctx, photo_path):
    session = loaded_session(photo_path)
    run_both(ctx, session)  # what an upload triggers: encode only
    assert all(session.results[side].decode_seconds is None for side in ("left", "right"))
    picture, status = handlers.add_click(session, POSITIVE, 250, 300)
    assert picture.shape == (600, 512, 3) and "1 positive" in status
    panes = run_both(ctx, session)
    for side, (overlay, candidates, text, download) in zip(("left", "right"), panes):
        result = session.results[side]
        assert overlay.shape == (600, 512, 3)
        assert result.masks.shape == (3, 600, 512) and result.encode_cached
        assert f"area {int(result.mask.sum()):,} px" in text and "decode" in text and "M parameters" in text
        assert f"encode {result.encode_seconds:.2f} s" in text and result.encode_seconds > 0
        assert len(candidates["choices"]) == 3
        saved = np.asarray(Image.open(download["value"])) > 0
        assert np.array_equal(saved, result.mask)
    expected = mask_iou(session.results["left"].mask, session.results["right"].mask)
    assert f"{expected:.3f}" in handlers.agreement(session)


def test_other_candidates_are_selectable(ctx, photo_path):
    session = loaded_session(photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    run_both(ctx, session)
    _, candidates, text, download = handlers.select_candidate(ctx, "left", 2, session)
    result = session.results["left"]
    assert candidates["value"] == 2 and "mask 3 of 3" in text
    assert np.array_equal(np.asarray(Image.open(download["value"])) > 0, result.masks[2])


def test_switching_back_to_a_model_does_not_reencode(ctx, photo_path):
    session = loaded_session(photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    handlers.run_pane(ctx, "left", "A", True, session)
    assert not session.results["left"].encode_cached
    handlers.run_pane(ctx, "left", "B", True, session)
    handlers.run_pane(ctx, "left", "A", True, session)
    assert session.results["left"].encode_cached
    # and a new upload of the same photo hits the cache too
    handlers.load_photo(session, photo_path)
    handlers.run_pane(ctx, "left", "A", True, session)
    assert session.results["left"].encode_cached


def test_missing_weights_message_in_one_pane_other_pane_works(ctx, photo_path):
    session = loaded_session(photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    overlay, _, text, download = handlers.run_pane(ctx, "left", "Missing", True, session)
    assert overlay is None and download["interactive"] is False
    assert "nobody/no-such-sam" in text and "--left" in text and "Hugging Face cache" in text
    overlay, _, text, _ = handlers.run_pane(ctx, "right", "B", True, session)
    assert overlay.shape == (600, 512, 3) and "predicted IoU" in text
    assert handlers.agreement(session) == ""


def test_box_and_negative_clicks(ctx, photo_path):
    session = loaded_session(photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    handlers.run_pane(ctx, "left", "A", False, session)
    point_only = session.results["left"].mask
    handlers.add_click(session, NEGATIVE, 60, 80)
    handlers.run_pane(ctx, "left", "A", False, session)
    assert not np.array_equal(point_only, session.results["left"].mask)
    handlers.add_click(session, BOX, 400, 500)  # bottom-right first: an "inverted" box
    _, status = handlers.add_click(session, BOX, 100, 100)
    assert session.prompts.box == (100, 100, 400, 500) and "a box" in status
    with pytest.raises(gr.Error, match="zero area"):
        handlers.add_click(session, BOX, 10, 10)
        handlers.add_click(session, BOX, 10, 10)


def test_undo_and_clear(ctx, photo_path):
    session = loaded_session(photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    handlers.add_click(session, NEGATIVE, 60, 80)
    handlers.undo(session)
    assert session.prompts.points == ((250, 300, 1),)
    handlers.clear(session)
    assert session.prompts.is_empty
    _, _, text, _ = handlers.run_pane(ctx, "left", "A", True, session)
    assert "click on the photo" in text


def test_bad_input_gives_messages_not_tracebacks(ctx, photo_path, tmp_path):
    session = Session()
    for action in (handlers.undo, handlers.clear, handlers.segment_everything):
        with pytest.raises(gr.Error, match="Upload a photo"):
            action(session)
    with pytest.raises(gr.Error, match="Upload a photo"):
        handlers.add_click(session, POSITIVE, 5, 5)
    _, _, text, _ = handlers.run_pane(ctx, "left", "A", True, session)
    assert "Upload a photo" in text
    corrupt = tmp_path / "holiday.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with pytest.raises(gr.Error, match="Cannot read holiday.jpg"):
        handlers.load_photo(session, str(corrupt))
    session = loaded_session(photo_path)
    with pytest.raises(gr.Error, match="outside the 512x600 image"):
        handlers.add_click(session, POSITIVE, 512, 10)


def test_sessions_do_not_see_each_others_prompts_or_masks(ctx, photo_dir):
    first, second = loaded_session(str(photo_dir / "photo_0.jpg")), loaded_session(str(photo_dir / "photo_1.jpg"))
    handlers.add_click(first, POSITIVE, 250, 300)
    handlers.add_click(second, NEGATIVE, 10, 10)
    handlers.add_click(second, POSITIVE, 200, 150)
    handlers.run_pane(ctx, "left", "A", True, first)
    handlers.run_pane(ctx, "left", "A", True, second)
    assert first.prompts.points == ((250, 300, 1),)
    assert first.results["left"].masks.shape[1:] == (600, 512)
    assert second.results["left"].masks.shape[1:] == (300, 400)
    assert first.cache is not second.cache


def test_segment_everything_pane(ctx, photo_path, monkeypatch):
    monkeypatch.setitem(handlers.EVERYTHING_OPTIONS, "pred_iou_thresh", -1)  # random weights: no confident masks
    monkeypatch.setitem(handlers.EVERYTHING_OPTIONS, "stability_score_thresh", -1)
    monkeypatch.setitem(handlers.EVERYTHING_OPTIONS, "points_per_side", 4)
    session = loaded_session(photo_path)
    handlers.segment_everything(session)
    overlay, _, text, download = handlers.run_pane(ctx, "left", "A", True, session)
    result = session.results["left"]
    assert result.mask_count > 0 and f"{result.mask_count} masks" in text
    assert np.array_equal(np.asarray(Image.open(download["value"])), result.label_map)


def test_segment_endpoint_function(ctx, photo_path):
    session = Session()
    left, right, report = handlers.segment(ctx, photo_path, "[[250, 300, 1], [40, 60, 0]]", "[400, 500, 100, 100]",
                                           True, session)
    assert left.shape == right.shape == (600, 512, 3)
    assert report["notes"] == ["box corners reordered to top-left, bottom-right"]
    for side in ("left", "right"):
        assert report[side]["mask_area"] == session.results[side].mask.sum()
        assert len(report[side]["scores"]) == 3 and report[side]["decode_seconds"] > 0
    assert report["iou_between_panes"] == mask_iou(session.results["left"].mask, session.results["right"].mask)
    json.dumps(report)  # JSON-serialisable as it is


def test_segment_endpoint_takes_prompts_in_the_uploaded_photos_pixels(ctx, tmp_path):
    """A photo bigger than the working size: JSON prompts refer to the upload and are scaled down with it."""
    from conftest import real_photos
    path = tmp_path / "big.png"
    real_photos()[0].resize((2560, 3000)).save(path)  # 5x Grace Hopper
    session = Session()
    left, _, report = handlers.segment(ctx, str(path), "[[1250, 1500, 1]]", "[2400, 2900, 100, 100]", False, session)
    assert (report["image"]["width"], report["image"]["height"]) == (2560, 3000)
    assert left.shape == (2048, 1748, 3) and "scaled by" in report["notes"][-1]
    assert session.prompts.points[0][:2] == pytest.approx((1250 * 1748 / 2560, 1500 * 1748 / 2560))
    with pytest.raises(gr.Error, match="outside the 2560x3000 image"):
        handlers.segment(ctx, str(path), "[[2600, 10, 1]]", "", False, Session())


@pytest.mark.parametrize("points, box, message", [
    ("[[600, 10, 1]]", "", "outside"), ("[[10, 10, 2]]", "", "label"), ("[[10, 10]]", "", "triples"),
    ("[[10, 10, 1]", "", "JSON"), ("", "[10, 10, 10, 200]", "zero area"), ("", "", "at least one"),
])
def test_json_prompt_errors(points, box, message):
    with pytest.raises(PromptError, match=message):
        parse_json_prompts(points, box, (512, 600))


def write_in_mode(path: Path, mode: str) -> tuple[int, int]:
    """Save Grace Hopper in an awkward format; returns the (W, H) the app should show."""
    from conftest import real_photos
    photo = real_photos()[0]
    if mode == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        photo.save(path, exif=exif)
        return photo.height, photo.width
    if mode == "I;16":
        Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257)).save(path)
    else:
        photo.convert(mode).save(path)
    return photo.size


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "exif-rotated"])
def test_image_modes(ctx, tmp_path, mode):
    path = tmp_path / ("photo.jpg" if mode == "exif-rotated" else "photo.png")
    width, height = write_in_mode(path, mode)
    session = loaded_session(str(path))
    assert session.image.shape == (height, width, 3) and session.image.dtype == np.uint8
    handlers.add_click(session, POSITIVE, width // 2, height // 2)
    overlay, _, _, _ = handlers.run_pane(ctx, "left", "A", True, session)
    assert overlay.shape == (height, width, 3)


def test_huge_photo_is_downscaled_without_loading_it_whole(tmp_path):
    """A 12000x9000 JPEG: the app keeps a 2048 px copy and never holds the full image (324 MB as RGB)."""
    path = tmp_path / "huge.jpg"
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from PIL import Image
        Image.new("RGB", (12000, 9000), (90, 140, 200)).save({str(path)!r}, quality=80)
    """)], check=True)
    script = textwrap.dedent(f"""
        import resource, sys
        from demo import handlers
        from demo.session import Session
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        session = Session()
        picture, status = handlers.load_photo(session, {str(path)!r})
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(session.image.shape)
        print(round(grown_mb))
        print(status)
    """)
    shape, grown_mb, status = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                             check=True, cwd=Path(__file__).parents[2]).stdout.splitlines()
    assert shape == "(1536, 2048, 3)"
    assert "downscaled from 12000x9000" in status
    assert int(grown_mb) < 200  # MB of extra peak memory; the full image alone would be 324 MB


def test_models_requested_at_once_by_both_panes_load_correctly(tmp_path):
    folders = {label: str(save_tiny_model(tmp_path / label, seed=seed)) for seed, label in enumerate("AB")}
    store = ModelStore(folders, device="cpu")
    loaded, errors = {}, []

    def load(label):
        try:
            loaded[label] = store.get(label)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
    threads = [threading.Thread(target=load, args=(label,)) for label in ("A", "B", "A")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not any(p.is_meta for model in loaded.values() for p in model.model.parameters())


def test_menu_offers_the_five_models_and_local_folders(tmp_path):
    assert {alias for alias in STANDARD_MODELS.values()} == set(ALIASES)
    assert menu_with("sam-h", STANDARD_MODELS) == ("SAM-H", STANDARD_MODELS)
    assert menu_with("Zigeng/SlimSAM-uniform-77", STANDARD_MODELS)[0] == "SlimSAM-77"
    folder = tmp_path / "my_slimsam"
    folder.mkdir()
    label, menu = menu_with(str(folder), STANDARD_MODELS)
    assert label == "my_slimsam (local)" and menu[label] == str(folder) and len(menu) == 6
