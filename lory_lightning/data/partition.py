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

import collections
import math
import os
from pathlib import Path

import numpy as np

from .embed import normalize_rows
from .ordering import KnnParams, greedy_path, order_partition, random_order


class RowFile:
    """The rows of a .npy file, or of a raw file given its dtype and shape, read on demand with pread:
    ``x[a:b]`` (one read) or ``x[rows]`` (one read a row), no memory map. A map counts every page it
    touched as resident, and the kernel maps the 64 KB around each touched page with it
    (fault-around): rows picked across the whole file (a partition's members, k-means' sample) made
    nearly all of it resident, and the order stage's peak grew with the corpus (145, 245 and 540 MB
    at 100k, 300k and 1M documents)."""

    def __init__(self, path: str | Path, dtype: type | None = None, shape: tuple[int, ...] | None = None) -> None:
        self.path, self.fd = path, None
        if shape is not None:  # a raw file: rows of ``dtype`` from its first byte
            self.shape, self.dtype, self.offset = tuple(shape), np.dtype(dtype), 0
            return
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(f))
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array; RowFile reads C-ordered rows")
        self.shape, self.dtype = shape, dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray | int) -> np.ndarray:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        if isinstance(index, slice):
            a, b, step = index.indices(self.shape[0])
            if step != 1:
                raise ValueError("RowFile reads contiguous slices only")
            return self._read(a, max(b - a, 0))
        if isinstance(index, (int, np.integer)):
            return self._read(int(index) % self.shape[0], 1)[0]
        index = np.asarray(index)
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        for k, i in enumerate(index.tolist()):
            out[k] = self._read(i, 1)[0]
        return out

    def _read(self, start: int, rows: int) -> np.ndarray:
        return pread_rows(self.fd, self.path, self.dtype, self.shape[1:], self.offset, start, rows)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = close

    def __enter__(self) -> "RowFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JoinedRows:
    """Row files read as one array, end to end (each input file's tokens or embeddings as the
    corpus's), without joining them on disk: ``x[a:b]``, ``x[rows]``, rows numbered across files."""

    OPEN_FILES = 64  # parts kept open at once, least recently read closed first: a corpus of
    # thousands of input files would otherwise hold a descriptor for each (the limit is often 1024)

    def __init__(self, parts: list[RowFile]) -> None:
        self.parts, self.open = parts, collections.OrderedDict()
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # (files + 1,) each file's first row
        self.shape = (int(self.starts[-1]), *(parts[0].shape[1:] if parts else ()))
        self.dtype = parts[0].dtype if parts else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            a, b, _ = index.indices(self.shape[0])
            first, last = np.searchsorted(self.starts, [a, max(a, b - 1)], side="right") - 1
            pieces = [self._part(f)[max(a - int(self.starts[f]), 0):max(b - int(self.starts[f]), 0)]
                      for f in range(first, min(last, len(self.parts) - 1) + 1)]
            return np.concatenate([np.zeros((0, *self.shape[1:]), self.dtype), *pieces])
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        file = np.searchsorted(self.starts, index, side="right") - 1  # (n,) the file of each row
        for f in np.unique(file):
            at = np.flatnonzero(file == f)
            out[at] = self._part(f)[index[at] - self.starts[f]]
        return out

    def _part(self, f: int) -> RowFile:
        self.open[f] = None
        self.open.move_to_end(f)
        if len(self.open) > self.OPEN_FILES:
            self.parts[self.open.popitem(last=False)[0]].close()  # reopened when read again
        return self.parts[f]

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def __enter__(self) -> "JoinedRows":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pread_rows(fd: int, path: str | Path, dtype: np.dtype, row_shape: tuple[int, ...], offset: int, start: int,
               rows: int) -> np.ndarray:
    """Rows start..start+rows of a C-ordered array stored from byte ``offset`` of the open file ``fd``,
    read with one pread (no map: nothing stays resident); a short read names the file."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    data = os.pread(fd, rows * row_bytes, offset + start * row_bytes)
    if len(data) != rows * row_bytes:
        raise OSError(f"{path}: short read of rows {start}:{start + rows} ({len(data)} of {rows * row_bytes} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(rows, *row_shape)


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
