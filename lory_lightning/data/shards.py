"""WebDataset shards: written compressed and atomically, read back whole and verified before use.

A sample is ``{key}.tokens.npy`` (L + 1 token ids), ``{key}.domains.npy`` (L + 1 domain ids, uint8)
and ``{key}.json`` (its documents), in a gzip-compressed tar (``.tar.gz``, which webdataset and
``tar`` read as they are): 1.5 bytes per token on the sample corpus at L = 512, where the plain tar
took 9.0 (three 512-byte tar headers and their padding per sample). Tokens are stored as .npy only:
webdataset's default decoder unpickles .pyd/.pickle members, which a shard must never carry.

Reading verifies ahead of use: a shard is read whole (a few MB), its size and sha256 checked
against the manifest, and only then parsed, so a corrupt shard never feeds a batch. A shard that
verified once is not hashed again while its size and modification marker stay the same
(``VerifiedCache``): each process hashes only the shards it reads, once per file version.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..atomic import atomic_file
from .location import member, read_bytes, sha256_of, version
from .manifest import shard_name


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


def _write_one(path: Path, samples: list[Sample]) -> dict:
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


def write_shards(out_dir: Path, split: str, samples: Iterable[Sample], per_shard: int) -> list[dict]:
    """Write samples into ``{split}-00000.tar.gz``, ... of ``per_shard`` samples; one entry per shard."""
    if per_shard < 1:
        raise ValueError(f"sequences per shard must be >= 1, got {per_shard}")
    shards, batch = [], []
    for s in samples:
        batch.append(s)
        if len(batch) == per_shard:
            shards.append(_write_one(out_dir / shard_name(split, len(shards)), batch))
            batch = []
    if batch:
        shards.append(_write_one(out_dir / shard_name(split, len(shards)), batch))
    return shards


def parse_shard(data: bytes, where: str) -> list[dict[str, Any]]:
    """The samples of one shard's bytes, in order: {"key", "tokens" (L+1,), "domains" (L+1,), "meta"}."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**f, "__url__": where} for f in tar_file_iterator(io.BytesIO(data)))  # group_by_keys wants the url
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


def default_cache_dir() -> Path:
    """``$LORY_CACHE_DIR``, else ``$XDG_CACHE_HOME/lory-lightning``, else ``~/.cache/lory-lightning``."""
    if os.environ.get("LORY_CACHE_DIR"):
        return Path(os.environ["LORY_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lory-lightning"


class VerifiedCache:
    """Shard versions whose sha256 already matched: one empty file per (location, size, marker, sha256).

    A file per entry (created atomically) lets every rank and dataloader worker record and look up
    versions at once with no lock. The marker is a local file's mtime in ns or a store's ETag: a
    rewrite changes it, so the shard is hashed again. A change that keeps size and marker (a byte
    edited in place with the mtime set back by hand) is not seen: the same rule as rsync's quick check.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir() / "verified-shards"

    def _path(self, location: str, ver: tuple[int, str], sha256: str) -> Path:
        key = hashlib.sha256(f"{location}\0{ver[0]}\0{ver[1]}\0{sha256}".encode()).hexdigest()
        return self.folder / key[:2] / key

    def __contains__(self, item: tuple[str, tuple[int, str] | None, str]) -> bool:
        location, ver, sha = item
        return ver is not None and self._path(location, ver, sha).is_file()

    def add(self, location: str, ver: tuple[int, str] | None, sha256: str) -> None:
        if ver is None:
            return  # the store gives no marker: such a shard is hashed at every read
        path = self._path(location, ver, sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as err:  # a read-only home must not stop training: hash again next time
            warnings.warn(f"cannot record a verified shard in {self.folder} ({err}); set LORY_CACHE_DIR "
                          "to a writable folder to avoid hashing it again", stacklevel=2)


class ShardReader:
    """Reads the shards of one prepared folder, each checked against its manifest entry before use.

    Args:
        folder: The prepared folder (local path or URL).
        verify: Check each shard's sha256 (size is always checked); False only on the user's request.
        max_bad_shards: Shards this process may leave out (missing, truncated, corrupt); each is named
            in a warning and listed in ``bad``; one more is an error naming them.
        cache: Versions already verified (None: the default cache folder).
    """

    def __init__(self, folder: str, verify: bool = True, max_bad_shards: int = 0,
                 cache: VerifiedCache | None = None) -> None:
        self.folder, self.verify, self.max_bad_shards = folder, verify, max_bad_shards
        self.cache = cache if cache is not None else VerifiedCache()
        self.bad: list[str] = []

    def read(self, entry: dict) -> list[dict[str, Any]]:
        """The samples of one shard, or [] when it is left out as bad (see ``max_bad_shards``)."""
        location = member(self.folder, entry["name"])
        problem, data = self.verified_bytes(location, entry)
        if problem is None:
            return parse_shard(data, location)
        self.bad.append(entry["name"])
        if len(self.bad) > self.max_bad_shards:
            raise ValueError(f"{len(self.bad)} shard(s) fail verification against manifest.json (data.max_bad_shards "
                             f"is {self.max_bad_shards}): {problem.message}; earlier: {', '.join(self.bad[:-1]) or 'none'}")
        warnings.warn(f"leaving out {problem.message} ({len(self.bad)} of at most {self.max_bad_shards} bad "
                      "shards in this process)", stacklevel=2)
        return []

    def verified_bytes(self, location: str, entry: dict) -> tuple[ShardProblem | None, bytes]:
        """(what is wrong or None, the shard's bytes): hashed unless this version verified before."""
        try:
            ver = version(location) if self.verify else None  # before reading: a later rewrite changes it
            data = read_bytes(location)
        except FileNotFoundError:
            return _problem(location, entry, None, None), b""
        if not self.verify or (location, ver, entry["sha256"]) in self.cache:
            return _problem(location, entry, len(data), None), data
        problem = _problem(location, entry, len(data), hashlib.sha256(data).hexdigest())
        if problem is None:
            self.cache.add(location, ver, entry["sha256"])
        return problem, data
