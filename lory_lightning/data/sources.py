"""Read documents from jsonl / jsonl.gz / jsonl.zst, parquet, folders of .txt and Hugging Face datasets
saved to disk (``save_to_disk``), local or at any fsspec URL, validating every one.

Policy (stated here, in `lory prepare --help` and in the README, and counted in the manifest):
- a line that is not valid UTF-8, not valid JSON, not a JSON object, or lacks a string text field
  is skipped and reported as ``file:line`` with the reason; the rest of the file is still read (a
  parquet or arrow row is numbered like a line, from 1);
- a document that is empty (only whitespace), shorter than ``min_chars`` or longer than
  ``max_chars`` is skipped;
- the second and later copies of an exactly equal text are skipped;
- a truncated or corrupt compressed file (``.jsonl.gz``, ``.jsonl.zst``) keeps the lines read before the damage;
  the rest of the file is lost, counted once as ``unreadable_rest_of_file`` at the line where
  reading stopped, and the other files are still read;
- ``strict=True`` turns the first of any of these into an error instead.
A record without the domain field takes the file's name as its domain (``wiki.jsonl.gz`` -> ``wiki``);
a .txt file takes the name of the folder it is in, a saved dataset's row the dataset folder's name.
Parquet, arrow and zstd need ``pip install 'lory-lightning[io]'`` (pyarrow, zstandard).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .location import is_url, read_bytes

SKIP_REASONS = ("bad_utf8", "bad_unicode", "malformed_json", "not_an_object", "missing_text", "bad_domain", "empty",
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

    def absorb(self, logged: dict) -> None:
        """Add the counts and first places of another log's ``as_dict()`` (a task's, in task order)."""
        self.by_reason.update(logged["by_reason"])
        self.by_domain.update(logged["by_domain"])
        self.examples.extend(logged["first"][: self.max_examples - len(self.examples)])

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.by_reason.items())),
                "by_domain": dict(sorted(self.by_domain.items())), "first": list(self.examples)}


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is (local path or fsspec URL), how to read it, and the domain its
    records take when they carry no domain field."""

    location: str
    kind: str  # jsonl | jsonl.gz | jsonl.zst | txt | parquet | arrow
    default_domain: str

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.location


_KINDS = (("jsonl.gz", ".jsonl.gz"), ("jsonl.zst", ".jsonl.zst"), ("jsonl", ".jsonl"), ("txt", ".txt"),
          ("parquet", ".parquet"))
SUPPORTED = ".jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt files, folders of them, or a Hugging Face dataset saved to disk"


def _kind(name: str) -> str | None:
    for kind, suffix in _KINDS:
        if name.endswith(suffix):
            return kind
    return None


def _default_domain(location: str, kind: str) -> str:
    parts = location.rstrip("/").rsplit("/", 2)
    if kind == "txt":
        return parts[-2] if len(parts) > 1 else "txt"  # a .txt file's folder names its domain
    name = parts[-1]
    for _, suffix in _KINDS:
        name = name.removesuffix(suffix)
    return name


def _hf_dataset_files(folder: str, state_json: bytes) -> list[InputFile]:
    """The arrow files of a Hugging Face dataset saved with ``save_to_disk`` (state.json lists them)."""
    files = [f["filename"] for f in json.loads(state_json).get("_data_files", [])]
    if not files:
        raise DataError(f"{folder}/state.json lists no data files: not a dataset saved with save_to_disk")
    folder = folder.rstrip("/")
    domain = folder.rsplit("/", 1)[-1]
    return [InputFile(f"{folder}/{name}", "arrow", domain) for name in files]


def _expand(given: str) -> list[InputFile]:
    """The input files one path or URL stands for."""
    if is_url(given):
        import fsspec

        fs, path = fsspec.core.url_to_fs(given)
        is_dir, is_file = fs.isdir(path), fs.isfile(path)
        listing = lambda: sorted(fs.unstrip_protocol(p) for p in fs.find(path))  # noqa: E731
        has = lambda name: fs.isfile(f"{path.rstrip('/')}/{name}")  # noqa: E731
    else:
        p = Path(given)
        is_dir, is_file = p.is_dir(), p.is_file()
        listing = lambda: sorted(str(f) for f in p.rglob("*") if f.is_file())  # noqa: E731
        has = lambda name: (p / name).is_file()  # noqa: E731
    if is_dir:
        if has("state.json"):
            return _hf_dataset_files(given, read_bytes(f"{given.rstrip('/')}/state.json"))
        if has("dataset_dict.json"):
            raise DataError(f"{given}: a Hugging Face DatasetDict; give one split's folder, e.g. {given}/train")
        found = [f for f in listing() if _kind(f) is not None]
        if not found:
            raise DataError(f"{given}: folder holds no input files ({SUPPORTED})")
        return [InputFile(f, _kind(f), _default_domain(f, _kind(f))) for f in found]
    if is_file:
        kind = _kind(given)
        if kind is None:
            raise DataError(f"{given}: unsupported input; give {SUPPORTED}")
        return [InputFile(given, kind, _default_domain(given, kind))]
    raise DataError(f"{given}: no such file or folder")


