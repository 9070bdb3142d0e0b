"""Arrays on disk read by rows with pread, no memory map: one file (.npy, or raw with a given dtype and
shape) or several read as one. A leaf module (numpy and os only): prepare's stages and its tests use it."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np


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
