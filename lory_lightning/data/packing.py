"""Packing (LORY.md section 4, step 5): documents along the path -> one token stream -> sequences.

Each document is followed by the end-of-document token, which belongs to the document's domain
(it is what the model predicts at the document's end). Sequence i is ``stream[i*L : i*L + L + 1]``:
inputs are its first L tokens and targets its last L, so consecutive sequences share one token and
every token of the stream but the first is a target exactly once. The tail that does not fill a
last sequence is dropped and counted.
"""

from __future__ import annotations

import numpy as np


def pack_stream(order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, domains: np.ndarray,
                tokens: np.ndarray, eod_id: int, out_tokens: np.ndarray, out_domains: np.ndarray) -> np.ndarray:
    """Write the documents of ``order`` (with EOD after each) into the preallocated stream arrays.

    tokens (total,) holds every document at tokens[offsets[d] : offsets[d] + lengths[d]];
    out_tokens, out_domains: (sum(lengths[order]) + len(order),). Returns the start of each
    document in the stream (len(order) + 1,), the last entry being the stream length.
    """
    starts = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths[order] + 1, out=starts[1:])
    if out_tokens.shape[0] != starts[-1] or out_domains.shape[0] != starts[-1]:
        raise ValueError(f"stream arrays must have {starts[-1]} positions, got {out_tokens.shape[0]}")
    for i, d in enumerate(order):
        a, n = starts[i], lengths[d]
        out_tokens[a:a + n] = tokens[offsets[d]:offsets[d] + n]
        out_tokens[a + n] = eod_id
        out_domains[a:a + n + 1] = domains[d]
    return starts


def num_sequences(stream_len: int, seq_len: int) -> tuple[int, int]:
    """(number of full sequences, tokens dropped at the tail) for a stream of stream_len tokens."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n = max(stream_len - 1, 0) // seq_len
    used = n * seq_len + 1 if n else 0
    return n, stream_len - used


def sequence_slice(i: int, seq_len: int) -> slice:
    """Positions of sequence i in the stream: L + 1 tokens (inputs and shifted targets)."""
    return slice(i * seq_len, i * seq_len + seq_len + 1)


def documents_in(i: int, seq_len: int, starts: np.ndarray) -> tuple[int, int]:
    """Range [first, last) of path positions whose document (with its EOD) overlaps sequence i."""
    s = sequence_slice(i, seq_len)
    first = int(np.searchsorted(starts, s.start, side="right")) - 1
    last = int(np.searchsorted(starts, s.stop, side="left"))
    return first, last
