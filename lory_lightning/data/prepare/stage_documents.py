"""The documents phase of `lory prepare`: read every input file (valid records, their digests), find
exact duplicates across all files one digest range at a time, and keep each file's table of kept
documents (domain, split). The corpus as later stages see it is ``corpus``."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...atomic import atomic_file
from ..rowfile import RowFile
from ..sources import SkipLog, file_documents, skip_duplicate, text_digest
from .work import Work, atomic_json, atomic_npy, load_json, load_npy, mine

BUCKETS = 4096
"""Digest buckets (the top 12 bits of a digest's first word): a dedup range is a run of them."""
DEDUP_RANGE = 1 << 20
"""Documents in one dedup task's range, about (ranges = ceil(N / this)): its memory, not the corpus's."""


# -- read ------------------------------------------------------------------------------------------

def _is_val(text: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2 ** 64


def read(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: its valid documents, their places, domains and hash split, their digests
    sorted for de-duplication by range, and what was skipped, by reason."""
    work = Work(folder)
    policy = work.recipe.policy
    for f in mine(len(work.files), rank, tasks):
        skips = SkipLog(max_examples=20)
        digests, wheres, domains, held_out = bytearray(), [], [], []  # digests: 16 bytes a document
        with atomic_file(work.at.texts(f)) as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
            for doc in file_documents(work.files[f], policy, skips):
                gz.write((json.dumps(doc.text) + "\n").encode("utf-8"))
                digests += text_digest(doc.text)
                wheres.append(doc.where)
                domains.append(doc.domain)
                held_out.append(_is_val(doc.text, work.recipe.val_fraction))
        keys = digest_keys(np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 16))
        atomic_npy(work.at.digests(f), keys)
        atomic_npy(work.at.digest_buckets(f), bucket_bounds(keys[:, 0]))
        with atomic_file(work.at.documents(f)) as out:
            np.savez(out, where=np.array(wheres, dtype=str), domain=np.array(domains, dtype=str),
                     held_out=np.array(held_out, dtype=bool))
        atomic_json(work.at.read_skips(f), skips.as_dict())


def read_summary(work: Work) -> str:
    return f"{len(work.files)} input file(s) read"


def texts(work: Work, f: int) -> Iterator[str]:
    """Input file f's valid documents' texts, in reading order."""
    with gzip.open(work.at.texts(f), "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def rows_of(items: Iterator[str], rows: np.ndarray) -> Iterator[str]:
    """The items at the ascending positions ``rows``; stops reading after the last one."""
    k = 0
    for i, item in enumerate(items):
        if k == len(rows):
            return
        if i == rows[k]:
            yield item
            k += 1


# -- dedup -----------------------------------------------------------------------------------------

def digest_keys(digests: np.ndarray) -> np.ndarray:
    """(N, 3) uint64 rows (first word, second word, row) of the 16-byte digests (N, 16) uint8, sorted:
    equal digests together, by row; a digest range is a contiguous slice of them."""
    words = np.ascontiguousarray(digests).view(np.uint64).reshape(-1, 2)  # (N, 2): a digest as two words
    keys = np.column_stack([words, np.arange(len(words), dtype=np.uint64)])  # (N, 3)
    return keys[np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))]


def bucket_bounds(first_words: np.ndarray) -> np.ndarray:
    """(BUCKETS + 1,) where each bucket starts in the sorted first words (N,) uint64, then N."""
    starts = np.arange(BUCKETS, dtype=np.uint64) << np.uint64(64 - 12)  # (BUCKETS,) a bucket's smallest word
    return np.append(np.searchsorted(first_words, starts), len(first_words)).astype(np.int64)


def dedup_ranges(n: int) -> list[range]:
    """The buckets of each dedup task's range: ceil(n / DEDUP_RANGE) runs of equal width (digests are
    uniform, so each holds about n / ranges documents); the count depends on the corpus only."""
    k = min(BUCKETS, max(1, -(-n // DEDUP_RANGE)))
    edges = [BUCKETS * i // k for i in range(k + 1)]
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


def later_copies(keys: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Sorted reading positions of the rows whose digest an earlier row has: keys (n, 2) uint64
    digests, position (n,) int64 each row's place in reading order (unique). The first copy in
    reading order stays. Numeric arrays only, no Python object per document."""
    order = np.lexsort((position, keys[:, 1], keys[:, 0]))  # equal digests together, first copy first
    ordered = keys[order]
    later = np.zeros(len(keys), dtype=bool)
    later[1:] = np.all(ordered[1:] == ordered[:-1], axis=1)
    return np.sort(position[order[later]])


def read_counts(work: Work) -> np.ndarray:
    """(files + 1,) the reading position of each input file's first document (read's digest files)."""
    counts = [len(RowFile(work.at.digests(f))) for f in range(len(work.files))]
    return np.cumsum([0] + counts)


def dedup(folder: Path, rank: int, tasks: int) -> None:
    """Per digest range: the reading positions of exact duplicates across all files, and where each
    file's start in them. A task reads only its range's slice of each file's sorted digests: its
    memory is the range, not the corpus."""
    work = Work(folder)
    first = read_counts(work)
    ranges = dedup_ranges(int(first[-1]))
    for k in mine(len(ranges), rank, tasks):
        keys, position = [], []
        for f in range(len(work.files)):
            lo, hi = RowFile(work.at.digest_buckets(f))[[ranges[k].start, ranges[k].stop]]
            part = RowFile(work.at.digests(f))[int(lo):int(hi)]  # (m, 3)
            keys.append(part[:, :2])
            position.append(part[:, 2].astype(np.int64) + first[f])
        later = later_copies(np.concatenate([np.zeros((0, 2), np.uint64), *keys]),
                             np.concatenate([np.zeros(0, np.int64), *position]))
        atomic_npy(work.at.later_copies(k), later)
        atomic_npy(work.at.later_copies_bounds(k), np.searchsorted(later, first))


def dedup_summary(work: Work) -> str:
    n = len(dedup_ranges(int(read_counts(work)[-1])))
    later = sum(len(load_npy(work.at.later_copies(k), mmap=True)) for k in range(n))
    return f"{later} exact duplicate(s) found in {n} digest range(s)"


# -- merge -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Doc:  # what skip_duplicate needs of a document
    domain: str
    where: str


def merge(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: its table of kept documents (row, domain id in the file's own list, split) and
    what it adds to the corpus (its domains in order of first appearance among kept documents,
    documents, training documents, skipped). ``corpus`` joins them."""
    work = Work(folder)
    policy = work.recipe.policy
    held_out_by_hash = not any(work.val_file)
    first = read_counts(work)
    n_ranges = len(dedup_ranges(int(first[-1])))
    for f in mine(len(work.files), rank, tasks):
        skips = SkipLog()
        skips.absorb(load_json(work.at.read_skips(f)))
        later = []
        for k in range(n_ranges):
            a, b = RowFile(work.at.later_copies_bounds(k))[f:f + 2]
            later.append(RowFile(work.at.later_copies(k))[int(a):int(b)] - first[f])
        duplicates = np.sort(np.concatenate([np.zeros(0, np.int64), *later]))  # rows of this file, ascending
        kept = np.ones(int(first[f + 1] - first[f]), dtype=bool)
        kept[duplicates] = False
        with np.load(work.at.documents(f), allow_pickle=False) as z:
            domain, held_out = z["domain"], z["held_out"]
            where = z["where"][duplicates] if len(duplicates) else []
        for row, place in zip(duplicates, where):
            skip_duplicate(policy, skips, _Doc(str(domain[row]), str(place)))
        rows = np.flatnonzero(kept)
        names, first_row, codes = np.unique(domain[rows], return_index=True, return_inverse=True)
        appearance = np.argsort(first_row, kind="stable")  # this file's domains in order of first appearance
        local = np.empty(len(names), dtype=np.int64)
        local[appearance] = np.arange(len(names))
        val = np.ones(len(rows), dtype=bool) if work.val_file[f] else (held_out[rows] & held_out_by_hash)
        with atomic_file(work.at.kept(f)) as out:
            np.savez(out, row=rows.astype(np.int64), domain=local[codes.reshape(-1)].astype(np.int32), val=val)
        atomic_json(work.at.kept_summary(f), {
            "domains": [str(names[i]) for i in appearance], "documents": len(rows),
            "train": int((~val).sum()), "skipped": skips.as_dict()})


def merge_summary(work: Work) -> str:
    meta = corpus(work)
    return f"{meta['documents']} documents in {len(meta['domains'])} domains, {meta['skipped']['total']} skipped"


def corpus(work: Work) -> dict:
    """What the merge stage found in all files together: the domains in order of first appearance,
    the kept and training documents, the skipped ones; each file's domain ids into the global list.
    Raises when no document was kept or there are more domains than per-token ids can hold."""
    skips = SkipLog()
    domains: dict[str, int] = {}  # name -> id, in order of first appearance
    files, documents, train = [], 0, 0
    for f in range(len(work.files)):
        part = load_json(work.at.kept_summary(f))
        skips.absorb(part["skipped"])
        files.append([domains.setdefault(name, len(domains)) for name in part["domains"]])
        documents += part["documents"]
        train += part["train"]
    if not documents:
        train_names = [str(work.files[f]) for f in range(len(work.files)) if not work.val_file[f]]
        raise ValueError(f"no valid documents in {train_names}: see the skipped counts {skips.as_dict()['by_reason']}")
    if len(domains) > 255:
        raise ValueError(f"{len(domains)} domains; per-token domain ids are stored as uint8 (at most 255)")
    return {"domains": list(domains), "skipped": skips.as_dict(), "documents": documents, "train_documents": train,
            "file_domains": files}


def kept_documents(work: Work, f: int, file_domains: list[int]) -> dict[str, np.ndarray]:
    """Input file f's kept documents: row in the file (ascending), domain id (global), validation."""
    with np.load(work.at.kept(f), allow_pickle=False) as z:
        return {"row": z["row"], "domain": np.array(file_domains, dtype=np.uint8)[z["domain"]], "val": z["val"]}


def file_bounds(work: Work) -> dict[str, np.ndarray]:
    """(files + 1,) each: where each input file's kept documents and training documents begin in
    reading order (from the merge stage's small summaries)."""
    merged = [load_json(work.at.kept_summary(f)) for f in range(len(work.files))]
    return {"doc": np.cumsum([0] + [m["documents"] for m in merged]),
            "train": np.cumsum([0] + [m["train"] for m in merged])}
