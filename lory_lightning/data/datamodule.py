"""LoryDataModule: streams the prepared WebDataset shards into batches of whole sequences.

Training is an endless stream (pre-training runs are sized in steps, and every rank then takes
the same number of steps, so DDP never waits on a rank that ran out): each pass over the data
reshuffles the shard list from ``seed + pass``, splits it by rank and then by dataloader worker,
and shuffles whole sequences in a buffer. Documents are never shuffled: that would undo the
similarity order that `lory prepare` built into each sequence. Validation is the held-out split,
finite and in order, its sequences dealt round-robin to the ranks.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .manifest import MANIFEST, TOKENIZER, load_manifest
from .prepare import PrepareConfig, prepare
from .shards import verify_shards
from .stats import unigram_log_probs
from .sources import input_files


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle shard content


def read_shards(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Samples of the given shards in order: {"key", "tokens" (L+1,), "domains" (L+1,), "meta"}."""
    import webdataset as wds

    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=wds.reraise_exception))
    for s in pipeline:
        try:
            yield {"key": s["__key__"], "tokens": _npy(s["tokens.npy"]), "domains": _npy(s["domains.npy"]),
                   "meta": json.loads(s["json"])}
        except KeyError as err:
            raise ValueError(f"{s.get('__url__')}: sample {s.get('__key__')} lacks member {err}; "
                             "was this shard written by `lory prepare`?") from err


