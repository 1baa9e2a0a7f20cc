"""`slimsam eval MODEL... --data DIR`: mIoU on annotated images, or `--agreement` with a teacher on any photos.

    slimsam eval A B --data DIR [--annotations instances.json] [--prompt point|box] [--teacher T]
    slimsam eval A B --teacher T --data PHOTOS --agreement [--points N] [--seed S]
    ... [--limit N] [--worst K] [--out REPORT_DIR [--overwrite]] [--device cpu|cuda]

Every model is scored on the same images and prompts; the table goes to stdout, and `--out` writes the
report (slimsam.evaluate.report).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from slimsam.cli.args import add_device, non_negative_int, positive_int
from slimsam.cli.errors import CliError
from slimsam.data.annotations import MIN_MASK_AREA, AnnotatedDataset
from slimsam.data.formats import NoAnnotationsError, layouts, open_annotations
from slimsam.data.images import list_images
from slimsam.evaluate.agreement import compare_with_teacher, grid_side
from slimsam.evaluate.masks import PROMPTS
from slimsam.evaluate.miou import compare_on_annotations
from slimsam.evaluate.scores import Comparison
from slimsam.infer.predictor import SamPredictor
from slimsam.model.checkpoints import load_model


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="mIoU on annotated images, or agreement with a teacher on any photos; "
                                                "several models in one table")
    parser.add_argument("models", nargs="+", metavar="MODEL", help="aliases, Hub ids or local folders")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help=f"folder of images; annotated for mIoU ({layouts()}), any photos for --agreement")
    parser.add_argument("--annotations", metavar="FILE", help="COCO instances JSON for the images in --data")
    parser.add_argument("--prompt", choices=PROMPTS,
                        help="mIoU: point, each annotation's point (stored, else the mask's most interior point; "
                             "default); box, its box")
    parser.add_argument("--teacher", metavar="MODEL",
                        help="mIoU: one more model, printed as the teacher; --agreement: the model compared with")
    parser.add_argument("--agreement", action="store_true",
                        help="no labels: IoU of each MODEL's masks with the teacher's, on the same prompts")
    parser.add_argument("--points", type=positive_int, metavar="N",
                        help="--agreement: point prompts per image, a square grid (default 16, 4 x 4), or random "
                             "with --seed")
    parser.add_argument("--seed", type=int, help="--agreement: N seeded random points per image instead of a grid")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="evaluate only the first N images (sorted by name)")
    parser.add_argument("--min-area", type=positive_int, default=MIN_MASK_AREA, metavar="PX",
                        help="masks with fewer pixels are left out and counted (default %(default)s)")
    parser.add_argument("--worst", type=non_negative_int, default=4, metavar="K",
                        help="lowest-scoring images named and drawn in the report (default %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="write the report: table.md, results.json, per_image.csv, "
                                                     "scores.png, worst.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_device(parser)
    parser.set_defaults(run=run)


def _check(args) -> None:
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise CliError(f"output folder {args.out} already exists (pass --overwrite to replace it)")
    if args.agreement:
        if not args.teacher:
            raise CliError("--agreement needs --teacher MODEL: the model whose masks the others are compared with")
        wrong = [option for option, value in (("--annotations", args.annotations), ("--prompt", args.prompt))
                 if value is not None]
        if wrong:
            raise CliError(f"{' and '.join(wrong)}: only for mIoU on annotations; --agreement asks its own points "
                           f"and boxes and needs no labels")
        if args.seed is None:
            try:
                grid_side(args.points or 16)
            except ValueError as error:
                raise CliError(f"--points: {error}; or pass --seed S for {args.points} random points") from None
    elif args.points is not None or args.seed is not None:
        raise CliError("--points and --seed choose the prompts of --agreement")


def _teacher_label(args) -> str:
    """The teacher's row in mIoU tables (in agreement tables, the reference row)."""
    return f"{args.teacher} (teacher)"


def _labels(names: list[str]) -> list[str]:
    """Table labels: the names as given, a repeated one numbered."""
    return [name if names[:i].count(name) == 0 else f"{name} ({names[:i].count(name) + 1})"
            for i, name in enumerate(names)]


def _miou(args) -> tuple[Comparison, dict]:
    try:
        source = open_annotations(args.data, args.annotations)
    except NoAnnotationsError as error:
        raise CliError(f"{error}. Without labels, measure agreement with a teacher: --teacher MODEL --agreement") \
            from None
    names = _labels(args.models)
    models = {label: load_model(name, device=args.device) for label, name in zip(names, args.models)}
    if args.teacher:
        models[_teacher_label(args)] = load_model(args.teacher, device=args.device)
    processor = next(iter(models.values()))[1]
    dataset = AnnotatedDataset(source, processor, source.paths[:args.limit], min_area=args.min_area)
    comparison = compare_on_annotations(models, dataset, args.prompt or "point", args.worst)
    if not comparison.images:
        raise CliError(f"no annotation could be scored among the {len(dataset)} images of {args.data} "
                       f"({len(comparison.skipped)} unreadable; left out: {_left_out(comparison) or 'none'})")
    return comparison, {"format": source.format, "unannotated_images": source.unannotated}


def _agreement(args) -> tuple[Comparison, dict]:
    paths = list_images(args.data)[:args.limit]
    teacher = SamPredictor(*load_model(args.teacher, device=args.device), cache_size=1)
    students = {label: SamPredictor(*load_model(name, device=args.device), cache_size=1)
                for label, name in zip(_labels(args.models), args.models)}
    comparison = compare_with_teacher(teacher, students, paths, args.points or 16, args.seed, args.worst,
                                      args.min_area, teacher_name=args.teacher)
    if not comparison.images:
        raise CliError(f"none of the {len(paths)} images in {args.data} could be read")
    return comparison, {"points": args.points or 16, "seed": args.seed}


def _left_out(comparison: Comparison) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(comparison.left_out.items()))


def _print(comparison: Comparison, args, details: dict) -> None:
    first = comparison.summaries()[0]
    counted = "annotations" if comparison.metric == "miou" else "prompts"
    unannotated = details.get("unannotated_images")
    note = f", {unannotated} without annotations" if unannotated else ""
    print(f"data: {args.data}, {first['images']} images, {first[counted]} {counted}, {comparison.prompts}, "
          f"{len(comparison.skipped)} unreadable skipped{note}")
    for summary in comparison.summaries():
        name, value = summary["model"], summary[comparison.metric]
        if comparison.metric == "miou" and args.teacher and name == _teacher_label(args):
            print(f"teacher mIoU: {value:.4f}  {args.teacher}")
        elif comparison.metric == "miou":
            print(f"mIoU: {value:.4f}  {name}")
        else:
            print(f"agreement: {value:.4f}  {name}  (mean IoU with {comparison.teacher}'s masks)")
    if comparison.left_out:
        print(f"left out: {_left_out(comparison)}")
    if comparison.worst:
        print("worst images: " + ", ".join(f"{case.path.name} ({case.score:.2f})" for case in comparison.worst))


def run(args) -> None:
    _check(args)
    comparison, details = _agreement(args) if args.agreement else _miou(args)
    _print(comparison, args, details)
    from slimsam.evaluate import report  # matplotlib comes with it: loaded by this command only
    print("\n" + report.markdown_table(comparison))
    if args.out:
        command = "slimsam eval " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else args.models)
        data = {"command": command, "data": str(args.data), "annotations": args.annotations, **details}
        folder = report.write_report(comparison, args.out, data, overwrite=args.overwrite)
        print(f"report written to {folder}", file=sys.stderr)
