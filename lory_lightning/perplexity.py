"""`lory perplexity`: a checkpoint's per-domain perplexity on any text (jsonl, jsonl.gz, folders of .txt),
tokenized with the checkpoint's own tokenizer: the held-out-domain numbers a validation split can't give.

Each domain's documents are read as `lory prepare` reads them (the same validation and skip counts),
tokenized, joined into one stream with the end-of-text token after each document, and cut into
sequences of the model's length that overlap by one token, as prepared data is: every token after
the first is a target exactly once. The model runs as in training (segment routing). Targets after
the last whole sequence of a domain (and past --max_sequences) are not scored; they are counted
and reported.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.packing import num_sequences, sequence_slice
from .data.sources import ReadPolicy, SkipLog, read_documents


@dataclass
class DomainScore:
    """What was scored of one domain: NLL summed over its target tokens, and the counts."""

    documents: int = 0
    targets: int = 0  # the stream's tokens after its first (each document ends with end-of-text)
    scored: int = 0  # targets scored
    nll: float = 0.0
    sequences: int = 0

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.scored) if self.scored else math.nan


@dataclass
class PerplexityReport:
    domains: dict[str, DomainScore] = field(default_factory=dict)
    skipped: SkipLog = field(default_factory=SkipLog)

    @property
    def overall(self) -> float:
        scored = sum(d.scored for d in self.domains.values())
        return math.exp(sum(d.nll for d in self.domains.values()) / scored) if scored else math.nan

    def table(self) -> str:
        lines = [f"{'domain':<14}{'ppl':>10}{'documents':>11}{'tokens scored':>15}{'not scored':>12}"]
        for name, d in self.domains.items():
            lines.append(f"{name:<14}{d.ppl:>10.2f}{d.documents:>11,}{d.scored:>15,}{d.targets - d.scored:>12,}")
        total = sum(d.scored for d in self.domains.values())
        lines.append(f"{'all':<14}{self.overall:>10.2f}{sum(d.documents for d in self.domains.values()):>11,}"
                     f"{total:>15,}{sum(d.targets for d in self.domains.values()) - total:>12,}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"domains": {k: {"ppl": v.ppl, "documents": v.documents, "targets": v.targets, "scored": v.scored,
                                "nll_sum": v.nll, "sequences": v.sequences} for k, v in self.domains.items()},
                "ppl": self.overall, "skipped": self.skipped.as_dict()}


def domain_streams(texts: Sequence[tuple[str, str]], encode: Any, eod_id: int) -> dict[str, np.ndarray]:
    """(domain, text) pairs -> each domain's token stream, documents in reading order, each followed
    by ``eod_id``; domains in order of first appearance."""
    parts: dict[str, list[int]] = {}
    for domain, text in texts:
        parts.setdefault(domain, []).extend([*encode(text), eod_id])
    return {d: np.asarray(ids, dtype=np.int64) for d, ids in parts.items()}


def stream_sequences(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    """(n, seq_len + 1) windows of ``stream`` overlapping by one token (data/packing.py's layout)."""
    n, _ = num_sequences(len(stream), seq_len)
    if n == 0:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    return torch.from_numpy(np.stack([stream[sequence_slice(i, seq_len)] for i in range(n)]))


@torch.no_grad()
def score(model: torch.nn.Module, sequences: torch.Tensor, batch_size: int) -> float:
    """Summed next-token NLL (nats) of every target of ``sequences`` (n, L + 1)."""
    total = 0.0
    for chunk in sequences.split(batch_size):
        logits = model(chunk[:, :-1]).logits  # (b, L, V)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"))
    return total


def perplexity(ckpt_path: str, inputs: Sequence[str], batch_size: int = 8, max_sequences: int | None = None,
               policy: ReadPolicy = ReadPolicy()) -> PerplexityReport:
    """Per-domain perplexity of the checkpoint's model on ``inputs``."""
    from tokenizers import Tokenizer

    from .checkpoint_io import checkpoint_tokenizer_sha256, end_of_text_id, load_model

    if batch_size < 1 or (max_sequences is not None and max_sequences < 1):
        raise ValueError("--batch_size and --max_sequences must be >= 1")
    model, ckpt = load_model(ckpt_path)
    if "tokenizer" not in ckpt:
        raise ValueError(f"{ckpt_path} carries no tokenizer (written before checkpoints kept one): "
                         "retrain, or tokenize with `lory prepare --tokenizer` and use `lory validate`")
    checkpoint_tokenizer_sha256(ckpt, ckpt_path)  # the tokenizer it carries is the one it was trained with
    tok = Tokenizer.from_str(ckpt["tokenizer"])
    eod = end_of_text_id(ckpt, tok)
    if eod is None:
        raise ValueError(f"{ckpt_path}: its tokenizer has no end-of-text token")
    report = PerplexityReport()
    docs = [(d.domain, d.text) for d in read_documents(inputs, policy, report.skipped)]
    if not docs:
        raise ValueError(f"no document to score in {', '.join(map(str, inputs))} "
                         f"({report.skipped.total} skipped: {dict(report.skipped.by_reason)})")
    seq_len = model.config.seq_len
    documents = Counter(domain for domain, _ in docs)
    for domain, stream in domain_streams(docs, lambda t: tok.encode(t).ids, eod).items():
        seqs = stream_sequences(stream, seq_len)
        if max_sequences is not None:
            seqs = seqs[:max_sequences]
        entry = DomainScore(documents=documents[domain], targets=len(stream) - 1,
                            scored=seqs.shape[0] * seq_len, sequences=seqs.shape[0])
        entry.nll = score(model, seqs, batch_size) if len(seqs) else 0.0
        report.domains[domain] = entry
    return report
