"""SamPredictor, its embedding cache and "segment everything", on tiny random SAMs and real photos."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, real_photos, save_tiny_model

from slimsam import SamPredictor
from slimsam.infer import predictor as predictor_module
from slimsam.infer.everything import MaskGenerator, box_nms, point_grid
from slimsam.infer.predictor import EmbeddingCache
from slimsam.model.configs import processor_for


def make_predictor(seed: int = 0, **kwargs) -> SamPredictor:
    model = make_tiny_model(seed)
    return SamPredictor(model, processor_for(model.config), **kwargs)


def count_encoder_calls(predictor: SamPredictor) -> list[int]:
    calls = []
    predictor.model.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.fixture
def photo():
    return real_photos()[0]  # 512 x 600 (W x H)


def test_set_image_encodes_once_per_image_and_model(photo):
    predictor = make_predictor()
    calls = count_encoder_calls(predictor)
    other = real_photos()[1]
    assert predictor.set_image(photo) > 0
    assert predictor.set_image(photo) == 0.0  # cache hit: no encoder run
    assert predictor.set_image(other) > 0
    assert predictor.set_image(photo) == 0.0  # re-selecting an earlier image
    assert len(calls) == 2
    # the same pixels as an array hit the same cache entry
    assert predictor.set_image(np.asarray(photo)) == 0.0
    assert len(calls) == 2


def test_a_callers_image_id_skips_rehashing_and_shares_the_cache_entry(photo, monkeypatch):
    """The app hashes each upload once and passes it: no second hash per click, the same cache entry."""
    predictor = make_predictor()
    calls = count_encoder_calls(predictor)
    array = np.asarray(photo)
    image_id = predictor_module.image_hash(array)
    assert predictor.set_image(array) > 0  # hashed here
    hashes = []
    monkeypatch.setattr(predictor_module, "image_hash", lambda image: hashes.append(1) or image_id)
    assert predictor.set_image(array, image_id=image_id) == 0.0  # a hit on the entry made without image_id
    assert hashes == [] and len(calls) == 1
    assert predictor.current.encode_seconds > 0  # the first encode's time, kept by the cache
    with pytest.raises(TypeError, match="numpy arrays"):
        predictor.set_image(photo, image_id=image_id)


def test_shared_cache_keys_include_the_model(photo, tmp_path):
    cache = EmbeddingCache(capacity=4)
    first = SamPredictor.from_pretrained(str(save_tiny_model(tmp_path / "a", seed=0)), device="cpu")
    second = SamPredictor.from_pretrained(str(save_tiny_model(tmp_path / "b", seed=1)), device="cpu")
    first.cache = second.cache = cache
    assert first.set_image(photo) > 0
    assert second.set_image(photo) > 0  # another model: its own embedding
    assert len(cache) == 2
    assert first.set_image(photo) == 0.0 and second.set_image(photo) == 0.0


def test_a_model_changed_in_place_is_not_served_its_old_embeddings(photo):
    """Pruning or training in place keeps the model's name; the cache must still tell the weights apart."""
    from slimsam.pruning.steps import prune

    predictor = make_predictor()
    calls = count_encoder_calls(predictor)
    predictor.set_image(photo)
    with torch.no_grad():  # an optimizer step, as far as the cache can tell
        predictor.model.vision_encoder.neck.conv1.weight.mul_(0.5)
    assert predictor.set_image(photo) > 0 and len(calls) == 2
    prune(predictor.model, target="embedding", ratio=0.5, criterion="magnitude")
    assert predictor.set_image(photo) > 0 and len(calls) == 3
    assert predictor.set_image(photo) == 0.0  # unchanged since: a hit again


def test_cache_is_lru_and_bounded():
    cache = EmbeddingCache(capacity=2)
    computed = []

    def compute(name):
        return lambda: computed.append(name) or name

    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get_or_compute(("m", key), compute(key))
    # "a" stays (used recently), "b" is evicted by "c" and computed again
    assert computed == ["a", "b", "c", "b"]
    assert len(cache) == 2