def input_files(paths: Sequence[str | Path | InputFile]) -> list[InputFile]:
    """Expand inputs (local paths or fsspec URLs) to a sorted, de-duplicated list of files; a missing
    path is an error. A folder holding ``state.json`` is a Hugging Face dataset saved to disk."""
    files: list[InputFile] = []
    for given in paths:
        files.extend([given] if isinstance(given, InputFile) else _expand(str(given)))
    return list(dict.fromkeys(files))


def _open(location: str):  # noqa: ANN202 (a binary file object)
    if not is_url(location):
        return open(location, "rb")
    import fsspec

    return fsspec.open(location, "rb").open()


def _lines(raw, kind: str) -> Iterator[bytes]:  # noqa: ANN001 (a binary file object)
    """The lines of a (compressed) jsonl file; a truncated or corrupt stream raises where it stops."""
    if kind == "jsonl.gz":
        with gzip.open(raw, "rb") as f:
            yield from f
    elif kind == "jsonl.zst":
        yield from _zstd_lines(raw)
    else:
        yield from raw


def _zstd_lines(raw) -> Iterator[bytes]:  # noqa: ANN001 (a binary file object)
    # zstandard's stream_reader ends quietly at a truncated frame, which would turn the cut into a
    # malformed last line; a decompressor object says whether its frame was complete (eof).
    zstd = _optional("zstandard", "a .jsonl.zst input")
    d, fed, pending = zstd.ZstdDecompressor().decompressobj(), False, b""
    for chunk in iter(lambda: raw.read(1 << 20), b""):
        while chunk:
            pending += d.decompress(chunk)
            fed = True
            chunk, d, fed = (d.unused_data, zstd.ZstdDecompressor().decompressobj(), False) if d.eof else (b"", d, fed)
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
    if fed and not d.eof:
        raise EOFError("the zstd stream ends inside a frame (truncated)")
    if pending:
        yield pending


def _optional(module: str, what: str):  # noqa: ANN202 (a module)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs the {module} package: pip install 'lory-lightning[io]'") from err


def _damaged_stream_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _raw_records(file: InputFile, policy: ReadPolicy, skips: SkipLog) -> Iterator[tuple[str, str, str]]:
    """(text, domain, where) of every well-formed record of one file; malformed ones are logged."""
    if file.kind == "txt":
        data = read_bytes(file.location)
        try:
            yield data.decode("utf-8"), file.default_domain, file.location
        except UnicodeDecodeError as err:
            _skip(policy, skips, "bad_utf8", file.location, file.default_domain, f"byte {err.start}")
        return
    if file.kind in ("parquet", "arrow"):
        yield from _table_records(file, policy, skips)
        return
    read = 0  # lines read so far: where reading stopped if the file turns out damaged

    def lines(raw) -> Iterator[tuple[int, bytes]]:  # noqa: ANN001 (a binary file)
        nonlocal read
        for read, line in enumerate(raw, start=1):  # noqa: B007 (read is the count kept outside)
            yield read, line

    try:
        with _open(file.location) as raw:
            for lineno, line in lines(_lines(raw, file.kind)):
                if line.strip():  # blank lines separate nothing in jsonl; not a document
                    yield from _record_of_line(f"{file.location}:{lineno}", line, policy, skips, file.default_domain)
    except _damaged_stream_errors() as err:
        # Truncated or corrupt compressed data: the lines read before it stay, the rest of the file
        # is lost and counted once, where reading stopped.
        _skip(policy, skips, "unreadable_rest_of_file", f"{file.location}:{read + 1}", None,
              f"{type(err).__name__}: {err} (after {read} lines; the rest of this file is lost)")


def _record_of_line(where: str, line: bytes, policy: ReadPolicy, skips: SkipLog,
                    default_domain: str) -> Iterator[tuple[str, str, str]]:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as err:
        _skip(policy, skips, "bad_utf8", where, None, f"byte {err.start} of the line")
        return
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as err:
        _skip(policy, skips, "malformed_json", where, None, err.msg)
        return
    if not isinstance(record, dict):
        _skip(policy, skips, "not_an_object", where, None, type(record).__name__)
        return
    yield from _record(where, record, policy, skips, default_domain)


