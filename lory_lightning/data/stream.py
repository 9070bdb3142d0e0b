"""The training and validation streams of one rank: which sequence comes at which position.

Training is an endless stream (pre-training runs are sized in steps, so every rank takes the same
number of steps and DDP never waits on a rank that ran out). Each pass over the data reshuffles
the shard list from ``seed + pass``, splits it by rank and then by dataloader worker, and cuts a
worker's shards into blocks of ``shuffle_block`` shards; the sequences of a block come out in a
seeded permutation. Documents are never shuffled: that would undo the similarity order built into
each sequence, and `lory prepare` already spread every part of the corpus over all shards.

The position -> sequence map is a pure function of (seed, rank, worker, manifest counts), so a
resumed stream seeks: ``locate`` finds the pass, block and offset of position n by arithmetic on
the manifest's counts, and only that block is read. Resuming costs one block, however long the run.
Validation is the held-out split, finite and in order, its sequences dealt round-robin to ranks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .shards import ShardReader


def to_example(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    tokens = torch.from_numpy(sample["tokens"].astype(np.int64))  # (L + 1,)
    domains = torch.from_numpy(sample["domains"].astype(np.int64))  # (L + 1,)
    # The domain of a prediction is the domain of the token predicted.
    return {"input_ids": tokens[:-1], "targets": tokens[1:], "domains": domains[1:]}


def pass_seed(seed: int, epoch: int) -> int:
    """Seed of the shard order of one pass over the data: distinct per pass, the same on every rank."""
    return seed * 1_000_003 + epoch  # a prime stride: (seed, pass) pairs never collide for pass < 1e6


def block_permutation(n: int, seed: int, epoch: int, rank: int, stream: int, block: int) -> np.ndarray:
    """The order (n,) in which the n sequences of one block are handed out: seeded by where the
    block sits, so the same block of the same pass of the same stream is always permuted alike."""
    return np.random.default_rng([seed, epoch, rank, stream, block]).permutation(n)


def locate(position: int, block_sizes: Callable[[int], list[int]]) -> tuple[int, int, int]:
    """(pass, block, offset) of stream position ``position`` (0-based), given the sequence counts of
    the blocks of each pass. Arithmetic only: no shard is read."""
    if position < 0:
        raise ValueError(f"stream position must be >= 0, got {position}")
    epoch = 0
    while True:
        sizes = block_sizes(epoch)
        if min(sizes, default=0) < 1:
            raise ValueError(f"pass {epoch} has an empty block {sizes}: every block needs a sequence")
        total = sum(sizes)
        if position < total:
            for block, size in enumerate(sizes):
                if position < size:
                    return epoch, block, position
                position -= size
        position -= total
        epoch += 1


def samples_consumed_by_worker(batches: int, worker: int, num_workers: int, batch_size: int) -> int:
    """Samples worker ``worker`` produced for the first ``batches`` batches of a DataLoader.

    A DataLoader over an IterableDataset takes whole batches from its workers in turn: batch j
    comes from worker j % num_workers (num_workers 0 counts as one worker, the main process).
    """
    workers = max(num_workers, 1)
    return max(0, (batches - worker + workers - 1) // workers) * batch_size


class TrainStream(IterableDataset):
    """Endless, seeded stream of training sequences for one rank (split further by worker).

    Args:
        shards: Manifest entries of the training shards ({"name", "sequences", "bytes", "sha256"}).
        rank, world_size: This process's place among the data-parallel ranks.
        seed: Seeds the shard order of every pass and the permutation of every block.
        shuffle_block: Shards whose sequences are permuted together (1: each shard on its own).
        reader: Reads and verifies a shard (None: the stream cannot be iterated, only planned).
    """

    def __init__(self, shards: list[dict], rank: int, world_size: int, seed: int, shuffle_block: int,
                 reader: ShardReader | None = None) -> None:
        if shuffle_block < 1:
            raise ValueError(f"data.shuffle_block must be >= 1 shard, got {shuffle_block}")
        self.shards, self.rank, self.world_size = list(shards), rank, world_size
        self.seed, self.shuffle_block, self.reader = seed, shuffle_block, reader
        self.skip_by_worker: list[int] = []  # samples each worker already gave: set by the data module on resume
        self.worker_offset = 0  # DataLoader worker i plays stream (i + offset) % num_workers: set on resume

    def shards_for(self, epoch: int, worker: int, num_workers: int) -> list[dict]:
        order = list(self.shards)
        random.Random(pass_seed(self.seed, epoch)).shuffle(order)
        mine = order[self.rank::self.world_size][worker::num_workers]
        if not mine:
            raise ValueError(
                f"rank {self.rank} worker {worker} has no training shard: {len(self.shards)} shards for "
                f"{self.world_size} ranks x {num_workers} workers. Use fewer dataloader workers, or prepare "
                "again with a smaller --sequences_per_shard so that there are more shards")
        return mine

    def blocks_for(self, epoch: int, worker: int, num_workers: int) -> list[list[dict]]:
        mine = self.shards_for(epoch, worker, num_workers)
        return [mine[i:i + self.shuffle_block] for i in range(0, len(mine), self.shuffle_block)]

    def locate(self, position: int, worker: int, num_workers: int) -> tuple[int, int, int]:
        """(pass, block, offset) of this worker's stream position ``position``."""
        return locate(position, lambda epoch: [sum(e["sequences"] for e in block)
                                               for block in self.blocks_for(epoch, worker, num_workers)])

    def _role(self) -> tuple[int, int]:
        """(stream index, number of streams) of this worker. A DataLoader takes batches from its workers
        in turn starting at worker 0, so a loader resumed after n batches starts its worker 0 on stream
        n % num_workers to keep the uninterrupted order."""
        info = get_worker_info()
        if info is None:
            return 0, 1
        return (info.id + self.worker_offset) % info.num_workers, info.num_workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for sample in self.samples(*self._role()):
            yield to_example(sample)

    def samples(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """Stream ``worker``'s samples from the position it resumes at (``skip_by_worker``)."""
        if self.reader is None:
            raise RuntimeError("TrainStream needs a ShardReader to be read")
        skip = self.skip_by_worker[worker] if self.skip_by_worker else 0
        epoch, first, offset = self.locate(skip, worker, num_workers)
        while True:
            for b, block in enumerate(self.blocks_for(epoch, worker, num_workers)):
                if b < first:
                    continue
                # A block is read whole, each shard verified before use; a shard left out as bad
                # (data.max_bad_shards) shortens the block, and positions after it in this pass
                # no longer match an uninterrupted run's exactly.
                samples = [s for entry in block for s in self.reader.read(entry)]
                for j in block_permutation(len(samples), self.seed, epoch, self.rank, worker, b)[offset:]:
                    yield samples[j]
                offset = 0
            first, epoch = 0, epoch + 1


class ValStream(IterableDataset):
    """The held-out sequences in order; rank r takes every world_size-th one starting at r."""

    def __init__(self, shards: list[dict], rank: int, world_size: int, reader: ShardReader) -> None:
        self.shards, self.rank, self.world_size, self.reader = list(shards), rank, world_size, reader

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        stride = self.world_size * num_workers
        i = 0
        for entry in self.shards:
            for sample in self.reader.read(entry):
                if i % stride == self.rank * num_workers + worker:
                    yield to_example(sample)
                i += 1
