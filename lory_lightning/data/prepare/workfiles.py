"""Every file `lory prepare` keeps in its work folder (``OUTPUT/_work.tmp``): one accessor per kind of
file, with its format and dtype stated here once. Stages write each file atomically (a finished
name means a finished file) and read the files of earlier stages only through these names.

Numbering: ``f`` an input file (plan order), ``k`` a dedup digest range, ``p`` a partition, ``q`` a
piece of the training stream, ``g`` a validation group (one domain), ``j`` a shard. Every path's
folder is created when the path is asked for.
"""

from __future__ import annotations

from pathlib import Path

PLAN = "plan.json"
SUBMITTED = "submitted.json"


class WorkFiles:
    """The names of the work folder's files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _at(self, *parts: str) -> Path:
        path = self.folder.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- the run ---------------------------------------------------------------------------------

    @property
    def plan(self) -> Path:
        """JSON: {"recipe": Recipe fields, "output", "fingerprint", "files": [{location, kind,
        default_domain, val}]}: what every stage reads first."""
        return self._at(PLAN)

    @property
    def submitted(self) -> Path:
        """JSON {"jobs": [Slurm job ids]}: the stages were submitted to Slurm."""
        return self._at(SUBMITTED)

    # -- read --------------------------------------------------------------------------------------

    def texts(self, f: int) -> Path:
        """gzip of JSON lines, one JSON string per valid document of input file f, in reading order."""
        return self._at("read", f"{f:06d}.jsonl.gz")

    def digests(self, f: int) -> Path:
        """.npy (n, 3) uint64: each document's 16-byte text digest as two words, and its row; sorted
        by digest (equal digests by row)."""
        return self._at("read", f"{f:06d}.keys.npy")

    def digest_buckets(self, f: int) -> Path:
        """.npy (BUCKETS + 1,) int64: where each digest bucket starts in ``digests(f)``, then n."""
        return self._at("read", f"{f:06d}.buckets.npy")

    def documents(self, f: int) -> Path:
        """.npz of (n,) arrays by row: ``where`` str (file:line), ``domain`` str, ``held_out`` bool
        (the text hash's validation split)."""
        return self._at("read", f"{f:06d}.npz")

    def read_skips(self, f: int) -> Path:
        """JSON: SkipLog.as_dict() of the documents input file f skipped while reading."""
        return self._at("read", f"{f:06d}.skips.json")

    # -- dedup -------------------------------------------------------------------------------------

    def later_copies(self, k: int) -> Path:
        """.npy (m,) int64, sorted: reading positions (across files) of the exact copies in digest range k."""
        return self._at("dedup", f"{k:06d}.npy")

    def later_copies_bounds(self, k: int) -> Path:
        """.npy (files + 1,) int64: where each input file's positions start in ``later_copies(k)``."""
        return self._at("dedup", f"{k:06d}.bounds.npy")

    # -- merge -------------------------------------------------------------------------------------

    def kept(self, f: int) -> Path:
        """.npz of (n_kept,) arrays: ``row`` int64 (ascending, in the file), ``domain`` int32 (into the
        file's own domain list, ``kept_summary(f)["domains"]``), ``val`` bool."""
        return self._at("merge", f"{f:06d}.npz")

    def kept_summary(self, f: int) -> Path:
        """JSON: {"domains": the file's domains in order of first appearance among kept documents,
        "documents": kept, "train": kept training documents, "skipped": SkipLog.as_dict()}."""
        return self._at("merge", f"{f:06d}.json")

    # -- fit ---------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Path:
        """The tokenizer (HF tokenizers JSON)."""
        return self._at("fit", "tokenizer.json")

    @property
    def tokenizer_meta(self) -> Path:
        """JSON {"eod_id", "vocab_size"} of ``tokenizer``."""
        return self._at("fit", "tokenizer.meta.json")

    @property
    def embedding_map(self) -> Path:
        """.npz: the tfidf-svd map (TfidfSvdMap.save); absent for other embedders."""
        return self._at("fit", "embed.npz")

    # -- encode ------------------------------------------------------------------------------------

    def tokens(self, f: int) -> Path:
        """Raw token ids of input file f's kept documents, end to end, in ``token_dtype`` (no header)."""
        return self._at("encode", f"{f:06d}.tokens.bin")

    def lengths(self, f: int) -> Path:
        """.npy (n_kept,) int64: tokens of each kept document."""
        return self._at("encode", f"{f:06d}.lengths.npy")

    def embeddings(self, f: int) -> Path:
        """Raw float32 rows (n_train, dim) of the file's training documents' embeddings (no header)."""
        return self._at("encode", f"{f:06d}.embed.f32")

    def training_docs(self, f: int) -> Path:
        """.npy (n_train, 5) int64, one row per training document: id (place in reading order across
        files), input file, token offset in the file's ``tokens``, length, domain id (global)."""
        return self._at("encode", f"{f:06d}.train.npy")

    def encoded_summary(self, f: int) -> Path:
        """JSON {"rows": embedded documents, "dim": their dimension, "tokens": the file's tokens}."""
        return self._at("encode", f"{f:06d}.embed.json")

    # -- cluster, assign, split, order -----------------------------------------------------------

    @property
    def centroids(self) -> Path:
        """.npy (c, dim) float32: k-means centroids; (0, dim) for one cluster."""
        return self._at("cluster", "centroids.npy")

    def cluster_members(self, f: int) -> Path:
        """.npy (n_train,) int64: file f's training ids grouped by nearest centroid, ascending in one."""
        return self._at("assign", f"{f:06d}.rows.npy")

    def cluster_bounds(self, f: int) -> Path:
        """.npy (clusters + 1,) int64: where each cluster starts in ``cluster_members(f)``."""
        return self._at("assign", f"{f:06d}.bounds.npy")

    def partition(self, p: int) -> Path:
        """.npy (n_p,) int64: partition p's training ids, ascending."""
        return self._at("split", f"{p:06d}.npy")

    def partition_sum(self, p: int) -> Path:
        """.npy (dim,) float64: the sum of partition p's embeddings (its centroid's direction)."""
        return self._at("split", f"{p:06d}.sum.npy")

    def path(self, p: int) -> Path:
        """.npz: ``path`` (training ids in the greedy path's order) and ``dropped`` (its
        near-duplicates) of partition p, both int64."""
        return self._at("order", f"{p:06d}.npz")

    # -- pack --------------------------------------------------------------------------------------

    def piece(self, q: int) -> Path:
        """The prefix of piece q of the training stream as ``packed.write_piece`` writes it."""
        return self._at("pack", f"train-{q:06d}")

    def piece_counts(self, q: int) -> Path:
        """.npy (vocab,) int64: training-token counts of piece q (end-of-text included)."""
        return self._at("pack", f"train-{q:06d}.counts.npy")

    def piece_dropped(self, q: int) -> Path:
        """.npy (m,) int64: reading-order ids of the near-duplicates piece q dropped."""
        return self._at("pack", f"train-{q:06d}.dropped.npy")

    def piece_summary(self, q: int) -> Path:
        """JSON {"documents", "tokens", "same_domain_steps", "ends": [first, last domain] or null,
        "domain_documents", "domain_tokens"} of piece q."""
        return self._at("pack", f"train-{q:06d}.json")

    def piece_summaries(self) -> list[Path]:
        """Every piece summary written so far, in piece order."""
        return sorted((self.folder / "pack").glob("train-[0-9]*[0-9].json"))

    def val_piece(self, g: int) -> Path:
        """The prefix of validation group g's stream (one domain) as ``packed.write_piece`` writes it."""
        return self._at("pack", f"val-{g:06d}")

    @property
    def val_entries(self) -> Path:
        """.npy (S, 2) int64: (group, sequence) of each validation sequence, dealt round-robin."""
        return self._at("pack", "val-entries.npy")

    @property
    def val_summary(self) -> Path:
        """JSON {"groups", "tail": tokens past the last whole sequence, "documents"}."""
        return self._at("pack", "val.json")

    # -- shards ------------------------------------------------------------------------------------

    def shard_entry(self, split: str, j: int) -> Path:
        """JSON: shard j of ``split``'s manifest entry (name, sequences, bytes, sha256, ...)."""
        return self._at("shards", f"{split}-{j:05d}.json")
