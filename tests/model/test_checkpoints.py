"""Loading, saving and export: exact round trips, vanilla transformers compatibility, clear failures."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from transformers import SamImageProcessor, SamModel

from slimsam import (
    IncompleteWeightsError,
    NotUniformError,
    WeightsNotFoundError,
    export_model,
    load_model,
    prune,
    read_dims,
    read_history,
    save_model,
)
from slimsam.model.checkpoints import available_locally
from slimsam.model.configs import processor_for


def full_forward(model, processor, image):
    inputs = processor(image, input_points=[[[20, 30]]], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return out.pred_masks, out.iou_scores


@pytest.fixture
def image(rgb_array):
    return Image.fromarray(rgb_array)


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_plain_folder_loads_with_its_processor(tiny_model_dir):
    model, processor = load_model(str(tiny_model_dir))
    assert isinstance(model, SamModel) and not model.training
    assert processor.image_processor.size["longest_edge"] == 64


@pytest.mark.parametrize("steps", [["embedding"], ["embedding", "bottleneck-global"]])
def test_pruned_models_round_trip_exactly(tiny_model, image, tmp_path, steps):
    """Step-1 intermediate (head dim != hidden/heads) and global (per-layer dims) models reload exactly."""
    processor = processor_for(tiny_model.config)
    history = []
    for step in steps:
        target, _, scope = step.partition("-")
        history.append(prune(tiny_model, target, 0.5, scope=scope or "local", criterion="magnitude"))
    save_model(tiny_model, processor, tmp_path / "pruned", history)
    loaded, loaded_processor = load_model(str(tmp_path / "pruned"), fast=False)  # the attention tiny_model runs
    assert read_dims(loaded) == read_dims(tiny_model)
    assert_same_model(loaded, tiny_model)
    for a, b in zip(full_forward(loaded, loaded_processor, image), full_forward(tiny_model, processor, image)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)  # weights are bit-identical above
    assert [record["target"] for record in read_history(tmp_path / "pruned")] == [s.split("-")[0] for s in steps]


def test_export_loads_in_vanilla_transformers_with_same_outputs(tiny_model, image, tmp_path):
    processor = processor_for(tiny_model.config)
    prune(tiny_model, "embedding", 0.5, criterion="magnitude")
    prune(tiny_model, "bottleneck", 0.5, criterion="magnitude")
    export_model(tiny_model, processor, tmp_path / "hf")
    assert not (tmp_path / "hf" / "slimsam.json").exists()
    vanilla = SamModel.from_pretrained(tmp_path / "hf").eval()
    assert vanilla.config.vision_config.hidden_size == 24 and vanilla.config.vision_config.mlp_dim == 48
    for a, b in zip(full_forward(vanilla, processor, image), full_forward(tiny_model, processor, image)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_export_writes_the_processor_in_the_older_layout_too(tiny_model, tmp_path):
    """transformers 4 reads preprocessor_config.json only; that file alone must give the same image processor."""
    processor = processor_for(tiny_model.config)
    export_model(tiny_model, processor, tmp_path / "hf")
    assert (tmp_path / "hf" / "processor_config.json").is_file()  # transformers 5's file stays
    path = tmp_path / "hf" / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    assert saved["processor_class"] == "SamProcessor" and saved["image_processor_type"] == "SamImageProcessor"
    for image_processor in (SamImageProcessor.from_json_file(path), SamImageProcessor.from_dict(saved)):
        for key in ("size", "pad_size", "mask_size", "image_mean", "image_std", "rescale_factor", "do_pad", "resample"):
            assert getattr(image_processor, key) == getattr(processor.image_processor, key), key


@pytest.mark.parametrize("scope", ["step1-only", "global"])
def test_export_refuses_models_a_plain_config_cannot_describe(tiny_model, tmp_path, scope):
    processor = processor_for(tiny_model.config)
    prune(tiny_model, "embedding", 0.5, criterion="magnitude")
    if scope == "global":
        prune(tiny_model, "bottleneck", 0.5, scope="global", criterion="magnitude")
        assert not read_dims(tiny_model).is_uniform
    with pytest.raises(NotUniformError, match="--scope local"):
        export_model(tiny_model, processor, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_missing_hub_weights_raise_one_actionable_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("slimsam-77")
    message = str(info.value)
    assert "Zigeng/SlimSAM-uniform-77" in message
    assert "HF_HUB_OFFLINE=1" in message and "cache" in message and "local folder" in message


def test_missing_local_folder_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nothing" / "here"))


def test_saving_never_overwrites_silently_and_leaves_no_partial_folder(tiny_model, tmp_path):
    processor = processor_for(tiny_model.config)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_model(tiny_model, processor, target)
    assert (target / "keep.txt").read_text() == "precious"
    save_model(tiny_model, processor, target, overwrite=True)
    assert sorted(os.listdir(target)) == ["config.json", "model.safetensors", "processor_config.json", "slimsam.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left behind


def drop_and_add_weights(folder, drop: list[str], add: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import load_file, save_file
    state = load_file(folder / "model.safetensors")
    for name in drop:
        state.pop(name)
    save_file({**state, **(add or {})}, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_partial_plain_checkpoint_is_refused_naming_what_is_missing(tiny_model, tmp_path):
    folder = tmp_path / "partial"
    export_model(tiny_model, processor_for(tiny_model.config), folder)
    drop_and_add_weights(folder, ["mask_decoder.iou_token.weight", "vision_encoder.neck.conv1.weight"])
    with pytest.raises(IncompleteWeightsError, match="missing 2 of the model's weights") as info:
        load_model(str(folder))
    assert "mask_decoder.iou_token.weight" in str(info.value) and "vision_encoder.neck.conv1.weight" in str(info.value)
    drop_and_add_weights(folder, [], {"mask_decoder.iou_token.weight": torch.zeros(1, 256),  # the model has (1, 32)
                                      "vision_encoder.neck.conv1.weight": tiny_model.vision_encoder.neck.conv1.weight,
                                      "stray.weight": torch.zeros(3)})
    with pytest.raises(IncompleteWeightsError, match=r"1 of another shape \(mask_decoder.iou_token.weight\); "
                                                     r"1 unexpected \(stray.weight\)"):
        load_model(str(folder))


def test_a_partial_pruned_checkpoint_is_refused(tiny_model, tmp_path):
    save_model(tiny_model, processor_for(tiny_model.config), tmp_path / "pruned")
    drop_and_add_weights(tmp_path / "pruned", ["prompt_encoder.no_mask_embed.weight"])
    with pytest.raises(IncompleteWeightsError, match="prompt_encoder.no_mask_embed.weight"):
        load_model(str(tmp_path / "pruned"))


def hub_cache_with(model_dir, cache, repo_id: str) -> None:
    """`model_dir`'s files laid out as the Hugging Face cache holds a downloaded `repo_id`."""
    import shutil
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)


