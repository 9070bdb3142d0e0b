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


# While replace_folder swaps a folder, the old one lies beside it under this suffix, with the swap
# mark inside. Both together prove a sibling is a swap's own: a user's `cp -r last.ckpt
# last.ckpt.old` backup has neither, and no reader ever deletes it.
OLD_SUFFIX = ".lory-old"
SWAP_MARK = ".lory-swap"


def new_folder(path: str | Path) -> Path:
    """Create ``path`` empty, with the swap mark, for a writer to fill and ``replace_folder`` to swap in.

    A leftover of a killed write (it has the mark) is removed first; any other folder there is
    refused, untouched: it is not ours to delete.
    """
    path = Path(path)
    if path.exists():
        if not (path / SWAP_MARK).is_file():
            raise FileExistsError(f"{path}: a folder that lory did not write is where the checkpoint is "
                                  "written first: move it away (nothing was deleted)")
        shutil.rmtree(path)  # a killed save's leftover
    path.mkdir(parents=True)  # a run's first checkpoint: its folder may not exist yet
    (path / SWAP_MARK).touch()
    return path


def replace_folder(new: str | Path, path: str | Path) -> None:
    """Put the finished folder ``new`` in place of the folder ``path`` (a sharded checkpoint).

    Two renames, ``path`` to ``path.lory-old`` and ``new`` to ``path``, then ``path.lory-old`` is
    deleted: a folder cannot replace a non-empty one in one rename. A crash between the renames
    leaves only ``path.lory-old``, whole; ``recover_folder`` (called by every reader) renames it back.
    """
    new, path = Path(new), Path(path)
    old = path.with_name(path.name + OLD_SUFFIX)
    recover_folder(path)
    if old.exists():  # not a swap's (recover_folder took that): the user's, and in the way
        raise FileExistsError(f"{old}: a folder that lory did not write is where {path.name} is moved aside "
                              "while it is replaced: move it away (nothing was deleted)")
    if path.exists():
        (path / SWAP_MARK).touch()  # the folder being replaced (a checkpoint of an earlier version may lack it)
        os.replace(path, old)
        _fsync_dir(path.parent)
    os.replace(new, path)
    _fsync_dir(path.parent)
    # In place, the folder is a checkpoint like any other; the mark is put back when it is next replaced.
    (path / SWAP_MARK).unlink(missing_ok=True)
    if old.exists():
        shutil.rmtree(old)


def recover_folder(path: str | Path) -> None:
    """Finish a ``replace_folder`` that was killed between its two renames: the old folder comes back.

    Only a sibling that a swap left (the suffix and the mark inside) is touched; anything else
    of a similar name is the user's.
    """
    path = Path(path)
    old = path.with_name(path.name + OLD_SUFFIX)
    if old.is_dir() and (old / SWAP_MARK).is_file():
        if path.exists():
            shutil.rmtree(old)  # killed after the second rename: the new folder is whole
        else:
            os.replace(old, path)
            _fsync_dir(path.parent)
