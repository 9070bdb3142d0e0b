"""The `lory` command line: a thin dispatcher to functions that tests call with a list of args."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lory",
        description="Pre-train Lory (fully differentiable Mixture-of-Experts) language models.",
    )
    parser.add_argument("--version", action="version", version=f"lory-lightning {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    parser.error(f"unknown command {args.command!r}")  # argparse exits with status 2
    return 2
