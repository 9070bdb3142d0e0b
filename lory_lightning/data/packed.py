"""Packed token streams on disk: how the pack stage writes one and the shards stage reads sequences from it.

The training stream is the documents of every partition along the visiting path, packed end to end
(packing.py). It is written as pieces, one per partition by a task of its own, each knowing only its
documents; the stream is the pieces read end to end (``PackedStream``), so no task ever holds the
whole corpus's document starts. A piece (``prefix`` + suffix) is:

    .tokens       the documents' tokens, each followed by the end-of-document token (raw, token dtype)
    .domains      the domain id of every position (raw uint8)
    .starts.npy   (n + 1,) int64 each document's start in the piece, then the piece's length
    .ids.npy      (n,) int64 each document's id (its place in reading order)
    .index.npy    every INDEX_EVERY-th entry of .starts: a sequence's documents are found with one
                  short read instead of a search through the whole .starts file
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .packing import pack_stream, sequence_slice
from .rowfile import JoinedRows, RowFile

INDEX_EVERY = 256
CHUNK = 4096  # documents packed at a time


def write_piece(prefix: Path, tokens: JoinedRows, offsets: np.ndarray, lengths: np.ndarray, domains: np.ndarray,
                ids: np.ndarray, eod: int, vocab: int) -> np.ndarray:
    """Pack the documents (in order: their token ``offsets`` and ``lengths`` in ``tokens``, ``domains``,
    ``ids``) into the piece ``prefix``, CHUNK documents at a time; returns the piece's token counts
    (vocab,) int64 (every document's tokens and its end-of-document token).

    The files are written in place, not atomically: a task killed while writing leaves a partial
    piece, and that is safe because the engine records a task complete only after it returns, so the
    rerun writes the piece again from the start (tests/reliability/test_prepare_kill.py kills one
    after its first piece)."""
    starts = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=starts[1:])
    counts = np.zeros(vocab, dtype=np.int64)
    local = np.arange(len(ids))
    with open(f"{prefix}.tokens", "wb") as tok_file, open(f"{prefix}.domains", "wb") as dom_file:
        for a in range(0, len(ids), CHUNK):
            part = local[a:a + CHUNK]
            n = int(starts[a + len(part)] - starts[a])
            out_tokens, out_domains = np.empty(n, dtype=tokens.dtype), np.empty(n, dtype=np.uint8)
            pack_stream(part, offsets, lengths, domains, tokens, eod, out_tokens, out_domains)
            counts += np.bincount(out_tokens, minlength=vocab)[:vocab]
            tok_file.write(out_tokens.tobytes())
            dom_file.write(out_domains.tobytes())
    np.save(f"{prefix}.starts.npy", starts)
    np.save(f"{prefix}.ids.npy", np.asarray(ids, dtype=np.int64))
    np.save(f"{prefix}.index.npy", starts[::INDEX_EVERY])
    return counts


class PackedStream:
    """Pieces read end to end as one stream: ``sequence(i)`` is sequence i's tokens, domain ids and the
    documents it overlaps, read with pread (a piece's files are never loaded whole)."""

    def __init__(self, prefixes: list[Path], dtype: type) -> None:
        self.starts = [RowFile(f"{p}.starts.npy") for p in prefixes]
        self.ids = [RowFile(f"{p}.ids.npy") for p in prefixes]
        self.index = [np.load(f"{p}.index.npy") for p in prefixes]  # (n_q / INDEX_EVERY + 1,) each
        lengths = [int(s[len(s) - 1]) for s in self.starts]  # each piece's last start: its length
        self.first = np.cumsum([0] + lengths)  # (pieces + 1,) where each piece begins in the stream
        self.tokens = JoinedRows([RowFile(f"{p}.tokens", dtype, (n,)) for p, n in zip(prefixes, lengths)])
        self.domains = JoinedRows([RowFile(f"{p}.domains", np.uint8, (n,)) for p, n in zip(prefixes, lengths)])

    def __len__(self) -> int:  # tokens
        return int(self.first[-1])

    def sequence(self, i: int, seq_len: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
        """(tokens (L + 1,), domain ids (L + 1,), [[document id, its start relative to the sequence's]]
        for every document overlapping it, in stream order)."""
        s = sequence_slice(i, seq_len)
        docs = []
        q = int(np.searchsorted(self.first, s.start, side="right")) - 1  # the piece holding the first token
        while q < len(self.starts) and self.first[q] < s.stop:
            lo, hi = s.start - int(self.first[q]), s.stop - int(self.first[q])  # the sequence, in piece q
            # the documents overlapping [lo, hi): from the last start <= lo to the last start < hi
            k = max(int(np.searchsorted(self.index[q], lo, side="right")) - 1, 0)  # an index entry at or before lo
            a = k * INDEX_EVERY
            b = a + INDEX_EVERY + 1
            while True:  # a window of starts reaching hi (a long sequence may span several index blocks)
                window = self.starts[q][a:b]
                if b >= len(self.starts[q]) or window[-1] >= hi:
                    break
                b += INDEX_EVERY
            n = len(self.starts[q]) - 1  # the piece's documents
            first = a + max(int(np.searchsorted(window, lo, side="right")) - 1, 0)
            last = min(a + int(np.searchsorted(window, hi, side="left")), n)
            if last > first:
                doc_ids = self.ids[q][first:last]
                docs += [[int(d), int(self.first[q] + start) - s.start]
                         for d, start in zip(doc_ids, window[first - a:last - a])]
            q += 1
        return self.tokens[s], self.domains[s], docs

    def close(self) -> None:
        for files in (self.starts, self.ids):
            for f in files:
                f.close()
        self.tokens.close()
        self.domains.close()

    def __enter__(self) -> "PackedStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
