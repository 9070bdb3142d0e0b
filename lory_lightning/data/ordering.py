"""Similarity ordering (LORY.md section 4, steps 2-4): Annoy kNN, near-duplicate removal, greedy path.

All functions are pure and deterministic: the kNN index is seeded and built single-threaded
(Annoy's neighbours change with the build's thread count, FACTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KnnParams:
    k: int = 10
    n_trees: int = 50
    search_k: int = -1  # Annoy's default: n_trees * k
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_trees < 1:
            raise ValueError(f"knn k ({self.k}) and n_trees ({self.n_trees}) must be >= 1")


def knn(embeddings: np.ndarray, params: KnnParams = KnnParams()) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours of every row by angular distance.

    embeddings (N, dim) -> neighbours (N, k) int64 and cosine similarities (N, k) float32, most
    similar first, self excluded; rows with fewer than k found neighbours are padded with -1 / -inf.
    """
    from annoy import AnnoyIndex

    n, dim = embeddings.shape
    index = AnnoyIndex(dim, "angular")
    index.set_seed(params.seed)  # before adding items, or the seed is not used
    for i, vec in enumerate(embeddings):
        index.add_item(i, vec.tolist())
    index.build(params.n_trees, n_jobs=1)
    nbrs = np.full((n, params.k), -1, dtype=np.int64)
    sims = np.full((n, params.k), -np.inf, dtype=np.float32)
    for i in range(n):
        ids, dists = index.get_nns_by_item(i, params.k + 1, search_k=params.search_k, include_distances=True)
        found = [(j, d) for j, d in zip(ids, dists) if j != i][: params.k]
        if found:
            ids_i, d_i = zip(*found)
            nbrs[i, : len(found)] = ids_i
            # Annoy's angular distance is sqrt(2 - 2 cos) between unit vectors.
            sims[i, : len(found)] = 1.0 - np.square(np.asarray(d_i, dtype=np.float32)) / 2.0
    return nbrs, sims


def near_duplicates(nbrs: np.ndarray, sims: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask (N,) of documents to drop: each later member of a pair with cosine > threshold.

    In index order, a document is dropped when a kept earlier document is its neighbour (or has it
    as a neighbour) above the threshold; a dropped document never causes another drop.
    """
    n = nbrs.shape[0]
    drop = np.zeros(n, dtype=bool)
    for i in range(n):
        if drop[i]:
            continue
        close = nbrs[i][(sims[i] > threshold) & (nbrs[i] >= 0)]
        if np.any((close < i) & ~drop[np.clip(close, 0, None)]):
            drop[i] = True
            continue
        drop[close[close > i]] = True
    return drop


def greedy_path(nbrs: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Visit order of the kept documents (In-Context Pretraining's greedy traversal).

    Start at an unvisited document of minimum in-degree in the kNN graph, step to the most similar
    unvisited neighbour while there is one; when stuck, jump to the next unvisited document of
    minimum degree. **[decided]** degrees are computed once among kept documents (ties by index),
    which makes the walk O(N k) after one sort.
    """
    n = nbrs.shape[0]
    keep = np.ones(n, dtype=bool) if keep is None else keep
    valid = (nbrs >= 0) & keep[np.clip(nbrs, 0, None)] & keep[:, None]  # (N, k) edges between kept docs
    degree = np.bincount(nbrs[valid], minlength=n)
    starts = [i for i in np.lexsort((np.arange(n), degree)) if keep[i]]
    visited = ~keep.copy()
    order = np.empty(int(keep.sum()), dtype=np.int64)
    pos, cursor = 0, 0
    while pos < len(order):
        while visited[starts[cursor]]:
            cursor += 1
        current = starts[cursor]
        while current >= 0:
            visited[current] = True
            order[pos] = current
            pos += 1
            nxt = -1
            for j in nbrs[current]:  # already sorted by similarity, most similar first
                if j >= 0 and not visited[j]:
                    nxt = int(j)
                    break
            current = nxt
    return order


def random_order(keep: np.ndarray, seed: int) -> np.ndarray:
    """The ablation: the kept documents in a seeded random order."""
    return np.random.default_rng(seed).permutation(np.flatnonzero(keep))
