"""How every `lory` command reports a failure: one line that names the path and what to do."""

from __future__ import annotations


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; an OSError always names its path first."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def with_path(err: OSError, path: object) -> OSError:
    """``err`` with ``path`` as its file name when the system gave none (a full disk during a write)."""
    if err.filename is not None or err.errno is None:
        return err
    return type(err)(err.errno, err.strerror or str(err), str(path))
