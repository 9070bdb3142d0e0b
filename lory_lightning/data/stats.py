"""Reference numbers a trained model must beat, computed once at prepare time."""

from __future__ import annotations

import numpy as np


def unigram_ppl(tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, train_ids: np.ndarray,
                eval_ids: np.ndarray, doc_domain: np.ndarray, vocab_size: int, eod_id: int) -> dict[int, float]:
    """Perplexity per domain of the evaluation documents under the training unigram distribution.

    Each document counts with its end-of-document token, as packed. Add-one smoothing over the
    vocabulary keeps unseen tokens finite. A model that only learned token frequencies scores this;
    a language model must go well below it.
    """
    counts = np.ones(vocab_size, dtype=np.float64)  # add-one
    for d in train_ids:
        counts += np.bincount(tokens[offsets[d]:offsets[d] + lengths[d]], minlength=vocab_size)[:vocab_size]
    counts[eod_id] += len(train_ids)
    logp = np.log(counts / counts.sum())
    nll: dict[int, float] = {}
    n: dict[int, int] = {}
    for d in eval_ids:
        dom = int(doc_domain[d])
        ids = tokens[offsets[d]:offsets[d] + lengths[d]]
        nll[dom] = nll.get(dom, 0.0) - float(logp[ids].sum()) - float(logp[eod_id])
        n[dom] = n.get(dom, 0) + len(ids) + 1
    return {dom: float(np.exp(nll[dom] / n[dom])) for dom in sorted(nll)}
