"""An ONNX export folder given as --left/--right runs its pane on onnxruntime, which the pane says."""
import numpy as np

from demo.handlers import pane_text
from demo.models import ModelStore, menu_with
from demo.session import PaneResult
from slimsam.infer.predictor import SamPredictor


def test_an_export_folder_is_a_pane_on_onnxruntime_with_pytorchs_masks(tiny_onnx_export, tiny_model_dir):
    folder, _ = tiny_onnx_export
    label, menu = menu_with(str(folder), {"tiny": str(tiny_model_dir)})
    store = ModelStore(menu, device="cpu")
    onnx, torch_model = store.get(label), store.get("tiny")
    assert onnx.runtime == "onnxruntime fp32" and onnx.parameters is None
    assert torch_model.runtime == "PyTorch" and torch_model.parameters > 0
    photo = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    masks = []
    for loaded in (onnx, torch_model):
        predictor = SamPredictor(loaded.model, loaded.processor)
        predictor.set_image(photo)
        masks.append(predictor.predict(points=[[20, 15]], labels=[1])[0])
    assert (masks[0] == masks[1]).mean() > 0.99
    shown = pane_text(PaneResult(model=label, image_id="x", prompts_version=0, parameters=None,
                                 runtime=onnx.runtime))
    assert "onnxruntime fp32" in shown and "parameters" not in shown
