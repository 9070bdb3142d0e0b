"""The ordering phase of `lory prepare` (LORY.md section 4, at scale): k-means centroids on a sample of
the embeddings, each training document to its nearest centroid, clusters cut into partitions of at
most ``partition_size`` documents, and each partition ordered on its own: kNN, near-duplicates and
the greedy path (data/partition.py and data/ordering.py hold the algorithms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...atomic import atomic_file
from .. import partition as partitions
from ..ordering import order_partition
from ..rowfile import RowFile
from .stage_encode import embedding_rows, encoded
from .work import Work, atomic_npy, balanced, load_npy


def cluster(folder: Path, rank: int, tasks: int) -> None:
    """One task: spherical k-means centroids, k = ceil(N / partition_size), of a seeded sample of the
    training embeddings ((0, dim) when N fits one partition: one cluster)."""
    work = Work(folder)
    with embedding_rows(work) as x:
        c = partitions.centroids(x, work.recipe.partition_size, work.recipe.seed)
        atomic_npy(work.at.centroids, np.zeros((0, x.shape[1]), np.float32) if c is None else c)


def cluster_summary(work: Work) -> str:
    k = len(load_npy(work.at.centroids, mmap=True))
    return f"{sum(s['rows'] for s in encoded(work))} training documents embedded, " + (
        f"{k} k-means clusters" if k else "one cluster")


def assign(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: its training documents' nearest centroids, as their training ids (numbered
    across files) grouped by cluster, ascending within one, and where each cluster starts in them."""
    work = Work(folder)
    c = load_npy(work.at.centroids)  # (k, dim)
    files = encoded(work)
    first = np.cumsum([0] + [s["rows"] for s in files])
    for f in balanced(np.array([s["rows"] for s in files]), rank, tasks):
        n = files[f]["rows"]
        with RowFile(work.at.embeddings(f), np.float32, (n, files[f]["dim"])) as x:
            labels = partitions.assign(x, c) if len(c) else np.zeros(n, dtype=np.int64)
        order, bounds = partitions.member_table(labels, max(len(c), 1))  # every cluster, empty ones too
        atomic_npy(work.at.cluster_members(f), order + first[f])
        atomic_npy(work.at.cluster_bounds(f), bounds)


def assign_summary(work: Work) -> str:
    counts, _ = cluster_parts(work)
    if len(counts) == 1:
        return f"one cluster of {counts[0]} documents"
    return f"{len(counts)} clusters of {counts.min()} to {counts.max()} documents"


def cluster_parts(work: Work) -> tuple[np.ndarray, list[list[int]]]:
    """(each cluster's documents (k,), the sizes of the parts split cuts each into)."""
    counts = sum(np.diff(load_npy(work.at.cluster_bounds(f))) for f in range(len(work.files)))
    return counts, partitions.part_sizes(counts, work.recipe.partition_size)


def split(folder: Path, rank: int, tasks: int) -> None:
    """Per cluster: its documents (read from every file's assignment) cut into partitions of at most
    ``partition_size`` (``partition.cut``), numbered across clusters in cluster order: a partition's
    training ids, ascending, and the float64 sum of its embeddings, for the visiting path. A task
    holds one cluster."""
    work = Work(folder)
    counts, parts = cluster_parts(work)
    first_part = np.cumsum([0] + [len(p) for p in parts])
    with embedding_rows(work) as x:
        for c in balanced(counts, rank, tasks):  # by documents
            group = []
            for f in range(len(work.files)):  # two short reads a file: its cluster bounds, then its rows
                with RowFile(work.at.cluster_bounds(f)) as bounds:
                    a, b = bounds[c:c + 2]
                with RowFile(work.at.cluster_members(f)) as rows:
                    group.append(rows[int(a):int(b)])
            group = np.concatenate([np.zeros(0, np.int64), *group])  # (n_c,) ascending: files in order
            for j, rows in enumerate(partitions.cut(x, group, work.recipe.partition_size)):
                total = np.zeros((1, x.shape[1]), dtype=np.float64)
                for a in range(0, len(rows), 65536):  # row by row in order: the same sum however rows are read
                    np.add.at(total, np.zeros(len(rows[a:a + 65536]), dtype=np.int64), x[rows[a:a + 65536]])
                p = int(first_part[c]) + j
                atomic_npy(work.at.partition_sum(p), total[0])
                atomic_npy(work.at.partition(p), rows)


def split_summary(work: Work) -> str:
    return f"{len(partition_sizes(work))} partition(s) of at most {work.recipe.partition_size} documents"


def partition_sizes(work: Work) -> np.ndarray:
    """(P,) the documents of every partition, in partition order."""
    return np.array([n for sizes in cluster_parts(work)[1] for n in sizes], dtype=np.int64)


def order(folder: Path, rank: int, tasks: int) -> None:
    """Per partition: its documents' greedy path and near-duplicates (training ids)."""
    work = Work(folder)
    with embedding_rows(work) as embeddings:
        for p in balanced(partition_sizes(work), rank, tasks):  # by documents: kNN and path cost about N log N
            rows = load_npy(work.at.partition(p))  # (n_p,) ascending
            local, drop = order_partition(embeddings[rows], work.recipe.knn, work.recipe.dedup_threshold)
            with atomic_file(work.at.path(p)) as out:
                np.savez(out, path=rows[local], dropped=rows[drop])


def order_summary(work: Work) -> str:
    return f"{work.recipe.order}: {len(partition_sizes(work))} partition(s) ordered"
