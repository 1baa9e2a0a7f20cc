"""Loading and saving SAM checkpoints: Hub ids, short aliases, plain folders, pruned folders.

A *pruned folder* is a `save_pretrained` folder (config.json, model.safetensors, processor config)
plus `slimsam.json`, which records every layer's dims and how the model was made. A uniformly
pruned model is also a plain SamModel folder; `export_model` writes one without the extra file (and with
the image processor in both files transformers has used: `processor_config.json` and the older
`preprocessor_config.json`) and refuses models a plain `SamConfig` cannot describe.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file
from transformers import SamConfig, SamModel, SamProcessor
from transformers.utils import IMAGE_PROCESSOR_NAME

from slimsam.data.files import write_folder_atomically, write_json_atomically
from slimsam.model.compiled import compile_encoder
from slimsam.model.configs import processor_for
from slimsam.model.fast_attention import enable_fast_attention
from slimsam.model.structure import EncoderDims, empty_model, read_dims, sync_config

# A small SamModel trained here on synthetic shapes (benchmarks/train_toy_sam.py), shipped with the package:
# the one model with real masks that needs no download.
TOY_SAM_FOLDER = Path(__file__).resolve().parent / "toy_sam"
ALIASES = {
    "toy-sam": str(TOY_SAM_FOLDER),
    "sam-b": "facebook/sam-vit-base",
    "sam-l": "facebook/sam-vit-large",
    "sam-h": "facebook/sam-vit-huge",
    "slimsam-50": "Zigeng/SlimSAM-uniform-50",
    "slimsam-77": "Zigeng/SlimSAM-uniform-77",
}
SLIMSAM_FILE = "slimsam.json"
FORMAT_VERSION = 1


class WeightsNotFoundError(OSError):
    """Raised when a model's weights can be found neither locally nor (offline / no network) on the Hub."""


class IncompleteWeightsError(WeightsNotFoundError):
    """Raised when a checkpoint's weights lack some of the model's parameters or carry unexpected ones.

    transformers would load such a checkpoint with a warning and the missing parameters random; a model
    served that way gives confident nonsense, so it is refused instead.
    """


class NotUniformError(ValueError):
    """Raised when a model whose layers differ in shape is exported as a plain SamModel."""


def resolve(name_or_path: str) -> str:
    """Alias -> Hub id; anything else is returned unchanged."""
    return ALIASES.get(name_or_path.lower(), name_or_path)


