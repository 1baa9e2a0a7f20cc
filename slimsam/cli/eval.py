"""`slimsam eval MODEL --data DIR --prompt point|box [--limit N] [--teacher MODEL]`: SA-1B mIoU."""
from __future__ import annotations

import math

from slimsam.cli.args import add_device, positive_int
from slimsam.cli.errors import CliError
from slimsam.data.sa1b import find_sa1b_images
from slimsam.evaluate.miou import PROMPTS, evaluate
from slimsam.model.checkpoints import load_model, resolve


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="mIoU on SA-1B images (one point or box prompt per annotation)")
    parser.add_argument("model", help="alias, Hub id or local folder")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder of SA-1B images with their sa_<n>.json annotations")
    parser.add_argument("--prompt", choices=PROMPTS, default="point",
                        help="point: each annotation's point_coords (the paper's protocol); box: its bbox")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="evaluate only the first N images (sorted by name)")
    parser.add_argument("--teacher", metavar="MODEL",
                        help="a second model evaluated on the same images, printed alongside")
    add_device(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    paths = find_sa1b_images(args.data)[:args.limit]
    names = [args.model] + ([args.teacher] if args.teacher else [])
    results = {}
    for name in names:
        model, processor = load_model(name, device=args.device)
        results[name] = evaluate(model, processor, paths, args.prompt)
        del model  # one model in memory at a time
    first = results[args.model]
    if math.isnan(first.miou):
        raise CliError(f"no readable annotated images among the {len(paths)} in {args.data} "
                       f"({first.skipped} unreadable skipped)")
    print(f"data: {args.data}, {first.images} images, {first.annotations} annotations, {args.prompt} prompts, "
          f"{first.skipped} unreadable skipped")
    print(f"mIoU: {first.miou:.4f}  {resolve(args.model)}")
    if args.teacher:
        print(f"teacher mIoU: {results[args.teacher].miou:.4f}  {resolve(args.teacher)}")
