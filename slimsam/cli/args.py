"""Argument types and helpers shared by subcommands."""
from __future__ import annotations

import argparse

from slimsam.model.checkpoints import default_device


def ratio(text: str) -> float:
    """A pruning ratio strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"ratio must be between 0 and 1 (exclusive), got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    return 0 if text == "0" else positive_int(text)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda when available)")
