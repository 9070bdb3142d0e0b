"""The packing phase of `lory prepare`: the training stream as pieces, one per partition along the
greedy path over the partitions' centroids (one piece of every document under ``order: random``),
each piece's documents packed end to end with end-of-text between them; the validation documents as
one stream per domain. ``stream_summary`` reads what the pieces add up to."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .. import partition as partitions
from ..ordering import random_order
from ..packed import write_piece
from ..packing import num_sequences
from ..rowfile import JoinedRows, RowFile
from ..thinning import keep_fractions, thin
from .stage_documents import file_bounds, kept_documents
from .stage_encode import corpus_and_tokenizer, encoded, token_rows
from .stage_order import partition_sizes
from .work import Work, atomic_json, atomic_npy, balanced, load_json, load_npy


def file_docs(work: Work, meta: dict, f: int, first_doc: int, first_token: int) -> dict[str, np.ndarray]:
    """Input file f's kept documents: id (place in reading order), token offset in ``token_rows``,
    length, domain id, validation, row in the file; ``first_doc`` and ``first_token``: where the
    file's documents and tokens begin in reading order."""
    table = kept_documents(work, f, meta["file_domains"][f])
    lengths = load_npy(work.at.lengths(f))
    return {"id": first_doc + np.arange(len(lengths), dtype=np.int64),
            "offset": first_token + np.cumsum(lengths) - lengths, "length": lengths, **table}


class TrainingDocs:
    """The training documents' records (workfiles.training_docs), read by training id (numbered
    across files) with one pread a document: a partition's documents lie in every file, and reading
    every file's table for each partition would read the corpus's tables once per partition. Opened
    once per task (thousands of input files: thousands of headers)."""

    def __init__(self, work: Work) -> None:
        files = encoded(work)
        self.first_token = np.cumsum([0] + [e["tokens"] for e in files])  # (files + 1,)
        self.records = JoinedRows([RowFile(work.at.training_docs(f)) for f in range(len(files))])

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
    greedy path over the partitions' centroids); under order random one piece of every kept
    document (partition -1)."""
    if work.recipe.order == "random":
        return np.array([sizes.sum()]), np.array([-1])
    visit = partitions.visit_path(np.stack([load_npy(work.at.partition_sum(p)) for p in range(len(sizes))]))
    return sizes[visit], visit


def piece_order(work: Work, partition: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a piece's training documents in stream order, the near-duplicates it reports), training ids:
    partition ``partition``'s path, or (-1) every kept document in one seeded random order."""
    if partition < 0:  # the baseline: one seeded permutation of all kept documents
        drop = np.zeros(int(sizes.sum()), dtype=bool)
        for p in range(len(sizes)):
            with np.load(work.at.path(p), allow_pickle=False) as z:
                drop[z["dropped"]] = True
        return random_order(~drop, work.recipe.seed), np.flatnonzero(drop)
    with np.load(work.at.path(partition), allow_pickle=False) as z:
        return z["path"], z["dropped"]


def pack(folder: Path, rank: int, tasks: int) -> None:
    """Per piece of the training stream (``train_pieces``): its documents packed (``packed.write_piece``),
    their token counts, domains, the near-duplicates it dropped; and one key for the validation
    documents, one stream per domain. A task holds one partition's documents (all of them under
    order random, the baseline)."""
    work = Work(folder)
    meta = corpus_and_tokenizer(work)
    sizes = partition_sizes(work)
    pieces, packs = train_pieces(work, sizes)
    training = TrainingDocs(work)
    keep = keep_fractions(work.recipe.keep_fraction, meta["domains"])  # (D,) 1.0: keep all
    n_domains = len(meta["domains"])
    with token_rows(work, meta) as tokens, contextlib.closing(training):
        for q in balanced(np.append(pieces, meta["documents"] - meta["train_documents"]), rank, tasks):
            if q == len(pieces):
                _pack_validation(work, meta, tokens)
                continue
            ids, dropped = piece_order(work, int(packs[q]), sizes)
            docs = training[ids]
            kept = thin(docs["id"], docs["domain"], keep, work.recipe.seed)  # (n,) the path with holes
            gone = {key: column[~kept] for key, column in docs.items()}
            docs = {key: column[kept] for key, column in docs.items()}
            counts = write_piece(work.at.piece(q), tokens, docs["offset"], docs["length"],
                                 docs["domain"], docs["id"], meta["eod_id"], meta["vocab_size"])
            atomic_npy(work.at.piece_counts(q), counts)
            atomic_npy(work.at.piece_dropped(q), training[dropped]["id"])
            domain = docs["domain"]
            atomic_json(work.at.piece_summary(q), {
                "documents": len(domain), "tokens": int(docs["length"].sum()) + len(domain),
                "thinned_documents": np.bincount(gone["domain"], minlength=n_domains).tolist(),
                "thinned_tokens": np.bincount(gone["domain"], weights=gone["length"] + 1,
                                              minlength=n_domains).astype(np.int64).tolist(),
                "same_domain_steps": int(np.sum(domain[1:] == domain[:-1])),
                "ends": [int(domain[0]), int(domain[-1])] if len(domain) else None,
                "domain_documents": np.bincount(domain, minlength=n_domains).tolist(),
                "domain_tokens": np.bincount(domain, weights=docs["length"] + 1, minlength=n_domains).astype(np.int64).tolist()})


