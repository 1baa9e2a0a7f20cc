"""`export_onnx`: a SAM as two ONNX graphs in the folder layout transformers.js reads, checked against PyTorch.

    report = export_onnx(model, processor, "runs/slimsam-77-onnx", quantize=("none", "int8"))

Any model `slimsam.load_model` gives can be exported: Hub checkpoints, plain folders, uniformly pruned models,
and the ones a plain SamConfig cannot describe (globally pruned, per-layer widths; the step-1 intermediate):
an ONNX graph carries its own shapes. The layout and the graphs' names are slimsam.infer.onnx_runtime's.

How (each step measured in the prototype this follows):
- the graphs are traced from a copy of the model with transformers' own encoder attention
  (`restore_stock_attention`): slimsam's row-chunked fast attention loops in Python over a batch-dependent
  number of chunks, so it exports only at one fixed batch, in minutes; the stock attention exports exactly, with
  a dynamic batch, and runs as fast in onnxruntime (which reuses its buffers);
- torch.onnx.export with the dynamo exporter; example sizes all above 1 and all different (torch.export
  specialises 0 and 1 and may unify equal sizes), and the dynamic axes checked in the written graph, because
  the exporter can freeze one without a word;
- one file per graph, per-node metadata (stack traces with local file paths) stripped; a graph whose weights
  do not fit in one protobuf file (2 GiB: SAM-H's fp32 encoder) keeps them in `X.onnx_data` beside it, the name
  transformers.js asks for when config.json says so (the exporter's own `X.onnx.data` it never asks for);
- int8: onnxruntime's dynamic quantization of the MatMuls with constant weights (uint8 weights, per tensor;
  activations quantized per call), written as `*_quantized.onnx`, transformers.js's "q8";
- fp16: onnxruntime's float16 converter with float32 inputs and outputs (transformers.js feeds float32).
Then every variant is run on onnxruntime against the PyTorch model (slimsam.deploy.equivalence); fp32 must
match within 1e-4 relative or nothing is written.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import SamModel, SamProcessor

from slimsam.data.files import write_folder_atomically, write_json_atomically
from slimsam.deploy.equivalence import equivalence_report
from slimsam.deploy.graphs import PromptEncoderMaskDecoderGraph, VisionEncoderGraph
from slimsam.infer.onnx_runtime import (
    DECODER,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    EXTERNAL_DATA_SUFFIX,
    ONNX_SUBFOLDER,
    REPORT_FILE,
    TRANSFORMERS_JS_CONFIG,
    external_data_path,
    graph_files,
    graph_path,
)
from slimsam.model.checkpoints import write_preprocessor_config
from slimsam.model.fast_attention import restore_stock_attention
from slimsam.model.structure import sync_config

log = logging.getLogger(__name__)

# --quantize value -> the variant it writes (slimsam.infer.onnx_runtime.VARIANT_SUFFIXES)
QUANTIZE_VARIANTS = {"none": "fp32", "int8": "int8", "fp16": "fp16"}
# One protobuf file holds at most 2 GiB; a graph with more weights than this keeps them in a file beside it
# (the margin is for the graph's own structure, under 1 MB even for SAM-H)
ONE_FILE_MAX_WEIGHT_BYTES = 2 ** 31 - 2 ** 26


class ExportError(RuntimeError):
    """Raised when a model cannot be exported, or its export does not compute what the model computes."""


def export_onnx(model: SamModel, processor: SamProcessor, folder: str | Path, quantize: Iterable[str] = ("none",),
                overwrite: bool = False, log_progress: Callable[[str], None] = log.info) -> dict:
    """Write `model` as an ONNX export to `folder` (all or nothing) and return its equivalence report.

    quantize: which variants to write: "none" (the fp32 graphs), "int8", "fp16", any combination. The fp32
    graphs are always made and checked (the others are made from them), and kept only with "none".
    Raises ValueError for an unknown quantize value, FileExistsError when `folder` exists and not `overwrite`
    (before any work), ExportError when fp32 differs from PyTorch.
    The report (also written as export_report.json) is slimsam.deploy.equivalence's.
    """
    variants = export_variants(quantize)
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"output folder {folder} already exists (pass --overwrite to replace it)")
    traced = traceable_copy(model)
    report: dict = {}

    def write(tmp: Path) -> None:
        started = time.perf_counter()
        export_graphs(traced, tmp)
        log_progress(f"exported the fp32 graphs in {time.perf_counter() - started:.0f} s")
        for variant in variants:
            if variant == "int8":
                quantize_int8(graph_path(tmp, ENCODER), graph_path(tmp, ENCODER, "int8"))
                quantize_int8(graph_path(tmp, DECODER), graph_path(tmp, DECODER, "int8"))
            elif variant == "fp16":
                convert_fp16(graph_path(tmp, ENCODER), graph_path(tmp, ENCODER, "fp16"))
                convert_fp16(graph_path(tmp, DECODER), graph_path(tmp, DECODER, "fp16"))
        write_configs(traced, processor, tmp)
        report.update(equivalence_report(traced, processor, tmp, ["fp32", *(v for v in variants if v != "fp32")]))
        fp32 = report["variants"]["fp32"]
        if not fp32["passed"]:
            raise ExportError(f"the fp32 ONNX graphs differ from PyTorch by more than {report['fp32_tolerance']:g} "
                              f"relative (embeddings {fp32['embeddings']['relative']:.1e}, mask logits "
                              f"{fp32['mask_logits']['relative']:.1e}, IoU scores "
                              f"{fp32['iou_scores']['relative']:.1e}); "
                              f"nothing written")
        if "fp32" not in variants:
            for part in (ENCODER, DECODER):
                for path in graph_files(tmp, part):
                    path.unlink()
            fp32["written"] = False
        name_external_data(tmp)
        write_json_atomically(tmp / REPORT_FILE, report)

    write_folder_atomically(folder, write, overwrite)
    return report


def export_variants(quantize: Iterable[str]) -> list[str]:
    """--quantize values -> variants in slimsam.infer.onnx_runtime's order; ValueError for an unknown value."""
    quantize = list(quantize)
    unknown = [value for value in quantize if value not in QUANTIZE_VARIANTS]
    if unknown or not quantize:
        raise ValueError(f"--quantize takes {', '.join(QUANTIZE_VARIANTS)} (one or more), got "
                         f"{', '.join(map(repr, unknown)) or 'nothing'}")
    return [variant for value, variant in QUANTIZE_VARIANTS.items() if value in quantize]


