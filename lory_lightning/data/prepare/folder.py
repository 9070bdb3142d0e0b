"""The output folder of `lory prepare` is its own: marked, locked while a run writes it, and cleaned of
its own files only.

It refuses a non-empty folder without its owner mark (``.lory-prepare``, a file only prepare writes;
a manifest.json alone proves nothing), deletes only the files it writes, and holds a lock on the
folder while it works, so two runs never write into one folder at once (a waiting run prints who
holds it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ...atomic import TMP_SUFFIX
from ..manifest import MANIFEST, SHARD_NAME, TOKENIZER
from .stage_write import UNIGRAM

OWNER_MARK = ".lory-prepare"  # marks a folder as prepare's own; also the lock file
MARK_FORMAT = 1  # what the owner mark holds: {"written_by": "lory prepare", "format": 1, "holder": ...}


class OutputLock:
    """Make ``out`` prepare's own folder and hold an exclusive lock on it (context manager).

    The folder is prepare's own only if it holds the owner mark (``.lory-prepare``), a file only
    prepare writes, or is new or empty (then the mark is written first). A manifest.json proves
    nothing: any web app has one. Anything else is refused before a file is touched. The lock
    (flock on the mark) is released by the kernel if the process dies, so a killed run never
    leaves the folder locked; while held, the mark names the holder (pid, host, start), which a
    refused or waiting run prints.
    """

    def __init__(self, out: Path, wait: bool) -> None:
        self.out, self.wait, self.fd = out, wait, -1

    def __enter__(self) -> "OutputLock":
        out = self.out
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "--output is a file, not a folder: choose a folder path",
                                     str(out))
        mark = out / OWNER_MARK
        if out.is_dir() and not mark.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and was not written by `lory prepare` (no {OWNER_MARK} "
                                  "mark): choose a new or empty --output; nothing was written or deleted")
        out.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(mark, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock()
            content = _read_mark(self.fd)
            if content is None:  # refused: a file of that name that prepare did not write
                raise FileExistsError(f"{mark} was not written by `lory prepare` (it is not prepare's mark): "
                                      "choose a new or empty --output; nothing was written or deleted")
        except BaseException:
            os.close(self.fd)
            raise
        self._write_mark(holder={"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        return self

    def _lock(self) -> None:
        """Take the lock; held by another run: refuse (the CLI) or say who holds it and wait."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(self.fd)
        if not self.wait:
            raise FileExistsError(f"{self.out} is being prepared by another process ({holder}): wait for it to "
                                  "finish, or choose another --output")
        print(f"[prepare] waiting for {self.out}: another `lory prepare` is writing it ({holder}); this run "
              "goes on when that one ends (a stopped or hung one must be ended first)", file=sys.stderr, flush=True)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def _write_mark(self, holder: dict | None) -> None:
        text = json.dumps({"written_by": "lory prepare", "format": MARK_FORMAT, "holder": holder}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text, 0)
        os.fsync(self.fd)

    def __exit__(self, *exc: object) -> None:
        self._write_mark(holder=None)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_mark(fd: int) -> dict | None:
    """The owner mark's content: {} for an empty one (a new folder, or one prepared by an earlier
    version, whose mark was an empty lock file); None for a file prepare did not write."""
    data = os.pread(fd, 1 << 16, 0)
    if not data:
        return {}
    try:
        mark = json.loads(data)
    except ValueError:
        return None
    return mark if isinstance(mark, dict) and mark.get("written_by") == "lory prepare" else None


def _holder(fd: int) -> str:
    """Who holds the lock, as the mark says (read without the lock: best effort)."""
    holder = (_read_mark(fd) or {}).get("holder")
    if not isinstance(holder, dict):
        return "holder not recorded"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


def _is_own(name: str) -> bool:
    """A file name `lory prepare` writes (finished, or under its temporary name)."""
    base = name.removesuffix(TMP_SUFFIX)
    return base in (MANIFEST, TOKENIZER, UNIGRAM) or bool(SHARD_NAME.match(base))


def clean(out: Path) -> None:
    """Remove what an earlier (possibly killed) run wrote, and nothing else: the manifest first, so
    nothing looks finished; then prepare's own names (shards, tokenizer, their temporaries)."""
    (out / MANIFEST).unlink(missing_ok=True)
    for p in sorted(out.iterdir()):  # (the work folder is already gone: prepare() removes it first)
        if p.is_file() and _is_own(p.name):
            p.unlink()
