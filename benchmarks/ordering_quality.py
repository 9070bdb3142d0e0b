#!/usr/bin/env python3
"""Ordering quality, partitioned against one global partition, on the shipped corpus and a synthetic one.

    python benchmarks/ordering_quality.py [--sizes 100000 1000000] [--partitions 10] [--out FILE]

For each corpus the documents are embedded once (hashing TF-IDF + SVD, 128 dims, fit on a seeded
sample of 100,000) and ordered twice with the same kNN settings: as one partition (today's global
order) and cut into ``--partitions`` partitions (data/partition.py). Reported: the share of path
steps that stay inside a topic (synthetic) or a domain, the mean cosine of consecutive documents,
near-duplicates dropped, and the ordering time. Target (issue 15): partitioned within 2 points of
the global share and within 5% of its mean cosine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from lory_lightning.data.embed import fit_tfidf_svd, sample_rows, tfidf_svd_embed  # noqa: E402
from lory_lightning.data.ordering import KnnParams  # noqa: E402
from lory_lightning.data.prepare.stage_documents import rows_of  # noqa: E402
from synthetic_corpus import documents  # noqa: E402

sys.path.insert(0, str(ROOT.parent / "tests" / "data"))
from reference_ordering import order_documents  # noqa: E402  (the in-memory order, a test helper)


def quality(x: np.ndarray, labels: dict[str, np.ndarray], order: np.ndarray) -> dict:
    steps = {f"{name}_steps": float(np.mean(lab[order[1:]] == lab[order[:-1]])) for name, lab in labels.items()}
    cos = float(np.mean(np.sum(x[order[1:]] * x[order[:-1]], axis=1)))
    return {**steps, "mean_cosine": cos}


def compare(name: str, x: np.ndarray, labels: dict[str, np.ndarray], parts: int, params: KnnParams) -> list[dict]:
    rows = []
    n = x.shape[0]
    for arm, size in (("global", n), (f"{parts} partitions", math.ceil(n / parts))):
        t0 = time.perf_counter()
        order, drop, got = order_documents(x, params, 0.99, "similarity", size)
        rows.append({"corpus": name, "documents": n, "arm": arm, "partitions": got, "seconds": time.perf_counter() - t0,
                     "near_duplicates": int(drop.sum()), **quality(x, labels, order)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def synthetic_embedded(n: int, topics: int, batch: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings (n, 128), domains, topics) of the synthetic corpus, as ``tfidf_svd_embed`` makes them,
    generated twice instead of held: once for the seeded fit sample, once to embed in batches (3M
    documents' texts and their TF-IDF rows did not fit in 24 GB at once)."""
    texts = (text for text, _, _ in documents(n, topics, seed=0))
    embed_map = fit_tfidf_svd(list(rows_of(texts, sample_rows(n, 100_000, 0))), 128, seed=0)
    x, domains, topic = np.empty((n, 128), dtype=np.float32), [], np.empty(n, dtype=np.int64)
    pending = []
    for i, (text, domain, t) in enumerate(documents(n, topics, seed=0)):
        pending.append(text)
        domains.append(domain)
        topic[i] = t
        if len(pending) == batch or i == n - 1:
            x[i + 1 - len(pending):i + 1] = embed_map.transform(pending)
            pending = []
    return x, np.unique(np.array(domains), return_inverse=True)[1], topic


def sample_corpus() -> tuple[list[str], np.ndarray]:
    from lory_lightning.data.prepare import sample_inputs
    from lory_lightning.data.sources import ReadPolicy, read_documents

    docs = list(read_documents(sample_inputs("train"), ReadPolicy(min_chars=16)))
    names = sorted({d.domain for d in docs})
    return [d.text for d in docs], np.array([names.index(d.domain) for d in docs])


def table(rows: list[dict]) -> str:
    lines = ["| corpus | documents | arm | partitions | in-topic steps | in-domain steps | mean cosine | "
             "near-duplicates | order time (s) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        topic = f"{r['topic_steps']:.1%}" if "topic_steps" in r else "-"
        lines.append(f"| {r['corpus']} | {r['documents']:,} | {r['arm']} | {r['partitions']} | {topic} | "
                     f"{r['domain_steps']:.1%} | {r['mean_cosine']:.4f} | {r['near_duplicates']:,} | {r['seconds']:.1f} |")
    lines.append("")
    for g, p in zip(rows[0::2], rows[1::2]):
        key = "topic_steps" if "topic_steps" in g else "domain_steps"
        lines.append(f"- {g['corpus']} ({g['documents']:,}): partitioned - global = "
                     f"{100 * (p[key] - g[key]):+.1f} points of {key.split('_')[0]} steps, mean cosine "
                     f"{100 * (p['mean_cosine'] / g['mean_cosine'] - 1):+.1f}%")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--topics", type=int, default=300)
    parser.add_argument("--trees", type=int, default=10)
    parser.add_argument("--skip_sample", action="store_true")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    params = KnnParams(k=10, n_trees=args.trees, seed=0)
    rows = []
    corpora = [] if args.skip_sample else [("shipped sample", *sample_corpus())]
    for name, texts, domains in corpora:  # the shipped sample: texts in memory
        t0 = time.perf_counter()
        x = tfidf_svd_embed(texts, dim=128, seed=0, fit_sample=100_000)
        print(f"{name}: embedded {len(texts):,} documents in {time.perf_counter() - t0:.1f} s", flush=True)
        rows += compare(name, x, {"domain": np.unique(domains, return_inverse=True)[1]}, args.partitions, params)
    for n in args.sizes:  # synthetic: generated, never held as texts
        t0 = time.perf_counter()
        x, domains, topics = synthetic_embedded(n, args.topics)
        print(f"synthetic: embedded {n:,} documents in {time.perf_counter() - t0:.1f} s", flush=True)
        rows += compare(f"synthetic, {args.topics} topics", x, {"topic": topics, "domain": domains}, args.partitions, params)
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