def traceable_copy(model: SamModel) -> SamModel:
    """A float32, eval-mode CPU copy of `model` with transformers' encoder attention (the same function): what
    is traced, and what the export is checked against.

    When the weights are float32 on the CPU already, the copy shares them (only the modules are copied): SAM-H's
    2.4 GiB are held once, not twice. Nothing here writes to them.
    """
    tensors = [*model.parameters(), *model.buffers()]
    shared = all(tensor.dtype == torch.float32 and tensor.device.type == "cpu" for tensor in tensors)
    traced = copy.deepcopy(model, {id(tensor): tensor for tensor in tensors} if shared else None).float().cpu().eval()
    restore_stock_attention(traced)
    return traced


@contextlib.contextmanager
def _quiet(*logger_names: str):
    """Silence the exporter's and the quantizer's progress lines and warnings (not errors) for a while: the
    named loggers ("" is the root) below ERROR, and Python warnings."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def example_inputs(model: SamModel) -> tuple[tuple[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Example inputs for tracing: every dynamic size above 1 and all different (batch 2, 3 prompts of 5 points)."""
    size = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, size, size, generator=generator)
    with torch.inference_mode():
        embeddings, positions = VisionEncoderGraph(model)(pixel_values)
    points = torch.rand(2, 3, 5, 2, generator=generator) * size
    labels = torch.randint(0, 2, (2, 3, 5), generator=generator)
    return (pixel_values,), (embeddings.clone(), positions.clone(), points, labels)


