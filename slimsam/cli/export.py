"""`slimsam export MODEL --out DIR [--format hf|onnx] [--quantize none int8 fp16]`: a plain Hugging Face SamModel
folder (uniform models), or an ONNX export checked against PyTorch (any model)."""
from __future__ import annotations

import logging

from slimsam.cli.errors import CliError
from slimsam.deploy.equivalence import summary_line
from slimsam.deploy.onnx_export import QUANTIZE_VARIANTS, export_onnx, export_variants
from slimsam.model.checkpoints import export_model, load_model

log = logging.getLogger(__name__)
FORMATS = ("hf", "onnx")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a plain SamModel folder (vanilla transformers loads it) or "
                                                  "an ONNX export (onnxruntime, transformers.js)")
    parser.add_argument("model", help="alias, Hub id or local folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", default="hf",
                        help="hf (default): plain Hugging Face SamModel folder; onnx: two ONNX graphs in the layout "
                             "transformers.js reads, checked against PyTorch in export_report.json")
    parser.add_argument("--quantize", nargs="+", metavar="VARIANT",
                        help=f"with --format onnx, the variants to write: {', '.join(QUANTIZE_VARIANTS)} "
                             f"(none = fp32, the default)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(run=run)


def run(args) -> None:
    if args.format not in FORMATS:
        raise CliError(f"--format must be hf or onnx, got {args.format!r}")
    if args.quantize and args.format != "onnx":
        raise CliError("--quantize is for --format onnx")
    quantize = args.quantize or ["none"]
    try:
        export_variants(quantize)  # before loading the model
    except ValueError as error:
        raise CliError(str(error)) from None
    model, processor = load_model(args.model)
    if args.format == "hf":
        export_model(model, processor, args.out, overwrite=args.overwrite)
        print(f"exported to {args.out}: load it with transformers.SamModel.from_pretrained({str(args.out)!r})")
        return
    report = export_onnx(model, processor, args.out, quantize, overwrite=args.overwrite)
    for entry in report["variants"].values():
        if "warning" in entry:
            log.warning("slimsam: warning: %s", entry["warning"])
    print(f"exported to {args.out} (export_report.json): {summary_line(report)}")