def to_example(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    tokens = torch.from_numpy(sample["tokens"].astype(np.int64))  # (L + 1,)
    domains = torch.from_numpy(sample["domains"].astype(np.int64))  # (L + 1,)
    # The domain of a prediction is the domain of the token predicted.
    return {"input_ids": tokens[:-1], "targets": tokens[1:], "domains": domains[1:]}


def folder_unigram_log_probs(folder: Path, manifest: dict[str, Any]) -> torch.Tensor | None:
    """log p(token) (V,) under the training unigram distribution of a prepared folder, or None for a
    folder prepared before unigram.npy existed: lets a validation score that baseline on exactly
    the tokens it covers."""
    entry = manifest.get("baselines", {}).get("unigram_counts")
    if not entry:
        return None
    counts = _npy((Path(folder) / entry["name"]).read_bytes())
    return torch.from_numpy(unigram_log_probs(counts)).float()


def pass_seed(seed: int, epoch: int) -> int:
    """Seed of the shard order of one pass over the data: distinct per pass, the same on every rank."""
    return seed * 1_000_003 + epoch  # a prime stride: (seed, pass) pairs never collide for pass < 1e6


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Seed of one worker stream's shuffle buffer: distinct per (rank, stream), reproducible
    (a tuple of ints hashes the same in every process, whatever PYTHONHASHSEED is)."""
    return hash((seed, rank, stream)) & 0xFFFFFFFF


class TrainStream(IterableDataset):
    """Endless, seeded stream of training sequences for one rank (split further by worker).

    Args:
        shards: Paths of all training shards.
        rank, world_size: This process's place among the data-parallel ranks.
        seed: Seeds the shard order of every pass and the sequence shuffle buffer.
        shuffle_buffer: Sequences held for shuffling (0: shard order only).
    """

    def __init__(self, shards: list[str], rank: int, world_size: int, seed: int, shuffle_buffer: int) -> None:
        self.shards, self.rank, self.world_size = list(shards), rank, world_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.skip_by_worker: list[int] = []  # samples each worker drops: set by the data module on resume
        self.worker_offset = 0  # DataLoader worker i plays stream (i + offset) % num_workers: set on resume

    def shards_for(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        order = list(self.shards)
        random.Random(pass_seed(self.seed, epoch)).shuffle(order)
        mine = order[self.rank::self.world_size][worker::num_workers]
        if not mine:
            raise ValueError(
                f"rank {self.rank} worker {worker} has no training shard: {len(self.shards)} shards for "
                f"{self.world_size} ranks x {num_workers} workers. Use fewer dataloader workers, or prepare "
                "again with a smaller --sequences_per_shard so that there are more shards")
        return mine

    def _role(self) -> tuple[int, int]:
        """(stream index, number of streams) of this worker. A DataLoader takes batches from its workers
        in turn starting at worker 0, so a loader resumed after n batches starts its worker 0 on stream
        n % num_workers to keep the uninterrupted order."""
        info = get_worker_info()
        if info is None:
            return 0, 1
        return (info.id + self.worker_offset) % info.num_workers, info.num_workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # The stream is a pure function of (seed, rank, stream index): resuming regenerates it and
        # drops the samples already consumed, so the next sequence is exactly the one an uninterrupted
        # run would see (no replay, no gap). Dropping costs reading those samples once.
        worker, num_workers = self._role()
        stream = self._samples(worker, num_workers)
        for _ in range(self.skip_by_worker[worker] if self.skip_by_worker else 0):
            next(stream)
        for sample in stream:
            yield to_example(sample)

    def _samples(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        rng = random.Random(stream_seed(self.seed, self.rank, worker))
        buffer: list[dict[str, Any]] = []
        epoch = 0
        while True:
            for sample in read_shards(self.shards_for(epoch, worker, num_workers)):
                if self.shuffle_buffer <= 1:
                    yield sample
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    i = rng.randrange(len(buffer))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield buffer.pop()
            epoch += 1


def samples_consumed_by_worker(batches: int, worker: int, num_workers: int, batch_size: int) -> int:
    """Samples worker ``worker`` produced for the first ``batches`` batches of a DataLoader.

    A DataLoader over an IterableDataset takes whole batches from its workers in turn: batch j
    comes from worker j % num_workers (num_workers 0 counts as one worker, the main process).
    """
    workers = max(num_workers, 1)
    return max(0, (batches - worker + workers - 1) // workers) * batch_size


class ValStream(IterableDataset):
    """The held-out sequences in order; rank r takes every world_size-th one starting at r."""

    def __init__(self, shards: list[str], rank: int, world_size: int) -> None:
        self.shards, self.rank, self.world_size = list(shards), rank, world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        stride = self.world_size * num_workers
        for i, sample in enumerate(read_shards(self.shards)):
            if i % stride == self.rank * num_workers + worker:
                yield to_example(sample)


class LoryDataModule(L.LightningDataModule):
    """Prepared shards in, batches of ``input_ids`` / ``targets`` / ``domains`` (each (B, L)) out.

    Args:
        data_dir: Folder written by `lory prepare`. If it holds no manifest yet, ``prepare_data``
            runs the pipeline with the settings below (the shipped sample corpus by default).
        inputs: Documents to prepare (empty: the shipped sample corpus).
        val_inputs: Held-out documents to prepare (see `lory prepare --help`).
        order: ``similarity`` (the paper) or ``random`` (the ablation).
        seq_len: Sequence length L; linked from the model config by the CLI.
        vocab_size: Tokenizer size to train when preparing; linked into the model config by the CLI.
        prepare_args: Any other `lory prepare` setting, e.g. ``{dedup_threshold: 0.98}``.
        batch_size: Sequences per batch per process.
        num_workers: Dataloader worker processes per rank.
        shuffle_buffer: Whole sequences held for shuffling the training stream.
        seed: Seeds shard order and sequence shuffling.
        verify: Check every shard's size and sha256 against the manifest at setup.
        max_bad_shards: Missing, truncated or corrupt shards tolerated: each is named in a warning,
            counted in ``bad_shards`` and left out; one more stops the run (default 0: any stops it).
    """

    def __init__(self, data_dir: str = "data/sample", inputs: list[str] | None = None,
                 val_inputs: list[str] | None = None, order: Literal["similarity", "random"] = "similarity",
                 seq_len: int = 512, vocab_size: int = 8192, prepare_args: dict[str, Any] | None = None,
                 batch_size: int = 8, num_workers: int = 0, shuffle_buffer: int = 256,
                 seed: int = 0, verify: bool = True, max_bad_shards: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 0 or max_bad_shards < 0:
            raise ValueError(f"data: batch_size ({batch_size}) must be >= 1, num_workers ({num_workers}), "
                             f"shuffle_buffer ({shuffle_buffer}) and max_bad_shards ({max_bad_shards}) >= 0")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.prepare_config = PrepareConfig(output=str(data_dir), inputs=list(inputs or []),
                                            val_inputs=list(val_inputs or []), order=order, seq_len=seq_len,
                                            vocab_size=vocab_size, seed=seed, **(prepare_args or {}))
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.seed, self.verify = shuffle_buffer, seed, verify
        self.manifest: dict[str, Any] | None = None
        self._resume_batches = 0
        self.max_bad_shards = max_bad_shards
        self.bad_shards: list[str] = []

    def prepare_data(self) -> None:
        # Runs on one process per node. A prepared folder is used as it is (setup checks that it
        # agrees with this config); only a folder without a manifest is (re)built.
        if not (self.data_dir / MANIFEST).is_file():
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
            if names != sorted(Path(p).name for p in input_files(ours.inputs)):
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
        if self.verify:
            self._drop_bad_shards(manifest)
        world = self.trainer.world_size if self.trainer else 1
        n_train = len(manifest["splits"]["train"]["shards"])
        if n_train < world * max(1, self.num_workers):
            raise ValueError(f"{self.data_dir}: {n_train} training shards for {world} ranks x "
                             f"{max(1, self.num_workers)} workers; every worker needs one. Use fewer workers "
                             "or prepare with a smaller --sequences_per_shard")
        self.manifest = manifest

    def _drop_bad_shards(self, manifest: dict[str, Any]) -> None:
        """Verify every shard; up to ``max_bad_shards`` bad ones are left out, named and counted, more stop the run."""
        problems = [p for split in ("train", "val") for p in verify_shards(self.data_dir, manifest["splits"][split]["shards"])]
        if len(problems) > self.max_bad_shards:
            raise ValueError(f"{len(problems)} shard(s) fail verification against manifest.json (data.max_bad_shards "
                             f"is {self.max_bad_shards}): " + "; ".join(p.message for p in problems[:5]))
        bad = {p.name for p in problems}
        for p in problems:
            rank_zero_warn(f"leaving out {p.message} ({len(problems)} of at most {self.max_bad_shards} bad shards)")
        for split in ("train", "val"):
            manifest["splits"][split]["shards"] = [s for s in manifest["splits"][split]["shards"] if s["name"] not in bad]
        self.bad_shards = sorted(bad)

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
        return (self.data_dir / TOKENIZER).read_text("utf-8")

    def _urls(self, split: str) -> list[str]:
        assert self.manifest is not None
        return [str(self.data_dir / s["name"]) for s in self.manifest["splits"][split]["shards"]]

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        stream = TrainStream(self._urls("train"), rank, world, self.seed, self.shuffle_buffer)
        # Resuming: each worker drops what it produced for the batches already trained on.
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
        return DataLoader(ValStream(self._urls("val"), rank, world), batch_size=self.batch_size,
                          num_workers=min(self.num_workers, 1))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
