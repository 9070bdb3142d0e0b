"""`lory prepare`: raw documents -> tokenizer, similarity-ordered packed sequences, WebDataset shards.

This module owns the command: its config, the output folder, and the order of the stages
(data/stages.py: read -> dedup -> merge -> fit -> encode -> cluster -> assign -> split -> order ->
pack -> shards -> finish, LORY.md section 4) on an engine (data/engine.py: datatrove, local or
Slurm). Every file is written under a temporary name and renamed when complete, and the manifest
comes last, so a killed run leaves nothing that looks finished; running it again continues from
the stage tasks that completed, and a folder whose manifest matches the config and whose shards
verify is left as it is.

The output folder is prepare's own: it refuses a non-empty folder without its owner mark
(``.lory-prepare``, a file only prepare writes; a manifest.json alone proves nothing), deletes
only the files it writes, and holds a lock on the folder while it works, so two runs never write
into one folder at once (a waiting run prints who holds it).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..atomic import TMP_SUFFIX
from ..errors import with_path
from .location import sha256_of
from .manifest import FORMAT_VERSION, MANIFEST, SHARD_NAME, SPLITS, TOKENIZER, ManifestError, load_manifest
from .ordering import KnnParams
from .shards import verify_shards
from .sources import InputFile, ReadPolicy, input_files
from . import stages
from .stages import PLAN, STAGES, UNIGRAM, Work
from .tokenizer import load_tokenizer, tokenizer_files

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
OWNER_MARK = ".lory-prepare"  # marks a folder as prepare's own; also the lock file
WORK_DIR = "_work" + TMP_SUFFIX
# Settings that do not decide the output (where it goes, the inputs, recorded by content, and how
# many tasks make it): kept out of the manifest's config.
SUBMITTED = "submitted.json"  # in the work folder: the Slurm jobs building it
ENGINE_SETTINGS = ("output", "inputs", "val_inputs", "workers", "tasks", "executor", "slurm_partition", "slurm_time",
                   "slurm_cpus_per_task", "slurm_mem_per_cpu_gb", "slurm_env_command")
_FORMAT_1_SHARD = re.compile(r"^(train|val)-\d{5}\.tar$")  # round-1 plain shards: replaced on a rebuild


def sample_inputs(split: str) -> list[str]:
    """The shipped sample corpus files of one split ("train" or "val")."""
    files = sorted(str(p) for p in SAMPLE_DIR.glob(f"*-{split}.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"{SAMPLE_DIR}: the shipped sample corpus is missing (broken install?)")
    return files


@dataclass
class PrepareConfig:
    """Everything that decides the output of `lory prepare` (recorded in the manifest).

    Args:
        output: Folder to write shards, tokenizer.json and manifest.json into.
        inputs: jsonl / jsonl.gz / jsonl.zst / parquet files, folders of them or of .txt (a .txt
            folder's name is its domain), Hugging Face datasets saved to disk; paths or fsspec URLs.
            Empty: the shipped sample corpus.
        val_inputs: Held-out validation documents. Empty: with the sample corpus its fixed
            validation split; otherwise ``val_fraction`` of the documents, chosen by a text hash.
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
        partition_size: At most this many documents are ordered together (kNN, near-duplicates,
            path); a larger corpus is cut into partitions of similar documents, chained by their
            centroids (data/partition.py). Near-copies in two partitions are both kept.
        min_chars, max_chars: Documents outside [min_chars, max_chars] are skipped and counted.
        text_field, domain_field: jsonl field names.
        sequences_per_shard: Samples per .tar.gz shard.
        seed: Seeds the SVD, the Annoy index, the random order and the sequence shuffle.
        strict: Any skipped document is an error instead.
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
    val_fraction: float = 0.01
    seq_len: int = 512
    vocab_size: int = 8192
    tokenizer_sample: int = 100_000
    tokenizer: str | None = None
    order: Literal["similarity", "random"] = "similarity"
    embedder: Literal["tfidf-svd", "sentence-transformers"] = "tfidf-svd"
    embed_model: str | None = None
    embed_dim: int = 128
    embed_sample: int = 100_000
    knn_k: int = 10
    knn_trees: int = 50
    knn_search_k: int = -1
    dedup_threshold: float = 0.99
    partition_size: int = 100_000
    min_chars: int = 16
    max_chars: int = 1_000_000
    text_field: str = "text"
    domain_field: str = "domain"
    sequences_per_shard: int = 256
    seed: int = 0
    strict: bool = False
    workers: int = 1
    tasks: int = 0
    executor: Literal["local", "slurm"] = "local"
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    slurm_cpus_per_task: int = 1
    slurm_mem_per_cpu_gb: int = 4
    slurm_env_command: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in ("local", "slurm"):
            raise ValueError(f"executor must be 'local' or 'slurm', got {self.executor!r}")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ValueError("executor 'slurm' needs slurm_partition (the partition its array jobs run on)")
        if self.workers < 1 or self.tasks < 0:
            raise ValueError(f"workers must be >= 1 and tasks >= 0, got workers={self.workers}, tasks={self.tasks}")
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

    def resolved_inputs(self) -> tuple[list[str], list[str]]:
        if self.inputs:
            return list(self.inputs), list(self.val_inputs)
        return sample_inputs("train"), (list(self.val_inputs) or sample_inputs("val"))


def _fingerprint(cfg: PrepareConfig, train_files: list[InputFile], val_files: list[InputFile]) -> dict:
    """What the output depends on: the config (output folder aside) and the inputs' content."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ENGINE_SETTINGS}
    files = {"train": [{"name": p.name, "sha256": sha256_of(p.location)} for p in train_files],
             "val": [{"name": p.name, "sha256": sha256_of(p.location)} for p in val_files]}
    if cfg.tokenizer:
        files["tokenizer"] = [{"name": p.name, "sha256": sha256_of(str(p))} for p in tokenizer_files(cfg.tokenizer)]
        # The given tokenizer's size is the truth; --vocab_size is not used and must not be recorded.
        settings["vocab_size"] = load_tokenizer(cfg.tokenizer)[0].get_vocab_size()
    return {"format_version": FORMAT_VERSION, "config": settings, "inputs": files}


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet, self.t0, self.stages = quiet, time.perf_counter(), {}
        self.last = self.t0

    def stage(self, name: str, message: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self.last, 3)
        self.last = now
        if not self.quiet:
            print(f"[prepare] {name:9s} {self.stages[name]:6.2f}s  {message}", file=sys.stderr, flush=True)


def prepare(cfg: PrepareConfig, quiet: bool = False, overwrite: bool = False, wait: bool = False) -> dict:
    """Run the pipeline; returns the manifest. A folder already prepared with this config is kept.

    overwrite: rebuild even a folder that is up to date or was prepared with another config.
    wait: if another process is preparing the folder, wait for it (the data module, where every
        node may prepare one shared folder) instead of stopping with a message (the CLI).
    A run killed midway leaves its work folder: the same command continues from the stage tasks
    it had completed (another config or other inputs start over).
    """
    out = Path(cfg.output)
    train_inputs, val_inputs = cfg.resolved_inputs()
    train_files, val_files = input_files(train_inputs), (input_files(val_inputs) if val_inputs else [])
    fingerprint = _fingerprint(cfg, train_files, val_files)
    _refuse_validation_from_training(fingerprint["inputs"], val_files)
    with _OutputLock(out, wait):
        work = out / WORK_DIR
        if (out / MANIFEST).is_file() and not overwrite:
            shutil.rmtree(work, ignore_errors=True)  # scratch of a run killed after its manifest
            existing = _up_to_date(out, fingerprint, quiet)
            if existing is not None:
                return existing
        settings = dataclasses.asdict(cfg)
        resumed = not overwrite and _same_plan(work, fingerprint)
        submitted = work / SUBMITTED
        if resumed and submitted.is_file() and cfg.executor == "local":
            jobs = json.loads(submitted.read_text("utf-8"))["jobs"]
            raise FileExistsError(f"{out}: its stages were submitted to Slurm (jobs {', '.join(jobs)}): wait for "
                                  f"{out / MANIFEST} to appear, run the same --executor slurm command again to "
                                  "resubmit what did not complete, or pass --overwrite to start over here")
        if not resumed:
            _clean(out)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            Work.write_plan(work, settings, str(out), fingerprint, train_files, val_files)
        elif not quiet:
            print(f"[prepare] continuing the run in {work}: completed stage tasks are kept", file=sys.stderr)
        if cfg.executor == "slurm":
            return submit(work, cfg, quiet)
        try:
            timings = run_stages(work, cfg, _Log(quiet))
        except OSError as err:  # a full disk names no file: name the folder being written
            raise with_path(err, out) from err
        manifest = load_manifest(out)
        shutil.rmtree(work, ignore_errors=True)  # only once the manifest is written
        manifest["timings_s"] = timings  # returned for reports; kept out of the file (determinism)
        return manifest


def _refuse_validation_from_training(inputs: dict, val_files: list[InputFile]) -> None:
    """A --val_inputs file whose content is also among --inputs: each of its documents would be
    dropped as an exact duplicate of a training one, and the run would end saying only that no
    validation sequence is left."""
    train = {f["sha256"] for f in inputs["train"]}
    for entry, file in zip(inputs["val"], val_files):
        if entry["sha256"] in train:
            raise ValueError(f"--val_inputs {file.location} is also in --inputs (the same content): every validation "
                             "document would be dropped as an exact duplicate of a training one; give held-out "
                             "files, or no --val_inputs to hold out --val_fraction of the documents")


def _same_plan(work: Path, fingerprint: dict) -> bool:
    """Whether ``work`` holds a stopped run of these settings on these inputs (then it continues,
    with any engine settings: they change no byte of the output)."""
    try:
        plan = json.loads((work / PLAN).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return plan.get("fingerprint") == fingerprint


def run_stages(work: Path, cfg: PrepareConfig, log: "_Log") -> dict[str, float]:
    """Every stage of data/stages.py on the chosen engine, in order; a completed task is skipped.

    executor "local": datatrove's LocalPipelineExecutor, ``workers`` tasks at once (1: in this
    process). The parallel stages run ``tasks`` tasks (0: as many as workers); what they write
    does not depend on either number.
    """
    from concurrent.futures.process import BrokenProcessPool

    from loguru import logger

    from .engine import local_stage

    tasks = cfg.tasks or cfg.workers
    logger.disable("datatrove")  # our own one line per stage; datatrove's task logs stay in the work folder
    try:
        for name, split in STAGES:
            n = tasks if split else 1
            try:
                local_stage(getattr(stages, name), work, name, n, cfg.workers).run()
            except BrokenProcessPool as err:
                raise ChildProcessError(f"a `lory prepare` worker process died in stage {name!r} (killed, or out "
                                        "of memory): run the same command again, it continues from the tasks "
                                        "that completed") from err
            log.stage(name, stage_summary(name, work))
    finally:
        logger.enable("datatrove")
    return dict(log.stages)


def _up_to_date(out: Path, fingerprint: dict, quiet: bool) -> dict | None:
    """The existing manifest if it matches the config and inputs and every shard verifies; None to rebuild."""
    try:
        existing = load_manifest(out)
    except ManifestError as err:
        print(f"[prepare] {err}: rebuilding", file=sys.stderr)
        return None
    if {k: existing.get(k) for k in fingerprint} != fingerprint:
        raise FileExistsError(f"{out} holds data prepared with another config or other inputs; "
                              "choose another --output or pass --overwrite")
    problems = [p for split in SPLITS for p in verify_shards(out, existing["splits"][split]["shards"])]
    if problems:
        print(f"[prepare] {len(problems)} shard(s) fail verification ({problems[0].message}"
              f"{', ...' if len(problems) > 1 else ''}): rebuilding {out}", file=sys.stderr)
        return None
    if not quiet:
        print(f"[prepare] {out} is up to date (manifest matches config and inputs, every shard verifies)",
              file=sys.stderr)
    return existing


MARK_FORMAT = 1  # what the owner mark holds: {"written_by": "lory prepare", "format": 1, "holder": ...}


class _OutputLock:
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

    def __enter__(self) -> "_OutputLock":
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
    return base in (MANIFEST, TOKENIZER, UNIGRAM) or bool(SHARD_NAME.match(base) or _FORMAT_1_SHARD.match(base))


def _clean(out: Path) -> None:
    """Remove what an earlier (possibly killed) run wrote, and nothing else: the manifest first, so
    nothing looks finished; then prepare's own names (shards, tokenizer, their temporaries)."""
    (out / MANIFEST).unlink(missing_ok=True)
    for p in sorted(out.iterdir()):  # (the work folder is already gone: prepare() removes it first)
        if p.is_file() and _is_own(p.name):
            p.unlink()


