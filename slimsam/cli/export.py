"""`slimsam export MODEL --out DIR`: write a uniformly pruned model as a plain Hugging Face SamModel folder."""
from __future__ import annotations

from slimsam.model.checkpoints import export_model, load_model


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a plain SamModel folder (vanilla transformers loads it)")
    parser.add_argument("model", help="alias, Hub id or local folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(run=run)


def run(args) -> None:
    model, processor = load_model(args.model)
    export_model(model, processor, args.out, overwrite=args.overwrite)
    print(f"exported to {args.out}: load it with transformers.SamModel.from_pretrained({str(args.out)!r})")
