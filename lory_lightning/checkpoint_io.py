"""Checkpoint files: written atomically and durably, loaded with ``weights_only=True`` and clear errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .atomic import atomic_file
from .errors import with_path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True``: a pickle payload is refused, never run."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except UNREADABLE as err:
        raise checkpoint_error(path, err) from err


# What torch.load raises on a damaged file: an empty one gives IndexError, random bytes an
# UnpicklingError ("invalid load key"), a truncated zip a RuntimeError or EOFError.
UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, IndexError, ValueError)


def checkpoint_error(path: str | Path, err: BaseException) -> ValueError:
    """The one-line reason a checkpoint file could not be loaded."""
    # torch.save writes a zip archive: anything else is damaged, whatever unpickling then says.
    if not _is_zip(path):
        return ValueError(f"{path}: not a readable checkpoint (truncated or corrupt: torch.save writes a "
                          "zip archive and this file is none)")
    if isinstance(err, pickle.UnpicklingError):
        return ValueError(f"{path}: refused to load: it holds objects other than tensors and plain data "
                          f"({str(err).splitlines()[0]})")
    return ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {str(err).splitlines()[0]}")


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """torch.save through ``atomic_file``: a crash leaves the old checkpoint or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
    except OSError as err:  # a full disk names no file: name the checkpoint
        raise with_path(err, path) from err


def _is_zip(path: str | Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic local writes and ``weights_only`` loading for resume.

    Remote paths (``s3://`` and other fsspec URLs) keep Lightning's own writing.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint(path, map_location if map_location is not None else "cpu")
