"""Checkpoints: written atomically and durably, loaded with ``weights_only=True`` and clear errors
(one file, or a sharded folder from strategies.LoryFSDPStrategy, read without running pickle),
turned into a model, and the RNG state they carry for exact resume. Plain PyTorch: Lightning's plugin
over these is lightning_cli.SafeCheckpointIO."""

from __future__ import annotations

import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .atomic import atomic_file, recover_folder
from .errors import with_path

if TYPE_CHECKING:
    from .model import LoryTransformer


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True``: a pickle payload is refused, never run.

    A sharded checkpoint (a folder) comes back consolidated: its metadata and the full model
    weights under ``state_dict``, as a one-file checkpoint has them (the optimizer state, which only
    a sharded resume needs, is left out). mmap: map the tensors instead of reading them (to look at
    a few entries of a large file).
    """
    if Path(path).is_dir():
        return {**read_checkpoint_meta(path), "state_dict": consolidated_weights(path)}
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except UNREADABLE as err:
        raise checkpoint_error(path, err) from err
    except OSError as err:  # a truncated file memory-mapped: "[Errno 22] Invalid argument", no path
        if err.filename is not None:
            raise
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
                          f"({first_line(err)})")
    return ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first_line(err)}")


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


# ------------------------------------------------------------------ sharded checkpoints (folders)

# The folder Lightning's ModelParallelStrategy writes: torch.distributed.checkpoint (DCP) files, one
# per rank, DCP's own index `.metadata`, and everything else of the checkpoint in `meta.pt`.
META_FILE = "meta.pt"
DCP_INDEX = ".metadata"
STATE_KEY = "state_dict"


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint without its tensors of weights and optimizer state where it can: a one-file
    checkpoint memory-mapped, a sharded folder's ``meta.pt`` (step, hyperparameters, callbacks, RNG)."""
    path = Path(path)
    if not path.is_dir():
        return load_checkpoint(path, mmap=True)
    _check_folder(path)
    return load_checkpoint(path / META_FILE)


def _check_folder(path: Path) -> None:
    """A sharded checkpoint folder, whole (a swap killed half way is finished first), or a clear error."""
    recover_folder(path)
    missing = [name for name in (META_FILE, DCP_INDEX) if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{path}: not a sharded checkpoint folder (no {' or '.join(missing)}): a save "
                         "that was interrupted, or another folder; give a checkpoint file or folder")


