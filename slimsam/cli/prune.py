"""`slimsam prune MODEL --target embedding|bottleneck --ratio R ... --out DIR`: one SlimSAM pruning step."""
from __future__ import annotations

from pathlib import Path

from slimsam.cli.args import add_device, positive_int, ratio
from slimsam.cli.errors import CliError
from slimsam.data.annotations import AnnotatedDataset, iter_annotated
from slimsam.data.formats import open_annotations
from slimsam.data.images import iter_pixel_values, list_images
from slimsam.model.checkpoints import load_model, read_history, resolve, save_model
from slimsam.model.stats import count_parameters, encoder_macs
from slimsam.pruning.importance import CRITERIA, SCORE_TENSORS
from slimsam.pruning.steps import EMBEDDING_SELECTIONS, SCOPES, TARGETS, prune


def add_pruning_recipe_args(parser) -> None:
    """The pruning recipe options shared by `prune` and `slim` (defaults: the official code's decisions)."""
    parser.add_argument("--embedding-selection", choices=EMBEDDING_SELECTIONS, default="head-blocks",
                        help="step 1: keep the same offsets in every head block of hidden/heads channels, ranked by "
                             "their block-summed scores (head-blocks, the official code; default), or rank every "
                             "hidden channel freely (channels)")
    parser.add_argument("--score-tensors", choices=SCORE_TENSORS, default="weights",
                        help="tensors whose |w * grad| (or magnitude) scores a channel: the Conv/Linear weights "
                             "(weights, the official code; default) or also biases, LayerNorms, pos_embed and "
                             "rel-pos (all)")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("prune", help="prune the embedding dim (step 1) or the bottlenecks (step 2)")
    parser.add_argument("model", help="alias, Hub id or local folder")
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--ratio", type=ratio, required=True, help="fraction of channels to remove, e.g. 0.5 or 0.77")
    parser.add_argument("--scope", choices=SCOPES, default="local",
                        help="local: same ratio in every block (default); global: rank bottlenecks across blocks")
    parser.add_argument("--importance", choices=CRITERIA, default="disturbed-taylor")
    parser.add_argument("--images", help="folder of images for the gradient pass (disturbed-taylor; "
                        "taylor needs annotated images: SA-1B, mask folders, or COCO with --annotations)")
    parser.add_argument("--annotations", metavar="FILE", help="taylor: COCO instances JSON for the --images folder")
    parser.add_argument("--grad-size", type=positive_int, default=1000, help="images in the gradient pass")
    add_pruning_recipe_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (slimsam format)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_device(parser)
    parser.set_defaults(run=run)


def _summary(model) -> str:
    params, macs = count_parameters(model), encoder_macs(model)
    return f"{params['total']:,} params ({params['encoder']:,} encoder), " \
           f"{macs['linear_conv'] / 1e9:.3g}G encoder MACs"


def run(args) -> None:
    if Path(args.out).exists() and not args.overwrite:
        raise CliError(f"output folder {args.out} already exists (pass --overwrite to replace it)")
    paths, source, labelled = None, None, args.importance == "taylor"
    if args.annotations and not labelled:
        raise CliError("--annotations is for --importance taylor (the other criteria need no labels)")
    if args.importance in ("disturbed-taylor", "taylor"):
        if not args.images:
            raise CliError(f"--importance {args.importance} needs --images DIR (or use magnitude / random)")
        source = open_annotations(args.images, args.annotations) if labelled else None
        paths = (source.paths if labelled else list_images(args.images))[:args.grad_size]
    model, processor = load_model(args.model, device=args.device)
    before = _summary(model)
    skipped: list[Path] = []
    pixels = iter_pixel_values(paths, processor, skipped=skipped) if paths and not labelled else None
    samples = iter_annotated(AnnotatedDataset(source, processor, paths), skipped) if labelled else None
    record = prune(model, args.target, args.ratio, args.scope, args.importance, pixels,
                   num_images=len(paths) if paths else None, seed=args.seed, samples=samples, processor=processor,
                   embedding_selection=args.embedding_selection, score_tensors=args.score_tensors)
    record["source"] = resolve(args.model)
    save_model(model.cpu(), processor, args.out, read_history(resolve(args.model)) + [record], overwrite=args.overwrite)
    print(f"before: {before}")
    print(f"after:  {_summary(model)}")
    if paths:
        print(f"gradient pass: {record['images']} images, {len(skipped)} unreadable skipped")
    seconds = record["seconds"]
    print(f"time: {seconds['gradients']:.1f}s gradient pass, {seconds['pruning']:.2f}s scoring + pruning; "
          f"saved to {args.out}")
