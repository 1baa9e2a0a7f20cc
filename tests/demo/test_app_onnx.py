"""Runtimes and dtypes in the app: an ONNX export folder as --left/--right runs its pane on onnxruntime, which the
pane says; --runtime and --dtype choose what runs every pane (PyTorch fp32 unless asked)."""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from demo import handlers, models
from demo.cli import parse_args
from demo.handlers import AppContext, pane_text
from demo.models import ModelLoadError, ModelStore, menu_with
from demo.prompts import POSITIVE
from demo.session import PaneResult, Session
from slimsam.infer.onnx_runtime import OnnxSam
from slimsam.infer.predictor import SamPredictor


def masks_of(loaded, photo: np.ndarray) -> np.ndarray:
    predictor = SamPredictor(loaded.model, loaded.processor)
    predictor.set_image(photo)
    return predictor.predict(points=[[20, 15]], labels=[1])[0]


PHOTO = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)


def test_an_export_folder_is_a_pane_on_onnxruntime_with_pytorchs_masks(tiny_onnx_export, tiny_model_dir):
    folder, _ = tiny_onnx_export
    label, menu = menu_with(str(folder), {"tiny": str(tiny_model_dir)})
    store = ModelStore(menu, device="cpu")
    assert store.available[label]  # an export has no safetensors, and is here all the same
    onnx, torch_model = store.get(label), store.get("tiny")
    assert onnx.runtime == "onnxruntime fp32" and onnx.parameters is None
    assert torch_model.runtime == "PyTorch" and torch_model.parameters > 0
    assert (masks_of(onnx, PHOTO) == masks_of(torch_model, PHOTO)).mean() > 0.99
    shown = pane_text(PaneResult(model=label, image_id="x", prompts_version=0, parameters=None,
                                 runtime=onnx.runtime))
    assert "onnxruntime fp32" in shown and "parameters" not in shown


def test_dtype_chooses_the_exports_variant(tiny_onnx_export):
    folder, _ = tiny_onnx_export
    store = ModelStore({"export": str(folder)}, device="cpu", dtype="int8")
    assert store.get("export").runtime == "onnxruntime int8"
    fp16 = ModelStore({"export": str(folder)}, device="cpu", dtype="fp16")  # not exported (--quantize none int8)
    with pytest.raises(ModelLoadError, match="export cannot be loaded from its folder"):
        fp16.get("export")


def test_dtype_bf16_runs_pytorch_panes_in_bf16_and_the_pane_says_so(tiny_model_dir, photo_dir):
    store = ModelStore({"tiny": str(tiny_model_dir)}, device="cpu", dtype="bf16")
    loaded = store.get("tiny")
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.bfloat16}
    ctx = AppContext(store, {"left": "tiny", "right": "tiny"})
    session = Session()
    handlers.load_photo(ctx, session, str(photo_dir / "photo_0.jpg"))
    handlers.add_click(session, POSITIVE, 250, 300)
    _, _, text = handlers.run_pane(ctx, "left", "tiny", True, session)
    assert "PyTorch bf16" in text and session.results["left"].masks.shape == (3, 600, 512)
    fp32 = ModelStore({"tiny": str(tiny_model_dir)}, device="cpu").get("tiny")
    assert (masks_of(loaded, PHOTO) == masks_of(fp32, PHOTO)).mean() > 0.9  # bf16 rounding moves some edges


def test_runtime_onnxruntime_exports_a_model_given_as_weights_when_first_chosen(tiny_onnx_export, tiny_model_dir,
                                                                                   tmp_path, monkeypatch):
    """The weights are exported when the model is first chosen, opened on onnxruntime, and the export's folder
    deleted. The exporter itself (minutes on a loaded CPU, tested in tests/deploy) is stood in for by a copy of
    tiny_onnx_export, the same model exported by `slimsam export`."""
    exported, _ = tiny_onnx_export
    calls = []

    def export(model, processor, folder, quantize, log_progress):
        calls.append((type(model).__name__, list(quantize), Path(folder).exists()))
        shutil.copytree(exported, folder)
        return {}
    monkeypatch.setattr(models, "export_onnx", export)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the export goes while it is opened
    store = ModelStore({"tiny": str(tiny_model_dir)}, device="cpu", runtime="onnxruntime", dtype="int8")
    assert "exporting the model to ONNX" in store.loading_stage("tiny")
    loaded = store.get("tiny")
    assert calls == [("SamModel", ["none", "int8"], False)]  # fp32 (always checked) and the variant asked for
    assert isinstance(loaded.model, OnnxSam) and loaded.runtime == "onnxruntime int8" and loaded.parameters is None
    assert list(tmp_path.iterdir()) == []  # the export's folder went once onnxruntime held the graphs
    fp32 = ModelStore({"tiny": str(tiny_model_dir)}, device="cpu", runtime="onnxruntime").get("tiny")
    assert fp32.runtime == "onnxruntime fp32" and calls[-1][1] == ["none"]
    pytorch = ModelStore({"tiny": str(tiny_model_dir)}, device="cpu").get("tiny")
    assert (masks_of(fp32, PHOTO) == masks_of(pytorch, PHOTO)).mean() > 0.99


def test_a_failed_export_is_a_one_line_pane_error(tiny_model_dir, monkeypatch):
    for error, summary, detail in (
            (models.ExportError("fp32 ONNX differs from PyTorch by 0.3 relative\nmore"),
             "tiny could not be exported to ONNX for onnxruntime.", "differs from PyTorch by 0.3 relative."),
            (ImportError("No module named 'onnxscript'\nmore"), "tiny needs onnxruntime, which is not installed here.",
             "No module named 'onnxscript'. Install it with")):
        def export(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(models, "export_onnx", export)
        store = ModelStore({"tiny": str(tiny_model_dir)}, device="cpu", runtime="onnxruntime", dtype="int8")
        with pytest.raises(ModelLoadError) as info:
            store.get("tiny")
        assert info.value.summary == summary
        assert detail in info.value.details and "more" not in info.value.details


def test_runtime_and_dtype_that_do_not_go_together_are_pane_errors(tiny_onnx_export, tiny_model_dir):
    folder, _ = tiny_onnx_export
    cases = [({"runtime": "pytorch"}, str(folder), "is an ONNX export, which runs on onnxruntime only"),
             ({"dtype": "int8"}, str(tiny_model_dir), "runs on PyTorch, which has no int8"),
             ({"dtype": "bf16"}, str(folder), "runs on onnxruntime, which has no bf16")]
    for options, source, message in cases:
        with pytest.raises(ModelLoadError, match=message):
            ModelStore({"m": source}, device="cpu", **options).get("m")


def test_runtime_and_dtype_options(monkeypatch, capsys):
    args = parse_args([])
    assert args.runtime is None and args.dtype is None  # each model's own runtime, fp32
    args = parse_args(["--runtime", "onnxruntime", "--dtype", "int8"])
    assert (args.runtime, args.dtype) == ("onnxruntime", "int8")
    monkeypatch.setenv("SLIMSAM_DTYPE", "bf16")
    assert parse_args([]).dtype == "bf16"
    for argv, env, message in ((["--runtime", "pytorch", "--dtype", "int8"], "", "--runtime pytorch has no int8"),
                               (["--runtime", "onnxruntime", "--dtype", "bf16"], "", "onnxruntime has no bf16"),
                               ([], "banana", "--dtype must be one of fp32, bf16, fp16, int8, got 'banana'")):
        monkeypatch.setenv("SLIMSAM_DTYPE", env)
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err
