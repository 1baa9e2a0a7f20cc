"""SamPredictor on an ONNX export (onnxruntime): the masks PyTorch gives, the same cache, clear refusals.

The export is conftest's tiny_onnx_export (the tiny model of tiny_model_dir, fp32 and int8), made once per session.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import real_photos

from slimsam import SamPredictor
from slimsam.infer.everything import MaskGenerator
from slimsam.infer.onnx_runtime import (
    NotAnExportError,
    OnnxSam,
    box_as_points,
    exported_variants,
    is_onnx_export,
    load_export,
)
from slimsam.infer.predictor import EmbeddingCache


@pytest.fixture(scope="module")
def predictors(tiny_onnx_export, tiny_model_dir):
    """(PyTorch, onnxruntime) predictors of the same model."""
    folder, _ = tiny_onnx_export
    return SamPredictor.from_pretrained(str(tiny_model_dir)), SamPredictor.from_pretrained(str(folder))


# prompts in the photo's pixels (512 x 600, W x H)
PROMPTS = {"point": {"points": [[250, 300]]},
           "point and negative point": {"points": [[250, 300], [60, 500]], "labels": [1, 0]},
           "box": {"box": [120, 60, 420, 560]},
           "box and point": {"points": [[250, 300]], "box": [120, 60, 420, 560]}}


def test_an_export_folder_runs_on_onnxruntime_by_default(predictors, tiny_onnx_export):
    torch_predictor, onnx_predictor = predictors
    assert (torch_predictor.runtime, onnx_predictor.runtime) == ("pytorch", "onnxruntime")
    assert onnx_predictor.model.variant == "fp32" and not onnx_predictor.fast_decoder
    assert is_onnx_export(tiny_onnx_export[0]) and exported_variants(tiny_onnx_export[0]) == ["fp32", "int8"]


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_the_onnx_backend_gives_the_masks_pytorch_gives(predictors, prompt, multimask):
    photo = real_photos()[0]
    results = []
    for predictor in predictors:
        predictor.set_image(photo)
        results.append(predictor.predict(**PROMPTS[prompt], multimask_output=multimask))
    (torch_masks, torch_scores), (onnx_masks, onnx_scores) = results
    assert onnx_masks.shape == torch_masks.shape == (3 if multimask else 1, 600, 512)
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4, atol=1e-6)
    # thresholded at 0, a logit within rounding of 0 may flip: allow a few pixels, not a different mask
    assert (onnx_masks != torch_masks).mean() < 1e-3


def test_low_res_logits_match_for_a_batch_of_prompts(predictors):
    photo = real_photos()[1]
    points = np.array([[[40, 30], [200, 150]], [[350, 100], [10, 290]], [[100, 200], [300, 250]]], dtype=np.float32)
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    outputs = []
    for predictor in predictors:
        predictor.set_image(photo)
        outputs.append(predictor.decode_low_res(points, labels))
    (torch_logits, torch_scores), (onnx_logits, onnx_scores) = outputs
    assert onnx_logits.shape == torch_logits.shape == (3, 3, 16, 16)
    torch.testing.assert_close(onnx_logits, torch_logits, rtol=1e-4, atol=1e-4 * torch_logits.abs().max().item())
    torch.testing.assert_close(onnx_scores, torch_scores, rtol=1e-4, atol=1e-5)


def test_segment_everything_runs_on_the_onnx_backend(predictors):
    photo = real_photos()[0]
    records = [MaskGenerator(predictor, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0).generate(photo)
               for predictor in predictors]
    assert len(records[0]) == len(records[1]) > 0
    for torch_record, onnx_record in zip(*records):
        assert torch_record["bbox"] == onnx_record["bbox"]
        assert abs(torch_record["predicted_iou"] - onnx_record["predicted_iou"]) < 1e-4


def test_embeddings_are_cached_per_export_and_variant(tiny_onnx_export):
    folder, _ = tiny_onnx_export
    cache = EmbeddingCache(4)
    fp32 = SamPredictor(*load_export(folder, "fp32"), cache=cache)
    int8 = SamPredictor(*load_export(folder, "int8"), cache=cache)
    photo = real_photos()[0]
    calls = []
    original = fp32.model.encode
    fp32.model.encode = lambda pixels: calls.append(1) or original(pixels)
    assert fp32.set_image(photo) > 0 and fp32.set_image(photo) == 0.0 and len(calls) == 1
    assert int8.set_image(photo) > 0  # another variant: its own entry
    assert len(cache) == 2 and not torch.equal(fp32.current.embedding, int8.current.embedding)


def test_predictor_options_choose_runtime_and_variant(tiny_onnx_export, tiny_model_dir):
    folder, _ = tiny_onnx_export
    assert SamPredictor.from_pretrained(str(folder), dtype="int8").model.variant == "int8"
    assert SamPredictor.from_pretrained(str(folder), runtime="onnxruntime").runtime == "onnxruntime"
    with pytest.raises(NotAnExportError, match="not an ONNX export"):
        SamPredictor.from_pretrained(str(tiny_model_dir), runtime="onnxruntime")
    with pytest.raises(NotAnExportError, match="no fp16 graphs"):
        SamPredictor.from_pretrained(str(folder), dtype="fp16")
    with pytest.raises(ValueError, match="dtype with onnxruntime"):
        SamPredictor.from_pretrained(str(folder), dtype="bf16")
    with pytest.raises(ValueError, match="runtime must be"):
        SamPredictor.from_pretrained(str(folder), runtime="tensorrt")


def test_a_folder_with_graphs_but_no_config_is_refused(tiny_onnx_export, tmp_path):
    folder, _ = tiny_onnx_export
    (tmp_path / "onnx").mkdir()
    for path in (folder / "onnx").glob("*.onnx"):
        (tmp_path / "onnx" / path.name).write_bytes(path.read_bytes())
    with pytest.raises(NotAnExportError, match="config.json"):
        OnnxSam(tmp_path)


def test_box_as_points_appends_the_corners_labelled_2_and_3():
    points, labels = box_as_points(np.array([[[1.0, 2.0]]]), np.array([[1]]), np.array([[10, 20, 30, 40]]))
    assert points.tolist() == [[[1, 2], [10, 20], [30, 40]]] and labels.tolist() == [[1, 2, 3]]
    points, labels = box_as_points(None, None, np.array([[[10, 20, 30, 40]], [[0, 0, 5, 5]]]))
    assert points.shape == (2, 1, 2, 2) and labels.tolist() == [[[2, 3]], [[2, 3]]] and labels.dtype == np.int64
