"""The stages of `lory prepare`, each a task function ``stage(work, rank, tasks)`` an engine runs.

A stage reads what earlier stages left in the work folder and writes its own outputs there (each
file atomically), so a task killed midway is simply run again, and a finished task is skipped
(the engine's completion records). Parallel stages split their work by a key that does not depend
on the number of tasks (input file, digest range, model, cluster, partition, piece, shard), and every
merge is in that key's order: the same inputs and config give byte-identical shards and manifest with
any number of tasks or workers. No task holds a table of every document: what one holds is one
input file, digest range, sample, cluster, partition or shard (the two one-task stages read a
sample and the pieces' summaries), so memory stays flat as the corpus grows. Two exceptions: the
validation documents (a --val_fraction share, in one pack key and in finish) and --order random's
single piece (the ablation baseline's one permutation of all documents).

    read       (parallel, by input file)  validate records; text, domain, place, sorted digests
    dedup      (parallel, by digest range)  exact duplicates across all files, one range at a time
    merge      (parallel, by input file)  each file's document table: kept rows, domains, splits
    fit        (parallel, by model)       the tokenizer and the embedding map, each on a seeded sample
    encode     (parallel, by input file)  token ids of every document, embeddings of training ones
    cluster    (one task)   k-means centroids on a seeded sample of the embeddings
    assign     (parallel, by input file)  each training document's nearest centroid
    split      (parallel, by cluster)     clusters cut into partitions of at most partition_size
    order      (parallel, by partition)   kNN, near-duplicates and greedy path inside each partition
    pack       (parallel, by piece)       each partition's documents along its path -> a piece of the stream
    shards     (parallel, by shard)       write the .tar.gz shards
    finish     (one task)   unigram baseline, tokenizer.json, manifest.json (last)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from .embed import TfidfSvdMap, fit_tfidf_svd, sample_rows, sentence_transformer_embed
from .manifest import MANIFEST, TOKENIZER, shard_name
from .ordering import KnnParams, order_partition, random_order
from .packed import PackedStream, write_piece
from .packing import num_sequences, shuffled
from . import partition as partitions
from .shards import Sample, atomic_write_bytes, npy_bytes, sha256_file, write_shard
from .sources import InputFile, ReadPolicy, SkipLog, file_documents, skip_duplicate, text_digest
from .stats import unigram_ppl
from .tokenizer import eod_id, load_tokenizer, train_tokenizer

UNIGRAM = "unigram.npy"  # training-token counts, for the unigram baseline on any validated tokens
PLAN = "plan.json"


class Work:
    """Paths of the work folder, and the plan every stage reads: the config and the input files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        plan = json.loads((self.folder / PLAN).read_text("utf-8"))
        self.cfg = plan["config"]
        self.out = Path(plan["output"])
        self.fingerprint = plan["fingerprint"]
        self.files = [InputFile(f["location"], f["kind"], f["default_domain"]) for f in plan["files"]]
        self.val_file = [bool(f["val"]) for f in plan["files"]]  # a --val_inputs file (else held out by hash)

    @staticmethod
    def write_plan(folder: Path, cfg: dict, output: str, fingerprint: dict, train: list[InputFile],
                   val: list[InputFile]) -> None:
        files = [{**dataclasses.asdict(f), "val": is_val} for group, is_val in ((train, False), (val, True))
                 for f in group]
        plan = {"config": cfg, "output": output, "fingerprint": fingerprint, "files": files}
        atomic_json(folder / PLAN, plan)

    def path(self, *parts: str) -> Path:
        p = self.folder.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def policy(self) -> ReadPolicy:
        c = self.cfg
        return ReadPolicy(c["text_field"], c["domain_field"], c["min_chars"], c["max_chars"], c["strict"])


def atomic_json(path: Path, value: object) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def atomic_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, npy_bytes(array))


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def mine(n: int, rank: int, tasks: int) -> range:
    """The keys 0..n-1 task ``rank`` of ``tasks`` owns: every tasks-th one (the split does not change
    what a key's output is, only who writes it)."""
    return range(rank, n, tasks)


def balanced(sizes: np.ndarray, rank: int, tasks: int) -> list[int]:
    """The keys task ``rank`` of ``tasks`` owns when key k costs about ``sizes[k]``: largest first,
    each to the task with the least work so far, ties to the lower rank (longest-processing-time
    scheduling). Round robin gave one of two tasks 71k of 99k documents to order (partitions of 43k,
    28k and 28k); this gives 43k and 56k. Like ``mine``, it decides only who writes a key."""
    import heapq

    load = [(0, t) for t in range(tasks)]  # (work so far, task): a heap
    owned = []
    for key in sorted(range(len(sizes)), key=lambda k: (-int(sizes[k]), k)):
        work, task = heapq.heappop(load)
        heapq.heappush(load, (work + int(sizes[key]), task))
        if task == rank:
            owned.append(key)
    return owned


# -- read ------------------------------------------------------------------------------------------

