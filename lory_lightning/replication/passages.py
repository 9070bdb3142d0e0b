"""The second study's corpus and its check: documents cut into passages, and documents per sequence.

Ordering can only act where a sequence holds several documents. The sample corpus's documents
average 900-1,550 tokens in four of its five domains, so a 512-token sequence holds one or two and
the order matters only at their edges. The second study cuts every document into passages of at
most ``max_chars`` characters on paragraph boundaries (the sample corpus was itself cut from longer
texts into passages of at most 6,000 characters, so this is the same operation, finer) and trains
on longer sequences; ``documents_per_sequence`` measures, per domain, how many documents the
sequence around a token holds, from the prepared shards.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_file


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """``text`` in pieces of at most ``max_chars``: paragraphs, a longer paragraph by its lines, a
    longer line at its last space before the limit (at the limit where it has none)."""
    for paragraph in re.split(r"\n\s*\n", text):
        if not paragraph.strip():
            continue
        if len(paragraph) <= max_chars:
            yield paragraph
            continue
        for line in paragraph.split("\n"):
            while len(line) > max_chars:
                cut = line.rfind(" ", 1, max_chars + 1)
                cut = max_chars if cut <= 0 else cut
                yield line[:cut]
                line = line[cut:].lstrip(" ")
            if line.strip():
                yield line


def cut_passages(text: str, max_chars: int) -> list[str]:
    """``text`` as passages of at most ``max_chars`` characters, cut on paragraph boundaries where it
    can (lines, then spaces, inside a longer paragraph), each filled greedily with whole pieces in order.

    Joining the passages with blank lines gives the text back up to blank-line and edge whitespace.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    passages: list[str] = []
    current = ""
    for piece in _pieces(text, max_chars):
        if current and len(current) + 2 + len(piece) > max_chars:
            passages.append(current)
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    if current:
        passages.append(current)
    return passages


def write_passage_corpus(files: Sequence[str], out: Path, max_chars: int, text_field: str = "text") -> list[Path]:
    """Each jsonl(.gz) file of ``files`` rewritten into ``out`` (same name) with every record cut into
    passages (``cut_passages``); every other field is kept, and ``source`` gains ``#p<i>``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in files:
        path = Path(name)
        lines = []
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = record[text_field]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{number}: not a JSON object with a {text_field!r} string ({e})") from e
                for i, passage in enumerate(cut_passages(text, max_chars)):
                    cut = {**record, text_field: passage}
                    if "source" in record:
                        cut["source"] = f"{record['source']}#p{i}"
                    lines.append(json.dumps(cut, ensure_ascii=False) + "\n")
        target = out / path.name
        data = "".join(lines).encode()
        if target.suffix == ".gz":  # mtime 0: the same passages give the same bytes (fingerprinted by content)
            packed = io.BytesIO()
            with gzip.GzipFile(filename="", fileobj=packed, mode="wb", mtime=0) as g:  # no name in the header
                g.write(data)
            data = packed.getvalue()
        # A file already holding these bytes is left alone: two `lory replicate` processes of one study
        # (--only, other seeds) cut the same corpus into one folder, and only a writer races a writer.
        if not (target.is_file() and target.read_bytes() == data):
            with atomic_file(target) as f:
                f.write(data)
        written.append(target)
    return written


def documents_per_sequence(samples: Sequence[dict], num_domains: int) -> np.ndarray:
    """Per domain, the mean number of documents in the sequence that holds a token of that domain:
    sum over sequences of tokens_d * documents / sum of tokens_d, (num_domains,) float64 (nan for a
    domain with no token). ``samples``: parsed shard samples (``domains`` (L + 1,) ids, ``meta`` with
    ``documents``, the pieces of documents the sequence holds)."""
    weighted = np.zeros(num_domains, dtype=np.float64)
    tokens = np.zeros(num_domains, dtype=np.float64)
    for sample in samples:
        counts = np.bincount(np.asarray(sample["domains"], dtype=np.int64), minlength=num_domains)[:num_domains]
        weighted += counts * len(sample["meta"]["documents"])
        tokens += counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return weighted / tokens


def prepared_documents_per_sequence(data_dir: str | Path, split: str = "train") -> dict[str, float]:
    """``documents_per_sequence`` of one split of a prepared folder, by domain name (shards verified)."""
    from ..data.shards import ShardReader

    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    reader = ShardReader(str(data_dir))
    samples = [s for entry in manifest["splits"][split]["shards"] for s in reader.read(entry)]
    means = documents_per_sequence(samples, len(manifest["domains"]))
    return {name: round(float(m), 3) for name, m in zip(manifest["domains"], means)}
