"""LoryDataModule: streams the prepared WebDataset shards (a local folder or any fsspec URL) into
batches of whole sequences. Which sequence comes when is ``stream``'s; reading and verifying a
shard is ``shards``'; this module wires them to Lightning: ranks, workers, resume, bad shards.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch.utils.data import DataLoader

from .location import check_folder, is_url, member, read_bytes
from .manifest import FORMAT_VERSION, MANIFEST, TOKENIZER, load_manifest
from .prepare import PrepareConfig, prepare
from .shards import ShardReader, npy_of, verify_shards
from .stats import unigram_log_probs
from .sources import input_files
from .stream import TrainStream, ValStream, samples_consumed_by_worker


def folder_unigram_log_probs(folder: str | Path, manifest: dict[str, Any]) -> torch.Tensor | None:
    """log p(token) (V,) under the training unigram distribution of a prepared folder, or None for a
    folder prepared before unigram.npy existed: lets a validation score that baseline on exactly
    the tokens it covers."""
    entry = manifest.get("baselines", {}).get("unigram_counts")
    if not entry:
        return None
    counts = npy_of(read_bytes(member(folder, entry["name"])))
    return torch.from_numpy(unigram_log_probs(counts)).float()


STATED = {"output": "data_dir", "inputs": "inputs", "val_inputs": "val_inputs", "order": "order",
          "seq_len": "seq_len", "vocab_size": "vocab_size", "seed": "seed"}
"""The `lory prepare` settings the data module states itself (prepare's name: the data module's)."""


def stated_in_prepare(prepare: PrepareConfig | dict | None, stated: dict[str, Any]) -> PrepareConfig:
    """``data.prepare`` with the keys the data module states (``STATED``) filled in from ``stated``. A
    stated key that ``data.prepare`` also sets, to a value other than its default and the data
    module's, is refused: one run would otherwise hold two answers to one question."""
    given = prepare if isinstance(prepare, PrepareConfig) else PrepareConfig(**(prepare or {}))
    default = PrepareConfig()
    values = dataclasses.asdict(given)
    for key, ours in STATED.items():
        if values[key] != getattr(default, key) and values[key] != stated[key]:
            raise ValueError(f"data.prepare.{key} is {values[key]!r}, data.{ours} is {stated[key]!r}: set it once, "
                             f"as data.{ours}")
        values[key] = stated[key]
    return PrepareConfig(**values)


