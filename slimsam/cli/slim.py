"""`slimsam slim MODEL --ratio R --train DIR --epochs E --out DIR`: the whole SlimSAM method, resumable.

Rerunning the same command with the same --out after an interruption goes on where it stopped.
Multi-GPU: `torchrun --nproc_per_node N --no-python slimsam slim ...` (the same arguments).
"""
from __future__ import annotations

from pathlib import Path

from slimsam.cli.args import non_negative_int, positive_int, ratio
from slimsam.cli.distill import add_training_args, num_workers
from slimsam.cli.errors import CliError
from slimsam.cli.prune import add_pruning_recipe_args
from slimsam.distill.distributed import init_distributed, is_main
from slimsam.distill.slim import EMBEDDING_ALIGNING, FINAL, SlimSettings, slim
from slimsam.distill.train import SettingsError
from slimsam.pruning.importance import CRITERIA


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("slim", help="the whole method: prune, align, prune, align, export (resumable)")
    parser.add_argument("model", help="the model to slim (the teacher): alias, Hub id or folder")
    parser.add_argument("--ratio", type=ratio, required=True,
                        help="fraction of channels removed in each pruning step, e.g. 0.5 or 0.77")
    parser.add_argument("--grad-size", type=positive_int, default=1000,
                        help="images in each disturbed-Taylor gradient pass (default 1000)")
    parser.add_argument("--importance", choices=CRITERIA, default="disturbed-taylor",
                        help="how both pruning steps score channels: disturbed-taylor (SlimSAM, no labels; default), "
                             "taylor (SAM's mask loss against labels: --train must be annotated, SA-1B or mask "
                             "folders), magnitude or random (no gradient pass); for ablations")
    add_pruning_recipe_args(parser)
    add_training_args(parser)
    defaults = SlimSettings(model="", ratio=0.5, train="", val=None, epochs=1)
    parser.add_argument("--alpha-epochs", type=non_negative_int, nargs=2, metavar=("STAGE1", "STAGE2"),
                        default=defaults.alpha_epochs, help="N of the loss weight a in each stage: stage 1 keeps a = "
                        "0.5 for N epochs, stage 2 decays it as (N-n-1)/N (default {} {}, the official code; the "
                        "paper's text has 10 for stage 2)".format(*defaults.alpha_epochs))
    parser.add_argument("--lr-patience", type=non_negative_int, nargs=2, metavar=("STAGE1", "STAGE2"),
                        default=defaults.lr_patience, help="ReduceLROnPlateau patience in each stage: the lr is "
                        "halved after more than this many epochs in a row without a better validation metric (default "
                        "{} {}, the official code)".format(*defaults.lr_patience))
    parser.add_argument("--out", required=True, help="output folder; rerun with the same one to resume")
    parser.set_defaults(run=run)


def run(args) -> None:
    # Folders are recorded as absolute paths, so that a rerun from another directory still matches.
    model = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    settings = SlimSettings(model=model, ratio=args.ratio, train=str(Path(args.train).resolve()),
                            val=str(Path(args.val).resolve()) if args.val else None, epochs=args.epochs,
                            val_size=args.val_size, grad_size=args.grad_size, seed=args.seed, lr=args.lr,
                            batch_size=args.batch_size, micro_batch=args.micro_batch,
                            val_annotations=str(Path(args.val_annotations).resolve()) if args.val_annotations else None,
                            importance=args.importance, embedding_selection=args.embedding_selection,
                            score_tensors=args.score_tensors,
                            alpha_epochs=tuple(args.alpha_epochs), lr_patience=tuple(args.lr_patience),
                            step2_features=args.step2_features, precision=args.precision)
    device = init_distributed(args.device)
    try:
        record = slim(settings, args.out, device, num_workers(args, device), args.checkpoint_every)
    except SettingsError as error:
        raise CliError(str(error)) from None
    if is_main():
        print("embedding MSE to the teacher (validation images):")
        for phase, value in record["embedding_mse"].items():
            print(f"  after {phase}: {value:.6g}")
        print(f"metrics and curves: {Path(args.out) / EMBEDDING_ALIGNING}; "
              f"plain SamModel: {Path(args.out) / FINAL}")