def pack_summary(work: Work) -> str:
    summary = stream_summary(work)
    return (f"{summary['train_documents']} documents in {summary['partitions']} partition(s), "
            f"{summary['near_duplicates_dropped']} near-duplicates dropped, "
            + (f"{summary['thinned']} thinned (keep_fraction), " if summary["thinned"] else "") +
            f"{summary['path_same_domain_fraction']:.1%} of path steps stay in a domain; "
            f"train {summary['train_sequences']} sequences, val {summary['val_sequences']}")


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


def _pack_validation(work: Work, meta: dict, tokens: JoinedRows) -> None:
    """Each domain's validation documents as a stream of its own, in reading order; the sequences
    dealt round-robin over the domains."""
    seq_len, entries, tail = work.recipe.seq_len, [], 0
    groups = validation_groups(work, meta)
    for g, docs in enumerate(groups):
        write_piece(work.at.val_piece(g), tokens, docs["offset"], docs["length"], docs["domain"],
                    docs["id"], meta["eod_id"], meta["vocab_size"])
        n_seq, dropped_tail = num_sequences(int(docs["length"].sum()) + len(docs["id"]), seq_len)
        tail += dropped_tail
        entries.append(np.stack([np.full(n_seq, g, dtype=np.int64), np.arange(n_seq, dtype=np.int64)], axis=1))
    flat = np.concatenate([np.zeros((0, 2), dtype=np.int64), *entries])  # (S, 2), group by group
    atomic_npy(work.at.val_entries, flat[np.lexsort((flat[:, 0], flat[:, 1]))])  # round-robin
    atomic_json(work.at.val_summary, {"groups": len(groups), "tail": tail,
                                      "documents": int(sum(len(g["id"]) for g in groups))})


def stream_summary(work: Work) -> dict:
    """The training stream from its pieces' summaries: documents, tokens, sequences, tail, partitions,
    near-duplicates dropped, share of path steps inside a domain; the validation side's groups,
    documents, sequences and tail; the documents thinned by ``keep_fraction``."""
    pieces = [load_json(p) for p in work.at.piece_summaries()]
    n_docs = sum(p["documents"] for p in pieces)
    tokens = sum(p["tokens"] for p in pieces)
    n_seq, tail = num_sequences(tokens, work.recipe.seq_len)
    dropped = sum(len(load_npy(work.at.piece_dropped(q), mmap=True)) for q in range(len(pieces)))
    val = load_json(work.at.val_summary)
    return {"pieces": len(pieces), "train_documents": n_docs, "train_tokens": tokens, "train_sequences": n_seq,
            "train_tail": tail, "partitions": len(partition_sizes(work)), "near_duplicates_dropped": dropped,
            "thinned": sum(sum(p["thinned_documents"]) for p in pieces),
            "path_same_domain_fraction": same_domain_fraction(pieces),
            "val_groups": val["groups"], "val_documents": val["documents"], "val_tail": val["tail"],
            "val_sequences": len(load_npy(work.at.val_entries, mmap=True))}


def same_domain_fraction(pieces: list[dict]) -> float:
    """Share of consecutive documents of the stream in one domain (1.0 with under two), from its
    pieces' own steps (``same_domain_steps``) and the steps between two pieces (``ends``: the first and
    last document's domain of each, None when empty)."""
    ends = [p["ends"] for p in pieces if p["ends"]]
    same = sum(p["same_domain_steps"] for p in pieces) + sum(a[1] == b[0] for a, b in zip(ends, ends[1:]))
    n_docs = sum(p["documents"] for p in pieces)
    return same / (n_docs - 1) if n_docs > 1 else 1.0
