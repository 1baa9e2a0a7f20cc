"""`slimsam` command line: one module per subcommand, each with `add_parser(subparsers)`; `main` runs them.

Bad input ends with one line `slimsam: error: ...` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys

from slimsam.cli import bench, distill, export, info, prune, slim, web
from slimsam.cli import eval as eval_command
from slimsam.cli.errors import CliError
from slimsam.data.annotations import DatasetError
from slimsam.data.images import ImageFolderError
from slimsam.deploy.onnx_export import ExportError
from slimsam.infer.onnx_runtime import NotAnExportError
from slimsam.model.checkpoints import NotUniformError, WeightsNotFoundError

SUBCOMMANDS = (prune, export, info, eval_command, distill, slim, bench, web)


USER_ERRORS = (CliError, WeightsNotFoundError, FileNotFoundError, FileExistsError, ImageFolderError, DatasetError,
               NotUniformError, ExportError, NotAnExportError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slimsam", description="Prune, distil, evaluate and export SlimSAM models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        print(f"slimsam: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimsam: interrupted", file=sys.stderr)
        return 130
