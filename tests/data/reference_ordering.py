"""The similarity order of a corpus computed in memory, all at once: the reference that `lory prepare`'s
staged, bounded-memory pipeline (cluster, assign, split, order, pack) is compared with, and the
partition-size study of benchmarks/ordering_quality.py. Not part of the package: nothing in
`lory prepare` holds every embedding at once."""

from __future__ import annotations

import numpy as np

from lory_lightning.data.ordering import KnnParams, order_partition, random_order
from lory_lightning.data.partition import assign, centroids, cut, member_table, visit_path


def members(labels: np.ndarray) -> list[np.ndarray]:
    """The rows of each label 0..max, each in ascending order."""
    order, bounds = member_table(labels)
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def split_oversized(x: np.ndarray, labels: np.ndarray, size: int, batch: int = 65536) -> np.ndarray:
    """Labels (n,) renumbered 0..P-1 in order of first cluster, every part at most ``size`` documents
    (``cut``). Rows are read ``batch`` at a time."""
    out = np.empty_like(labels)
    next_label = 0
    for group in members(labels):
        for chunk in cut(x, group, size, batch):
            out[chunk] = next_label
            next_label += 1
    return out


def partition(x: np.ndarray, size: int, seed: int, sample: int = 100_000) -> np.ndarray:
    """Partition label (n,) of each unit row, at most ``size`` rows per partition; one partition
    (all zeros) when n <= size. k-means runs on a seeded sample of at most ``sample`` rows."""
    c = centroids(x, size, seed, sample)
    if c is None:
        return np.zeros(x.shape[0], dtype=np.int64)
    return split_oversized(x, assign(x, c), size)


def add_rows(sums: np.ndarray, labels: np.ndarray, x: np.ndarray, batch: int = 65536) -> None:
    """sums[labels[i]] += x[i] in float64, row by row in order (the same additions wherever the rows
    are split), ``batch`` rows read at a time: x may be a RowFile."""
    for a in range(0, len(labels), batch):
        np.add.at(sums, labels[a:a + batch], x[a:a + batch])


def centroid_path(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The order in which to visit the partitions (``visit_path``) of the rows x labelled ``labels``."""
    sums = np.zeros((int(labels.max()) + 1, x.shape[1]), dtype=np.float64)
    add_rows(sums, labels, x)
    return visit_path(sums)


def order_documents(embeddings: np.ndarray, params: KnnParams, threshold: float, order: str,
                    partition_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The visit order of a corpus: (kept documents in order (M,), drop mask (N,), partitions).

    embeddings (N, dim) unit rows. ``order`` "similarity": each partition's greedy path, partitions
    in the order of the greedy path over their centroids (``partition``); "random": the same
    near-duplicates dropped, the kept documents in one seeded random order over the whole corpus.
    With one partition (N <= partition_size) this is kNN, dedup and path over all documents at once.
    """
    labels = partition(embeddings, partition_size, params.seed)
    visit = centroid_path(embeddings, labels)
    drop = np.zeros(embeddings.shape[0], dtype=bool)
    pieces = []
    groups = members(labels)
    for p in visit:
        rows = groups[p]
        local, drop[rows] = order_partition(embeddings[rows], params, threshold)
        pieces.append(rows[local])
    if order == "random":
        return random_order(~drop, params.seed), drop, len(visit)
    return np.concatenate(pieces), drop, len(visit)
