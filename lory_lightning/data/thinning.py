"""Thinning: keep a seeded random share of each domain's training documents (``keep_fraction``).

It sets a corpus's size or mixture without touching its tokenizer or embedding map (both are fit
before it), which a comparison of two corpora needs: the second study's near-copy probe thins the
0.99-de-duplicated corpus to the per-domain tokens that de-duplication at 0.9 leaves, so the two
differ only in which documents are gone. Whether a document is kept depends only on its id (its
place in reading order), its domain and the seed, so any split of the corpus into tasks keeps the
same documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def uniform_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """(N,) float64 in [0, 1): a seeded, well-mixed key of each of ``ids`` (N,) (splitmix64's
    finalizer on id + (seed + 1) * golden ratio; the top 53 bits as the fraction)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic is meant to wrap
        z = np.asarray(ids, dtype=np.uint64) + np.uint64(seed + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def keep_fractions(keep_fraction: Mapping[str, float], domains: Sequence[str]) -> np.ndarray:
    """(D,) the share of each domain's training documents to keep, in ``domains`` order (1.0 for a
    domain ``keep_fraction`` does not name); a name that is not a domain of the corpus is an error."""
    unknown = sorted(set(keep_fraction) - set(domains))
    if unknown:
        raise ValueError(f"keep_fraction names {unknown}, which are not domains of this corpus "
                         f"({', '.join(domains)}): use the corpus's domain names")
    return np.array([float(keep_fraction.get(d, 1.0)) for d in domains], dtype=np.float64)


def thin(ids: np.ndarray, domains: np.ndarray, keep: np.ndarray, seed: int) -> np.ndarray:
    """(N,) bool: which of the documents ``ids`` (N,) of domain ids ``domains`` (N,) are kept, each
    when its key (``uniform_keys``) is below its domain's share ``keep`` (D,)."""
    return uniform_keys(ids, seed) < keep[np.asarray(domains, dtype=np.int64)]