def test_hub_loading_refuses_a_partial_checkpoint_too(tiny_model, tmp_path):
    """Loading by Hub id from the cache, offline, in a fresh process (the cache folder is read at import)."""
    import subprocess
    import sys
    import textwrap
    complete, partial = tmp_path / "complete", tmp_path / "partial"
    for folder in (complete, partial):
        export_model(tiny_model, processor_for(tiny_model.config), folder)
    drop_and_add_weights(partial, ["mask_decoder.iou_token.weight"])
    hub_cache_with(complete, tmp_path / "hub", "someone/complete-sam")
    hub_cache_with(partial, tmp_path / "hub", "someone/partial-sam")
    script = textwrap.dedent("""
        from slimsam import IncompleteWeightsError, load_model
        from slimsam.model.checkpoints import available_locally
        print(available_locally("someone/complete-sam"), available_locally("someone/elsewhere-sam"))
        load_model("someone/complete-sam")
        try:
            load_model("someone/partial-sam")
        except IncompleteWeightsError as error:
            print(error)
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    lines = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines[0] == "True False"
    assert lines[1].startswith("someone/partial-sam: the checkpoint does not match the model: missing 1")
    assert "mask_decoder.iou_token.weight" in lines[1]


def test_available_locally_checks_files_only(tiny_model_dir, tmp_path):
    assert available_locally(str(tiny_model_dir))
    (tmp_path / "empty").mkdir()
    assert not available_locally(str(tmp_path / "empty"))
    assert not available_locally(str(tmp_path / "no" / "such" / "folder"))
