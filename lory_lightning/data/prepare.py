"""`lory prepare`: raw documents -> tokenizer, similarity-ordered packed sequences, WebDataset shards.

Steps (LORY.md section 4): read and validate -> train (or load) the tokenizer -> embed -> Annoy kNN ->
drop near-duplicates -> greedy path (or random order) -> pack -> shuffle whole sequences -> shards ->
tokenizer.json -> manifest.json, written last. Every file is written under a temporary name and
renamed when complete, so a killed run leaves nothing that looks finished; running it again
rebuilds, and a folder whose manifest matches the config and whose shards verify is left as it is.

The output folder is prepare's own: it refuses a non-empty folder it did not write (no manifest,
no ``.lory-prepare`` mark), deletes only the files it writes, and holds a lock on the folder while
it works, so two runs never write into one folder at once.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..atomic import TMP_SUFFIX
from ..errors import with_path
from .embed import sentence_transformer_embed, tfidf_svd_embed
from .manifest import FORMAT_VERSION, MANIFEST, SHARD_NAME, SPLITS, TOKENIZER, ManifestError, load_manifest
from .ordering import KnnParams, order_documents
from .packing import documents_in, num_sequences, pack_stream, sequence_slice
from .location import sha256_of
from .shards import Sample, atomic_write_bytes, npy_bytes, sha256_file, verify_shards, write_shards
from .sources import Document, InputFile, ReadPolicy, SkipLog, input_files, read_documents
from .stats import unigram_counts, unigram_ppl
from .tokenizer import eod_id, load_tokenizer, tokenizer_files, train_tokenizer

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
OWNER_MARK = ".lory-prepare"  # marks a folder as prepare's own; also the lock file
UNIGRAM = "unigram.npy"  # training-token counts, for the unigram baseline on any validated tokens
WORK_DIR = "_work" + TMP_SUFFIX
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
        inputs: jsonl / jsonl.gz files or folders of .txt (a .txt folder's name is its domain).
            Empty: the shipped sample corpus.
        val_inputs: Held-out validation documents. Empty: with the sample corpus its fixed
            validation split; otherwise ``val_fraction`` of the documents, chosen by a text hash.
        val_fraction: Share of documents held out when no ``val_inputs`` are given.
        seq_len: Training sequence length L; each stored sequence holds L + 1 tokens.
        vocab_size: Size of the BPE to train (ignored with ``tokenizer``).
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
    """

    output: str = "data/sample"
    inputs: list[str] = field(default_factory=list)
    val_inputs: list[str] = field(default_factory=list)
    val_fraction: float = 0.01
    seq_len: int = 512
    vocab_size: int = 8192
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
        if self.embed_sample < 2:
            raise ValueError(f"embed_sample must be >= 2 documents, got {self.embed_sample}")
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
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("output", "inputs", "val_inputs")}
    files = {"train": [{"name": p.name, "sha256": sha256_of(p.location)} for p in train_files],
             "val": [{"name": p.name, "sha256": sha256_of(p.location)} for p in val_files]}
    if cfg.tokenizer:
        files["tokenizer"] = [{"name": p.name, "sha256": sha256_file(p)} for p in tokenizer_files(cfg.tokenizer)]
        # The given tokenizer's size is the truth; --vocab_size is not used and must not be recorded.
        settings["vocab_size"] = load_tokenizer(cfg.tokenizer)[0].get_vocab_size()
    return {"format_version": FORMAT_VERSION, "config": settings, "inputs": files}