class _DCPIndexUnpickler(pickle.Unpickler):
    """DCP pickles its index (.metadata) and torch reads it with plain pickle, which runs whatever
    a tampered file names. Here only what an index is made of may be built: DCP's metadata classes,
    torch dtypes, sizes and layouts, and the path it was saved to."""

    ALLOWED = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
               ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
               ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module == "torch.distributed.checkpoint.metadata" or dtype or (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def _dcp_reader(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            index = Path(self.path) / DCP_INDEX
            try:
                with open(index, "rb") as f:
                    metadata = _DCPIndexUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
                raise ValueError(f"{index}: refused to load the checkpoint index: {first_line(err)}") from err
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _dcp_planner(partial: bool) -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner uses

    class SafePlanner(DefaultLoadPlanner):
        # Entries that are not tensors (optimizer steps, param groups) come back with
        # weights_only=True: DCP's default unpickles them with weights_only=False.
        def load_bytes(self, read_item: Any, value: Any) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafePlanner(allow_partial_load=partial)


def load_sharded_state(state: dict[str, Any], path: str | Path, whole: bool = False) -> None:
    """Fill ``state`` (nested dicts of tensors or DTensors, as saved) in place from a sharded folder.

    whole: this process alone reads whole tensors (consolidation), and entries of the folder that
    ``state`` lacks are skipped; otherwise every rank of the process group reads its own shards of
    every entry (a sharded resume).
    """
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.api import CheckpointException

    path = Path(path)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            load(state, storage_reader=_dcp_reader(path), planner=_dcp_planner(partial=whole), no_dist=whole)
    except CheckpointException as err:  # a BaseException, holding each failed rank's exception
        cause = next(iter(err.failures.values()))[0]
        if isinstance(cause, pickle.UnpicklingError):
            raise ValueError(f"{path}: refused to load: an entry holds objects other than tensors and plain "
                             f"data ({first_line(cause)})") from cause
        raise ValueError(f"{path}: not a readable sharded checkpoint (a missing or damaged shard file?): "
                         f"{first_line(cause)}") from cause


def consolidated_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of a sharded checkpoint folder, in one process, on CPU."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    _check_folder(path)
    index = _dcp_reader(path).read_metadata()
    prefix = STATE_KEY + "."
    weights = {fqn.removeprefix(prefix): torch.empty(md.size, dtype=md.properties.dtype)
               for fqn, md in index.state_dict_metadata.items()
               if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata)}
    state = {STATE_KEY: weights}
    load_sharded_state(state, path, whole=True)  # the optimizer's entries are not read
    return state[STATE_KEY]


def first_line(err: BaseException) -> str:
    """The first line of an error's message (torch's are often pages long), or its type's name."""
    return (str(err).splitlines() or [type(err).__name__])[0]


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The LoryTransformer weights of a LoryLM checkpoint (keys without the ``model.`` prefix)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError("checkpoint has no state_dict: is it a Lightning checkpoint of LoryLM?")
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def load_model(path: str | Path) -> tuple["LoryTransformer", dict[str, Any]]:
    """The LoryTransformer a LoryLM checkpoint holds, in eval mode, and the checkpoint itself; or
    that of a Hugging Face model folder (``lory export``'s, or a Llama's: hf_import.load_hf_model)."""
    from .model import LoryTransformer, ModelConfig

    from .hf_import import hf_folder, load_hf_model

    folder = hf_folder(str(path))
    if folder is not None:
        try:
            return load_hf_model(folder)
        except ImportError as err:
            raise ValueError(f"{path}: a Hugging Face model folder needs transformers: pip install -e \".[hf]\" "
                             f"({err})") from err
    ckpt = load_checkpoint(path)
    try:
        # model.kernel is how the run computed, not what the model is: a checkpoint trained on the fused
        # GPU kernels is read on whatever device is at hand (auto: fused on CUDA, torch elsewhere).
        cfg = ModelConfig(**{**upgrade_hparams(ckpt["hyper_parameters"])["arch"], "kernel": "auto"})
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: no LoryLM model config in the checkpoint ({err})") from err
    model = LoryTransformer(cfg)
    model.load_state_dict(model_state(ckpt))
    return model.eval(), ckpt


TRAINING_KEYS = ("dense_warmup", "upcycle_moments", "load_balance_coef", "z_loss_coef", "nonfinite")


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's LoryLM hyperparameters in today's layout, whichever release wrote them.

    The first layout had the training knobs (dense warmup, upcycle moments, router loss weights,
    nonfinite) beside ``model`` and ``optim``; they now form ``training``. The decoder's settings
    were ``model`` (``--model.model.num_experts``); they are now ``arch``.
    """
    out = {k: v for k, v in hparams.items() if k not in TRAINING_KEYS}
    moved = {k: hparams[k] for k in TRAINING_KEYS if k in hparams}
    if moved:
        out["training"] = {**out.get("training", {}), **moved}
    if "model" in out and "arch" not in out:
        out["arch"] = out.pop("model")
    return out


def checkpoint_tokenizer_sha256(checkpoint: dict[str, Any], path: str | Path) -> str | None:
    """The sha256 of the tokenizer a checkpoint carries (None: it carries none), checked against the
    digest recorded beside it."""
    if "tokenizer" not in checkpoint:
        return None
    import hashlib

    digest = hashlib.sha256(checkpoint["tokenizer"].encode("utf-8")).hexdigest()
    recorded = checkpoint.get("tokenizer_sha256")
    if recorded is not None and recorded != digest:
        raise ValueError(f"{path}: the tokenizer it carries (sha256 {digest[:12]}) is not the one recorded with it "
                         f"({recorded[:12]}): the checkpoint was edited or damaged")
    return digest


def check_same_tokenizer(checkpoint: dict[str, Any], path: str | Path, data_dir: str | Path,
                         manifest: dict[str, Any]) -> None:
    """Refuse data tokenized by another tokenizer than the checkpoint's: with the same vocabulary
    size it would run, and every number would be about other tokens."""
    from .data.manifest import tokenizer_sha256

    ours = checkpoint_tokenizer_sha256(checkpoint, path)
    if ours is None:  # a checkpoint of a run without a prepared folder: nothing to compare
        return
    theirs = tokenizer_sha256(data_dir, manifest)
    if ours != theirs:
        raise ValueError(f"{data_dir} was tokenized by another tokenizer (sha256 {theirs[:12]}) than checkpoint {path} "
                         f"(sha256 {ours[:12]}): its token ids mean other words; use data prepared with the "
                         "checkpoint's tokenizer (`lory prepare --tokenizer` with it)")


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
