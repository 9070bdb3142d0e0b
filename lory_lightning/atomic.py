"""One atomic, durable file writer for everything the package writes: shards, manifests, checkpoints."""

from __future__ import annotations

import os
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
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
