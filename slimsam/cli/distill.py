"""`slimsam distill STUDENT --teacher MODEL --stage 1|2 --train DIR --out DIR`: one SlimSAM distillation phase.

Multi-GPU: `torchrun --nproc_per_node N --no-python slimsam distill ...` (the same arguments).
"""
from __future__ import annotations

import argparse

import torch

from slimsam.cli.args import add_device, non_negative_int, positive_int
from slimsam.cli.errors import CliError
from slimsam.distill.distributed import init_distributed
from slimsam.distill.features import PRECISIONS
from slimsam.distill.losses import ALPHA_EPOCHS, STEP2_FEATURES
from slimsam.distill.train import LR_PATIENCE, SettingsError, TrainConfig, distill, train_and_val_paths
from slimsam.distill.validation import validation_annotations
from slimsam.model.checkpoints import load_model, read_history


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Data and hyperparameter options shared by `distill` and `slim` (defaults: the paper's)."""
    parser.add_argument("--train", required=True, help="folder of training images (the images directly inside it)")
    parser.add_argument("--val", help="folder of validation images; when all are annotated (SA-1B sa_<n>.json, "
                                      "mask folders, or COCO with --val-annotations) the best checkpoint and the lr "
                                      "schedule follow point-prompt mIoU, else embedding MSE to the teacher "
                                      "(default: hold out --val-size training images)")
    parser.add_argument("--val-annotations", metavar="FILE",
                        help="COCO instances JSON annotating the validation images (mIoU validation)")
    parser.add_argument("--val-size", type=positive_int, default=50, help="images held out when --val is not given")
    defaults = TrainConfig(stage=1)  # the hyperparameters' single source of truth
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs,
                        help="epochs per distillation phase (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help="images per optimizer step, all processes together (default %(default)s)")
    parser.add_argument("--micro-batch", type=positive_int, default=defaults.micro_batch,
                        help="images per forward pass per process")
    parser.add_argument("--step2-features", choices=tuple(STEP2_FEATURES), default=defaults.step2_features,
                        help="stage 2: what is aligned with the step-1 model besides the embedding: the patch "
                             "embedding and every block's stream after attention and after the MLP (official, "
                             "the official code; default), or the block outputs only (block-outputs, the paper's "
                             "text)")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="fp32 (the official code; default) or bf16 autocast on GPU (faster; CPU stays fp32)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-workers", type=int, help="data loading processes (default: 2 on GPU; 0 on CPU, "
                                                         "where they would take cores from the training itself)")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                        help="optimizer steps between checkpoints within an epoch (0: only at epoch ends)")
    add_device(parser)


def num_workers(args, device: torch.device) -> int:
    """--num-workers, or its default for the device."""
    return args.num_workers if args.num_workers is not None else 2 if device.type == "cuda" else 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("distill", help="one distillation phase: bottleneck (1) or embedding (2) aligning")
    parser.add_argument("student", help="the pruned model to train (folder)")
    parser.add_argument("--teacher", required=True, help="the original model: alias, Hub id or folder")
    parser.add_argument("--stage", "--step", dest="stage", type=int, choices=(1, 2), required=True,
                        help="the method's stage (the paper's step): 1, bottleneck aligning after embedding pruning; "
                             "2, embedding aligning after bottleneck pruning")
    parser.add_argument("--step1-model", help="stage 2: the model that was bottleneck-pruned into STUDENT "
                                              "(default: the source recorded in STUDENT's history)")
    parser.add_argument("--alpha-epochs", type=non_negative_int,
                        help=f"N of the loss weight a: stage 1 keeps a = 0.5 for N epochs, stage 2 decays it as "
                             f"(N-n-1)/N (default {ALPHA_EPOCHS[1]} in stage 1, {ALPHA_EPOCHS[2]} in stage 2, the "
                             f"official code; the paper's text has 10)")
    parser.add_argument("--lr-patience", type=non_negative_int,
                        help=f"ReduceLROnPlateau patience: the lr is halved after more than this many epochs in a row "
                             f"without a better validation metric (default "
                             f"{LR_PATIENCE[1]} in stage 1, {LR_PATIENCE[2]} in stage 2, the official code)")
    add_training_args(parser)
    parser.add_argument("--out", required=True, help="run folder: checkpoint, metrics, curves, and model/ at the end")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.set_defaults(run=run)


def _step1_source(args) -> str:
    if args.step1_model:
        return args.step1_model
    for record in reversed(read_history(args.student)):
        if record.get("step") == "prune" and record.get("target") == "bottleneck" and "source" in record:
            return record["source"]
    raise CliError(f"--stage 2 needs the model before bottleneck pruning and {args.student}'s history does not "
                   f"name it: pass --step1-model DIR")


def run(args) -> None:
    try:
        _run(args)
    except SettingsError as error:
        raise CliError(str(error)) from None


def _run(args) -> None:
    train_paths, val_paths = train_and_val_paths(args.train, args.val, args.val_size, args.seed)
    validation_annotations(val_paths, args.val_annotations)  # bad annotations fail before any model loads
    device = init_distributed(args.device)
    student, processor = load_model(args.student)
    teacher, _ = load_model(args.teacher)
    step1_model = load_model(_step1_source(args))[0] if args.stage == 2 else None
    config = TrainConfig(stage=args.stage, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         micro_batch=args.micro_batch, lr_patience=args.lr_patience, alpha_epochs=args.alpha_epochs,
                         step2_features=args.step2_features, precision=args.precision, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, num_workers=num_workers(args, device),
                         device=str(device))
    model_dir = distill(student, processor, teacher, train_paths, val_paths, args.out, config,
                        step1_model=step1_model, resume=args.resume, history=read_history(args.student),
                        val_annotations=args.val_annotations)
    print(f"best model saved to {model_dir}")
