"""What `lory prepare` is told: the recipe (every setting that decides the output, recorded in the
manifest) and where and how it runs (output folder, inputs, engine), which decide no byte of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from ..ordering import KnnParams
from ..sources import ReadPolicy

SAMPLE_DIR = Path(__file__).resolve().parent.parent.parent / "sample_data"


def sample_inputs(split: str) -> list[str]:
    """The shipped sample corpus files of one split ("train" or "val")."""
    files = sorted(str(p) for p in SAMPLE_DIR.glob(f"*-{split}.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"{SAMPLE_DIR}: the shipped sample corpus is missing (broken install?)")
    return files


@dataclass
class Recipe:
    """Everything that decides the output of `lory prepare` (the manifest's ``config``): the same
    recipe on the same input contents gives the same bytes, with any engine settings.

    Args:
        val_fraction: Share of documents held out when no ``val_inputs`` are given.
        seq_len: Training sequence length L; each stored sequence holds L + 1 tokens.
        vocab_size: Size of the BPE to train (ignored with ``tokenizer``).
        tokenizer_sample: Training documents the BPE is trained on, a seeded sample (all of them
            when there are fewer): the one-task merge stage's cost at scale.
        tokenizer: A tokenizer to use instead of training one: a tokenizer.json or a Hugging Face
            tokenizer folder; its own end-of-text (eos) token separates documents.
        order: ``similarity`` (the paper) or ``random`` (the ablation). Both drop near-duplicates.
        embedder: ``tfidf-svd`` (offline default) or ``sentence-transformers`` (``embed_model``).
        embed_model: sentence-transformers model name or local path.
        embed_dim: Dimension of tfidf-svd embeddings.
        embed_sample: Training documents the tfidf-svd map (IDF weights, SVD) is fit on, a seeded
            sample (all of them when there are fewer); every document is then embedded by it.
        knn_k: Neighbours found per document: the graph the greedy path walks and the candidates
            for near-duplicates.
        knn_trees: Annoy trees: more trees find truer neighbours (recall) and build slower.
        knn_search_k: Annoy nodes inspected per query; -1 is Annoy's default, trees x k.
        dedup_threshold: Drop the later of two documents with cosine above this (1.0 keeps all).
        keep_fraction: Per domain name, the share of its training documents kept, a seeded random
            choice made after the tokenizer and embedding map are fit and near-duplicates dropped
            (data/thinning.py): a smaller corpus or another mixture with the same tokenizer.
            Unnamed domains keep all; the thinned documents are counted per domain in the manifest.
        partition_size: At most this many documents are ordered together (kNN, near-duplicates,
            path); a larger corpus is cut into partitions of similar documents, chained by their
            centroids (data/partition.py). Near-copies in two partitions are both kept.
        min_chars: Documents shorter than this are skipped and counted.
        max_chars: Documents longer than this are skipped and counted.
        text_field: The jsonl key of a document's text.
        domain_field: The jsonl key of its domain (absent: the file's name).
        sequences_per_shard: Samples per .tar.gz shard.
        seed: Seeds the SVD, the Annoy index, the random order and the sequence shuffle.
        strict: Any skipped document is an error instead.
    """

    val_fraction: float = 0.01
    seq_len: int = 512
    vocab_size: int = 8192
    tokenizer_sample: int = 100_000
    tokenizer: Optional[str] = None
    order: Literal["similarity", "random"] = "similarity"
    embedder: Literal["tfidf-svd", "sentence-transformers"] = "tfidf-svd"
    embed_model: Optional[str] = None
    embed_dim: int = 128
    embed_sample: int = 100_000
    knn_k: int = 10
    knn_trees: int = 50
    knn_search_k: int = -1
    dedup_threshold: float = 0.99
    keep_fraction: dict[str, float] = field(default_factory=dict)
    partition_size: int = 100_000
    min_chars: int = 16
    max_chars: int = 1_000_000
    text_field: str = "text"
    domain_field: str = "domain"
    sequences_per_shard: int = 256
    seed: int = 0
    strict: bool = False

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.order not in ("similarity", "random"):
            raise ValueError(f"order must be 'similarity' or 'random', got {self.order!r}")
        if self.embedder not in ("tfidf-svd", "sentence-transformers"):
            raise ValueError(f"embedder must be 'tfidf-svd' or 'sentence-transformers', got {self.embedder!r}")
        if self.embedder == "sentence-transformers" and not self.embed_model:
            raise ValueError("embedder 'sentence-transformers' needs embed_model (a model name or local path)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not -1.0 <= self.dedup_threshold <= 1.0:
            raise ValueError(f"dedup_threshold is a cosine in [-1, 1] (1.0 disables it), got {self.dedup_threshold}")
        for name, share in self.keep_fraction.items():
            if not 0.0 < share <= 1.0:
                raise ValueError(f"keep_fraction[{name!r}] is a share of the domain's training documents in "
                                 f"(0, 1], got {share}")
        if self.tokenizer_sample < 1:
            raise ValueError(f"tokenizer_sample must be >= 1 document, got {self.tokenizer_sample}")
        if self.embed_sample < 2:
            raise ValueError(f"embed_sample must be >= 2 documents, got {self.embed_sample}")
        if self.sequences_per_shard < 1:
            raise ValueError(f"sequences_per_shard must be >= 1, got {self.sequences_per_shard}")
        if self.embed_dim < 1 and self.embedder == "tfidf-svd":
            raise ValueError(f"embed_dim must be >= 1 (the similarity order is computed on these embeddings), "
                             f"got {self.embed_dim}")
        if self.partition_size < 2:
            raise ValueError(f"partition_size must be >= 2 documents, got {self.partition_size}")
        ReadPolicy(min_chars=self.min_chars, max_chars=self.max_chars)  # validates the bounds
        KnnParams(self.knn_k, self.knn_trees, self.knn_search_k, self.seed)

    @property
    def policy(self) -> ReadPolicy:
        return ReadPolicy(self.text_field, self.domain_field, self.min_chars, self.max_chars, self.strict)

    @property
    def knn(self) -> KnnParams:
        return KnnParams(self.knn_k, self.knn_trees, self.knn_search_k, self.seed)


@dataclass
class PrepareConfig(Recipe):
    """The settings of `lory prepare`: the recipe (above), and where and how it runs.

    Args:
        output: Folder to write shards, tokenizer.json and manifest.json into.
        inputs: jsonl / jsonl.gz / jsonl.zst / parquet files, folders of them or of .txt (a .txt
            folder's name is its domain), Hugging Face datasets saved to disk; paths or fsspec URLs.
            Empty: the shipped sample corpus. Recorded by content, not by where they lie.
        val_inputs: Held-out validation documents. Empty: with the sample corpus its fixed
            validation split; otherwise ``val_fraction`` of the documents, chosen by a text hash.
        workers: Stage tasks run at once on this machine (the local engine); 1 runs them in this
            process. Not part of the output: any number gives the same bytes.
        tasks: Tasks of each parallel stage (input files, partitions and shards are dealt to them);
            0: as many as workers. Not part of the output either.
        executor: ``local`` (this machine, ``workers`` at once) or ``slurm`` (each stage an array job of
            ``tasks`` tasks after the one before; `lory prepare` submits them and returns).
        slurm_partition: The Slurm partition the array jobs run on (needed with ``executor: slurm``).
        slurm_time: Time limit of each array task (sbatch --time).
        slurm_cpus_per_task: CPUs of each array task.
        slurm_mem_per_cpu_gb: Memory per CPU of each array task, in GB.
        slurm_env_command: Run before each Slurm task, e.g. ``source /shared/lory/.venv/bin/activate``.
    """

    output: str = "data/sample"
    inputs: list[str] = field(default_factory=list)
    val_inputs: list[str] = field(default_factory=list)
    workers: int = 1
    tasks: int = 0
    executor: Literal["local", "slurm"] = "local"
    slurm_partition: Optional[str] = None
    slurm_time: str = "24:00:00"
    slurm_cpus_per_task: int = 1
    slurm_mem_per_cpu_gb: int = 4
    slurm_env_command: Optional[str] = None

    def __post_init__(self) -> None:
        if self.executor not in ("local", "slurm"):
            raise ValueError(f"executor must be 'local' or 'slurm', got {self.executor!r}")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ValueError("executor 'slurm' needs slurm_partition (the partition its array jobs run on)")
        if self.workers < 1 or self.tasks < 0:
            raise ValueError(f"workers must be >= 1 and tasks >= 0, got workers={self.workers}, tasks={self.tasks}")
        super().__post_init__()

    @property
    def recipe(self) -> Recipe:
        """The settings that decide the output, without where and how it runs."""
        return Recipe(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)})

    def resolved_inputs(self) -> tuple[list[str], list[str]]:
        if self.inputs:
            return list(self.inputs), list(self.val_inputs)
        return sample_inputs("train"), (list(self.val_inputs) or sample_inputs("val"))