def _is_val(text: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2 ** 64


def read(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: its valid documents (read/NNNNNN.jsonl.gz), their places, domains and
    hash split (read/NNNNNN.npz), their digests sorted for de-duplication by range
    (read/NNNNNN.keys.npy, .buckets.npy); what was skipped, by reason (read/NNNNNN.skips.json)."""
    work = Work(folder)
    policy = work.policy
    for f in mine(len(work.files), rank, tasks):
        skips = SkipLog(max_examples=20)
        digests, wheres, domains, held_out = bytearray(), [], [], []  # digests: 16 bytes a document
        with atomic_file(work.path("read", f"{f:06d}.jsonl.gz")) as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
            for doc in file_documents(work.files[f], policy, skips):
                gz.write((json.dumps(doc.text) + "\n").encode("utf-8"))
                digests += text_digest(doc.text)
                wheres.append(doc.where)
                domains.append(doc.domain)
                held_out.append(_is_val(doc.text, work.cfg["val_fraction"]))
        keys = digest_keys(np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 16))
        atomic_npy(work.path("read", f"{f:06d}.keys.npy"), keys)
        atomic_npy(work.path("read", f"{f:06d}.buckets.npy"), bucket_bounds(keys[:, 0]))
        with atomic_file(work.path("read", f"{f:06d}.npz")) as out:
            np.savez(out, where=np.array(wheres, dtype=str), domain=np.array(domains, dtype=str),
                     held_out=np.array(held_out, dtype=bool))
        atomic_json(work.path("read", f"{f:06d}.skips.json"), skips.as_dict())


def _texts(work: Work, f: int) -> Iterator[str]:
    with gzip.open(work.folder / "read" / f"{f:06d}.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def rows_of(items: Iterator[str], rows: np.ndarray) -> Iterator[str]:
    """The items at the ascending positions ``rows``; stops reading after the last one."""
    k = 0
    for i, item in enumerate(items):
        if k == len(rows):
            return
        if i == rows[k]:
            yield item
            k += 1


# -- dedup -----------------------------------------------------------------------------------------

BUCKETS = 4096
"""Digest buckets (the top 12 bits of a digest's first word): a dedup range is a run of them."""
DEDUP_RANGE = 1 << 20
"""Documents in one dedup task's range, about (ranges = ceil(N / this)): its memory, not the corpus's."""


def digest_keys(digests: np.ndarray) -> np.ndarray:
    """(N, 3) uint64 rows (first word, second word, row) of the 16-byte digests (N, 16) uint8, sorted:
    equal digests together, by row; a digest range is a contiguous slice of them."""
    words = np.ascontiguousarray(digests).view(np.uint64).reshape(-1, 2)  # (N, 2): a digest as two words
    keys = np.column_stack([words, np.arange(len(words), dtype=np.uint64)])  # (N, 3)
    return keys[np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))]


def bucket_bounds(first_words: np.ndarray) -> np.ndarray:
    """(BUCKETS + 1,) where each bucket starts in the sorted first words (N,) uint64, then N."""
    starts = np.arange(BUCKETS, dtype=np.uint64) << np.uint64(64 - 12)  # (BUCKETS,) a bucket's smallest word
    return np.append(np.searchsorted(first_words, starts), len(first_words)).astype(np.int64)


def dedup_ranges(n: int) -> list[range]:
    """The buckets of each dedup task's range: ceil(n / DEDUP_RANGE) runs of equal width (digests are
    uniform, so each holds about n / ranges documents); the count depends on the corpus only."""
    k = min(BUCKETS, max(1, -(-n // DEDUP_RANGE)))
    edges = [BUCKETS * i // k for i in range(k + 1)]
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


def later_copies(keys: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Sorted reading positions of the rows whose digest an earlier row has: keys (n, 2) uint64
    digests, position (n,) int64 each row's place in reading order (unique). The first copy in
    reading order stays. Numeric arrays only, no Python object per document."""
    order = np.lexsort((position, keys[:, 1], keys[:, 0]))  # equal digests together, first copy first
    ordered = keys[order]
    later = np.zeros(len(keys), dtype=bool)
    later[1:] = np.all(ordered[1:] == ordered[:-1], axis=1)
    return np.sort(position[order[later]])


def read_counts(work: Work) -> np.ndarray:
    """(files + 1,) the reading position of each input file's first document (read's key files)."""
    counts = [len(partitions.RowFile(work.folder / "read" / f"{f:06d}.keys.npy")) for f in range(len(work.files))]
    return np.cumsum([0] + counts)


def dedup(folder: Path, rank: int, tasks: int) -> None:
    """Per digest range: the reading positions of exact duplicates across all files (dedup/NNNNNN.npy,
    sorted) and where each file's start in it (dedup/NNNNNN.bounds.npy). A task reads only its
    range's slice of each file's sorted keys: its memory is the range, not the corpus."""
    work = Work(folder)
    first = read_counts(work)
    ranges = dedup_ranges(int(first[-1]))
    for k in mine(len(ranges), rank, tasks):
        keys, position = [], []
        for f in range(len(work.files)):
            lo, hi = partitions.RowFile(work.folder / "read" / f"{f:06d}.buckets.npy")[[ranges[k].start, ranges[k].stop]]
            part = partitions.RowFile(work.folder / "read" / f"{f:06d}.keys.npy")[int(lo):int(hi)]  # (m, 3)
            keys.append(part[:, :2])
            position.append(part[:, 2].astype(np.int64) + first[f])
        later = later_copies(np.concatenate([np.zeros((0, 2), np.uint64), *keys]),
                             np.concatenate([np.zeros(0, np.int64), *position]))
        atomic_npy(work.path("dedup", f"{k:06d}.npy"), later)
        atomic_npy(work.path("dedup", f"{k:06d}.bounds.npy"), np.searchsorted(later, first))


# -- merge -----------------------------------------------------------------------------------------

def merge(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: its document table (merge/NNNNNN.npz: kept rows, domain ids in the file's own
    list, split) and what it adds to the corpus (merge/NNNNNN.json: its domains in order of first
    appearance among kept documents, documents, training documents, skipped). ``corpus`` joins them."""
    work = Work(folder)
    policy = work.policy
    held_out_by_hash = not any(work.val_file)
    first = read_counts(work)
    n_ranges = len(dedup_ranges(int(first[-1])))
    for f in mine(len(work.files), rank, tasks):
        skips = SkipLog()
        skips.absorb(json.loads((work.folder / "read" / f"{f:06d}.skips.json").read_text("utf-8")))
        later = []
        for k in range(n_ranges):
            a, b = partitions.RowFile(work.folder / "dedup" / f"{k:06d}.bounds.npy")[f:f + 2]
            later.append(partitions.RowFile(work.folder / "dedup" / f"{k:06d}.npy")[int(a):int(b)] - first[f])
        duplicates = np.sort(np.concatenate([np.zeros(0, np.int64), *later]))  # rows of this file, ascending
        kept = np.ones(int(first[f + 1] - first[f]), dtype=bool)
        kept[duplicates] = False
        with np.load(work.folder / "read" / f"{f:06d}.npz", allow_pickle=False) as z:
            domain, held_out = z["domain"], z["held_out"]
            where = z["where"][duplicates] if len(duplicates) else []
        for row, place in zip(duplicates, where):
            skip_duplicate(policy, skips, _Doc(str(domain[row]), str(place)))
        rows = np.flatnonzero(kept)
        names, first_row, codes = np.unique(domain[rows], return_index=True, return_inverse=True)
        appearance = np.argsort(first_row, kind="stable")  # this file's domains in order of first appearance
        local = np.empty(len(names), dtype=np.int64)
        local[appearance] = np.arange(len(names))
        val = np.ones(len(rows), dtype=bool) if work.val_file[f] else (held_out[rows] & held_out_by_hash)
        with atomic_file(work.path("merge", f"{f:06d}.npz")) as out:
            np.savez(out, row=rows.astype(np.int64), domain=local[codes.reshape(-1)].astype(np.int32), val=val)
        atomic_json(work.path("merge", f"{f:06d}.json"), {
            "domains": [str(names[i]) for i in appearance], "documents": len(rows),
            "train": int((~val).sum()), "skipped": skips.as_dict()})


def corpus(work: Work) -> dict:
    """What the merge stage found in all files together: the domains in order of first appearance,
    the kept and training documents, the skipped ones; each file's domain ids into the global list.
    Raises when no document was kept or there are more domains than per-token ids can hold."""
    skips = SkipLog()
    domains: dict[str, int] = {}  # name -> id, in order of first appearance
    files, documents, train = [], 0, 0
    for f in range(len(work.files)):
        part = json.loads((work.folder / "merge" / f"{f:06d}.json").read_text("utf-8"))
        skips.absorb(part["skipped"])
        files.append([domains.setdefault(name, len(domains)) for name in part["domains"]])
        documents += part["documents"]
        train += part["train"]
    if not documents:
        train_names = [str(work.files[f]) for f in range(len(work.files)) if not work.val_file[f]]
        raise ValueError(f"no valid documents in {train_names}: see the skipped counts {skips.as_dict()['by_reason']}")
    if len(domains) > 255:
        raise ValueError(f"{len(domains)} domains; per-token domain ids are stored as uint8 (at most 255)")
    return {"domains": list(domains), "skipped": skips.as_dict(), "documents": documents, "train_documents": train,
            "file_domains": files}


def doc_table(work: Work, f: int, file_domains: list[int]) -> dict[str, np.ndarray]:
    """Input file f's kept documents: row in the file (ascending), domain id (global), validation."""
    with np.load(work.folder / "merge" / f"{f:06d}.npz", allow_pickle=False) as z:
        return {"row": z["row"], "domain": np.array(file_domains, dtype=np.uint8)[z["domain"]], "val": z["val"]}


# -- fit -------------------------------------------------------------------------------------------

FIT_MODELS = ("tokenizer", "embedding map")
"""The fit stage's keys: two models fit on seeded samples of the training documents, independently
(one task each with two or more workers: neither waits for the other)."""


def fit(folder: Path, rank: int, tasks: int) -> None:
    """Per model: the BPE tokenizer (fit/tokenizer.json, fit/tokenizer.meta.json) and the embedding
    map (fit/embed.npz, for the tfidf-svd embedder), each fit on its own seeded sample."""
    work = Work(folder)
    cfg = work.cfg
    n_train = corpus(work)["train_documents"]
    for key in mine(len(FIT_MODELS), rank, tasks):
        if key == 0:
            if cfg["tokenizer"]:
                tok, eod = load_tokenizer(cfg["tokenizer"])
            else:  # seeded apart from the embedder's sample (seed + 1), all documents when there are fewer
                rows = sample_rows(n_train, cfg["tokenizer_sample"], cfg["seed"] + 1)
                tok = train_tokenizer(training_texts(work, rows), cfg["vocab_size"])
                eod = eod_id(tok)
            atomic_write_bytes(work.path("fit", TOKENIZER), tok.to_str().encode("utf-8"))
            atomic_json(work.path("fit", "tokenizer.meta.json"), {"eod_id": eod, "vocab_size": tok.get_vocab_size()})
        elif cfg["embedder"] == "tfidf-svd":
            rows = sample_rows(n_train, cfg["embed_sample"], cfg["seed"])
            fit_tfidf_svd(training_texts(work, rows), cfg["embed_dim"], seed=cfg["seed"]).save(
                work.path("fit", "embed.npz"))


def training_texts(work: Work, rows: np.ndarray) -> Iterator[str]:
    """Texts of the training documents whose training index (in reading order) is in the sorted
    ``rows``, in order; one file's document table at a time, and a file none of whose documents is
    wanted is not read."""
    start = 0  # training index of the file's first training document
    for f in range(len(work.files)):
        with np.load(work.folder / "merge" / f"{f:06d}.npz", allow_pickle=False) as z:
            train_rows = z["row"][~z["val"]]  # (n_f,) ascending
        a, b = np.searchsorted(rows, [start, start + len(train_rows)])
        wanted = train_rows[rows[a:b] - start]
        start += len(train_rows)
        if len(wanted):
            yield from rows_of(_texts(work, f), wanted)


@dataclasses.dataclass(frozen=True)
class _Doc:  # what skip_duplicate needs of a document
    domain: str
    where: str


def _meta(work: Work) -> dict:
    """The corpus (``corpus``: domains, skipped, documents) and the tokenizer (eod_id, vocab_size)."""
    return {**corpus(work),
            **json.loads((work.folder / "fit" / "tokenizer.meta.json").read_text("utf-8"))}


def token_dtype(vocab: int) -> type:
    return np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32


# -- encode ----------------------------------------------------------------------------------------

def encode(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: the token ids of its kept documents (encode/NNNNNN.tokens.bin, .lengths.npy)
    and the embeddings of its training documents (encode/NNNNNN.embed.npy)."""
    from tokenizers import Tokenizer

    work = Work(folder)
    meta = _meta(work)
    tok = Tokenizer.from_str((work.folder / "fit" / TOKENIZER).read_text("utf-8"))
    dtype = token_dtype(meta["vocab_size"])
    embed_map = TfidfSvdMap.load(work.folder / "fit" / "embed.npz") if work.cfg["embedder"] == "tfidf-svd" else None
    doc_first = file_bounds(work)["doc"]
    kept = [json.loads((work.folder / "merge" / f"{f:06d}.json").read_text("utf-8"))["documents"]
            for f in range(len(work.files))]
    for f in balanced(np.array(kept), rank, tasks):  # by kept documents
        table = doc_table(work, f, meta["file_domains"][f])
        rows, is_val = table["row"], table["val"]  # kept rows (ascending), their split
        lengths, batch, shape = [], [], [0, 0]  # shape: embedded rows, their dimension

        def flush(out, embedded) -> None:  # noqa: ANN001 (binary files)
            encoded = tok.encode_batch([t for t, _ in batch], add_special_tokens=False)
            for enc in encoded:
                out.write(np.asarray(enc.ids, dtype=dtype).tobytes())
            lengths.append(np.array([len(enc.ids) for enc in encoded], dtype=np.int64))
            train_texts = [t for t, val in batch if not val]
            if train_texts:
                vectors = embed_map.transform(train_texts) if embed_map is not None \
                    else sentence_transformer_embed(train_texts, work.cfg["embed_model"])
                embedded.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                shape[0], shape[1] = shape[0] + len(vectors), vectors.shape[1]
            batch.clear()

        # A file streamed in batches: its tokens and its training documents' embeddings (raw float32 rows).
        with atomic_file(work.path("encode", f"{f:06d}.tokens.bin")) as out, \
                atomic_file(work.path("encode", f"{f:06d}.embed.f32")) as embedded:
            for text, val in zip(rows_of(_texts(work, f), rows), is_val):
                batch.append((text, bool(val)))
                if len(batch) == 2048:
                    flush(out, embedded)
            flush(out, embedded)
        lengths = np.concatenate([np.zeros(0, np.int64), *lengths])
        atomic_npy(work.path("encode", f"{f:06d}.lengths.npy"), lengths)
        train = np.flatnonzero(~is_val)  # (n_train,) the file's training documents, by training id
        atomic_npy(work.path("encode", f"{f:06d}.train.npy"), np.stack([
            doc_first[f] + train, np.full(len(train), f), (np.cumsum(lengths) - lengths)[train], lengths[train],
            table["domain"][train]], axis=1).astype(np.int64))  # (n_train, 5) as TrainingDocs reads them
        atomic_json(work.path("encode", f"{f:06d}.embed.json"), {"rows": shape[0], "dim": shape[1],
                                                                 "tokens": int(lengths.sum())})


# -- cluster, assign, split: the partitions ------------------------------------------------------

def token_rows(work: Work, meta: dict) -> partitions.JoinedRows:
    """Every document's tokens, documents in reading order: the input files' token files read as one."""
    dtype = token_dtype(meta["vocab_size"])
    return partitions.JoinedRows([partitions.RowFile(work.folder / "encode" / f"{f:06d}.tokens.bin", dtype, (s["tokens"],))
                                  for f, s in enumerate(encoded(work))])


def embedding_rows(work: Work) -> partitions.JoinedRows:
    """Every training document's embedding (N, dim), in reading order: the input files' embedding
    files read as one (a file of validation documents has none)."""
    return partitions.JoinedRows([partitions.RowFile(work.folder / "encode" / f"{f:06d}.embed.f32", np.float32,
                                                     (s["rows"], s["dim"])) for f, s in enumerate(encoded(work)) if s["rows"]])


def encoded(work: Work) -> list[dict]:
    """Per input file, what encode wrote: embedded rows, their dimension, tokens."""
    return [json.loads((work.folder / "encode" / f"{f:06d}.embed.json").read_text("utf-8")) for f in range(len(work.files))]


def cluster(folder: Path, rank: int, tasks: int) -> None:
    """One task: spherical k-means centroids, k = ceil(N / partition_size), of a seeded sample of the
    training embeddings (cluster/centroids.npy; (0, dim) when N fits one partition: one cluster)."""
    work = Work(folder)
    with embedding_rows(work) as x:
        c = partitions.centroids(x, work.cfg["partition_size"], work.cfg["seed"])
        atomic_npy(work.path("cluster", "centroids.npy"), np.zeros((0, x.shape[1]), np.float32) if c is None else c)


def assign(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: its training documents' nearest centroids, as their training ids (numbered
    across files) grouped by cluster, ascending within one (assign/NNNNNN.rows.npy), and where each
    cluster starts in them (assign/NNNNNN.bounds.npy, (k + 1,))."""
    work = Work(folder)
    c = load_npy(work.folder / "cluster" / "centroids.npy")  # (k, dim)
    files = encoded(work)
    first = np.cumsum([0] + [s["rows"] for s in files])
    for f in balanced(np.array([s["rows"] for s in files]), rank, tasks):
        n = files[f]["rows"]
        with partitions.RowFile(work.folder / "encode" / f"{f:06d}.embed.f32", np.float32, (n, files[f]["dim"])) as x:
            labels = partitions.assign(x, c) if len(c) else np.zeros(n, dtype=np.int64)
        order, bounds = partitions.member_table(labels, max(len(c), 1))  # every cluster, empty ones too
        atomic_npy(work.path("assign", f"{f:06d}.rows.npy"), order + first[f])
        atomic_npy(work.path("assign", f"{f:06d}.bounds.npy"), bounds)


def cluster_parts(work: Work) -> tuple[np.ndarray, list[list[int]]]:
    """(each cluster's documents (k,), the sizes of the parts split cuts each into)."""
    counts = sum(np.diff(load_npy(work.folder / "assign" / f"{f:06d}.bounds.npy")) for f in range(len(work.files)))
    return counts, partitions.part_sizes(counts, work.cfg["partition_size"])


def split(folder: Path, rank: int, tasks: int) -> None:
    """Per cluster: its documents (read from every file's assignment) cut into partitions of at most
    ``partition_size`` (``partition.cut``), numbered across clusters in cluster order: a partition's
    training ids, ascending (split/PPPPPP.npy), and the float64 sum of its embeddings, for the
    visiting path (split/PPPPPP.sum.npy). A task holds one cluster."""
    work = Work(folder)
    counts, parts = cluster_parts(work)
    first_part = np.cumsum([0] + [len(p) for p in parts])
    with embedding_rows(work) as x:
        for c in balanced(counts, rank, tasks):  # by documents
            group = []
            for f in range(len(work.files)):  # two short reads a file: its cluster bounds, then its rows
                with partitions.RowFile(work.folder / "assign" / f"{f:06d}.bounds.npy") as bounds:
                    a, b = bounds[c:c + 2]
                with partitions.RowFile(work.folder / "assign" / f"{f:06d}.rows.npy") as rows:
                    group.append(rows[int(a):int(b)])
            group = np.concatenate([np.zeros(0, np.int64), *group])  # (n_c,) ascending: files in order
            for j, rows in enumerate(partitions.cut(x, group, work.cfg["partition_size"])):
                total = np.zeros((1, x.shape[1]), dtype=np.float64)
                for a in range(0, len(rows), 65536):  # row by row in order, as partition.centroid_path adds
                    np.add.at(total, np.zeros(len(rows[a:a + 65536]), dtype=np.int64), x[rows[a:a + 65536]])
                p = int(first_part[c]) + j
                atomic_npy(work.path("split", f"{p:06d}.sum.npy"), total[0])
                atomic_npy(work.path("split", f"{p:06d}.npy"), rows)


def partition_sizes(work: Work) -> np.ndarray:
    """(P,) the documents of every partition, in partition order."""
    return np.array([n for sizes in cluster_parts(work)[1] for n in sizes], dtype=np.int64)


# -- order -----------------------------------------------------------------------------------------

def order(folder: Path, rank: int, tasks: int) -> None:
    """Per partition: its documents' greedy path and near-duplicates (order/NNNNNN.npz, training ids)."""
    work = Work(folder)
    cfg = work.cfg
    params = KnnParams(cfg["knn_k"], cfg["knn_trees"], cfg["knn_search_k"], cfg["seed"])
    with embedding_rows(work) as embeddings:
        for p in balanced(partition_sizes(work), rank, tasks):  # by documents: kNN and path cost about N log N
            rows = load_npy(work.folder / "split" / f"{p:06d}.npy")  # (n_p,) ascending
            local, drop = order_partition(embeddings[rows], params, cfg["dedup_threshold"])
            with atomic_file(work.path("order", f"{p:06d}.npz")) as out:
                np.savez(out, path=rows[local], dropped=rows[drop])


# -- pack ------------------------------------------------------------------------------------------

def file_bounds(work: Work) -> dict[str, np.ndarray]:
    """(files + 1,) each: where each input file's kept documents and training documents begin in
    reading order (from the merge stage's small summaries)."""
    merged = [json.loads((work.folder / "merge" / f"{f:06d}.json").read_text("utf-8")) for f in range(len(work.files))]
    return {"doc": np.cumsum([0] + [m["documents"] for m in merged]),
            "train": np.cumsum([0] + [m["train"] for m in merged])}


def file_docs(work: Work, meta: dict, f: int, first_doc: int, first_token: int) -> dict[str, np.ndarray]:
    """Input file f's kept documents: id (place in reading order), token offset in ``token_rows``,
    length, domain id, validation, row in the file; ``first_doc`` and ``first_token``: where the
    file's documents and tokens begin in reading order."""
    table = doc_table(work, f, meta["file_domains"][f])
    lengths = load_npy(work.folder / "encode" / f"{f:06d}.lengths.npy")
    return {"id": first_doc + np.arange(len(lengths), dtype=np.int64),
            "offset": first_token + np.cumsum(lengths) - lengths, "length": lengths, **table}


class TrainingDocs:
    """The training documents' records encode wrote (encode/NNNNNN.train.npy), read by training id
    (numbered across files) with one pread a document: a partition's documents lie in every file,
    and reading every file's table for each partition would read the corpus's tables once per
    partition. Opened once per task (thousands of input files: thousands of headers)."""

    def __init__(self, work: Work) -> None:
        files = encoded(work)
        self.first_token = np.cumsum([0] + [e["tokens"] for e in files])  # (files + 1,)
        self.records = partitions.JoinedRows([partitions.RowFile(work.folder / "encode" / f"{f:06d}.train.npy")
                                              for f in range(len(files))])

    def __getitem__(self, train_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Of each of ``train_ids``, in that order: id (place in reading order), token offset in
        ``token_rows``, length, domain id."""
        doc, file, offset, length, domain = self.records[train_ids].T if len(train_ids) else np.zeros((5, 0), np.int64)
        return {"id": doc, "offset": self.first_token[file] + offset, "length": length, "domain": domain.astype(np.uint8)}

    def close(self) -> None:
        self.records.close()


def train_pieces(work: Work, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pieces of the training stream, in stream order: (their documents, the partition each one
    packs), given the partitions' ``sizes``. One piece per partition along the visiting path (the
    greedy path over the partitions' centroids); under --order random one piece of every kept
    document (partition -1)."""
    if work.cfg["order"] == "random":
        return np.array([sizes.sum()]), np.array([-1])
    visit = partitions.visit_path(np.stack([load_npy(work.folder / "split" / f"{p:06d}.sum.npy")
                                            for p in range(len(sizes))]))
    return sizes[visit], visit


def piece_order(work: Work, partition: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a piece's training documents in stream order, the near-duplicates it reports), training ids:
    partition ``partition``'s path, or (-1) every kept document in one seeded random order."""
    if partition < 0:  # the baseline: one seeded permutation of all kept documents
        drop = np.zeros(int(sizes.sum()), dtype=bool)
        for p in range(len(sizes)):
            with np.load(work.folder / "order" / f"{p:06d}.npz", allow_pickle=False) as z:
                drop[z["dropped"]] = True
        return random_order(~drop, work.cfg["seed"]), np.flatnonzero(drop)
    with np.load(work.folder / "order" / f"{partition:06d}.npz", allow_pickle=False) as z:
        return z["path"], z["dropped"]


def pack(folder: Path, rank: int, tasks: int) -> None:
    """Per piece of the training stream (``train_pieces``): its documents packed (``packed.write_piece``,
    pack/train-QQQQQQ.*), their token counts, domains, the near-duplicates it dropped; and one key for
    the validation documents, one stream per domain (pack/val-GGGGGG.*, pack/val.json). A task holds
    one partition's documents (all of them under --order random, the baseline)."""
    work = Work(folder)
    meta = _meta(work)
    sizes = partition_sizes(work)
    pieces, packs = train_pieces(work, sizes)
    training = TrainingDocs(work)
    with token_rows(work, meta) as tokens, contextlib.closing(training):
        for q in balanced(np.append(pieces, meta["documents"] - meta["train_documents"]), rank, tasks):
            if q == len(pieces):
                _pack_validation(work, meta, tokens)
                continue
            ids, dropped = piece_order(work, int(packs[q]), sizes)
            docs = training[ids]
            counts = write_piece(work.path("pack", f"train-{q:06d}"), tokens, docs["offset"], docs["length"],
                                 docs["domain"], docs["id"], meta["eod_id"], meta["vocab_size"])
            atomic_npy(work.path("pack", f"train-{q:06d}.counts.npy"), counts)
            atomic_npy(work.path("pack", f"train-{q:06d}.dropped.npy"), training[dropped]["id"])
            n_domains, domain = len(meta["domains"]), docs["domain"]
            atomic_json(work.path("pack", f"train-{q:06d}.json"), {
                "documents": len(ids), "tokens": int(docs["length"].sum()) + len(ids),
                "same_domain_steps": int(np.sum(domain[1:] == domain[:-1])),
                "ends": [int(domain[0]), int(domain[-1])] if len(ids) else None,
                "domain_documents": np.bincount(domain, minlength=n_domains).tolist(),
                "domain_tokens": np.bincount(domain, weights=docs["length"] + 1, minlength=n_domains).astype(np.int64).tolist()})


def validation_groups(work: Work, meta: dict) -> list[dict[str, np.ndarray]]:
    """The validation documents of each domain (``file_docs`` columns), domains in order, empty ones left out."""
    parts = []
    first_doc, first_token = file_bounds(work)["doc"], np.cumsum([0] + [e["tokens"] for e in encoded(work)])
    for f in range(len(work.files)):
        docs = file_docs(work, meta, f, int(first_doc[f]), int(first_token[f]))
        parts.append({key: column[docs["val"]] for key, column in docs.items()})
    val = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    groups = [{key: column[val["domain"] == d] for key, column in val.items()} for d in range(len(meta["domains"]))]
    return [g for g in groups if len(g["id"])]


def _pack_validation(work: Work, meta: dict, tokens: partitions.JoinedRows) -> None:
    """Each domain's validation documents as a stream of its own, in reading order; the sequences
    dealt round-robin over the domains (pack/val-entries.npy: (group, sequence) rows)."""
    seq_len, entries, tail = work.cfg["seq_len"], [], 0
    groups = validation_groups(work, meta)
    for g, docs in enumerate(groups):
        write_piece(work.path("pack", f"val-{g:06d}"), tokens, docs["offset"], docs["length"], docs["domain"],
                    docs["id"], meta["eod_id"], meta["vocab_size"])
        n_seq, dropped_tail = num_sequences(int(docs["length"].sum()) + len(docs["id"]), seq_len)
        tail += dropped_tail
        entries.append(np.stack([np.full(n_seq, g, dtype=np.int64), np.arange(n_seq, dtype=np.int64)], axis=1))
    flat = np.concatenate([np.zeros((0, 2), dtype=np.int64), *entries])  # (S, 2), group by group
    atomic_npy(work.path("pack", "val-entries.npy"), flat[np.lexsort((flat[:, 0], flat[:, 1]))])  # round-robin
    atomic_json(work.path("pack", "val.json"), {"groups": len(groups), "tail": tail,
                                                "documents": int(sum(len(g["id"]) for g in groups))})


def stream_summary(work: Work) -> dict:
    """The training stream from its pieces' summaries: documents, tokens, sequences, tail, partitions,
    near-duplicates dropped, share of path steps inside a domain; the validation side's groups,
    documents, sequences and tail."""
    pieces = [json.loads(p.read_text("utf-8")) for p in sorted((work.folder / "pack").glob("train-[0-9]*[0-9].json"))]
    n_docs = sum(p["documents"] for p in pieces)
    tokens = sum(p["tokens"] for p in pieces)
    n_seq, tail = num_sequences(tokens, work.cfg["seq_len"])
    dropped = sum(len(load_npy(work.folder / "pack" / f"train-{q:06d}.dropped.npy", mmap=True)) for q in range(len(pieces)))
    val = json.loads((work.folder / "pack" / "val.json").read_text("utf-8"))
    return {"pieces": len(pieces), "train_documents": n_docs, "train_tokens": tokens, "train_sequences": n_seq,
            "train_tail": tail, "partitions": len(partition_sizes(work)), "near_duplicates_dropped": dropped,
            "path_same_domain_fraction": same_domain_fraction(pieces),
            "val_groups": val["groups"], "val_documents": val["documents"], "val_tail": val["tail"],
            "val_sequences": len(load_npy(work.folder / "pack" / "val-entries.npy", mmap=True))}


def same_domain_fraction(pieces: list[dict]) -> float:
    """Share of consecutive documents of the stream in one domain (1.0 with under two), from its
    pieces' own steps (``same_domain_steps``) and the steps between two pieces (``ends``: the first and
    last document's domain of each, None when empty)."""
    ends = [p["ends"] for p in pieces if p["ends"]]
    same = sum(p["same_domain_steps"] for p in pieces) + sum(a[1] == b[0] for a, b in zip(ends, ends[1:]))
    n_docs = sum(p["documents"] for p in pieces)
    return same / (n_docs - 1) if n_docs > 1 else 1.0


def check_splits_fill_a_sequence(cfg: dict, summary: dict, has_val_files: bool) -> None:
    """Refuse, before writing a shard, a split that holds no full sequence (fit and validate need both)."""
    if summary["train_sequences"] == 0:
        raise ValueError(f"the training documents hold {summary['train_tokens']} tokens, not one sequence of "
                         f"--seq_len {cfg['seq_len']} + 1: give more documents or a smaller --seq_len")
    if summary["val_sequences"] == 0:
        where = "the --val_inputs" if has_val_files else f"--val_fraction {cfg['val_fraction']} of the documents"
        raise ValueError(f"{where} hold(s) no full validation sequence of --seq_len {cfg['seq_len']} + 1 tokens "
                         "(validation and the per-domain table need one): give more held-out text "
                         "(--val_inputs, a larger --val_fraction) or a smaller --seq_len")


# -- shards ----------------------------------------------------------------------------------------

def shards(folder: Path, rank: int, tasks: int) -> None:
    """Per shard: its sequences, written as {split}-NNNNN.tar.gz into the output folder. Training
    shards take the training stream's sequences in a seeded permutation computed per position
    (``packing.shuffled``: every shard mixes the whole corpus, no list of all sequences is held);
    validation shards take the domains' sequences dealt round-robin."""
    work = Work(folder)
    cfg, meta = work.cfg, _meta(work)
    summary = stream_summary(work)
    check_splits_fill_a_sequence(cfg, summary, any(work.val_file))
    dtype, per_shard, seq_len = token_dtype(meta["vocab_size"]), cfg["sequences_per_shard"], cfg["seq_len"]
    packed = work.folder / "pack"
    n_train = summary["train_sequences"]
    val_entries = load_npy(packed / "val-entries.npy")
    with PackedStream([packed / f"train-{q:06d}" for q in range(summary["pieces"])], dtype) as train, \
            contextlib.ExitStack() as streams:
        val = [streams.enter_context(PackedStream([packed / f"val-{g:06d}"], dtype)) for g in range(summary["val_groups"])]
        for split, n in (("train", n_train), ("val", len(val_entries))):
            for j in mine(-(-n // per_shard), rank, tasks):
                positions = np.arange(j * per_shard, min((j + 1) * per_shard, n))
                if split == "train":
                    entries = [(train, 0, int(i)) for i in shuffled(positions, n, cfg["seed"])]
                else:
                    entries = [(val[g], int(g), int(i)) for g, i in val_entries[positions]]
                samples = []
                for stream, g, i in entries:
                    tokens, domains, docs = stream.sequence(i, seq_len)
                    samples.append(Sample(f"{split}-{g:03d}-{i:07d}", tokens, domains,
                                          {"split": split, "group": g, "sequence": i, "documents": docs}))
                entry = write_shard(work.out / shard_name(split, j), samples)
                atomic_json(work.path("shards", f"{split}-{j:05d}.json"), entry)


# -- finish ----------------------------------------------------------------------------------------

def finish(folder: Path, rank: int, tasks: int) -> None:
    """One task: unigram.npy, tokenizer.json, then manifest.json, written last. Reads the pieces'
    summaries, token counts and near-duplicates, and the validation documents."""
    work = Work(folder)
    cfg, meta = work.cfg, _meta(work)
    out = work.out
    domains = meta["domains"]
    bounds = file_bounds(work)
    summary = stream_summary(work)
    packed = work.folder / "pack"
    pieces = [json.loads((packed / f"train-{q:06d}.json").read_text("utf-8")) for q in range(summary["pieces"])]
    skips = SkipLog()
    skips.absorb(meta["skipped"])
    dropped = np.sort(np.concatenate([np.zeros(0, np.int64)] + [load_npy(packed / f"train-{q:06d}.dropped.npy")
                                                                 for q in range(summary["pieces"])]))
    at = np.searchsorted(dropped, bounds["doc"])  # (files + 1,) each file's first near-duplicate in dropped
    for f in np.flatnonzero(np.diff(at)):  # near-duplicates by place, in reading order, a file at a time
        table = doc_table(work, int(f), meta["file_domains"][f])
        with np.load(work.folder / "read" / f"{f:06d}.npz", allow_pickle=False) as z:
            where = z["where"]
        for d in dropped[at[f]:at[f + 1]] - bounds["doc"][f]:
            skips.add("near_duplicate", str(where[table["row"][d]]), domains[table["domain"][d]],
                      f"cosine > {cfg['dedup_threshold']}")
    counts = np.ones(meta["vocab_size"], dtype=np.int64)  # add-one, as unigram_counts starts
    for q in range(summary["pieces"]):
        counts += load_npy(packed / f"train-{q:06d}.counts.npy")
    groups = validation_groups(work, meta)  # domain by domain, as the validation shards are packed
    val = {key: np.concatenate([g[key] for g in groups]) for key in groups[0]}
    with token_rows(work, meta) as tokens:
        unigram = unigram_ppl(counts, tokens, val["offset"], val["length"], np.arange(len(val["id"])), val["domain"],
                              meta["eod_id"])
    atomic_write_bytes(out / UNIGRAM, npy_bytes(counts))
    atomic_write_bytes(out / TOKENIZER, (work.folder / "fit" / TOKENIZER).read_bytes())
    by_domain = {d: {"train_documents": 0, "val_documents": 0, "train_tokens": 0, "val_tokens": 0} for d in domains}
    for d, name in enumerate(domains):
        by_domain[name]["train_documents"] = sum(p["domain_documents"][d] for p in pieces)
        by_domain[name]["train_tokens"] = sum(p["domain_tokens"][d] for p in pieces)
        in_d = val["domain"] == d
        by_domain[name]["val_documents"] = int(in_d.sum())
        by_domain[name]["val_tokens"] = int((val["length"][in_d] + 1).sum())
    splits = {}
    for split in ("train", "val"):
        n_seq = summary[f"{split}_sequences"]
        n_shards = -(-n_seq // cfg["sequences_per_shard"])
        shard_entries = [json.loads((work.folder / "shards" / f"{split}-{j:05d}.json").read_text("utf-8"))
                         for j in range(n_shards)]
        splits[split] = {"sequences": n_seq, "tail_tokens_dropped": summary[f"{split}_tail"],
                         "documents": summary[f"{split}_documents"], "shards": shard_entries}
    embed_dim = max(s["dim"] for s in encoded(work))
    manifest = {
        **work.fingerprint,
        "domains": domains,
        "vocab_size": meta["vocab_size"],
        "eod_id": meta["eod_id"],
        "seq_len": cfg["seq_len"],
        "token_dtype": np.dtype(token_dtype(meta["vocab_size"])).name,
        "counts_by_domain": by_domain,
        "skipped": skips.as_dict(),
        "ordering": {"order": cfg["order"], "embedder": cfg["embedder"], "embed_dim": embed_dim,
                     "knn": dataclasses.asdict(KnnParams(cfg["knn_k"], cfg["knn_trees"], cfg["knn_search_k"], cfg["seed"])),
                     "annoy_build_threads": 1, "dedup_threshold": cfg["dedup_threshold"],
                     "near_duplicates_dropped": int(len(dropped)), "partition_size": cfg["partition_size"],
                     "partitions": summary["partitions"],
                     "path_same_domain_fraction": round(summary["path_same_domain_fraction"], 6)},
        "splits": splits,
        "tokenizer": {"name": TOKENIZER, "sha256": sha256_file(out / TOKENIZER)},
        "baselines": {"unigram_val_ppl": {domains[d]: round(p, 3) for d, p in unigram.items()},
                      "unigram_counts": {"name": UNIGRAM, "sha256": sha256_file(out / UNIGRAM)}},
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))


STAGES = (("read", "files"), ("dedup", "digest ranges"), ("merge", "files"), ("fit", "models"), ("encode", "files"),
          ("cluster", None), ("assign", "files"), ("split", "clusters"), ("order", "partitions"),
          ("pack", "pieces"), ("shards", "shards"), ("finish", None))
"""(name of the task function in this module, what its parallel tasks split: None for a one-task stage)."""
