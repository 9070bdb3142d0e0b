"""Config files that extend another (`base: FILE`), for every `lory` command: one expansion, before parsing."""

from __future__ import annotations

from pathlib import Path

import yaml


def config_chain(path: str) -> list[str]:
    """``path`` and the configs it extends through ``base:`` keys, the furthest base first."""
    chain: list[Path] = []
    current = Path(path)
    while current.is_file():  # not a file: jsonargparse reports it (or reads it as a YAML string)
        if current.resolve() in {p.resolve() for p in chain}:
            raise ValueError(f"{path}: the `base:` chain comes back to {current}")
        chain.append(current)
        try:
            base = (yaml.safe_load(current.read_text()) or {}).get("base")
        except (yaml.YAMLError, AttributeError):
            break  # not a mapping, or not YAML: jsonargparse names the problem
        if base is None:
            break
        if not isinstance(base, str):
            raise ValueError(f"{current}: base: must be the path of a config file, got {base!r}")
        current = current.parent / base
        if not current.is_file():
            raise FileNotFoundError(f"{chain[-1]}: base: {base}: no such config file ({current}; "
                                    "the path is relative to the extending file's folder)")
    return [str(p) for p in reversed(chain)] or [path]


def expand_bases(argv: list[str]) -> list[str]:
    """Each ``--config FILE`` whose FILE extends a base (``base: lory-tiny.yaml``) becomes
    ``--config BASE --config FILE``, recursively. LightningCLI merges configs given in order key by
    key, so a variant file holds only what differs from its base (a config key inside a file would
    reset every group the file mentions). Every command's parser accepts the ``base`` key itself
    (and ignores it), so the file parses as it stands."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("--config", "-c"):
            value = next(args, None)
            if value is None:
                out.append(arg)
                break
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            out.append(arg)
            continue
        for path in config_chain(value):
            out += ["--config", path]
    return out
