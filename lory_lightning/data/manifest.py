"""manifest.json: the record `lory prepare` writes last, read back and checked against its schema.

A prepared folder is input from elsewhere (copied, edited by hand, half-deleted): every reader goes
through ``load_manifest``, which names the file and the key that is wrong and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .location import check_folder, is_url, member, read_bytes

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")
SHARD_SUFFIX = ".tar.gz"  # gzip-compressed WebDataset tar: 1.5 bytes per token, 9.0 uncompressed
SHARD_NAME = re.compile(r"^(train|val)-\d{5}\.tar\.gz$")
# 2: gzip-compressed shards (.tar.gz). 1 (round 1): plain .tar shards, 9.0 bytes per token.
FORMAT_VERSION = 2

# key -> type of every top-level entry the readers rely on
_TOP = {"format_version": int, "config": dict, "domains": list, "vocab_size": int, "eod_id": int,
        "seq_len": int, "token_dtype": str, "splits": dict}
_SHARD = {"name": str, "sha256": str, "sequences": int, "bytes": int}


class ManifestError(ValueError):
    """A manifest that is not what `lory prepare` writes."""


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}{SHARD_SUFFIX}"


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a prepared folder (local or URL), checked against its schema; a ManifestError
    names file and key."""
    path = member(check_folder(folder), MANIFEST)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no prepared data; {prepare_advice(folder, overwrite=False)}") from None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON ({err}); the file is truncated or damaged: "
                            f"{prepare_advice(folder)}") from err
    check_manifest(manifest, path)
    return manifest


def prepare_advice(folder: str | Path, overwrite: bool = True) -> str:
    """What to run to (re)build ``folder``: prepare writes local folders only, so a URL's folder is
    prepared locally and uploaded."""
    if is_url(folder):
        return (f"prepare it locally (`lory prepare --output DIR ...`) and upload DIR's files to {folder}, "
                "or train from the local folder")
    return f"rerun `lory prepare --output {folder} --overwrite`" if overwrite else f"run `lory prepare --output {folder}`"


def _folder_of(path: Path | str) -> str:
    return str(path).rsplit("/", 1)[0] if is_url(path) else str(Path(path).parent)


def check_manifest(manifest: Any, path: Path | str = MANIFEST) -> None:
    # Shard names must be exactly ``{split}-{i:05d}.tar.gz``: the only files a reader opens, so a
    # tampered name (``pipe:...``, ``../x``, ``https://other/x``) is refused here, by key.
    """Raise ManifestError unless ``manifest`` has every key, type and count `lory prepare` writes."""
    fix = f"the manifest was edited or damaged: {prepare_advice(_folder_of(path))}"

    def need(value: Any, key: str, kind: type) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            got = "missing" if value is None else f"a {type(value).__name__}, not a {kind.__name__}"
            raise ManifestError(f"{path}: key '{key}' is {got}; {fix}")
        return value

    need(manifest, "(top level)", dict)
    for key, kind in _TOP.items():
        need(manifest.get(key), key, kind)
    if manifest["format_version"] != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {manifest['format_version']} (this version of lory reads "
                            f"{FORMAT_VERSION}: gzip-compressed .tar.gz shards); prepare the folder again: "
                            f"{prepare_advice(_folder_of(path))} (`lory fit` on the "
                            "folder it prepares itself rebuilds it)")
    for i, name in enumerate(manifest["domains"]):
        need(name, f"domains[{i}]", str)
    if not manifest["domains"]:
        raise ManifestError(f"{path}: key 'domains' is empty; {fix}")
    for split in SPLITS:
        entry = need(manifest["splits"].get(split), f"splits.{split}", dict)
        total = need(entry.get("sequences"), f"splits.{split}.sequences", int)
        shards = need(entry.get("shards"), f"splits.{split}.shards", list)
        for i, shard in enumerate(shards):
            need(shard, f"splits.{split}.shards[{i}]", dict)
            for key, kind in _SHARD.items():
                need(shard.get(key), f"splits.{split}.shards[{i}].{key}", kind)
            if shard["sequences"] < 1 or shard["bytes"] < 1:
                raise ManifestError(f"{path}: key 'splits.{split}.shards[{i}]' lists {shard['sequences']} sequences "
                                    f"in {shard['bytes']} bytes (prepare writes no empty shard); {fix}")
            expected = shard_name(split, i)
            if shard["name"] != expected:
                raise ManifestError(f"{path}: key 'splits.{split}.shards[{i}].name' is {shard['name']!r}, "
                                    f"expected {expected!r} (an entry removed or reordered?); {fix}")
        listed = sum(s["sequences"] for s in shards)
        if listed != total:
            raise ManifestError(f"{path}: key 'splits.{split}.shards' lists {listed} sequences, "
                                f"'splits.{split}.sequences' says {total} (a shard entry removed?); {fix}")


def tokenizer_sha256(folder: str | Path, manifest: dict[str, Any]) -> str:
    """The sha256 of a prepared folder's tokenizer.json: the identity of what its token ids mean.

    Checked against the manifest's record (``tokenizer.sha256``, written since round 3) where there
    is one, so a replaced tokenizer.json is named rather than trusted.
    """
    path = member(check_folder(folder), TOKENIZER)
    try:
        digest = hashlib.sha256(read_bytes(path)).hexdigest()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; {prepare_advice(folder)}") from None
    recorded = (manifest.get("tokenizer") or {}).get("sha256")
    if recorded is not None and recorded != digest:
        raise ManifestError(f"{path}: sha256 {digest[:12]} differs from manifest.json's {recorded[:12]} (the tokenizer "
                            f"was replaced after preparing); {prepare_advice(folder)}")
    return digest