class LoryDataModule(L.LightningDataModule):
    """Prepared shards in, batches of ``input_ids`` / ``targets`` / ``domains`` (each (B, L)) out.

    Args:
        data_dir: Folder written by `lory prepare`: a local path, or a URL (s3://, gs://, https://,
            file://) of a folder prepared elsewhere and uploaded. A local folder without a manifest
            yet is prepared by ``prepare_data`` with the settings below (the shipped sample corpus
            by default); a URL must hold a prepared folder.
        inputs: Documents to prepare (empty: the shipped sample corpus).
        val_inputs: Held-out documents to prepare (see `lory prepare --help`).
        order: ``similarity`` (the paper) or ``random`` (the ablation).
        seq_len: Sequence length L; linked from the model config by the CLI.
        vocab_size: Tokenizer size to train when preparing; linked into the model config by the CLI.
        prepare: The other `lory prepare` settings, typed as its config file is (PrepareConfig: the
            same keys, so a `lory prepare --config` file can be given here as it is), e.g.
            ``{dedup_threshold: 0.98, workers: 2}``. The keys this module states itself (data_dir as
            output, inputs, val_inputs, order, seq_len, vocab_size, seed) are taken from it; one
            also set here to another value is refused.
        batch_size: Sequences per batch per process.
        num_workers: Dataloader worker processes per rank.
        shuffle_block: Shards whose sequences are permuted together in the training stream (their
            samples are held in memory: about 0.4 MB per shard of 256 sequences at L = 512).
        seed: Seeds shard order and sequence shuffling.
        verify: Check each shard's sha256 against the manifest each time it is read (about 0.1% of
            the cost of parsing it); sizes, and the gzip CRC-32, are always checked.
        max_bad_shards: Missing, truncated or corrupt shards tolerated: each is named in a warning,
            counted and left out; one more stops the run (default 0: any stops it). Local folders
            are checked for missing and truncated shards at setup; content, and remote shards, as
            they are read, where the bound holds per reading process.
    """

    def __init__(self, data_dir: str = "data/sample", inputs: list[str] | None = None,
                 val_inputs: list[str] | None = None, order: Literal["similarity", "random"] = "similarity",
                 seq_len: int = 512, vocab_size: int = 8192, prepare: Optional[PrepareConfig] = None,
                 batch_size: int = 8, num_workers: int = 0, shuffle_block: int = 4,
                 seed: int = 0, verify: bool = True, max_bad_shards: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or shuffle_block < 1 or max_bad_shards < 0:
            raise ValueError(f"data: batch_size ({batch_size}) and shuffle_block ({shuffle_block}) must be >= 1, "
                             f"num_workers ({num_workers}) and max_bad_shards ({max_bad_shards}) >= 0")
        self.save_hyperparameters(ignore=["prepare"])
        self.data_dir = check_folder(data_dir)
        self.prepare_config = stated_in_prepare(prepare, {
            "output": str(data_dir), "inputs": list(inputs or []), "val_inputs": list(val_inputs or []),
            "order": order, "seq_len": seq_len, "vocab_size": vocab_size, "seed": seed})
        self.hparams["prepare"] = None if prepare is None else dataclasses.asdict(self.prepare_config)  # plain data
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_block, self.seed, self.verify = shuffle_block, seed, verify
        self.manifest: dict[str, Any] | None = None
        self._resume_batches = 0
        self.max_bad_shards = max_bad_shards
        self.bad_shards: list[str] = []

    def prepare_data(self) -> None:
        # Runs on one process per node. A prepared folder is used as it is (setup checks that it
        # agrees with this config); a local folder without a manifest, or with one of an earlier
        # format (prepare's own folder), is (re)built.
        if is_url(self.data_dir):
            return  # a remote folder is prepared where it was written; setup names what is missing
        manifest = Path(self.data_dir) / MANIFEST
        if not manifest.is_file() or _format_of(manifest) != FORMAT_VERSION:
            prepare(self.prepare_config, quiet=False, wait=True)  # nodes sharing a folder wait for each other

    def _check_agrees(self, manifest: dict[str, Any]) -> None:
        """The settings this module states must be the ones the folder was prepared with."""
        prepared = manifest["config"]
        ours = self.prepare_config
        for key in ("order", "vocab_size"):  # seq_len: checked in setup() against the manifest
            if prepared.get(key) != getattr(ours, key):
                raise ValueError(f"{self.data_dir} was prepared with {key}={prepared.get(key)!r}, this run asks "
                                 f"for data.{key}={getattr(ours, key)!r}: make them agree or choose another "
                                 "data.data_dir (it is prepared on first use)")
        if ours.inputs:
            names = sorted(f["name"] for f in manifest["inputs"]["train"])
            if names != sorted(f.name for f in input_files(ours.inputs)):
                raise ValueError(f"{self.data_dir} was prepared from {names}, not from data.inputs: choose "
                                 "another data.data_dir")

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        manifest = load_manifest(self.data_dir)
        if manifest["seq_len"] != self.prepare_config.seq_len:
            raise ValueError(f"{self.data_dir} holds sequences of {manifest['seq_len']} tokens, the model "
                             f"trains on {self.prepare_config.seq_len}: prepare a folder for this length")
        self._check_agrees(manifest)
        if not is_url(self.data_dir):
            self._drop_missing_shards(manifest)
        world = self.trainer.world_size if self.trainer else 1
        n_train = len(manifest["splits"]["train"]["shards"])
        if n_train < world * max(1, self.num_workers):
            raise ValueError(f"{self.data_dir}: {n_train} training shards for {world} ranks x "
                             f"{max(1, self.num_workers)} workers; every worker needs one. Use fewer workers "
                             "or prepare with a smaller --sequences_per_shard")
        self.manifest = manifest

    def _drop_missing_shards(self, manifest: dict[str, Any]) -> None:
        """Missing and truncated shards of a local folder (a stat each, no hashing: startup does not grow
        with the data): up to ``max_bad_shards`` are left out, named and counted, more stop the run.
        Content is verified as each shard is first read (``ShardReader``)."""
        problems = [p for split in ("train", "val")
                    for p in verify_shards(Path(self.data_dir), manifest["splits"][split]["shards"], hash_content=False)]
        if len(problems) > self.max_bad_shards:
            raise ValueError(f"{len(problems)} shard(s) fail verification against manifest.json (data.max_bad_shards "
                             f"is {self.max_bad_shards}): " + "; ".join(p.message for p in problems[:5]))
        bad = {p.name for p in problems}
        for p in problems:
            rank_zero_warn(f"leaving out {p.message} ({len(problems)} of at most {self.max_bad_shards} bad shards)")
        for split in ("train", "val"):
            manifest["splits"][split]["shards"] = [s for s in manifest["splits"][split]["shards"] if s["name"] not in bad]
        self.bad_shards = sorted(bad)

    def reader(self) -> ShardReader:
        """Reads this folder's shards, verifying each before use; the setup's bad shards count against the bound."""
        return ShardReader(self.data_dir, verify=self.verify,
                           max_bad_shards=self.max_bad_shards - len(self.bad_shards))

    @property
    def domains(self) -> list[str]:
        if self.manifest is None:
            raise RuntimeError("call setup() first")
        return list(self.manifest["domains"])

    def unigram_log_probs(self) -> torch.Tensor | None:
        """See ``folder_unigram_log_probs``."""
        return folder_unigram_log_probs(self.data_dir, self.manifest or {})

    @property
    def tokenizer_json(self) -> str:
        return read_bytes(member(self.data_dir, TOKENIZER)).decode("utf-8")

    def shards(self, split: str) -> list[dict]:
        """Manifest entries of one split's shards (bad ones found at setup left out)."""
        if self.manifest is None:
            raise RuntimeError("call setup() first")
        return list(self.manifest["splits"][split]["shards"])

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        stream = TrainStream(self.shards("train"), rank, world, self.seed, self.shuffle_block, self.reader())
        # Resuming: each worker seeks past what it produced for the batches already trained on.
        stream.skip_by_worker = [samples_consumed_by_worker(self._resume_batches, w, self.num_workers, self.batch_size)
                                 for w in range(max(self.num_workers, 1))]
        stream.worker_offset = self._resume_batches % max(self.num_workers, 1)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers)

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: the training batches completed, so a resumed run continues at the
        next sequence. Counted by the trainer, not by the loader, which runs one batch ahead."""
        done = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed if self.trainer else 0
        return {"train_batches": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_batches = int(state.get("train_batches", 0))

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        return DataLoader(ValStream(self.shards("val"), rank, world, self.reader()), batch_size=self.batch_size,
                          num_workers=min(self.num_workers, 1))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def _format_of(manifest: Path) -> Any:
    """The format_version a manifest file states (None if it cannot be read: prepare then reports why)."""
    import json

    try:
        return json.loads(manifest.read_text("utf-8")).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None
