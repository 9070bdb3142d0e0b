"""The encoding phase of `lory prepare`: fit the tokenizer and the embedding map on seeded samples of
the training documents, then turn every kept document into token ids and every training document
into an embedding. ``token_rows`` and ``embedding_rows`` read the results as one array each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...atomic import atomic_file
from ..embed import TfidfSvdMap, fit_tfidf_svd, sample_rows, sentence_transformer_embed
from ..rowfile import JoinedRows, RowFile
from ..shards import atomic_write_bytes
from ..tokenizer import eod_id, load_tokenizer, train_tokenizer
from .stage_documents import corpus, file_bounds, kept_documents, rows_of, texts
from .work import Work, atomic_json, atomic_npy, balanced, load_json, mine, token_dtype

FIT_MODELS = ("tokenizer", "embedding map")
"""The fit stage's keys: two models fit on seeded samples of the training documents, independently
(one task each with two or more workers: neither waits for the other)."""


# -- fit -------------------------------------------------------------------------------------------

def fit(folder: Path, rank: int, tasks: int) -> None:
    """Per model: the BPE tokenizer (and its end-of-text id and size) and the embedding map (for the
    tfidf-svd embedder), each fit on its own seeded sample."""
    work = Work(folder)
    recipe = work.recipe
    n_train = corpus(work)["train_documents"]
    for key in mine(len(FIT_MODELS), rank, tasks):
        if key == 0:
            if recipe.tokenizer:
                tok, eod = load_tokenizer(recipe.tokenizer)
            else:  # seeded apart from the embedder's sample (seed + 1), all documents when there are fewer
                rows = sample_rows(n_train, recipe.tokenizer_sample, recipe.seed + 1)
                tok = train_tokenizer(training_texts(work, rows), recipe.vocab_size)
                eod = eod_id(tok)
            atomic_write_bytes(work.at.tokenizer, tok.to_str().encode("utf-8"))
            atomic_json(work.at.tokenizer_meta, {"eod_id": eod, "vocab_size": tok.get_vocab_size()})
        elif recipe.embedder == "tfidf-svd":
            rows = sample_rows(n_train, recipe.embed_sample, recipe.seed)
            fit_tfidf_svd(training_texts(work, rows), recipe.embed_dim, seed=recipe.seed).save(work.at.embedding_map)


def fit_summary(work: Work) -> str:
    vocab = load_json(work.at.tokenizer_meta)["vocab_size"]
    return f"tokenizer vocab {vocab}" + (", embedding map" if work.at.embedding_map.exists() else "")


def training_texts(work: Work, rows: np.ndarray) -> Iterator[str]:
    """Texts of the training documents whose training index (in reading order) is in the sorted
    ``rows``, in order; one file's document table at a time, and a file none of whose documents is
    wanted is not read."""
    start = 0  # training index of the file's first training document
    for f in range(len(work.files)):
        with np.load(work.at.kept(f), allow_pickle=False) as z:
            train_rows = z["row"][~z["val"]]  # (n_f,) ascending
        a, b = np.searchsorted(rows, [start, start + len(train_rows)])
        wanted = train_rows[rows[a:b] - start]
        start += len(train_rows)
        if len(wanted):
            yield from rows_of(texts(work, f), wanted)


def corpus_and_tokenizer(work: Work) -> dict:
    """The corpus (``corpus``: domains, skipped, documents) and the tokenizer (eod_id, vocab_size)."""
    return {**corpus(work), **load_json(work.at.tokenizer_meta)}


# -- encode ----------------------------------------------------------------------------------------

def encode(folder: Path, rank: int, tasks: int) -> None:
    """Per input file: the token ids of its kept documents and their lengths, the embeddings of its
    training documents, and each training document's record (id, file, offset, length, domain)."""
    from tokenizers import Tokenizer

    work = Work(folder)
    meta = corpus_and_tokenizer(work)
    tok = Tokenizer.from_str(work.at.tokenizer.read_text("utf-8"))
    dtype = token_dtype(meta["vocab_size"])
    embed_map = TfidfSvdMap.load(work.at.embedding_map) if work.recipe.embedder == "tfidf-svd" else None
    doc_first = file_bounds(work)["doc"]
    kept = [load_json(work.at.kept_summary(f))["documents"] for f in range(len(work.files))]
    for f in balanced(np.array(kept), rank, tasks):  # by kept documents
        table = kept_documents(work, f, meta["file_domains"][f])
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
                    else sentence_transformer_embed(train_texts, work.recipe.embed_model)
                embedded.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                shape[0], shape[1] = shape[0] + len(vectors), vectors.shape[1]
            batch.clear()

        # A file streamed in batches: its tokens and its training documents' embeddings (raw float32 rows).
        with atomic_file(work.at.tokens(f)) as out, atomic_file(work.at.embeddings(f)) as embedded:
            for text, val in zip(rows_of(texts(work, f), rows), is_val):
                batch.append((text, bool(val)))
                if len(batch) == 2048:
                    flush(out, embedded)
            flush(out, embedded)
        lengths = np.concatenate([np.zeros(0, np.int64), *lengths])
        atomic_npy(work.at.lengths(f), lengths)
        train = np.flatnonzero(~is_val)  # (n_train,) the file's training documents, by training id
        atomic_npy(work.at.training_docs(f), np.stack([
            doc_first[f] + train, np.full(len(train), f), (np.cumsum(lengths) - lengths)[train], lengths[train],
            table["domain"][train]], axis=1).astype(np.int64))  # (n_train, 5): workfiles.training_docs
        atomic_json(work.at.encoded_summary(f), {"rows": shape[0], "dim": shape[1], "tokens": int(lengths.sum())})


def encode_summary(work: Work) -> str:
    return f"{sum(s['tokens'] for s in encoded(work)):,} tokens"


def encoded(work: Work) -> list[dict]:
    """Per input file, what encode wrote: embedded rows, their dimension, tokens."""
    return [load_json(work.at.encoded_summary(f)) for f in range(len(work.files))]


def token_rows(work: Work, meta: dict) -> JoinedRows:
    """Every document's tokens, documents in reading order: the input files' token files read as one."""
    dtype = token_dtype(meta["vocab_size"])
    return JoinedRows([RowFile(work.at.tokens(f), dtype, (s["tokens"],)) for f, s in enumerate(encoded(work))])


def embedding_rows(work: Work) -> JoinedRows:
    """Every training document's embedding (N, dim), in reading order: the input files' embedding
    files read as one (a file of validation documents has none)."""
    return JoinedRows([RowFile(work.at.embeddings(f), np.float32, (s["rows"], s["dim"]))
                       for f, s in enumerate(encoded(work)) if s["rows"]])
