"""WebDataset shards: written compressed and atomically, read back whole and verified before use.

A sample is ``{key}.tokens.npy`` (L + 1 token ids), ``{key}.domains.npy`` (L + 1 domain ids, uint8)
and ``{key}.json`` (its documents), in a gzip-compressed tar (``.tar.gz``, which webdataset and
``tar`` read as they are): 1.5 bytes per token on the sample corpus at L = 512, where the plain tar
took 9.0 (three 512-byte tar headers and their padding per sample). Tokens are stored as .npy only:
webdataset's default decoder unpickles .pyd/.pickle members, which a shard must never carry.

Reading verifies ahead of use: a shard is read whole (a few hundred KB), its size and sha256
checked against the manifest at every read (hashing costs about 0.1% of parsing the shard, so
nothing is cached), and only then parsed, so a corrupt shard never feeds a batch. Parsing
decompresses the gzip member to its end, so its CRC-32 and length are checked too, and compares
the header with the one prepare writes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..atomic import atomic_file
from .location import member, read_bytes, sha256_of


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


def npy_of(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle shard content


def sha256_file(path: Path) -> str:
    return sha256_of(str(path))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (see ``atomic_file``): a crash leaves no partial file."""
    with atomic_file(path) as f:
        f.write(data)


def write_shard(path: Path, samples: list[Sample]) -> dict:
    """Write ``samples`` as one gzip-compressed WebDataset tar at ``path`` (atomically); its manifest entry."""
    import webdataset as wds

    with atomic_file(path) as f:
        # mtime 0 and no name in the gzip header, mtime 0 and no user names in the tar: the same
        # samples give byte-identical shards.
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=6, mtime=0) as gz:
            writer = wds.TarWriter(gz, user="", group="", mtime=0, encoder=False)
            for s in samples:
                writer.write({"__key__": s.key, "tokens.npy": npy_bytes(s.tokens),
                              "domains.npy": npy_bytes(s.domains),
                              "json": json.dumps(s.meta, sort_keys=True).encode("utf-8")})
            writer.close()
    return {"name": path.name, "sha256": sha256_file(path), "sequences": len(samples),
            "bytes": path.stat().st_size}


# The 10-byte gzip header `write_shard` writes: deflate, no flags, mtime 0, level 6 (XFL 0), OS
# unknown (255). Nothing else in gzip covers these bytes, so they are compared whole.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def shard_tar(data: bytes, where: str) -> bytes:
    """A shard's tar bytes, decompressed to the end of its gzip member, so that the member's
    CRC-32 and length are checked on every read (a reader that stops at the last tar block never
    reaches them); a damaged shard is a ValueError naming it."""
    if data[:len(GZIP_HEADER)] != GZIP_HEADER:
        raise ValueError(f"{where}: damaged (its gzip header is not the one `lory prepare` writes)")
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{where}: damaged ({err}: the gzip CRC-32 or length check failed)") from None


def parse_shard(data: bytes, where: str) -> list[dict[str, Any]]:
    """The samples of one shard's bytes, in order: {"key", "tokens" (L+1,), "domains" (L+1,), "meta"}."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    tar = io.BytesIO(shard_tar(data, where))
    files = ({**f, "__url__": where} for f in tar_file_iterator(tar))  # group_by_keys wants the url
    samples = []
    for s in group_by_keys(files):
        try:
            samples.append({"key": s["__key__"], "tokens": npy_of(s["tokens.npy"]),
                            "domains": npy_of(s["domains.npy"]), "meta": json.loads(s["json"])})
        except KeyError as err:
            raise ValueError(f"{where}: sample {s['__key__']} lacks member {err}; was this shard written by "
                             "`lory prepare`?") from err
    return samples


class ShardProblem(NamedTuple):
    name: str
    message: str


def _problem(where: str, entry: dict, size: int | None, digest: str | None) -> ShardProblem | None:
    """What is wrong with a shard of ``size`` bytes and sha256 ``digest`` (None: not hashed), or None."""
    if size is None:
        return ShardProblem(entry["name"], f"{where}: missing (listed in manifest.json)")
    if size != entry["bytes"]:
        return ShardProblem(entry["name"], f"{where}: {size} bytes, manifest.json says {entry['bytes']} "
                                           "(truncated or replaced)")
    if digest is not None and digest != entry["sha256"]:
        return ShardProblem(entry["name"], f"{where}: sha256 differs from manifest.json (corrupt or replaced)")
    return None


def verify_shards(folder: Path, shards: Iterable[dict], hash_content: bool = True) -> Iterator[ShardProblem]:
    """A problem for every shard of a local folder that is missing or whose size (and, with
    ``hash_content``, sha256) differs from the manifest."""
    for entry in shards:
        path = Path(folder) / entry["name"]
        size = path.stat().st_size if path.is_file() else None
        digest = sha256_file(path) if hash_content and size == entry["bytes"] else None
        problem = _problem(str(path), entry, size, digest)
        if problem is not None:
            yield problem


class ShardReader:
    """Reads the shards of one prepared folder, each checked against its manifest entry before use.

    Args:
        folder: The prepared folder (local path or URL).
        verify: Check each shard's sha256 at every read (size is always checked); False only on the
            user's request.
        max_bad_shards: Shards this process may leave out (missing, truncated, corrupt); each is named
            in a warning and listed in ``bad``; one more is an error naming them.
    """

    def __init__(self, folder: str, verify: bool = True, max_bad_shards: int = 0) -> None:
        self.folder, self.verify, self.max_bad_shards = folder, verify, max_bad_shards
        self.bad: list[str] = []

    def read(self, entry: dict) -> list[dict[str, Any]]:
        """The samples of one shard, or [] when it is left out as bad (see ``max_bad_shards``)."""
        location = member(self.folder, entry["name"])
        problem, data = self.verified_bytes(location, entry)
        if problem is None:
            try:
                return parse_shard(data, location)
            except ValueError as err:  # damaged where only the gzip check sees it (verify off)
                problem = ShardProblem(entry["name"], str(err))
        self.bad.append(entry["name"])
        if len(self.bad) > self.max_bad_shards:
            raise ValueError(f"{len(self.bad)} shard(s) fail verification against manifest.json (data.max_bad_shards "
                             f"is {self.max_bad_shards}): {problem.message}; earlier: {', '.join(self.bad[:-1]) or 'none'}")
        warnings.warn(f"leaving out {problem.message} ({len(self.bad)} of at most {self.max_bad_shards} bad "
                      "shards in this process)", stacklevel=2)
        return []

    def verified_bytes(self, location: str, entry: dict) -> tuple[ShardProblem | None, bytes]:
        """(what is wrong or None, the shard's bytes), hashed unless ``verify`` is off."""
        try:
            data = read_bytes(location)
        except FileNotFoundError:
            return _problem(location, entry, None, None), b""
        return _problem(location, entry, len(data), hashlib.sha256(data).hexdigest() if self.verify else None), data