def export_graphs(model: SamModel, folder: Path) -> None:
    """Write the fp32 encoder and decoder graphs of `model` (a traceable_copy) into `folder`'s onnx/ subfolder."""
    encoder_inputs, decoder_inputs = example_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    prompt_axes = {0: batch, 1: torch.export.Dim("point_batch", min=1, max=4096),
                   2: torch.export.Dim("num_points", min=1, max=4096)}
    graphs = ((ENCODER, VisionEncoderGraph(model), encoder_inputs, ENCODER_INPUTS, ENCODER_OUTPUTS,
               {"pixel_values": {0: batch}}),
              (DECODER, PromptEncoderMaskDecoderGraph(model), decoder_inputs, DECODER_INPUTS, DECODER_OUTPUTS,
               {"image_embeddings": {0: batch}, "image_positional_embeddings": {0: batch},
                "input_points": prompt_axes, "input_labels": prompt_axes}))
    for part, module, inputs, input_names, output_names, dynamic_shapes in graphs:
        path = graph_path(folder, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _quiet("", "torch.onnx"):  # the root logger: onnxscript's optimizer reports every rewrite
            torch.onnx.export(module.eval(), inputs, path, input_names=list(input_names),
                              output_names=list(output_names), dynamic_shapes=dynamic_shapes, dynamo=True,
                              external_data=False, verbose=False)
        dynamic = {name: tuple(axes) for name, axes in dynamic_shapes.items()}
        finish_graph(path, dynamic)


def finish_graph(path: Path, dynamic_axes: dict[str, tuple[int, ...]]) -> None:
    """Check that the axes meant to be dynamic are, and strip per-node metadata; rewrites `path` in place
    (with save_graph: weights over 2 GiB move from the exporter's `X.onnx.data` to `X.onnx_data`).

    torch.onnx's dynamo path can specialise a torch.export.Dim to the example's size without an error or a
    warning (it did so for the row-chunked attention): a graph that accepts one batch only is refused here.
    The metadata holds stack traces with this machine's file paths and source lines, nothing run time needs.
    """
    import onnx

    graph = onnx.load(path)  # and the weights, from the exporter's data file if it wrote one
    shapes = {value.name: value.type.tensor_type.shape.dim for value in graph.graph.input}
    for name, axes in dynamic_axes.items():
        static = [axis for axis in axes if not shapes[name][axis].dim_param]
        if static:
            dims = [dim.dim_param or dim.dim_value for dim in shapes[name]]
            raise ExportError(f"{path.name}: the exporter made axes {static} of {name} static ({dims})")
    for node in graph.graph.node:
        del node.metadata_props[:]
    del graph.metadata_props[:]
    save_graph(graph, path)
    path.with_name(path.name + ".data").unlink(missing_ok=True)  # the exporter's own name for external weights


def save_graph(graph, path: Path) -> None:
    """Save an onnx.ModelProto as one file, or, when its weights exceed ONE_FILE_MAX_WEIGHT_BYTES, as the graph
    plus one file of weights beside it (slimsam.infer.onnx_runtime.external_data_path)."""
    import onnx

    data = external_data_path(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if sum(tensor.ByteSize() for tensor in graph.graph.initializer) <= ONE_FILE_MAX_WEIGHT_BYTES:
        onnx.save(graph, path)
    else:
        onnx.save(graph, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
        data.chmod(path.stat().st_mode)  # onnx creates it private; it is as public as the graph


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the MatMuls whose second input is a constant weight.

    uint8 weights, one scale per tensor, activations quantized on the fly. Convolutions stay float
    (the patch embedding and the neck are a few % of the work; ConvInteger cost accuracy for 2 MB).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet("", "onnxruntime"):  # "please consider pre-processing before quantization"
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], per_channel=False,
                         weight_type=QuantType.QUInt8, extra_options={"MatMulConstBOnly": True})


def convert_fp16(source: Path, target: Path) -> None:
    """fp16 weights and arithmetic with float32 graph inputs and outputs (what transformers.js feeds)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet("", "onnxruntime"):  # given the path, the converter also reads graphs with external weights
        converted = convert_float_to_float16(str(source), keep_io_types=True)
    save_graph(converted, target)


def write_configs(model: SamModel, processor: SamProcessor, folder: Path) -> None:
    """config.json (SamModel, the encoder's real hidden size), preprocessor_config.json and processor_config.json.

    transformers.js reads no architecture sizes from config.json (the graphs carry them), so per-layer widths
    need nothing there; they are in the report's encoder_dims.
    """
    sync_config(model)
    model.config.architectures = ["SamModel"]
    model.config.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_preprocessor_config(processor, folder)


def name_external_data(folder: Path) -> None:
    """Tell transformers.js which graphs of the export in `folder` keep their weights beside them: config.json's
    "transformers.js_config" gets {"use_external_data_format": {"vision_encoder.onnx": 1, ...}} (1: one file,
    `X.onnx_data`); without it transformers.js would not fetch them in a browser. Nothing changes without such
    graphs. (onnxruntime itself finds the file from the graph.)"""
    data_files = (folder / ONNX_SUBFOLDER).glob(f"*.onnx{EXTERNAL_DATA_SUFFIX}")
    graphs = sorted(path.name[:-len(EXTERNAL_DATA_SUFFIX)] for path in data_files)
    if not graphs:
        return
    config = json.loads((folder / "config.json").read_text())
    config.setdefault(TRANSFORMERS_JS_CONFIG, {})["use_external_data_format"] = {graph: 1 for graph in graphs}
    write_json_atomically(folder / "config.json", config)
