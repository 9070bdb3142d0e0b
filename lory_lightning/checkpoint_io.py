"""Checkpoint files: written atomically and durably, loaded with ``weights_only=True`` and clear errors,
turned into a model, and the RNG state they carry for exact resume. Plain PyTorch: Lightning's plugin
over these is lightning_cli.SafeCheckpointIO."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .atomic import atomic_file
from .errors import with_path

if TYPE_CHECKING:
    from .model import LoryTransformer


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True``: a pickle payload is refused, never run.

    mmap: map the tensors instead of reading them (to look at a few entries of a large file).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The LoryTransformer weights of a LoryLM checkpoint (keys without the ``model.`` prefix)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError("checkpoint has no state_dict: is it a Lightning checkpoint of LoryLM?")
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def load_model(path: str | Path) -> tuple["LoryTransformer", dict[str, Any]]:
    """The LoryTransformer a LoryLM checkpoint holds, in eval mode, and the checkpoint itself."""
    from .model import LoryTransformer, ModelConfig

    ckpt = load_checkpoint(path)
    try:
        cfg = ModelConfig(**ckpt["hyper_parameters"]["model"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: no LoryLM model config in the checkpoint ({err})") from err
    model = LoryTransformer(cfg)
    model.load_state_dict(model_state(ckpt))
    return model.eval(), ckpt


def end_of_text_id(checkpoint: dict[str, Any], tokenizer: Any) -> int | None:
    """The end-of-text id the checkpoint's data was packed with (``eod_id``); checkpoints written
    before it was kept: the ``<|endoftext|>`` token of its (``tokenizers``) tokenizer, or None."""
    from .data.tokenizer import EOD_TOKEN

    return int(checkpoint["eod_id"]) if "eod_id" in checkpoint else tokenizer.token_to_id(EOD_TOKEN)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain data and tensors (loadable with weights_only=True).
    Lightning's checkpoints keep none; exact resume needs them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` took."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
