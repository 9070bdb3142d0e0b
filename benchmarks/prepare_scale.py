#!/usr/bin/env python3
"""How `lory prepare` scales: stage speeds on the sample corpus, and the ordering step on N synthetic documents.

    python benchmarks/prepare_scale.py                    # sample corpus + ordering at 10k, 100k, 1M
    python benchmarks/prepare_scale.py --sizes 10000 100000

The ordering step is kNN (Annoy, single-threaded build) + near-duplicate removal + greedy path on
clustered random unit vectors (the embedding step is not part of it). If it grows as N log N, the
time per document grows by log N: about 1.2x from 100k to 1M, against 10x for N^2.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from lory_lightning.data.ordering import KnnParams, greedy_path, knn, near_duplicates
from lory_lightning.data.prepare import PrepareConfig, prepare


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(n // 1000, 2), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def order_time(n: int, dim: int, params: KnnParams) -> dict:
    x = synthetic(n, dim)
    t0 = time.perf_counter()
    nbrs, sims = knn(x, params)
    t1 = time.perf_counter()
    drop = near_duplicates(nbrs, sims, 0.99)
    order = greedy_path(nbrs, ~drop)
    t2 = time.perf_counter()
    assert len(order) == int((~drop).sum())
    return {"documents": n, "knn_s": round(t1 - t0, 2), "dedup_path_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2), "us_per_doc": round((t2 - t0) / n * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--trees", type=int, default=10)
    parser.add_argument("--skip_sample", action="store_true")
    args = parser.parse_args()
    if not args.skip_sample:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            manifest = prepare(PrepareConfig(output=f"{tmp}/sample"), quiet=True)
            total = time.perf_counter() - t0
        n_docs = sum(c["train_documents"] + c["val_documents"] for c in manifest["counts_by_domain"].values())
        n_docs += manifest["skipped"]["total"]
        print(f"sample corpus: {n_docs} documents in {total:.1f} s end to end = {n_docs / total:.0f} docs/s")
        for stage, seconds in manifest["timings_s"].items():
            print(f"  {stage:10s} {seconds:6.2f} s  {n_docs / max(seconds, 1e-9):10.0f} docs/s")
    print(f"ordering on synthetic documents (dim {args.dim}, {args.trees} trees, k 10):")
    rows = []
    for n in args.sizes:
        row = order_time(n, args.dim, KnnParams(k=10, n_trees=args.trees))
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    for a, b in zip(rows, rows[1:]):
        growth = b["total_s"] / a["total_s"]
        ratio = b["documents"] / a["documents"]
        nlogn = ratio * np.log(b["documents"]) / np.log(a["documents"])
        print(f"  {a['documents']:>9,d} -> {b['documents']:>9,d}: time x{growth:.1f} "
              f"(N log N predicts x{nlogn:.1f}, N^2 x{ratio ** 2:.0f})")


if __name__ == "__main__":
    main()
