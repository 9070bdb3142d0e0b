"""WebDataset shards: atomic writing, a sha256 per shard, and verification against the manifest.

A sample is ``{key}.tokens.npy`` (L + 1 token ids), ``{key}.domains.npy`` (L + 1 domain ids, uint8)
and ``{key}.json`` (its documents). Tokens are stored as .npy only: webdataset's default decoder
unpickles .pyd/.pickle members, which a shard must never carry.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import numpy as np

from ..atomic import atomic_file


@dataclass(frozen=True)
class Sample:
    key: str
    tokens: np.ndarray  # (L + 1,)
    domains: np.ndarray  # (L + 1,) uint8
    meta: dict


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (see ``atomic_file``): a crash leaves no partial file."""
    with atomic_file(path) as f:
        f.write(data)


def _write_one(path: Path, samples: list[Sample]) -> dict:
    import webdataset as wds

    with atomic_file(path) as f:
        # mtime 0, no user names: the same samples give byte-identical shards.
        writer = wds.TarWriter(f, user="", group="", mtime=0, encoder=False)
        for s in samples:
            writer.write({"__key__": s.key, "tokens.npy": npy_bytes(s.tokens),
                          "domains.npy": npy_bytes(s.domains),
                          "json": json.dumps(s.meta, sort_keys=True).encode("utf-8")})
        writer.close()
    return {"name": path.name, "sha256": sha256_file(path), "sequences": len(samples),
            "bytes": path.stat().st_size}


def write_shards(out_dir: Path, prefix: str, samples: Iterable[Sample], per_shard: int) -> list[dict]:
    """Write samples into ``{prefix}-00000.tar``, ... of ``per_shard`` samples; returns one entry per shard."""
    if per_shard < 1:
        raise ValueError(f"sequences per shard must be >= 1, got {per_shard}")
    shards, batch = [], []
    for s in samples:
        batch.append(s)
        if len(batch) == per_shard:
            shards.append(_write_one(out_dir / f"{prefix}-{len(shards):05d}.tar", batch))
            batch = []
    if batch:
        shards.append(_write_one(out_dir / f"{prefix}-{len(shards):05d}.tar", batch))
    return shards


class ShardProblem(NamedTuple):
    name: str
    message: str


def verify_shards(folder: Path, shards: Iterable[dict]) -> Iterator[ShardProblem]:
    """A problem for every shard that is missing or whose size or sha256 differs from the manifest."""
    for entry in shards:
        path = folder / entry["name"]
        if not path.is_file():
            yield ShardProblem(entry["name"], f"{path}: missing (listed in manifest.json)")
        elif path.stat().st_size != entry["bytes"]:
            yield ShardProblem(entry["name"], f"{path}: {path.stat().st_size} bytes, manifest.json says "
                                              f"{entry['bytes']} (truncated or replaced)")
        elif sha256_file(path) != entry["sha256"]:
            yield ShardProblem(entry["name"], f"{path}: sha256 differs from manifest.json (corrupt or replaced)")