def _table_records(file: InputFile, policy: ReadPolicy, skips: SkipLog) -> Iterator[tuple[str, str, str]]:
    """Rows of a parquet file or a saved dataset's arrow file, numbered from 1 like lines."""
    pa = _optional("pyarrow", f"a .{file.kind} input")
    row = 0
    try:
        with _open(file.location) as raw:
            if file.kind == "parquet":
                batches = _optional("pyarrow.parquet", "a .parquet input").ParquetFile(raw).iter_batches()
            else:
                batches = pa.ipc.open_stream(raw)
            for batch in batches:
                for record in batch.to_pylist():
                    row += 1
                    yield from _record(f"{file.location}:{row}", record, policy, skips, file.default_domain)
    except pa.ArrowException as err:  # a damaged or truncated file: keep the rows read, count the rest once
        _skip(policy, skips, "unreadable_rest_of_file", f"{file.location}:{row + 1}", None,
              f"{type(err).__name__}: {err} (after {row} rows; the rest of this file is lost)")


def _record(where: str, record: dict, policy: ReadPolicy, skips: SkipLog,
            default_domain: str) -> Iterator[tuple[str, str, str]]:
    """(text, domain, where) of a well-formed record (a jsonl object or a table row), else logged."""
    text = record.get(policy.text_field)
    domain = record.get(policy.domain_field)
    if domain is None:  # no such field, or a table column without a value in this row
        domain = default_domain
    if not isinstance(domain, str) or not domain.strip():
        _skip(policy, skips, "bad_domain", where, None,
              f"field {policy.domain_field!r} must be a non-empty string, got {domain!r}")
        return
    if not isinstance(text, str):
        _skip(policy, skips, "missing_text", where, domain,
              f"no string field {policy.text_field!r} (keys: {', '.join(sorted(record)[:8])})")
        return
    yield text, domain, where


def _skip(policy: ReadPolicy, skips: SkipLog, reason: str, where: str, domain: str | None, detail: str) -> None:
    if policy.strict:
        raise DataError(f"{where}: {reason}{': ' + detail if detail else ''} (strict mode; drop --strict "
                        "to skip and count such documents instead)")
    skips.add(reason, where, domain, detail)


def text_digest(text: str) -> bytes:
    """The 16-byte digest exact duplicates are recognised by."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def file_documents(file: InputFile, policy: ReadPolicy, skips: SkipLog) -> Iterator[Document]:
    """The valid documents of one file in order (exact duplicates not yet removed), the rest logged."""
    for text, domain, where in _raw_records(file, policy, skips):
        bad = _unencodable(text) or _unencodable(domain)
        if bad:  # JSON's "\ud800" escape reads into a str that no UTF-8 writer (tokenizer, digest) takes
            _skip(policy, skips, "bad_unicode", where, None, bad)
        elif not text.strip():
            _skip(policy, skips, "empty", where, domain, "")
        elif len(text) < policy.min_chars:
            _skip(policy, skips, "too_short", where, domain, f"{len(text)} < min_chars {policy.min_chars}")
        elif len(text) > policy.max_chars:
            _skip(policy, skips, "too_long", where, domain, f"{len(text)} > max_chars {policy.max_chars}")
        else:
            yield Document(text, domain, where)


def _unencodable(text: str) -> str:
    """Why ``text`` has no UTF-8 form (a lone surrogate), or "" when it has one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"{err.reason} (U+{ord(text[err.start]):04X} at character {err.start})"
    return ""


def skip_duplicate(policy: ReadPolicy, skips: SkipLog, doc: Document) -> None:
    """Log ``doc`` as an exact duplicate of an earlier document (an error under ``strict``)."""
    _skip(policy, skips, "exact_duplicate", doc.where, doc.domain, "")


def read_documents(paths: Sequence[str | Path | InputFile], policy: ReadPolicy = ReadPolicy(),
                   skips: SkipLog | None = None, seen: set[bytes] | None = None) -> Iterator[Document]:
    """Stream valid documents from files and folders in a fixed order, skipping and logging the rest.

    ``seen`` (text digests) may be shared between calls, so that a text already read from other
    inputs (e.g. the training split when reading validation files) counts as an exact duplicate.
    """
    skips = SkipLog() if skips is None else skips
    seen = set() if seen is None else seen  # 16-byte digests: memory grows with documents, not with text
    for file in input_files(paths):
        for doc in file_documents(file, policy, skips):
            digest = text_digest(doc.text)
            if digest in seen:
                skip_duplicate(policy, skips, doc)
                continue
            seen.add(digest)
            yield doc
