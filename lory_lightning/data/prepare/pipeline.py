"""The stages of `lory prepare`, in order (LORY.md section 4), each a record the engines run.

A stage's task is ``run(work_folder, rank, tasks)``: it reads what earlier stages left in the work
folder (workfiles.py names every file) and writes its own outputs there, each file atomically, so a
task killed midway is simply run again and a finished task is skipped (the engine's completion
records). Parallel stages split their work by a key that does not depend on the number of tasks,
and every merge is in that key's order: the same recipe and inputs give byte-identical shards and
manifest with any number of tasks or workers. No task holds a table of every document (what one
holds is one input file, digest range, sample, cluster, partition or shard), so memory stays flat
as the corpus grows; two exceptions: the validation documents (in one pack key and in finish) and
``order: random``'s single piece (the ablation's one permutation of all documents).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import stage_documents, stage_encode, stage_order, stage_pack, stage_write
from .work import Work


@dataclass(frozen=True)
class Stage:
    """One stage: its name, the key its parallel tasks split (None: one task), the module whose
    function of that name runs a task, and a one-line summary of what it produced."""

    name: str
    key: str | None
    module: ModuleType
    summary: Callable[[Work], str]

    @property
    def run(self) -> Callable[[Path, int, int], None]:
        return getattr(self.module, self.name)  # looked up when run: a test may wrap it


STAGES = (
    Stage("read", "files", stage_documents, stage_documents.read_summary),  # valid records, their digests
    Stage("dedup", "digest ranges", stage_documents, stage_documents.dedup_summary),  # exact copies, all files
    Stage("merge", "files", stage_documents, stage_documents.merge_summary),  # each file's kept documents
    Stage("fit", "models", stage_encode, stage_encode.fit_summary),  # tokenizer and embedding map, on samples
    Stage("encode", "files", stage_encode, stage_encode.encode_summary),  # token ids, embeddings
    Stage("cluster", None, stage_order, stage_order.cluster_summary),  # k-means centroids on a sample
    Stage("assign", "files", stage_order, stage_order.assign_summary),  # each document's nearest centroid
    Stage("split", "clusters", stage_order, stage_order.split_summary),  # clusters cut into partitions
    Stage("order", "partitions", stage_order, stage_order.order_summary),  # kNN, near-duplicates, greedy path
    Stage("pack", "pieces", stage_pack, stage_pack.pack_summary),  # the training stream's pieces, validation
    Stage("shards", "shards", stage_write, stage_write.shards_summary),  # the .tar.gz shards
    Stage("finish", None, stage_write, stage_write.finish_summary),  # unigram, tokenizer, manifest (last)
)
