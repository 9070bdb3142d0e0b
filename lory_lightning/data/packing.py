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


def shuffled(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The sequence at each of ``positions`` (0 <= p < n) of a seeded random permutation of 0..n-1,
    computed for those positions alone: no (n,) array is made, so a shard task finds its sequences
    without the list of all of them.

    A Feistel network of 4 rounds over the smallest even bit width 2h with 4**h >= n is a bijection
    of 0..4**h-1; a value that lands outside 0..n-1 is passed through again (cycle walking) until it
    lands inside, which keeps the map a bijection of 0..n-1 (at most 4n values, so about 1.3 rounds
    of walking on average). Round keys come from ``seed``.
    """
    positions = np.asarray(positions, dtype=np.uint64)
    if n < 1 or (len(positions) and int(positions.max()) >= n):
        raise ValueError(f"positions must lie in 0..{n - 1}")
    h = max(1, (int(n - 1).bit_length() + 1) // 2)  # half width: 4**h >= n
    mask = np.uint64((1 << h) - 1)
    keys = np.random.default_rng(seed).integers(0, 2 ** 63, size=4, dtype=np.uint64)

    def permute(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(h), x & mask
        for key in keys:
            mixed = (right * np.uint64(0x9E3779B97F4A7C15)) ^ key  # odd multiplier: wraps mod 2**64
            mixed ^= mixed >> np.uint64(29)
            mixed *= np.uint64(0xBF58476D1CE4E5B9)
            mixed ^= mixed >> np.uint64(32)
            left, right = right, left ^ (mixed & mask)
        return (left << np.uint64(h)) | right

    with np.errstate(over="ignore"):
        out = permute(positions)
        outside = out >= np.uint64(n)
        while outside.any():
            out[outside] = permute(out[outside])
            outside = out >= np.uint64(n)
    return out.astype(np.int64)
