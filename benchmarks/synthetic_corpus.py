#!/usr/bin/env python3
"""A synthetic multi-topic corpus, so that ordering quality is measurable at any size.

    python benchmarks/synthetic_corpus.py --documents 100000 --out /tmp/synth  # writes topics-*.jsonl.gz

Each of ``--topics`` topics (300 by default) owns 200 words of a pseudo-word vocabulary; a document
draws 60-140 words: 40% from its topic's words, 20% from 20,000 rare words no topic owns, 40% from
400 words every topic shares, so similar documents are similar only through their topic, and no
two are near-copies (none is dropped at cosine 0.99 at 20k documents; with 40 words a topic and
no rare words, 62% were). Topic t belongs to domain t % 5. Records are {"text", "domain", "topic"};
the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

DOMAINS = ("alpha", "beta", "gamma", "delta", "epsilon")


def pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(letters, size=rng.integers(4, 9))))
    return sorted(words)


def documents(n: int, topics: int, seed: int):
    """Yield (text, domain, topic) for n documents."""
    rng = np.random.default_rng(seed)
    vocab = np.array(pseudo_words(200 * topics + 400 + 20_000, rng))
    shared, rare, own = vocab[:400], vocab[400:20_400], vocab[20_400:].reshape(topics, 200)
    for i in range(n):
        t = int(rng.integers(topics))
        length = int(rng.integers(60, 141))
        u = rng.random(length)
        words = np.where(u < 0.4, own[t][rng.integers(0, 200, length)],
                         np.where(u < 0.6, rare[rng.integers(0, 20_000, length)], shared[rng.integers(0, 400, length)]))
        yield " ".join(words) + f". Record {i}.", DOMAINS[t % len(DOMAINS)], t


def write(out: Path, n: int, topics: int, seed: int, files: int = 4) -> list[Path]:
    """Write the corpus as ``files`` jsonl.gz files (documents dealt round-robin); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"topics-{i}.jsonl.gz" for i in range(files)]
    handles = [gzip.open(p, "wt", encoding="utf-8", compresslevel=1) for p in paths]
    try:
        for i, (text, domain, topic) in enumerate(documents(n, topics, seed)):
            handles[i % files].write(json.dumps({"text": text, "domain": domain, "topic": topic}) + "\n")
    finally:
        for h in handles:
            h.close()
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--topics", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for p in write(Path(args.out), args.documents, args.topics, args.seed):
        print(p)


if __name__ == "__main__":
    main()
