"""Read documents from jsonl / jsonl.gz files and folders of .txt, validating every one.

Policy (stated here, in `lory prepare --help` and in the README, and counted in the manifest):
- a line that is not valid UTF-8, not valid JSON, not a JSON object, or lacks a string text field
  is skipped and reported as ``file:line`` with the reason; the rest of the file is still read;
- a document that is empty (only whitespace), shorter than ``min_chars`` or longer than
  ``max_chars`` is skipped;
- the second and later copies of an exactly equal text are skipped;
- a truncated or corrupt compressed file (``.jsonl.gz``) keeps the lines read before the damage;
  the rest of the file is lost, counted once as ``unreadable_rest_of_file`` at the line where
  reading stopped, and the other files are still read;
- ``strict=True`` turns the first of any of these into an error instead.
A record without the domain field takes the file's name as its domain (``wiki.jsonl.gz`` -> ``wiki``);
a .txt file takes the name of the folder it is in.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SKIP_REASONS = ("bad_utf8", "malformed_json", "not_an_object", "missing_text", "bad_domain", "empty",
                "too_short", "too_long", "exact_duplicate", "near_duplicate", "unreadable_rest_of_file")


class DataError(ValueError):
    """Bad input data, with the file and line it came from."""


@dataclass(frozen=True)
class Document:
    text: str
    domain: str
    where: str  # "file:line" (jsonl) or the .txt path: where a user finds it again


@dataclass(frozen=True)
class ReadPolicy:
    """How documents are read: which jsonl keys hold them, which are skipped, whether a skip is fatal."""

    text_field: str = "text"  # the jsonl key of a document's text
    domain_field: str = "domain"  # the jsonl key of its domain (absent: the file's name without .jsonl)
    min_chars: int = 1  # shorter texts are skipped, counted as too_short
    max_chars: int = 1_000_000  # longer texts are skipped, counted as too_long
    strict: bool = False  # a skipped document ends the run with its file:line

    def __post_init__(self) -> None:
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise ValueError(f"need 1 <= min_chars <= max_chars, got min_chars={self.min_chars}, "
                             f"max_chars={self.max_chars}")


@dataclass
class SkipLog:
    """Counts of skipped documents by reason and by domain, plus the first few places, for the report."""

    by_reason: Counter = field(default_factory=Counter)
    by_domain: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def add(self, reason: str, where: str, domain: str | None, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {', '.join(SKIP_REASONS)}")
        self.by_reason[reason] += 1
        if domain is not None:
            self.by_domain[domain] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {reason}{': ' + detail if detail else ''}")

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.by_reason.items())),
                "by_domain": dict(sorted(self.by_domain.items())), "first": list(self.examples)}


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand inputs to a sorted, de-duplicated list of files; a missing path is an error."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f) is not None)
            if not found:
                raise DataError(f"{p}: folder holds no .jsonl, .jsonl.gz or .txt files")
            files.extend(found)
        elif p.is_file():
            if _kind(p) is None:
                raise DataError(f"{p}: unsupported input; give .jsonl, .jsonl.gz, .txt files or folders of them")
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return list(dict.fromkeys(files))


def _kind(path: Path) -> str | None:
    name = path.name
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    return None


def _raw_records(path: Path, policy: ReadPolicy, skips: SkipLog) -> Iterator[tuple[str, str, str]]:
    """(text, domain, where) of every well-formed record of one file; malformed ones are logged."""
    kind = _kind(path)
    if kind == "txt":
        data = path.read_bytes()
        try:
            yield data.decode("utf-8"), path.parent.name, str(path)
        except UnicodeDecodeError as err:
            _skip(policy, skips, "bad_utf8", f"{path}", path.parent.name, f"byte {err.start}")
        return
    default_domain = path.name.removesuffix(".gz").removesuffix(".jsonl")
    opener = gzip.open if kind == "jsonl.gz" else open
    read = 0  # lines read so far: where reading stopped if the file turns out damaged

    def lines(raw) -> Iterator[tuple[int, bytes]]:  # noqa: ANN001 (a binary file)
        nonlocal read
        for read, line in enumerate(raw, start=1):  # noqa: B007 (read is the count kept outside)
            yield read, line

    try:
        with opener(path, "rb") as raw:
            yield from _records(path, lines(raw), policy, skips, default_domain)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        # Truncated (EOFError) or corrupt (zlib.error, BadGzipFile) compressed data: the lines read
        # before it stay, the rest of the file is lost and counted once, where reading stopped.
        _skip(policy, skips, "unreadable_rest_of_file", f"{path}:{read + 1}", None,
              f"{type(err).__name__}: {err} (after {read} lines; the rest of this file is lost)")


def _records(path: Path, lines: Iterator[tuple[int, bytes]], policy: ReadPolicy, skips: SkipLog,
             default_domain: str) -> Iterator[tuple[str, str, str]]:
    """(text, domain, where) of the well-formed jsonl records among numbered lines; malformed ones are logged."""
    for lineno, line in lines:
        where = f"{path}:{lineno}"
        if not line.strip():
            continue  # blank lines separate nothing in jsonl; not a document
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as err:
            _skip(policy, skips, "bad_utf8", where, None, f"byte {err.start} of the line")
            continue
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as err:
            _skip(policy, skips, "malformed_json", where, None, err.msg)
            continue
        if not isinstance(record, dict):
            _skip(policy, skips, "not_an_object", where, None, type(record).__name__)
            continue
        text = record.get(policy.text_field)
        domain = record.get(policy.domain_field, default_domain)
        if not isinstance(domain, str) or not domain.strip():
            _skip(policy, skips, "bad_domain", where, None,
                  f"field {policy.domain_field!r} must be a non-empty string, got {domain!r}")
            continue
        if not isinstance(text, str):
            _skip(policy, skips, "missing_text", where, domain,
                  f"no string field {policy.text_field!r} (keys: {', '.join(sorted(record)[:8])})")
            continue
        yield text, domain, where


def _skip(policy: ReadPolicy, skips: SkipLog, reason: str, where: str, domain: str | None, detail: str) -> None:
    if policy.strict:
        raise DataError(f"{where}: {reason}{': ' + detail if detail else ''} (strict mode; drop --strict "
                        "to skip and count such documents instead)")
    skips.add(reason, where, domain, detail)


def read_documents(paths: Sequence[str | Path], policy: ReadPolicy = ReadPolicy(),
                   skips: SkipLog | None = None, seen: set[bytes] | None = None) -> Iterator[Document]:
    """Stream valid documents from files and folders in a fixed order, skipping and logging the rest.

    ``seen`` (text digests) may be shared between calls, so that a text already read from other
    inputs (e.g. the training split when reading validation files) counts as an exact duplicate.
    """
    skips = SkipLog() if skips is None else skips
    seen = set() if seen is None else seen  # 16-byte digests: memory grows with documents, not with text
    for path in input_files(paths):
        for text, domain, where in _raw_records(path, policy, skips):
            if not text.strip():
                _skip(policy, skips, "empty", where, domain, "")
                continue
            if len(text) < policy.min_chars:
                _skip(policy, skips, "too_short", where, domain, f"{len(text)} < min_chars {policy.min_chars}")
                continue
            if len(text) > policy.max_chars:
                _skip(policy, skips, "too_long", where, domain, f"{len(text)} > max_chars {policy.max_chars}")
                continue
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                _skip(policy, skips, "exact_duplicate", where, domain, "")
                continue
            seen.add(digest)
            yield Document(text, domain, where)
