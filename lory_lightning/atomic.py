"""Atomic, durable writes for everything the package writes: files (shards, manifests, checkpoints)
and whole folders (sharded checkpoints)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a same-folder temporary: fsync, rename, fsync the folder.

    A crash at any moment leaves the old file or the new one, never a torn one; the temporary
    (``<name>.tmp``) is removed if the writing raises, and a killed process's leftover is
    recognisable by its suffix. The rename is durable only once the folder is fsynced too.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


OLD_SUFFIX = ".old"


def replace_folder(new: str | Path, path: str | Path) -> None:
    """Put the finished folder ``new`` in place of the folder ``path`` (a sharded checkpoint).

    Two renames, ``path`` to ``path.old`` and ``new`` to ``path``, then ``path.old`` is deleted: a
    folder cannot replace a non-empty one in one rename. A crash between the renames leaves only
    ``path.old``, whole; ``recover_folder`` (called by every reader) renames it back.
    """
    new, path = Path(new), Path(path)
    old = path.with_name(path.name + OLD_SUFFIX)
    recover_folder(path)
    if path.exists():
        os.replace(path, old)
        _fsync_dir(path.parent)
    os.replace(new, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_folder(path: str | Path) -> None:
    """Finish a ``replace_folder`` that was killed between its two renames: the old folder comes back."""
    path = Path(path)
    old = path.with_name(path.name + OLD_SUFFIX)
    if old.is_dir():
        if path.exists():
            shutil.rmtree(old)  # killed after the second rename: the new folder is whole
        else:
            os.replace(old, path)
            _fsync_dir(path.parent)