def submit(work: Path, cfg: PrepareConfig, quiet: bool) -> dict:
    """Submit the stages to Slurm and return at once: {"submitted": job ids, "manifest": where it will be}."""
    from .engine import SlurmSettings, submit_slurm

    tasks = cfg.tasks or 1
    settings = SlurmSettings(cfg.slurm_partition, cfg.slurm_time, cfg.slurm_cpus_per_task, cfg.slurm_mem_per_cpu_gb,
                             cfg.slurm_env_command)
    jobs = submit_slurm([(name, getattr(stages, name), tasks if split else 1) for name, split in STAGES], work, settings)
    stages.atomic_json(work / SUBMITTED, {"jobs": jobs})  # a local run on this folder now waits for them
    manifest = str(Path(cfg.output) / MANIFEST)
    if not quiet:
        print(f"[prepare] submitted {len(jobs)} Slurm jobs ({', '.join(jobs)}); the folder is finished when {manifest} "
              f"appears (task logs: {work / 'logs'}); the same command again continues a stopped run", file=sys.stderr)
    return {"submitted": jobs, "manifest": manifest}


def stage_summary(name: str, work: Path) -> str:
    """One line on what a finished stage produced, read back from its small outputs (this process
    forks every later stage's workers: what it holds, they hold too)."""
    w = Work(work)
    if name == "read":
        return f"{len(w.files)} input file(s) read"
    if name == "dedup":
        n = len(stages.dedup_ranges(int(stages.read_counts(w)[-1])))
        later = sum(len(np.load(work / "dedup" / f"{k:06d}.npy", mmap_mode="r")) for k in range(n))
        return f"{later} exact duplicate(s) found in {n} digest range(s)"
    meta = stages.corpus(w)
    if name == "merge":
        return f"{meta['documents']} documents in {len(meta['domains'])} domains, {meta['skipped']['total']} skipped"
    if name == "fit":
        vocab = json.loads((work / "fit" / "tokenizer.meta.json").read_text("utf-8"))["vocab_size"]
        return f"tokenizer vocab {vocab}" + (", embedding map" if (work / "fit" / "embed.npz").exists() else "")
    if name == "encode":
        tokens = sum(json.loads((work / "encode" / f"{f:06d}.embed.json").read_text("utf-8"))["tokens"]
                     for f in range(len(w.files)))
        return f"{tokens:,} tokens"
    if name == "cluster":
        k = len(np.load(work / "cluster" / "centroids.npy", mmap_mode="r"))
        return f"{sum(s['rows'] for s in stages.encoded(w))} training documents embedded, " + (
            f"{k} k-means clusters" if k else "one cluster")
    if name == "assign":
        counts, _ = stages.cluster_parts(w)
        if len(counts) == 1:
            return f"one cluster of {counts[0]} documents"
        return f"{len(counts)} clusters of {counts.min()} to {counts.max()} documents"
    if name == "split":
        return f"{len(stages.partition_sizes(w))} partition(s) of at most {w.cfg['partition_size']} documents"
    if name == "order":
        return f"{w.cfg['order']}: {len(list((work / 'order').glob('*.npz')))} partition(s) ordered"
    summary = stages.stream_summary(w)
    entries = {s: summary[f"{s}_sequences"] for s in SPLITS}
    if name == "pack":
        return (f"{summary['train_documents']} documents in {summary['partitions']} partition(s), "
                f"{summary['near_duplicates_dropped']} near-duplicates dropped, "
                f"{summary['path_same_domain_fraction']:.1%} of path steps stay in a domain; "
                f"train {entries['train']} sequences, val {entries['val']}")
    if name == "shards":
        per = w.cfg["sequences_per_shard"]
        return f"train {-(-entries['train'] // per)} shards, val {-(-entries['val'] // per)}"
    return str(w.out / MANIFEST)