def _missing_weights_message(model_id: str, cause: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0")
    return (f"cannot load weights for {model_id!r}: no local folder has that name, they are not in the Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE}) and could not be downloaded (HF_HUB_OFFLINE={offline}). "
            f"Download them where there is network (`hf download {model_id}`), or pass a local folder "
            f"saved with `save_pretrained` instead of the id. [{type(cause).__name__}: {str(cause).splitlines()[0]}]")


def check_complete(model: SamModel, missing: list[str], unexpected: list[str], source: str,
                   mismatched: list = ()) -> None:
    """Raise IncompleteWeightsError unless the loaded weights covered every parameter, in its shape, and nothing else.

    missing / unexpected: state-dict keys the checkpoint lacked / had beyond the model's; mismatched: keys (or
    (key, shapes...) tuples) whose shapes differ, which transformers re-initialises (as its loading info or
    `load_state_dict` report them). Tied copies are not stored in a checkpoint: not missing.
    """
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = sorted(set(missing) - tied)
    mismatched = sorted(item[0] if isinstance(item, tuple) else item for item in mismatched)
    if not (missing or unexpected or mismatched):
        return
    parts = [f"missing {len(missing)} of the model's weights ({_listed(missing)})"] if missing else []
    if mismatched:
        parts.append(f"{len(mismatched)} of another shape ({_listed(mismatched)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_listed(sorted(unexpected))})")
    raise IncompleteWeightsError(f"{source}: the checkpoint does not match the model: {'; '.join(parts)}. "
                                 f"Refusing to load it with some weights random; re-save or re-download the model.")


def _listed(keys: list[str], shown: int = 5) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def available_locally(name_or_path: str) -> bool:
    """Whether `load_model(name_or_path)` can find weights without a network: an existing folder with a config
    and weights, or a Hub id (or alias) whose config and weights are in the Hugging Face cache. Files only:
    nothing is loaded or downloaded."""
    model_id = resolve(name_or_path)
    path = Path(model_id).expanduser()
    if path.is_dir():
        has_weights = any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()
        return (path / "config.json").is_file() and has_weights
    if _looks_like_path(model_id):
        return False
    cached = [isinstance(try_to_load_from_cache(model_id, name), str) for name in ("config.json", *WEIGHT_FILES)]
    return cached[0] and any(cached[1:])


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that is not a folder is a missing path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_model(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               attn_implementation: str = "sdpa", fast: bool = True, compile: bool = False
               ) -> tuple[SamModel, SamProcessor]:
    """Load a SAM (original or pruned) and its processor, in eval mode.

    name_or_path: an alias (toy-sam, sam-b, sam-l, sam-h, slimsam-50, slimsam-77), a Hub id, or a local folder
    (plain SamModel or this project's pruned format). Never falls back to random weights: raises
    WeightsNotFoundError (or FileNotFoundError for a missing folder) instead.
    fast: with the default "sdpa" attention, swap in the exact, faster encoder attention of
    slimsam.model.fast_attention (same parameters and outputs; "eager" keeps the stock one for attention maps).
    compile: torch.compile the image encoder (slimsam.model.compiled: CUDA graphs on a GPU); the first
    encoding per input shape then takes tens of seconds.
    """
    model_id = resolve(name_or_path)
    path = Path(model_id).expanduser()
    if path.is_dir():
        model = _load_folder(path, attn_implementation)
        processor = _load_processor(path, model.config)
    elif _looks_like_path(model_id):
        raise FileNotFoundError(f"model folder {model_id!r} does not exist")
    else:
        try:
            model, info = SamModel.from_pretrained(model_id, attn_implementation=attn_implementation,
                                                   output_loading_info=True, ignore_mismatched_sizes=True)
            processor = SamProcessor.from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise WeightsNotFoundError(_missing_weights_message(model_id, error)) from error
        check_complete(model, info["missing_keys"], info["unexpected_keys"], model_id, info["mismatched_keys"])
    model.to(device=device, dtype=dtype).eval()
    if fast and attn_implementation == "sdpa":
        enable_fast_attention(model)
    if compile:
        compile_encoder(model)
    model.name_or_path = model_id
    return model, processor


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_processor(folder: Path, config: SamConfig) -> SamProcessor:
    try:
        return SamProcessor.from_pretrained(folder)
    except (OSError, ValueError):
        # All SAM checkpoints share the same preprocessing; only the image size can differ.
        return processor_for(config)


def _load_folder(folder: Path, attn_implementation: str) -> SamModel:
    meta_file = folder / SLIMSAM_FILE
    if not meta_file.exists():
        try:
            # Mismatched shapes are reported in `info` (and refused below) rather than raised without names.
            model, info = SamModel.from_pretrained(folder, attn_implementation=attn_implementation,
                                                   output_loading_info=True, ignore_mismatched_sizes=True)
        except OSError as error:
            raise WeightsNotFoundError(f"{folder} is not a SAM model folder: {str(error).splitlines()[0]}") from error
        check_complete(model, info["missing_keys"], info["unexpected_keys"], str(folder), info["mismatched_keys"])
        return model
    meta = json.loads(meta_file.read_text())
    config = SamConfig.from_pretrained(folder)
    config._attn_implementation = attn_implementation
    model = empty_model(config, EncoderDims.from_dict(meta["encoder_dims"]))
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    if not state:
        raise WeightsNotFoundError(f"{folder} has {SLIMSAM_FILE} but no *.safetensors weights")
    result = model.load_state_dict(state, strict=False, assign=True)
    check_complete(model, result.missing_keys, result.unexpected_keys, str(folder))
    model.tie_weights()  # the tied copies are not in the file: share the loaded tensors, as from_pretrained does
    return model


def read_history(folder: str | Path) -> list[dict]:
    """The pruning / distillation steps recorded in a pruned folder ([] for plain folders)."""
    meta_file = Path(folder) / SLIMSAM_FILE
    return json.loads(meta_file.read_text()).get("history", []) if meta_file.exists() else []


def save_model(model: SamModel, processor: SamProcessor, folder: str | Path, history: list[dict] | None = None,
               overwrite: bool = False) -> Path:
    """Save any model, pruned or not, in this project's format (loads back exactly with `load_model`)."""
    folder = Path(folder)
    meta = {"format": "slimsam", "version": FORMAT_VERSION, "encoder_dims": read_dims(model).to_dict(),
            "history": list(history or [])}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / SLIMSAM_FILE).write_text(json.dumps(meta, indent=2))

    return write_folder_atomically(folder, write, overwrite)


def export_model(model: SamModel, processor: SamProcessor, folder: str | Path, overwrite: bool = False) -> Path:
    """Write a plain Hugging Face SamModel folder that vanilla `SamModel.from_pretrained` loads."""
    dims = read_dims(model)
    if not dims.is_uniform:
        widths = sorted({(layer.head_dim, layer.mlp_dim) for layer in dims.layers})
        raise NotUniformError(
            f"cannot export as a plain SamModel: it needs head_dim == hidden_size/heads "
            f"({dims.hidden_size}/{dims.num_heads}) and one MLP width in every layer, but the layers have "
            f"(head_dim, mlp_dim) in {widths[:4]}. Prune with --scope local (and finish step 2 after step 1), "
            f"keep this project's format and load it with slimsam.load_model, or export it as ONNX "
            f"(`slimsam export MODEL --format onnx`), whose graphs carry their own shapes.")
    sync_config(model)  # config.json must describe the weights' shapes for vanilla from_pretrained
    folder = Path(folder)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_preprocessor_config(processor, tmp)

    return write_folder_atomically(folder, write, overwrite)


def write_preprocessor_config(processor: SamProcessor, folder: str | Path) -> Path:
    """Write the image processor as `preprocessor_config.json`, the file transformers 4 and transformers.js read.

    transformers 5 saves a SamProcessor as processor_config.json only, which older readers do not know
    (`OSError: ... does not appear to have a file named preprocessor_config.json`). The type is written as
    "SamImageProcessor" (what every version and transformers.js look up; transformers 5's backends are
    SamImageProcessorPil and a torchvision one) and processor_class names the SamProcessor around it.
    """
    config = processor.image_processor.to_dict()
    config.pop("_processor_class", None)
    config["image_processor_type"] = "SamImageProcessor"
    config["processor_class"] = "SamProcessor"
    path = Path(folder) / IMAGE_PROCESSOR_NAME
    write_json_atomically(path, config)
    return path
