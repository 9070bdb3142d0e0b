"""The `lory` command line: a thin dispatcher to functions that tests call with a list of args."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from collections.abc import Sequence

from . import __version__


def _field_help(cls: type) -> dict[str, str]:
    """Per-field help from the Google-style ``Args:`` section of a dataclass docstring."""
    doc = (cls.__doc__ or "").split("Args:", 1)[-1]
    helps: dict[str, str] = {}
    for names, text in re.findall(r"^\s{8}([\w, ]+):\s*(.+?)(?=^\s{8}[\w, ]+:|\Z)", doc, re.M | re.S):
        for name in names.split(","):
            helps[name.strip()] = " ".join(text.split())
    return helps


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field of ``cls`` (types, choices, defaults and help taken from the dataclass)."""
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        kwargs: dict = {"help": helps.get(f.name, ""), "dest": f.name}
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs.update(action="store_true")
        elif origin is list:
            kwargs.update(nargs="+", type=args[0], default=default, metavar="PATH")
        elif origin is typing.Literal:
            kwargs.update(choices=list(args), default=default)
        else:
            base = args[0] if args else hint
            kwargs.update(type=base, default=default, required=required)
        if default not in (None, [], False):
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(f"--{f.name}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .data.prepare import PrepareConfig
    from .data.sources import __doc__ as policy_doc

    parser = argparse.ArgumentParser(
        prog="lory",
        description="Pre-train Lory (fully differentiable Mixture-of-Experts) language models.",
    )
    parser.add_argument("--version", action="version", version=f"lory-lightning {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    prep = commands.add_parser(
        "prepare", help="documents -> tokenizer + similarity-ordered WebDataset shards + manifest",
        description="Turn raw documents into similarity-batched WebDataset shards (LORY.md section 4). "
                    "With no --inputs, the shipped sample corpus.",
        epilog=policy_doc.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(prep, PrepareConfig)
    prep.add_argument("--overwrite", action="store_true",
                      help="replace an output folder prepared with another config")
    prep.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


def _prepare(args: argparse.Namespace) -> int:
    from .data.prepare import PrepareConfig, prepare

    fields = {f.name for f in dataclasses.fields(PrepareConfig)}
    cfg = PrepareConfig(**{k: v for k, v in vars(args).items() if k in fields})
    manifest = prepare(cfg, quiet=args.quiet, overwrite=args.overwrite)
    splits = manifest["splits"]
    print(f"{cfg.output}: {splits['train']['sequences']} train / {splits['val']['sequences']} val sequences "
          f"of {manifest['seq_len']} tokens, {len(manifest['domains'])} domains "
          f"({', '.join(manifest['domains'])}), {manifest['skipped']['total']} documents skipped")
    return 0


COMMANDS = {"prepare": _prepare}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"lory {args.command}: error: {err}", file=sys.stderr)
        return 1
