"""The writing phase of `lory prepare`: the .tar.gz shards from the packed streams, then the unigram
baseline, the tokenizer and, last, manifest.json: the only files written into the output folder."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np

from ..manifest import MANIFEST, TOKENIZER, shard_name
from ..packed import PackedStream
from ..packing import shuffled
from ..shards import Sample, atomic_write_bytes, npy_bytes, sha256_file, write_shard
from ..sources import SkipLog
from ..stats import unigram_ppl
from .config import Recipe
from .stage_documents import file_bounds, kept_documents
from .stage_encode import corpus_and_tokenizer, encoded, token_rows
from .stage_pack import stream_summary, validation_groups
from .work import Work, atomic_json, load_json, load_npy, mine, token_dtype

UNIGRAM = "unigram.npy"  # training-token counts, for the unigram baseline on any validated tokens


def check_splits_fill_a_sequence(recipe: Recipe, summary: dict, has_val_files: bool) -> None:
    """Refuse, before writing a shard, a split that holds no full sequence (fit and validate need both)."""
    if summary["train_sequences"] == 0:
        raise ValueError(f"the training documents hold {summary['train_tokens']} tokens, not one sequence of "
                         f"--seq_len {recipe.seq_len} + 1: give more documents or a smaller --seq_len")
    if summary["val_sequences"] == 0:
        where = "the --val_inputs" if has_val_files else f"--val_fraction {recipe.val_fraction} of the documents"
        raise ValueError(f"{where} hold(s) no full validation sequence of --seq_len {recipe.seq_len} + 1 tokens "
                         "(validation and the per-domain table need one): give more held-out text "
                         "(--val_inputs, a larger --val_fraction) or a smaller --seq_len")


def shards(folder: Path, rank: int, tasks: int) -> None:
    """Per shard: its sequences, written as {split}-NNNNN.tar.gz into the output folder. Training
    shards take the training stream's sequences in a seeded permutation computed per position
    (``packing.shuffled``: every shard mixes the whole corpus, no list of all sequences is held);
    validation shards take the domains' sequences dealt round-robin."""
    work = Work(folder)
    recipe, meta = work.recipe, corpus_and_tokenizer(work)
    summary = stream_summary(work)
    check_splits_fill_a_sequence(recipe, summary, any(work.val_file))
    dtype, per_shard, seq_len = token_dtype(meta["vocab_size"]), recipe.sequences_per_shard, recipe.seq_len
    n_train = summary["train_sequences"]
    val_entries = load_npy(work.at.val_entries)
    with PackedStream([work.at.piece(q) for q in range(summary["pieces"])], dtype) as train, \
            contextlib.ExitStack() as streams:
        val = [streams.enter_context(PackedStream([work.at.val_piece(g)], dtype)) for g in range(summary["val_groups"])]
        for split, n in (("train", n_train), ("val", len(val_entries))):
            for j in mine(-(-n // per_shard), rank, tasks):
                positions = np.arange(j * per_shard, min((j + 1) * per_shard, n))
                if split == "train":
                    entries = [(train, 0, int(i)) for i in shuffled(positions, n, recipe.seed)]
                else:
                    entries = [(val[g], int(g), int(i)) for g, i in val_entries[positions]]
                samples = []
                for stream, g, i in entries:
                    tokens, domains, docs = stream.sequence(i, seq_len)
                    samples.append(Sample(f"{split}-{g:03d}-{i:07d}", tokens, domains,
                                          {"split": split, "group": g, "sequence": i, "documents": docs}))
                entry = write_shard(work.out / shard_name(split, j), samples)
                atomic_json(work.at.shard_entry(split, j), entry)


def shards_summary(work: Work) -> str:
    summary, per = stream_summary(work), work.recipe.sequences_per_shard
    return f"train {-(-summary['train_sequences'] // per)} shards, val {-(-summary['val_sequences'] // per)}"


def finish(folder: Path, rank: int, tasks: int) -> None:
    """One task: unigram.npy, tokenizer.json, then manifest.json, written last. Reads the pieces'
    summaries, token counts and near-duplicates, and the validation documents."""
    work = Work(folder)
    recipe, meta = work.recipe, corpus_and_tokenizer(work)
    out = work.out
    domains = meta["domains"]
    bounds = file_bounds(work)
    summary = stream_summary(work)
    pieces = [load_json(work.at.piece_summary(q)) for q in range(summary["pieces"])]
    skips = SkipLog()
    skips.absorb(meta["skipped"])
    dropped = np.sort(np.concatenate([np.zeros(0, np.int64)] + [load_npy(work.at.piece_dropped(q))
                                                                 for q in range(summary["pieces"])]))
    at = np.searchsorted(dropped, bounds["doc"])  # (files + 1,) each file's first near-duplicate in dropped
    for f in np.flatnonzero(np.diff(at)):  # near-duplicates by place, in reading order, a file at a time
        table = kept_documents(work, int(f), meta["file_domains"][f])
        with np.load(work.at.documents(int(f)), allow_pickle=False) as z:
            where = z["where"]
        for d in dropped[at[f]:at[f + 1]] - bounds["doc"][f]:
            skips.add("near_duplicate", str(where[table["row"][d]]), domains[table["domain"][d]],
                      f"cosine > {recipe.dedup_threshold}")
    counts = np.ones(meta["vocab_size"], dtype=np.int64)  # add-one, as unigram_counts starts
    for q in range(summary["pieces"]):
        counts += load_npy(work.at.piece_counts(q))
    groups = validation_groups(work, meta)  # domain by domain, as the validation shards are packed
    val = {key: np.concatenate([g[key] for g in groups]) for key in groups[0]}
    with token_rows(work, meta) as tokens:
        unigram = unigram_ppl(counts, tokens, val["offset"], val["length"], np.arange(len(val["id"])), val["domain"],
                              meta["eod_id"])
    atomic_write_bytes(out / UNIGRAM, npy_bytes(counts))
    atomic_write_bytes(out / TOKENIZER, work.at.tokenizer.read_bytes())
    by_domain = {}
    for d, name in enumerate(domains):
        by_domain[name] = {key: sum(p[field][d] for p in pieces) for key, field in (
            ("train_documents", "domain_documents"), ("train_tokens", "domain_tokens"),
            ("train_documents_thinned", "thinned_documents"), ("train_tokens_thinned", "thinned_tokens"))}
        in_d = val["domain"] == d
        by_domain[name]["val_documents"] = int(in_d.sum())
        by_domain[name]["val_tokens"] = int((val["length"][in_d] + 1).sum())
    splits = {}
    for split in ("train", "val"):
        n_seq = summary[f"{split}_sequences"]
        n_shards = -(-n_seq // recipe.sequences_per_shard)
        splits[split] = {"sequences": n_seq, "tail_tokens_dropped": summary[f"{split}_tail"],
                         "documents": summary[f"{split}_documents"],
                         "shards": [load_json(work.at.shard_entry(split, j)) for j in range(n_shards)]}
    embed_dim = max(s["dim"] for s in encoded(work))
    manifest = {
        **work.fingerprint,
        "domains": domains,
        "vocab_size": meta["vocab_size"],
        "eod_id": meta["eod_id"],
        "seq_len": recipe.seq_len,
        "token_dtype": np.dtype(token_dtype(meta["vocab_size"])).name,
        "counts_by_domain": by_domain,
        "skipped": skips.as_dict(),
        "ordering": {"order": recipe.order, "embedder": recipe.embedder, "embed_dim": embed_dim,
                     "knn": dataclasses.asdict(recipe.knn),
                     "annoy_build_threads": 1, "dedup_threshold": recipe.dedup_threshold,
                     "near_duplicates_dropped": int(len(dropped)), "partition_size": recipe.partition_size,
                     "partitions": summary["partitions"],
                     "path_same_domain_fraction": round(summary["path_same_domain_fraction"], 6)},
        "splits": splits,
        "tokenizer": {"name": TOKENIZER, "sha256": sha256_file(out / TOKENIZER)},
        "baselines": {"unigram_val_ppl": {domains[d]: round(p, 3) for d, p in unigram.items()},
                      "unigram_counts": {"name": UNIGRAM, "sha256": sha256_file(out / UNIGRAM)}},
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def finish_summary(work: Work) -> str:
    return str(work.out / MANIFEST)
