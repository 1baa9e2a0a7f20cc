"""The app's event handlers, called directly with tiny local models (no server, no browser)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import real_photos, save_tiny_model
from PIL import Image

from demo import handlers, render
from demo.handlers import AppContext
from demo.models import NOT_HERE, STANDARD_MODELS, ModelStore, menu_with
from demo.prompts import BOX, MAX_POINTS, NEGATIVE, POSITIVE, PromptError, Prompts, parse_json_prompts
from demo.session import EMBEDDINGS_PER_SESSION, Session
from slimsam.evaluate.masks import mask_iou
from slimsam.model.checkpoints import ALIASES


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_models")
    store = ModelStore({"A": str(save_tiny_model(folder / "a", seed=0)), "B": str(save_tiny_model(folder / "b", seed=1)),
                        "Missing": "nobody/no-such-sam"}, device="cpu")
    return AppContext(store, {"left": "A", "right": "B"})


@pytest.fixture
def photo_path(photo_dir):
    return str(photo_dir / "photo_0.jpg")  # Grace Hopper, 512 x 600


def loaded_session(ctx, path) -> Session:
    session = Session()
    handlers.load_photo(ctx, session, path)
    assert not session.problem, session.problem
    return session


def run_both(ctx, session, multimask=True):
    return [handlers.run_pane(ctx, side, ctx.defaults[side], multimask, session) for side in ("left", "right")]


class RecordingProgress:
    """Like gr.Progress: callable with (fraction, desc=...), and falsy (it defines __len__)."""

    def __init__(self):
        self.calls = []

    def __call__(self, fraction, desc=None):
        self.calls.append((fraction, desc))

    def __len__(self):
        return 0


# ------------------------------------------------------------------------------------ 1. masks where the click is

def test_click_decodes_both_panes_with_timings_sizes_and_agreement(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    run_both(ctx, session)  # what an upload triggers: encode only
    assert all(session.results[side].decode_seconds is None for side in ("left", "right"))
    status = handlers.add_click(session, POSITIVE, 250, 300)
    assert "1 positive" in status and "⚠️" not in status
    panes = run_both(ctx, session)
    for side, (picture, candidates, text) in zip(("left", "right"), panes):
        result = session.results[side]
        assert picture.shape == (*render.display_size((600, 512)), 3)  # the photo at display size, mask over it
        assert result.masks.shape == (3, 600, 512) and result.encode_cached
        assert f"area {int(result.mask.sum()):,} px" in text and "decode" in text and "M parameters" in text
        assert f"encode {result.encode_seconds:.2f} s" in text and result.encode_seconds > 0
        assert len(candidates["choices"]) == 3
    expected = mask_iou(session.results["left"].mask, session.results["right"].mask)
    assert f"{expected:.3f}" in handlers.agreement(session)


def test_a_click_on_a_pane_maps_its_display_pixels_to_the_photo(ctx, tmp_path):
    """Panes show every photo fitted to DISPLAY_SIDE px: a click there lands on the same spot of the photo."""
    for size in ((600, 512), (90, 120), (3000, 1400)):
        path = tmp_path / f"photo_{size[0]}.png"
        Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(path)
        session = loaded_session(ctx, str(path))
        working = session.image.shape[:2]
        shown = render.display_size(working)
        assert max(shown) == render.DISPLAY_SIDE
        handlers.add_click(session, POSITIVE, shown[1] // 2, shown[0] // 4, shown)
        x, y, _ = session.prompts.points[0]
        assert x == pytest.approx(working[1] / 2, abs=max(1, working[1] / shown[1]))  # within the pixel clicked
        assert y == pytest.approx(working[0] / 4, abs=max(1, working[0] / shown[0]))
        handlers.add_click(session, POSITIVE, shown[1] - 1, shown[0] - 1, shown)  # the corner pixel is inside
        assert session.prompts.points[1][0] < working[1] and session.prompts.points[1][1] < working[0]


def test_markers_are_drawn_at_a_size_that_reads_whatever_the_photo_size():
    """A positive point's marker covers the same number of display pixels on a tiny and a huge photo."""
    marker_pixels = []
    for size in ((40, 30), (2048, 1536)):
        image = np.zeros((*size, 3), dtype=np.uint8)
        prompts = Prompts().add_point(size[1] / 2, size[0] / 2, 1, size)
        picture = render.pane_picture(render.backdrop(image), prompts)
        green = (picture[..., 1] > 150) & (picture[..., 0] < 120)
        marker_pixels.append(int(green.sum()))
    assert marker_pixels[0] > 100 and abs(marker_pixels[0] - marker_pixels[1]) < 0.2 * marker_pixels[1]