def test_cache_computes_a_key_once_when_asked_concurrently():
    cache = EmbeddingCache()
    computed = []

    def slow():
        computed.append(1)
        time.sleep(0.2)
        return "embedding"

    threads = [threading.Thread(target=cache.get_or_compute, args=(("m", "x"), slow)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(computed) == 1


def test_predict_needs_an_image_and_a_prompt(photo):
    predictor = make_predictor()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(points=[[10, 10]])
    predictor.set_image(photo)
    with pytest.raises(ValueError, match="point or a box"):
        predictor.predict()
    with pytest.raises(ValueError, match="labels"):
        predictor.predict(points=[[10, 10]], labels=[2])


def test_masks_at_original_size_with_scores_best_first(photo):
    predictor = make_predictor()
    predictor.set_image(photo)
    masks, scores = predictor.predict(points=[[256, 300]])
    assert masks.shape == (3, 600, 512) and masks.dtype == bool
    assert scores.shape == (3,) and np.all(np.diff(scores) <= 0)
    single, single_scores = predictor.predict(points=[[256, 300]], multimask_output=False)
    assert single.shape == (1, 600, 512) and single_scores.shape == (1,)


def test_fast_and_stock_decoders_agree_through_the_predictor(photo):
    """The default (slimsam.infer.fast_decoder) against SamModel's own decoder, on the same model and image."""
    fast, stock = make_predictor(), make_predictor(fast_decoder=False)
    for predictor in (fast, stock):
        predictor.set_image(photo)
    prompts = [dict(points=[[256, 300]]), dict(points=[[256, 300], [60, 80]], labels=[1, 0]),
               dict(box=[100, 100, 400, 500]), dict(points=[[200, 250]], box=[100, 100, 400, 500])]
    for prompt in prompts:
        fast_logits, fast_scores = fast.decode_low_res(**_batched(prompt))
        stock_logits, stock_scores = stock.decode_low_res(**_batched(prompt))
        assert torch.allclose(fast_logits, stock_logits, rtol=1e-4, atol=1e-4 * stock_logits.abs().max().item())
        assert torch.allclose(fast_scores, stock_scores, rtol=1e-4, atol=1e-5)


def _batched(prompt: dict) -> dict:
    """predict()-style arguments as decode_low_res's batch of one prompt."""
    points = prompt.get("points")
    return dict(points=None if points is None else np.array([points], dtype=np.float32),
                labels=None if points is None else np.array([prompt.get("labels", [1] * len(points))]),
                boxes=None if "box" not in prompt else np.array([prompt["box"]], dtype=np.float32))


def test_a_bfloat16_model_predicts_with_either_decoder(photo):
    """load_model(dtype=torch.bfloat16) gives bf16 weights: inputs follow them, masks come back as usual."""
    fast, stock = make_predictor(), make_predictor(fast_decoder=False)
    for predictor in (fast, stock):
        predictor.model.to(torch.bfloat16)
        predictor.set_image(photo)
        masks, scores = predictor.predict(points=[[256, 300]])
        assert masks.shape == (3, 600, 512) and masks.dtype == bool and np.isfinite(scores).all()
    fast_logits, _ = fast.decode_low_res(**_batched(dict(points=[[256, 300]])))
    stock_logits, _ = stock.decode_low_res(**_batched(dict(points=[[256, 300]])))
    assert fast_logits.dtype == torch.float32
    assert torch.allclose(fast_logits, stock_logits, atol=0.05 * stock_logits.abs().max().item())  # bf16 rounding


def test_box_and_negative_points_change_the_result(photo):
    predictor = make_predictor()
    predictor.set_image(photo)
    point_only, _ = predictor.predict(points=[[256, 300]], multimask_output=False)
    with_negative, _ = predictor.predict(points=[[256, 300], [60, 80]], labels=[1, 0], multimask_output=False)
    as_positive, _ = predictor.predict(points=[[256, 300], [60, 80]], labels=[1, 1], multimask_output=False)
    with_box, _ = predictor.predict(points=[[256, 300]], box=[100, 100, 400, 500], multimask_output=False)
    box_only, _ = predictor.predict(box=[100, 100, 400, 500], multimask_output=False)
    assert not np.array_equal(point_only, with_negative)
    assert not np.array_equal(with_negative, as_positive)  # the label matters, not just the point
    assert not np.array_equal(point_only, with_box)
    assert not np.array_equal(with_box, box_only)


def test_prompt_coordinates_follow_the_original_image(photo):
    """The same object prompted on a photo and on its 2x enlargement gives the same mask, enlarged."""
    predictor = make_predictor()
    predictor.set_image(photo)
    small, _ = predictor.predict(points=[[200, 250]], multimask_output=False)
    predictor.set_image(photo.resize((1024, 1200)))
    large, _ = predictor.predict(points=[[400, 500]], multimask_output=False)
    assert large.shape == (1, 1200, 1024)
    agreement = (large[0, ::2, ::2] == small[0]).mean()
    assert agreement > 0.97


def test_huge_images_are_encoded_from_a_working_copy_and_masks_mapped_back(photo, monkeypatch):
    monkeypatch.setattr(predictor_module, "MAX_WORKING_SIDE", 150)
    predictor = make_predictor()
    predictor.set_image(photo)
    assert predictor.current.working_size == (150, 128) and predictor.current.original_size == (600, 512)
    masks, _ = predictor.predict(points=[[256, 300]])
    assert masks.shape == (3, 600, 512)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_any_image_mode(photo, mode):
    predictor = make_predictor()
    image = photo.convert("L").point(lambda v: v * 256).convert("I;16") if mode == "I;16" else photo.convert(mode)
    predictor.set_image(image)
    masks, _ = predictor.predict(points=[[256, 300]])
    assert masks.shape == (3, 600, 512)
    gray_array = np.asarray(photo.convert("L"))
    assert predictor.set_image(gray_array) >= 0 and predictor.current.original_size == (600, 512)


def test_generate_everything_returns_sam_style_records(photo):
    predictor = make_predictor()
    predictor.set_image(photo)
    calls = count_encoder_calls(predictor)
    found = MaskGenerator(predictor, points_per_side=4, points_per_batch=8, pred_iou_thresh=-1,
                          stability_score_thresh=-1, box_nms_thresh=1.0).generate()
    assert calls == []  # decodes the cached embedding only
    assert found, "with no filtering there must be masks"
    areas = [record["area"] for record in found]
    assert areas == sorted(areas, reverse=True)
    for record in found:
        mask = record["segmentation"]
        assert mask.shape == (600, 512) and record["area"] == mask.sum()
        x, y, w, h = record["bbox"]
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        assert (x, y, x + w - 1, y + h - 1) == (cols[0], rows[0], cols[-1], rows[-1])
    strict = MaskGenerator(predictor, points_per_side=4, pred_iou_thresh=2.0).generate()  # IoU never exceeds 1
    assert strict == []


def test_point_grid_and_nms():
    grid = point_grid(2, height=100, width=200)
    assert grid.tolist() == [[50, 25], [150, 25], [50, 75], [150, 75]]
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    kept = box_nms(boxes, torch.tensor([0.5, 0.9, 0.1]), iou_threshold=0.7)
    assert kept.tolist() == [1, 2]


@pytest.mark.parametrize("height, width", [(1, 1), (1, 2048), (2048, 1), (2, 3), (3, 2000)])
def test_thin_images_are_read_channels_last(height, width):
    """1-3 px high (or wide) arrays are H x W x 3 pixels: SamProcessor alone guesses (1, W, 3) is channels-first.

    The image is dark in its first half and bright in its second (along its long side): the pixels the
    encoder sees must be too, and masks come back at H x W.
    """
    predictor = make_predictor()
    image = np.zeros((height, width, 3), dtype=np.uint8)
    if width >= height:
        image[:, width // 2:] = 255
    else:
        image[height // 2:] = 255
    seen = []
    predictor.model.vision_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    predictor.set_image(image)
    input_h, input_w = predictor.current.input_size
    longest = predictor.processor.image_processor.size["longest_edge"]
    assert (input_h, input_w) == tuple(max(1, int(side * longest / max(height, width) + 0.5))
                                       for side in (height, width))
    pixels = seen[0][0, :, :input_h, :input_w].mean(0)  # (input_h, input_w), normalised
    line = pixels[0] if width >= height else pixels[:, 0]
    if max(height, width) > 1:  # from dark to bright along the long side, never back
        assert line[0] < 0 < line[-1] and (line[1:] >= line[:-1] - 1e-6).all()
    masks, scores = predictor.predict(points=[[width - 1, height - 1]])
    assert masks.shape == (3, height, width) and scores.shape == (3,)
    found = MaskGenerator(predictor, points_per_side=2, pred_iou_thresh=-1, stability_score_thresh=-1).generate()
    assert all(record["segmentation"].shape == (height, width) for record in found)


def test_arrays_need_channels_last():
    predictor = make_predictor()
    assert predictor.set_image(np.zeros((5, 7, 1), dtype=np.uint8)) > 0  # one channel: grayscale
    assert predictor.current.original_size == (5, 7)
    with pytest.raises(ValueError, match="channels last"):
        predictor.set_image(np.zeros((3, 5, 7), dtype=np.uint8))


def test_encoding_reports_its_progress_block_by_block(photo):
    predictor = make_predictor()
    reports = []
    predictor.set_image(photo, progress=lambda fraction, stage: reports.append((fraction, stage)))
    blocks = len(predictor.model.vision_encoder.layers)
    assert reports == [((index + 1) / blocks, "encoding") for index in range(blocks)]
    predictor.set_image(photo, progress=lambda *args: reports.append(args))  # cached: nothing to report
    assert len(reports) == blocks
    other = []
    predictor.set_image(photo.rotate(90, expand=True))  # no callback here: nobody hears this encode
    assert len(reports) == blocks and other == []


def test_concurrent_encodes_report_to_their_own_callers(photo):
    model = make_tiny_model()
    first, second = (SamPredictor(model, processor_for(model.config)) for _ in range(2))
    reports = {"a": [], "b": []}
    threads = [threading.Thread(target=predictor.set_image, args=(image,),
                                kwargs=dict(progress=lambda fraction, stage, name=name: reports[name].append(fraction)))
               for name, predictor, image in (("a", first, photo), ("b", second, photo.rotate(90, expand=True)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    blocks = len(model.vision_encoder.layers)
    assert reports["a"] == reports["b"] == [(index + 1) / blocks for index in range(blocks)]


def test_confident_decoding_agrees_between_decoders(photo):
    fast, stock = make_predictor(), make_predictor(fast_decoder=False)
    for predictor in (fast, stock):
        predictor.set_image(photo)
    points, labels = point_grid(3, 600, 512)[:, None, :], np.ones((9, 1), dtype=np.int64)
    ordered = fast.decode_low_res(points, labels)[1].flatten().sort().values
    threshold = (ordered[13] + ordered[14]).item() / 2  # between two scores: rounding cannot flip one
    (fast_logits, fast_scores, fast_index), (stock_logits, stock_scores, stock_index) = (
        predictor.decode_confident(points, labels, threshold) for predictor in (fast, stock))
    assert torch.equal(fast_index, stock_index) and 0 < len(fast_index) < 27
    torch.testing.assert_close(fast_scores, stock_scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_logits, stock_logits, rtol=1e-4, atol=1e-4)


def test_everything_reports_progress_and_bounds_its_grid(photo):
    predictor = make_predictor()
    predictor.set_image(photo)
    reports = []
    MaskGenerator(predictor, points_per_side=4, points_per_batch=5, pred_iou_thresh=-1,
                  stability_score_thresh=-1).generate(progress=lambda *args: reports.append(args))
    grid = [report for report in reports if report[1] == "prompting a 4x4 grid"]
    assert [fraction for fraction, _ in grid] == [0, 5 / 16, 10 / 16, 15 / 16]
    assert any(stage.startswith("upscaling") for _, stage in reports)
    for bad in (dict(points_per_side=0), dict(points_per_side=65), dict(points_per_batch=0),
                dict(points_per_side=2.5), dict(max_masks=0)):
        with pytest.raises(ValueError, match="must be an integer"):
            MaskGenerator(predictor, **bad)
