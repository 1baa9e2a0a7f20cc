"""`slimsam info MODEL`: parameter counts, encoder MACs, per-layer dims."""
from __future__ import annotations

from slimsam.cli.errors import CliError
from slimsam.model.checkpoints import load_model, read_history, resolve
from slimsam.model.configs import CONFIG_NAMES, sam_config
from slimsam.model.stats import count_parameters, encoder_macs
from slimsam.model.structure import empty_model, read_dims


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="parameters, MACs and per-layer dims of a model")
    parser.add_argument("model", help="alias, Hub id or local folder")
    parser.add_argument("--random-weights", action="store_true",
                        help=f"describe the architecture only, no weights needed ({', '.join(CONFIG_NAMES)})")
    parser.set_defaults(run=run)


def describe(model) -> str:
    params = count_parameters(model)
    macs = encoder_macs(model)
    dims = read_dims(model)
    size = model.config.vision_config.image_size
    lines = [f"parameters: {params['total']:,} total, {params['encoder']:,} image encoder",
             f"encoder MACs at {size}x{size}: {macs['linear_conv'] / 1e9:.4g}G linear+conv (paper convention), "
             f"{macs['total'] / 1e9:.4g}G with attention",
             f"hidden size {dims.hidden_size}, {dims.num_heads} heads, {len(dims.layers)} blocks, "
             f"{'uniform (exportable as plain SamModel)' if dims.is_uniform else 'non-uniform (slimsam format)'}",
             "block  head_dim  qkv_width  mlp_dim"]
    lines += [f"{i:5d}  {layer.head_dim:8d}  {layer.head_dim * dims.num_heads:9d}  {layer.mlp_dim:7d}"
              for i, layer in enumerate(dims.layers)]
    return "\n".join(lines)


def run(args) -> None:
    if args.random_weights:
        if args.model not in CONFIG_NAMES:
            raise CliError(f"--random-weights needs one of {', '.join(CONFIG_NAMES)}, got {args.model!r}")
        model = empty_model(sam_config(args.model))
    else:
        model, _ = load_model(args.model)
    print(f"model: {resolve(args.model)}")
    print(describe(model))
    for step in read_history(resolve(args.model)) if not args.random_weights else []:
        print("history:", ", ".join(f"{k}={v}" for k, v in step.items()))
