"""Reference numbers a trained model must beat, computed once at prepare time."""

from __future__ import annotations

import numpy as np


def unigram_counts(tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, train_ids: np.ndarray,
                   vocab_size: int, eod_id: int) -> np.ndarray:
    """Add-one token counts (vocab_size,) of the training documents, each with its end-of-document token.

    Saved by `lory prepare` as unigram.npy, so the unigram baseline can be scored on exactly the
    tokens a validation covers (see ``unigram_log_probs``).
    """
    counts = np.ones(vocab_size, dtype=np.int64)  # add-one: unseen tokens stay finite
    n = lengths[train_ids]  # (D,) one bincount over all the documents' positions, not one per document
    positions = np.arange(int(n.sum())) + np.repeat(offsets[train_ids] - (np.cumsum(n) - n), n)
    counts += np.bincount(tokens[positions], minlength=vocab_size)[:vocab_size]
    counts[eod_id] += len(train_ids)
    return counts


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """log p(token) under the training unigram distribution: (V,) float64."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(counts / counts.sum())


def unigram_ppl(counts: np.ndarray, tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                eval_ids: np.ndarray, doc_domain: np.ndarray, eod_id: int) -> dict[int, float]:
    """Perplexity per domain of the evaluation documents under the training unigram distribution.

    Each document counts with its end-of-document token, as packed. A model that only learned
    token frequencies scores this; a language model must go well below it.
    """
    logp = unigram_log_probs(counts)
    nll: dict[int, float] = {}
    n: dict[int, int] = {}
    for d in eval_ids:
        dom = int(doc_domain[d])
        ids = tokens[offsets[d]:offsets[d] + lengths[d]]
        nll[dom] = nll.get(dom, 0.0) - float(logp[ids].sum()) - float(logp[eod_id])
        n[dom] = n.get(dom, 0) + len(ids) + 1
    return {dom: float(np.exp(nll[dom] / n[dom])) for dom in sorted(nll)}