def test_pane_pictures_show_each_models_own_mask_with_the_prompts(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    handlers.add_click(session, NEGATIVE, 60, 80)
    (left, _, _), (right, _, _) = run_both(ctx, session)
    plain = render.pane_picture(session.backdrop(), session.prompts)
    assert not np.array_equal(left, right)  # two models, two masks
    assert not np.array_equal(left, plain) and not np.array_equal(right, plain)


def test_other_candidates_are_selectable(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    run_both(ctx, session)
    _, candidates, text = handlers.select_candidate("left", 2, session)
    assert candidates["value"] == 2 and "mask 3 of 3" in text
    mask_button, _ = handlers.pane_downloads("left", session)
    assert np.array_equal(np.asarray(Image.open(mask_button["value"])) > 0, session.results["left"].masks[2])


def test_switching_back_to_a_model_does_not_reencode(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    handlers.run_pane(ctx, "left", "A", True, session)
    assert not session.results["left"].encode_cached
    handlers.run_pane(ctx, "left", "B", True, session)
    handlers.run_pane(ctx, "left", "A", True, session)
    assert session.results["left"].encode_cached
    # and a new upload of the same photo hits the cache too
    handlers.load_photo(ctx, session, photo_path)
    handlers.run_pane(ctx, "left", "A", True, session)
    assert session.results["left"].encode_cached


def test_a_pane_that_already_answers_the_prompts_is_left_as_it_is(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    run_both(ctx, session)
    assert handlers.run_pane(ctx, "left", "A", True, session) == (gr.skip(), gr.skip(), gr.skip())
    picture, _, _ = handlers.run_pane(ctx, "left", "A", False, session)  # multimask changed: recomputed
    assert picture is not gr.skip() and len(session.results["left"].masks) == 1


def test_an_instant_action_decodes_the_panes_that_only_need_a_decode_and_leaves_the_rest(ctx, photo_path):
    """A click's own answer carries both masks when that is a decode (one round trip in the page); an encode,
    a model still to load or segment-everything is left to the pane's queued event, which has progress."""
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    assert handlers.panes_if_only_decoding(ctx, ["A", "B"], True, session) == [gr.skip()] * 6
    assert len(session.cache) == 0 and not session.results  # nothing encoded: the queued events do that
    handlers.run_pane(ctx, "left", "A", True, session)  # what the photo's queued event does: encode
    handlers.add_click(session, POSITIVE, 100, 120)
    left_picture, left_candidates, left_text, *right = handlers.panes_if_only_decoding(ctx, ["A", "B"], True,
                                                                                      session)
    assert right == [gr.skip()] * 3 and len(session.cache) == 1  # B was not encoded here
    result = session.results["left"]
    assert session.is_current(result) and result.masks.shape == (3, 600, 512) and result.encode_cached
    assert left_picture.shape == (*render.display_size((600, 512)), 3) and "decode" in left_text
    # the queued event that follows finds the pane up to date
    assert handlers.run_pane(ctx, "left", "A", True, session) == (gr.skip(), gr.skip(), gr.skip())
    handlers.run_pane(ctx, "right", "Missing", True, session)  # a model that failed to load: its error at once
    *_, missing_text = handlers.panes_if_only_decoding(ctx, ["A", "Missing"], False, session)
    assert "⚠️" in missing_text and len(session.results["left"].masks) == 1  # multimask off: decoded again
    handlers.segment_everything(session)
    assert handlers.panes_if_only_decoding(ctx, ["A", "B"], True, session) == [gr.skip()] * 6  # seconds of work


def test_box_and_negative_clicks(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    handlers.run_pane(ctx, "left", "A", False, session)
    point_only = session.results["left"].mask
    handlers.add_click(session, NEGATIVE, 60, 80)
    handlers.run_pane(ctx, "left", "A", False, session)
    assert not np.array_equal(point_only, session.results["left"].mask)
    handlers.add_click(session, BOX, 400, 500)  # bottom-right first: an "inverted" box
    status = handlers.add_click(session, BOX, 100, 100)
    assert session.prompts.box == (100, 100, 400, 500) and "a box" in status
    handlers.add_click(session, BOX, 10, 10)
    status = handlers.add_click(session, BOX, 10, 10)
    assert "zero area" in status and session.prompts.box_corner == (10, 10)


def test_undo_and_clear(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    handlers.add_click(session, NEGATIVE, 60, 80)
    handlers.undo(session)
    assert session.prompts.points == ((250, 300, 1),)
    handlers.clear(session)
    assert session.prompts.is_empty
    _, _, text = handlers.run_pane(ctx, "left", "A", True, session)
    assert "click on the photo" in text


# ------------------------------------------------------------------------------------ 2. progress that reports

def test_progress_reports_loading_encoding_per_block_and_everything_stages(tmp_path, photo_path, monkeypatch):
    store = ModelStore({"A": str(save_tiny_model(tmp_path / "a", seed=0))}, device="cpu")
    ctx = AppContext(store, {"left": "A", "right": "A"})
    session = loaded_session(ctx, photo_path)
    progress = RecordingProgress()
    assert not progress  # what the old `progress or (...)` got wrong
    handlers.run_pane(ctx, "left", "A", True, session, progress)
    descs = [desc for _, desc in progress.calls]
    assert descs[0] == "A: loading the model…"
    encoding = [fraction for fraction, desc in progress.calls if desc == "A: encoding the photo…"]
    blocks = len(store.get("A").model.vision_encoder.layers)
    assert encoding == [(i + 1) / blocks for i in range(blocks)]
    monkeypatch.setitem(handlers.EVERYTHING_OPTIONS, "points_per_batch", 4)
    handlers.segment_everything(session)
    progress.calls.clear()
    handlers.run_pane(ctx, "left", "A", True, session, progress)
    grid = [fraction for fraction, desc in progress.calls if desc == "A: prompting a 16x16 grid…"]
    assert grid == [i * 4 / 256 for i in range(64)]


# ------------------------------------------------------------------------------------ 3. errors that stay

def test_bad_input_gives_messages_that_stay_until_the_next_action(ctx, photo_path, tmp_path):
    session = Session()
    for action in (handlers.undo, handlers.clear, handlers.segment_everything):
        assert "⚠️ **Upload a photo or pick an example first.**" in action(session)
    assert "Upload a photo" in handlers.add_click(session, POSITIVE, 5, 5)
    picture, _, text = handlers.run_pane(ctx, "left", "A", True, session)
    assert picture is None and "Upload a photo" in text
    corrupt = tmp_path / "holiday.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    assert "Cannot read holiday.jpg" in handlers.load_photo(ctx, session, str(corrupt))
    session = loaded_session(ctx, photo_path)
    status = handlers.add_click(session, POSITIVE, 512, 10)
    assert "outside the 512x600 image" in status and session.problem
    assert "outside" in handlers.status_line(session)  # it stays until the next action ...
    status = handlers.add_click(session, POSITIVE, 100, 10)
    assert "⚠️" not in status and "1 positive" in status  # ... which clears it


def test_unexpected_errors_are_logged_with_a_traceback_and_shown_in_one_line(ctx, photo_path, monkeypatch, caplog):
    session = loaded_session(ctx, photo_path)

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody expected\nsecond line")
    monkeypatch.setattr(handlers, "compute_pane", broken)
    handlers.add_click(session, POSITIVE, 250, 300)
    with caplog.at_level(logging.ERROR, logger="demo"):
        _, _, text = handlers.run_pane(ctx, "left", "A", True, session)
    assert "Unexpected error (RuntimeError: something nobody expected)" in text and "second line" not in text
    assert caplog.records[-1].exc_info is not None  # the traceback is in the log
    monkeypatch.setattr(Prompts, "undo", broken)
    with caplog.at_level(logging.ERROR, logger="demo"):
        status = handlers.undo(session)
    assert "⚠️ **Unexpected error (RuntimeError: something nobody expected)" in status
    assert caplog.records[-1].exc_info is not None


# ------------------------------------------------------------------------------------ 4. offline, missing weights

def test_missing_weights_one_line_with_details_other_pane_works(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    picture, _, text = handlers.run_pane(ctx, "left", "Missing", True, session)
    assert picture.shape == (*render.display_size((600, 512)), 3)  # still the photo: clicks still work there
    summary, details = text.split("<details>")
    assert "Missing is not available here" in summary and len(summary.strip().splitlines()) == 1
    assert "nobody/no-such-sam" in details and "--left" in details and "--right FOLDER" in details
    assert "Hugging Face cache" in details and "hub" in details  # the cache folder
    picture, _, text = handlers.run_pane(ctx, "right", "B", True, session)
    assert "predicted IoU" in text
    assert handlers.agreement(session) == ""
    assert handlers.pane_downloads("left", session) == (handlers.no_download(), handlers.no_download())


def test_the_menu_and_the_notice_say_which_models_are_here(ctx):
    assert ctx.store.available == {"A": True, "B": True, "Missing": False}
    assert ctx.store.menu() == [("A", "A"), ("B", "B"), (f"Missing ({NOT_HERE})", "Missing")]
    notice = ctx.store.notice()
    assert "available here: A, B" in notice and "Not downloaded: Missing" in notice


def test_a_partial_checkpoint_is_refused_in_its_pane(tmp_path, photo_path):
    from safetensors.torch import load_file, save_file
    folder = save_tiny_model(tmp_path / "partial")
    state = load_file(folder / "model.safetensors")
    state.pop("mask_decoder.iou_token.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    ctx = AppContext(ModelStore({"P": str(folder)}, device="cpu"), {"left": "P", "right": "P"})
    session = loaded_session(ctx, photo_path)
    _, _, text = handlers.run_pane(ctx, "left", "P", True, session)
    assert "P's checkpoint is incomplete" in text and "mask_decoder.iou_token.weight" in text


# ------------------------------------------------------------------------------------ 5. atomic prompt handling

def test_a_failed_request_changes_nothing_in_the_session(ctx, photo_path):
    """Point A, a bad JSON request, point B: two points, and Undo takes back B only."""
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    before = session.prompts
    for points, box, multimask in (("[[10, 10, 1]", "", True), ("[[600, 10, 1]]", "", True),
                                   ("[[10, 10, true]]", "", True), ("[[10, 10, 1]]", "[1, 2, 3]", True),
                                   ("[[10, 10, 1]]", "", "banana")):
        with pytest.raises(gr.Error):
            handlers.segment(ctx, photo_path, points, box, multimask, session)
        assert session.prompts is before and session.image_name == "photo_0.jpg"
    with pytest.raises(gr.Error, match="Cannot read broken.png"):
        handlers.segment(ctx, str(Path(photo_path).with_name("broken.png")), "[[5, 5, 1]]", "", True, session)
    assert session.prompts is before
    handlers.add_click(session, POSITIVE, 100, 100)
    assert "2 positive" in handlers.status_line(session)
    handlers.undo(session)
    assert session.prompts.points == ((250, 300, 1),)


# ------------------------------------------------------------------------------------ 6. bounds

def test_at_most_max_points_per_request_and_per_session(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    too_many = json.dumps([[10, 10, 1]] * (MAX_POINTS + 1))
    with pytest.raises(gr.Error, match=f"at most {MAX_POINTS} per request"):
        handlers.segment(ctx, photo_path, too_many, "", True, session)
    for i in range(MAX_POINTS):
        handlers.add_click(session, POSITIVE, 5 + i, 5)
    assert f"at most {MAX_POINTS} points" in handlers.add_click(session, POSITIVE, 300, 300)
    assert len(session.prompts.points) == MAX_POINTS


def test_a_20000_point_request_gets_its_error_in_under_a_second(ctx, photo_path):
    points = json.dumps([[x % 500, x % 600, 1] for x in range(20_000)])
    session = Session()
    start = time.perf_counter()
    with pytest.raises(gr.Error, match="at most 64 points"):
        handlers.segment(ctx, photo_path, points, "", True, session)
    assert time.perf_counter() - start < 1.0
    assert session.image is None


def test_session_memory_is_bounded_and_released(ctx, photo_dir, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    for label in ("A", "B"):
        for path in (photo_path, str(photo_dir / "photo_1.jpg"), photo_path):
            handlers.load_photo(ctx, session, path)
            handlers.add_click(session, POSITIVE, 20, 20)
            handlers.run_pane(ctx, "left", label, True, session)
    assert len(session.cache) <= EMBEDDINGS_PER_SESSION
    handlers.pane_downloads("left", session)
    folder = session.folder
    assert folder.is_dir() and len(list(folder.iterdir())) == 2  # only the latest result's files are kept
    handlers.release(session)
    assert session.image is None and len(session.cache) == 0 and not session.results and not folder.exists()


def test_large_photos_are_decoded_one_at_a_time_and_their_memory_given_back(tmp_path):
    """A 6000x6000 PNG (144 MB decoded): the process's memory comes back to where it was."""
    path = tmp_path / "large.png"
    Image.new("RGB", (6000, 6000), (90, 140, 200)).save(path, compress_level=1)
    script = textwrap.dedent(f"""
        from demo import handlers
        from demo.handlers import AppContext
        from demo.session import Session
        from slimsam.infer.heap import keep_freed_memory_in_heap
        keep_freed_memory_in_heap(large_blocks=True)  # as the app does
        def resident_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2 ** 20
        ctx = AppContext(store=None, defaults={{}})
        session = Session()
        before = resident_mb()
        status = handlers.load_photo(ctx, session, {str(path)!r})
        print(resident_mb() - before)
        print(session.image.shape)
        print(status)
    """)
    grown_mb, shape, status = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                             check=True, cwd=Path(__file__).parents[2]).stdout.splitlines()
    assert shape == "(2048, 2048, 3)" and "downscaled from 6000x6000" in status
    assert int(grown_mb) < 60  # MB still resident; the decoded photo alone was 144 MB


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
        from demo.handlers import AppContext
        from demo.session import Session
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        session = Session()
        status = handlers.load_photo(AppContext(store=None, defaults={{}}), session, {str(path)!r})
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


# ------------------------------------------------------------------------------------ 7. thin images

@pytest.mark.parametrize("size", [(1, 2048), (2048, 1), (1, 1)])
def test_thin_strips_and_single_pixels_segment_through_the_api(ctx, tmp_path, size):
    path = tmp_path / "strip.png"
    Image.fromarray(np.full((*size, 3), 200, dtype=np.uint8)).save(path)
    session = Session()
    left, right, report, _ = handlers.segment(ctx, str(path), json.dumps([[size[1] - 1, size[0] - 1, 1]]), "",
                                              True, session)
    assert left.shape == right.shape == (*size, 3)
    assert session.results["left"].masks.shape == (3, *size)
    assert (report["image"]["width"], report["image"]["height"]) == (size[1], size[0])


# ------------------------------------------------------------------------------------ 8. strict validation

@pytest.mark.parametrize("points, box, message", [
    ("[[600, 10, 1]]", "", "outside"), ("[[10, 10, 2]]", "", "label"), ("[[10, 10]]", "", "triples"),
    ("[[10, 10, 1]", "", "JSON"), ("", "[10, 10, 10, 200]", "zero area"), ("", "", "at least one"),
    ("[[10, 10, true]]", "", "label is the integer"), ("[[true, 10, 1]]", "", "x and y are numbers"),
    ("[[10, 10, 1.0]]", "", "label is the integer"), ("[[NaN, 10, 1]]", "", "numbers"),
    ('[["10", 10, 1]]', "", "numbers"), ("", "[true, 1, 20, 20]", "four numbers"),
    ("", "[700, 700, 900, 900]", "lies outside the 600x512 image"), ("[[" + "9" * 5000 + ", 1, 1]]", "", "JSON"),
    ("[" * 5000 + "]" * 5000, "", "JSON"),
])
def test_json_prompt_errors(points, box, message):
    with pytest.raises(PromptError, match=message):
        parse_json_prompts(points, box, (512, 600))


def test_a_partly_outside_box_is_clipped_with_a_note(ctx, photo_path):
    session = Session()
    _, _, report, _ = handlers.segment(ctx, photo_path, "", "[300, 400, 900, 700]", False, session)
    assert session.prompts.box == (300, 400, 512, 600)
    assert report["notes"] == ["the box reached outside the 512x600 image: clipped to (300, 400, 512, 600)"]


def test_multimask_must_be_a_boolean(ctx, photo_path):
    for flag in ("banana", 1, None, "true"):
        with pytest.raises(gr.Error, match="multimask must be true or false"):
            handlers.segment(ctx, photo_path, "[[10, 10, 1]]", "", flag, Session())


def test_messages_name_files_never_server_paths(ctx, tmp_path):
    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    for name, content in (("notes.txt", b"just some text"), ("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(100)),
                          ("empty.jpg", b"")):
        (folder / name).write_bytes(content)
        status = handlers.load_photo(ctx, Session(), str(folder / name))
        assert f"Cannot read {name}" in status and str(tmp_path) not in status and "/" not in status, status
        with pytest.raises(gr.Error) as info:
            handlers.segment(ctx, str(folder / name), "[[1, 1, 1]]", "", True, Session())
        assert str(tmp_path) not in str(info.value) and "/" not in str(info.value)


def test_segment_endpoint_function(ctx, photo_path):
    session = Session()
    left, right, report, state = handlers.segment(ctx, photo_path, "[[250, 300, 1], [40, 60, 0]]",
                                                  "[400, 500, 100, 100]", True, session)
    assert left.shape == right.shape == (600, 512, 3) and state is session
    assert report["notes"] == ["box corners reordered to top-left, bottom-right"]
    for side in ("left", "right"):
        assert report[side]["mask_area"] == session.results[side].mask.sum()
        assert len(report[side]["scores"]) == 3 and report[side]["decode_seconds"] > 0
    assert report["iou_between_panes"] == mask_iou(session.results["left"].mask, session.results["right"].mask)
    json.dumps(report)  # JSON-serialisable as it is


def test_segment_endpoint_takes_prompts_in_the_uploaded_photos_pixels(ctx, tmp_path):
    """A photo bigger than the working size: JSON prompts refer to the upload and are scaled down with it."""
    path = tmp_path / "big.png"
    real_photos()[0].resize((2560, 3000)).save(path)  # 5x Grace Hopper
    session = Session()
    left, _, report, _ = handlers.segment(ctx, str(path), "[[1250, 1500, 1]]", "[2400, 2900, 100, 100]", False,
                                          session)
    assert (report["image"]["width"], report["image"]["height"]) == (2560, 3000)
    assert left.shape == (2048, 1748, 3) and "scaled by" in report["notes"][-1]
    assert session.prompts.points[0][:2] == pytest.approx((1250 * 1748 / 2560, 1500 * 1748 / 2560))
    with pytest.raises(gr.Error, match="outside the 2560x3000 image"):
        handlers.segment(ctx, str(path), "[[2600, 10, 1]]", "", False, Session())


# ------------------------------------------------------------------------------------ 10. downloads

def test_downloads_are_the_mask_and_the_object_cut_out(ctx, photo_path):
    session = loaded_session(ctx, photo_path)
    handlers.add_click(session, POSITIVE, 250, 300)
    run_both(ctx, session)
    mask_button, cutout_button = handlers.pane_downloads("left", session)
    mask = session.results["left"].mask
    assert np.array_equal(np.asarray(Image.open(mask_button["value"])) > 0, mask)
    cutout = Image.open(cutout_button["value"])
    assert cutout.mode == "RGBA"
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    window = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    pixels = np.asarray(cutout)
    assert pixels.shape == (len(range(rows[0], rows[-1] + 1)), len(range(cols[0], cols[-1] + 1)), 4)
    assert np.array_equal(pixels[..., 3] > 0, mask[window])
    assert np.array_equal(pixels[..., :3][mask[window]], session.image[window][mask[window]])


def test_segment_everything_pane(ctx, photo_path, monkeypatch):
    monkeypatch.setitem(handlers.EVERYTHING_OPTIONS, "pred_iou_thresh", -1e9)  # random weights: no confident masks
    monkeypatch.setitem(handlers.EVERYTHING_OPTIONS, "stability_score_thresh", -1e9)
    monkeypatch.setitem(handlers.EVERYTHING_OPTIONS, "points_per_side", 4)
    session = loaded_session(ctx, photo_path)
    handlers.segment_everything(session)
    _, _, text = handlers.run_pane(ctx, "left", "A", True, session)
    result = session.results["left"]
    assert result.mask_count > 0 and f"{result.mask_count} masks" in text
    labels, cutout = handlers.pane_downloads("left", session)
    assert np.array_equal(np.asarray(Image.open(labels["value"])), result.label_map)
    assert cutout == handlers.no_download()


# ------------------------------------------------------------------------------------ the rest

@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "exif-rotated"])
def test_image_modes(ctx, tmp_path, mode):
    path = tmp_path / ("photo.jpg" if mode == "exif-rotated" else "photo.png")
    photo = real_photos()[0]
    if mode == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        photo.save(path, exif=exif)
        width, height = photo.height, photo.width
    else:
        (Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257)) if mode == "I;16"
         else photo.convert(mode)).save(path)
        width, height = photo.size
    session = loaded_session(ctx, str(path))
    assert session.image.shape == (height, width, 3) and session.image.dtype == np.uint8
    assert f"{width}x{height}" in handlers.status_line(session) and "downscaled" not in handlers.status_line(session)
    handlers.add_click(session, POSITIVE, width // 2, height // 2)
    handlers.run_pane(ctx, "left", "A", True, session)
    assert session.results["left"].masks.shape[1:] == (height, width)


def test_sessions_do_not_see_each_others_prompts_or_masks(ctx, photo_dir):
    first, second = loaded_session(ctx, str(photo_dir / "photo_0.jpg")), loaded_session(ctx, str(photo_dir / "photo_1.jpg"))
    handlers.add_click(first, POSITIVE, 250, 300)
    handlers.add_click(second, NEGATIVE, 10, 10)
    handlers.add_click(second, POSITIVE, 200, 150)
    handlers.run_pane(ctx, "left", "A", True, first)
    handlers.run_pane(ctx, "left", "A", True, second)
    assert first.prompts.points == ((250, 300, 1),)
    assert first.results["left"].masks.shape[1:] == (600, 512)
    assert second.results["left"].masks.shape[1:] == (300, 400)
    assert first.cache is not second.cache


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


def test_menu_offers_every_alias_and_local_folders(tmp_path):
    hub_aliases = {alias for alias, target in ALIASES.items() if not Path(target).is_absolute()}
    assert set(STANDARD_MODELS.values()) == set(ALIASES) and len(hub_aliases) == 5  # and the packaged toy-sam
    assert menu_with("sam-h", STANDARD_MODELS) == ("SAM-H", STANDARD_MODELS)
    assert menu_with("Zigeng/SlimSAM-uniform-77", STANDARD_MODELS)[0] == "SlimSAM-77"
    folder = tmp_path / "my_slimsam"
    folder.mkdir()
    label, menu = menu_with(str(folder), STANDARD_MODELS)
    assert label == "my_slimsam (local)" and menu[label] == str(folder) and len(menu) == len(STANDARD_MODELS) + 1


def test_an_absurdly_large_photo_is_refused_as_too_large(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses twice this many pixels
    path = tmp_path / "bomb.png"
    Image.new("RGB", (60, 40)).save(path)
    status = handlers.load_photo(ctx, Session(), str(path))
    assert "Cannot read bomb.png: it is too large" in status and str(tmp_path) not in status