def _is_val(doc: Document, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc.text.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2 ** 64


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
    """
    out = Path(cfg.output)
    train_inputs, val_inputs = cfg.resolved_inputs()
    train_files, val_files = input_files(train_inputs), (input_files(val_inputs) if val_inputs else [])
    fingerprint = _fingerprint(cfg, train_files, val_files)
    with _OutputLock(out, wait):
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)  # scratch of a run killed after its manifest
        if (out / MANIFEST).is_file() and not overwrite:
            existing = _up_to_date(out, fingerprint, quiet)
            if existing is not None:
                return existing
        _clean(out)
        log = _Log(quiet)
        work = out / WORK_DIR
        work.mkdir(exist_ok=True)
        try:
            return _run(cfg, fingerprint, train_files, val_files, out, work, log)
        except OSError as err:  # a full disk names no file: name the folder being written
            raise with_path(err, out) from err
        finally:
            shutil.rmtree(work, ignore_errors=True)


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


class _OutputLock:
    """Make ``out`` prepare's own folder and hold an exclusive lock on it (context manager).

    A non-empty folder without a manifest or the owner mark holds someone else's files: refused,
    nothing deleted. The lock (flock on the owner mark) is released by the kernel if the process
    dies, so a killed run never leaves the folder locked.
    """

    def __init__(self, out: Path, wait: bool) -> None:
        self.out, self.wait, self.fd = out, wait, -1

    def __enter__(self) -> "_OutputLock":
        out = self.out
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "--output is a file, not a folder: choose a folder path",
                                     str(out))
        mark = out / OWNER_MARK
        if out.is_dir() and not mark.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and was not written by `lory prepare` (no {MANIFEST}, "
                                  f"no {OWNER_MARK}): choose a new or empty --output; nothing was deleted")
        out.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(mark, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            raise FileExistsError(f"{out} is being prepared by another process: wait for it to finish, "
                                  "or choose another --output") from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


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


def _run(cfg: PrepareConfig, fingerprint: dict, train_files: list[InputFile], val_files: list[InputFile],
         out: Path, work: Path, log: _Log) -> dict:
    policy = cfg.policy
    skips = SkipLog()
    held_out_by_hash = not val_files

    def documents(record: bool) -> Iterator[tuple[Document, bool]]:
        """(document, is_val) in a fixed order; skips are counted on the recording pass only."""
        log_ = skips if record else SkipLog()
        seen: set[bytes] = set()  # shared by both splits: a validation text seen in training is a duplicate
        for files, is_val_file in ((train_files, False), (val_files, True)):
            for doc in read_documents(files, policy, log_, seen):
                yield doc, (is_val_file or (held_out_by_hash and _is_val(doc, cfg.val_fraction)))

    # Pass 1: validate, record metadata, stream the training texts to the tokenizer trainer.
    domains: list[str] = []
    doc_domain, doc_val, doc_where = [], [], []

    def texts_for_tokenizer() -> Iterator[str]:
        for doc, is_val in documents(record=True):
            if doc.domain not in domains:
                domains.append(doc.domain)
            doc_domain.append(domains.index(doc.domain))
            doc_val.append(is_val)
            doc_where.append(doc.where)
            if not is_val:
                yield doc.text

    if cfg.tokenizer:
        tok, eod = load_tokenizer(cfg.tokenizer)
        for _ in texts_for_tokenizer():
            pass
    else:
        tok = train_tokenizer(texts_for_tokenizer(), cfg.vocab_size)
        eod = eod_id(tok)
    if not doc_domain:
        raise ValueError(f"no valid documents in {[str(p) for p in train_files]}: see the skipped counts "
                         f"{skips.as_dict()['by_reason']}")
    if len(domains) > 255:
        raise ValueError(f"{len(domains)} domains; per-token domain ids are stored as uint8 (at most 255)")
    n_docs = len(doc_domain)
    vocab = tok.get_vocab_size()
    token_dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32
    log.stage("read+bpe", f"{n_docs} documents in {len(domains)} domains, vocab {vocab}, "
                          f"{skips.total} skipped")

    # Pass 2: tokenize into a file-backed array (memory stays bounded by the index, not the text);
    # the training texts also go to the embedder here.
    doc_domain_a = np.asarray(doc_domain, dtype=np.uint8)
    doc_val_a = np.asarray(doc_val, dtype=bool)
    lengths = np.zeros(n_docs, dtype=np.int64)
    token_file = work / "tokens.bin"
    with open(token_file, "wb") as f:
        batch: list[str] = []
        i = 0

        def flush() -> None:
            nonlocal i
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                ids = np.asarray(enc.ids, dtype=token_dtype)
                f.write(ids.tobytes())
                lengths[i] = len(ids)
                i += 1
            batch.clear()

        def train_texts() -> Iterator[str]:
            for doc, is_val in documents(record=False):
                batch.append(doc.text)
                if len(batch) == 512:
                    flush()
                if not is_val:
                    yield doc.text
            flush()

        if cfg.embedder == "tfidf-svd":
            embeddings = tfidf_svd_embed(train_texts(), dim=cfg.embed_dim, seed=cfg.seed, fit_sample=cfg.embed_sample)
        else:
            embeddings = sentence_transformer_embed(list(train_texts()), cfg.embed_model)
    if i != n_docs:
        raise RuntimeError(f"inputs changed while preparing: read {i} documents, then {n_docs}")
    offsets = np.zeros(n_docs, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    tokens = np.memmap(token_file, dtype=token_dtype, mode="r", shape=(int(lengths.sum()),))
    log.stage("tokenize", f"{int(lengths.sum()):,} tokens; embedded {embeddings.shape[0]} training documents")

    # Order the training documents: kNN, near-duplicates, greedy path (or random).
    train_ids = np.flatnonzero(~doc_val_a)
    params = KnnParams(cfg.knn_k, cfg.knn_trees, cfg.knn_search_k, cfg.seed)
    local, drop, n_partitions = order_documents(embeddings, params, cfg.dedup_threshold, cfg.order, cfg.partition_size)
    for j in np.flatnonzero(drop):
        skips.add("near_duplicate", doc_where[train_ids[j]], domains[doc_domain_a[train_ids[j]]],
                  f"cosine > {cfg.dedup_threshold}")
    train_order = train_ids[local]
    neighbour_same_domain = float(np.mean(doc_domain_a[train_order[1:]] == doc_domain_a[train_order[:-1]])) \
        if len(train_order) > 1 else 1.0
    log.stage("order", f"{cfg.order}: {len(train_order)} documents in {n_partitions} partition(s), "
                       f"{int(drop.sum())} near-duplicates dropped, "
                       f"{neighbour_same_domain:.1%} of path steps stay in a domain")

    # Validation: each domain packed on its own (single-domain sequences, in reading order), the
    # domains' sequences then dealt round-robin, so any prefix of the split covers every domain.
    val_ids = np.flatnonzero(doc_val_a)
    val_groups = [val_ids[doc_domain_a[val_ids] == d] for d in range(len(domains))]
    val_order = np.concatenate(val_groups) if val_groups else val_ids

    _check_splits_fill_a_sequence(cfg, lengths, train_order, [g for g in val_groups if len(g)], bool(val_files))
    pack = dict(offsets=offsets, lengths=lengths, doc_domain=doc_domain_a, tokens=tokens, eod=eod,
                token_dtype=token_dtype, cfg=cfg, work=work, out=out)
    splits = {"train": _pack_and_write("train", [train_order], shuffle=True, **pack),
              "val": _pack_and_write("val", [g for g in val_groups if len(g)], shuffle=False, **pack)}
    log.stage("pack+shard", f"train {splits['train']['sequences']} sequences in {len(splits['train']['shards'])} "
                            f"shards, val {splits['val']['sequences']} in {len(splits['val']['shards'])}")

    counts = unigram_counts(tokens, offsets, lengths, train_order, vocab, eod)
    unigram = unigram_ppl(counts, tokens, offsets, lengths, val_order, doc_domain_a, eod)
    atomic_write_bytes(out / UNIGRAM, npy_bytes(counts))
    atomic_write_bytes(out / TOKENIZER, tok.to_str().encode("utf-8"))
    by_domain: dict[str, dict] = {d: {"train_documents": 0, "val_documents": 0, "train_tokens": 0, "val_tokens": 0}
                               for d in domains}
    for ids, split in ((train_order, "train"), (val_order, "val")):
        for d, n in zip(doc_domain_a[ids], lengths[ids]):
            by_domain[domains[d]][f"{split}_documents"] += 1
            by_domain[domains[d]][f"{split}_tokens"] += int(n) + 1
    manifest = {
        **fingerprint,
        "domains": domains,
        "vocab_size": vocab,
        "eod_id": eod,
        "seq_len": cfg.seq_len,
        "token_dtype": np.dtype(token_dtype).name,
        "counts_by_domain": by_domain,
        "skipped": skips.as_dict(),
        "ordering": {"order": cfg.order, "embedder": cfg.embedder, "embed_dim": int(embeddings.shape[1]),
                     "knn": dataclasses.asdict(params), "annoy_build_threads": 1,
                     "dedup_threshold": cfg.dedup_threshold, "near_duplicates_dropped": int(drop.sum()),
                     "partition_size": cfg.partition_size, "partitions": n_partitions,
                     "path_same_domain_fraction": round(neighbour_same_domain, 6)},
        "splits": splits,
        "baselines": {"unigram_val_ppl": {domains[d]: round(p, 3) for d, p in unigram.items()},
                      "unigram_counts": {"name": UNIGRAM, "sha256": sha256_file(out / UNIGRAM)}},
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    log.stage("manifest", f"{out / MANIFEST}")
    manifest["timings_s"] = dict(log.stages)  # returned for reports; kept out of the file (determinism)
    return manifest


def _check_splits_fill_a_sequence(cfg: PrepareConfig, lengths: np.ndarray, train_order: np.ndarray,
                                  val_groups: list[np.ndarray], has_val_files: bool) -> None:
    """Refuse, before writing, a split that would hold no full sequence (fit and validate need both)."""
    train_tokens = int(lengths[train_order].sum()) + len(train_order)
    if num_sequences(train_tokens, cfg.seq_len)[0] == 0:
        raise ValueError(f"the training documents hold {train_tokens} tokens, not one sequence of "
                         f"--seq_len {cfg.seq_len} + 1: give more documents or a smaller --seq_len")
    val = sum(num_sequences(int(lengths[g].sum()) + len(g), cfg.seq_len)[0] for g in val_groups)
    if val == 0:
        where = "the --val_inputs" if has_val_files else f"--val_fraction {cfg.val_fraction} of the documents"
        raise ValueError(f"{where} hold(s) no full validation sequence of --seq_len {cfg.seq_len} + 1 tokens "
                         "(validation and the per-domain table need one): give more held-out text "
                         "(--val_inputs, a larger --val_fraction) or a smaller --seq_len")


def _pack_and_write(split: str, groups: list[np.ndarray], offsets: np.ndarray, lengths: np.ndarray,
                    doc_domain: np.ndarray, tokens: np.ndarray, eod: int, token_dtype: type,
                    cfg: PrepareConfig, work: Path, out: Path, shuffle: bool) -> dict:
    """Pack each group of documents (in its order) into its own stream, cut sequences, write shards.

    shuffle: one seeded permutation of all sequences (training: whole sequences, never documents);
    otherwise the groups' sequences are interleaved round-robin, each group in order.
    """
    streams = []
    tail = 0
    for g, order in enumerate(groups):
        total = int(lengths[order].sum()) + len(order)
        size = max(total, 1)
        stream = np.memmap(work / f"{split}-{g}-tokens.bin", dtype=token_dtype, mode="w+", shape=(size,))[:total]
        stream_domains = np.memmap(work / f"{split}-{g}-domains.bin", dtype=np.uint8, mode="w+", shape=(size,))[:total]
        starts = pack_stream(order, offsets, lengths, doc_domain, tokens, eod, stream, stream_domains)
        n_seq, dropped = num_sequences(total, cfg.seq_len)
        tail += dropped
        streams.append((order, stream, stream_domains, starts, n_seq))
    if shuffle:
        entries = [(g, i) for g, (*_, n) in enumerate(streams) for i in range(n)]
        entries = [entries[j] for j in np.random.default_rng(cfg.seed).permutation(len(entries))]
    else:
        longest = max((n for *_, n in streams), default=0)
        entries = [(g, i) for i in range(longest) for g, (*_, n) in enumerate(streams) if i < n]

    def samples() -> Iterator[Sample]:
        for g, i in entries:
            order, stream, stream_domains, starts, _ = streams[g]
            s = sequence_slice(i, cfg.seq_len)
            first, last = documents_in(i, cfg.seq_len, starts)
            docs = [[int(order[p]), int(starts[p]) - s.start] for p in range(first, last)]
            yield Sample(f"{split}-{g:03d}-{i:07d}", np.array(stream[s]), np.array(stream_domains[s]),
                         {"split": split, "group": g, "sequence": i, "documents": docs})

    shards = write_shards(out, split, samples(), cfg.sequences_per_shard)
    return {"sequences": len(entries), "tail_tokens_dropped": tail,
            "documents": int(sum(len(o) for o in groups)), "shards": shards}
