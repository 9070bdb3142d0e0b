"""Partitioned similarity ordering: the corpus cut into partitions of similar documents, each
ordered on its own (kNN, near-duplicates, greedy path), the partitions chained by their centroids.

One global Annoy index must hold every embedding in one process's memory (In-Context Pretraining
spent 6 hours of 32 GPUs on its kNN over 235M documents). Partitions of at most
``partition_size`` documents bound the memory of one ordering task and let tasks run in parallel.
How documents are cut **[decided]**: spherical k-means (cosine) with k = ceil(N / size) on a
seeded sample, every document assigned to its nearest centroid, and a cluster still over the size
split into equal runs along its own main direction (so a split keeps neighbours together). The
partitions are then visited along a greedy path over their centroids: the walk that orders
documents, one level up.

Near-duplicates: exact copies are dropped corpus-wide when documents are read (text hash); near
copies are looked for inside a partition only. Two near-copies have almost the same embedding, so
they share a nearest centroid unless they sit on a boundary between two clusters: those pairs
(and pairs split by an oversized cluster's cut) are kept both. With one partition the order is
exactly the global one.
"""

from __future__ import annotations

import math

import numpy as np

from .embed import normalize_rows
from .ordering import greedy_path


def spherical_kmeans(x: np.ndarray, k: int, seed: int, iters: int = 10) -> np.ndarray:
    """k unit centroids (k, dim) of the unit rows x (n, dim) by cosine, seeded (k-means++ start)."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= rows, got k={k} for {n} rows")
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(n)]]
    far = 1.0 - x @ centroids[0]  # (n,) cosine distance to the nearest chosen centroid
    for _ in range(1, k):
        p = np.clip(far, 0.0, None) ** 2
        i = rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)
        centroids.append(x[i])
        far = np.minimum(far, 1.0 - x @ x[i])
    c = np.stack(centroids)  # (k, dim)
    for _ in range(iters):
        labels = assign(x, c)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = c[empty]  # an empty cluster keeps its centroid
        c = normalize_rows(sums)
    return c


def assign(x: np.ndarray, centroids: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Nearest centroid by cosine (n,) int64 of unit rows x (n, dim); ties go to the lower index."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for a in range(0, x.shape[0], batch):
        out[a:a + batch] = np.argmax(x[a:a + batch] @ centroids.T, axis=1)  # (b, k) similarities
    return out


def member_table(labels: np.ndarray, n_labels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows grouped by label 0..n_labels-1, ascending within (n,); each label's bounds in it
    (n_labels + 1,)): one sort, not a scan per label. n_labels defaults to max + 1; give it when
    labels past the largest present must be listed too (empty clusters)."""
    order = np.argsort(labels, kind="stable")
    n_labels = int(labels.max(initial=-1)) + 1 if n_labels is None else n_labels
    return order, np.searchsorted(labels[order], np.arange(n_labels + 1))


def cut(x: np.ndarray, group: np.ndarray, size: int, batch: int = 65536) -> list[np.ndarray]:
    """The rows ``group`` (ascending) of one cluster as ceil(n_c / size) parts, each ascending: a
    cluster over the size is cut into equal runs of its documents sorted along its main direction
    (``main_direction``; ties by document index), so a cut keeps neighbours together. None for an
    empty cluster."""
    parts = math.ceil(len(group) / size)
    if parts > 1:
        direction = main_direction(x, group, batch)
        along = np.concatenate([x[group[a:a + batch]] @ direction for a in range(0, len(group), batch)])  # (n_c,)
        group = group[np.lexsort((group, along))]
    return [np.sort(chunk) for chunk in np.array_split(group, parts)] if parts else []


def part_sizes(cluster_sizes: np.ndarray, size: int) -> list[list[int]]:
    """The sizes of the parts ``cut`` makes of each cluster (np.array_split's: the first ones one larger)."""
    return [[len(c) for c in np.array_split(np.empty(int(n)), math.ceil(int(n) / size))] if n else []
            for n in cluster_sizes]


def main_direction(x: np.ndarray, rows: np.ndarray, batch: int = 65536) -> np.ndarray:
    """The first principal direction (dim,) of the rows ``rows`` of x, sign fixed by the data: the top
    eigenvector of their (dim, dim) scatter matrix about the mean, summed in float64 ``batch`` rows at
    a time. An SVD of the centred rows gives the same direction but holds n_c x dim three times over
    (the rows, the centred copy, U): 150 MB for a cluster of 100k documents at 128 dims, a peak that
    grew with the corpus as k-means' largest cluster did."""
    dim = x.shape[1]
    total, scatter = np.zeros(dim), np.zeros((dim, dim))
    for a in range(0, len(rows), batch):
        part = np.asarray(x[rows[a:a + batch]], dtype=np.float64)  # (b, dim)
        total += part.sum(axis=0)
        scatter += part.T @ part
    mean = total / len(rows)
    direction = np.linalg.eigh(scatter - len(rows) * np.outer(mean, mean))[1][:, -1]  # largest eigenvalue last
    direction *= np.sign(direction[np.argmax(np.abs(direction))])
    return direction


def centroids(x: np.ndarray, size: int, seed: int, sample: int = 100_000) -> np.ndarray | None:
    """The k-means centroids (k, dim), k = ceil(n / size), of the unit rows x (n, dim), fit on a seeded
    sample of at most ``sample`` rows; None when n <= size (one partition, no clustering)."""
    if size < 2:
        raise ValueError(f"partition_size must be >= 2 documents, got {size}")
    n = x.shape[0]
    if n <= size:
        return None
    k = math.ceil(n / size)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, max(sample, 4 * k)), replace=False))
    return spherical_kmeans(x[rows], k, seed)


def visit_path(sums: np.ndarray) -> np.ndarray:
    """The order in which to visit the partitions, given each one's sum of unit rows (P, dim): a
    greedy path over their unit centroids (exact neighbours, most similar first), as documents are
    walked inside a partition."""
    n_parts = len(sums)
    c = normalize_rows(sums)
    if n_parts == 1:
        return np.zeros(1, dtype=np.int64)
    sims = c @ c.T  # (P, P)
    np.fill_diagonal(sims, -np.inf)
    k = min(n_parts - 1, 10)
    nbrs = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (P, k) most similar first
    return greedy_path(nbrs)
