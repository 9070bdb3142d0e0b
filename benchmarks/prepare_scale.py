#!/usr/bin/env python3
"""How `lory prepare` scales: end to end on synthetic corpora with 1 and 2 workers, stage speeds on the
sample corpus, and the ordering step alone on N synthetic vectors.

    python benchmarks/prepare_scale.py --sizes 100000 300000 --workers 1 2   # end to end (benchmarks/synthetic_corpus.py)
    python benchmarks/prepare_scale.py --sizes --ordering_sizes 10000 100000 1000000   # the ordering step alone

End to end, each run is `lory prepare` in its own process (L 512, vocab 8192, --partition_size
50,000, input files of 25,000 documents: memory is measured at a fixed partition and file size):
documents/s, documents/s per worker, the seconds of every stage, the peak resident memory of each
stage's processes (benchmarks/prepare_child.py) and of the largest process so far.
`--one_core_per_worker` gives every worker one thread (tokenizer, BLAS), the one-worker run too:
the speed-up per core, as Slurm tasks of one CPU each would see it.

The ordering step is kNN (Annoy, single-threaded build) + near-duplicate removal + greedy path on
clustered random unit vectors (the embedding step is not part of it). If it grows as N log N, the
time per document grows by log N: about 1.2x from 100k to 1M, against 10x for N^2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


ONE_CORE = {name: "1" for name in ("RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "MKL_NUM_THREADS")}  # the tokenizer's and the BLAS threads


def end_to_end(n: int, workers: int, tmp: Path, partition_size: int, extra: list[str], one_core: bool = False,
               corpora: Path | None = None) -> dict:
    """One `lory prepare` of n synthetic documents in a child process (benchmarks/prepare_child.py):
    seconds, stages, the peak RSS of every stage's processes and of the largest process so far.
    one_core: every worker (the one-worker run's process too) uses one thread: scaling per core, as
    Slurm tasks of one CPU each see it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from synthetic_corpus import write

    corpus = (corpora or tmp) / f"corpus-{n}"
    if not corpus.exists():
        write(corpus, n, topics=300, seed=0, files=max(4, n // 25_000))  # input files of 25k documents, as N grows
    out = tmp / f"out-{n}-{workers}"
    rss_log = tmp / f"rss-{n}-{workers}-{int(one_core)}.jsonl"
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "prepare_child.py"), "--inputs", str(corpus),
           "--output", str(out), "--workers", str(workers), "--partition_size", str(partition_size), "--seq_len", "512",
           *extra]
    env = {**os.environ, "LORY_STAGE_RSS": str(rss_log), **(ONE_CORE if one_core else {})}
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"\[prepare\] (\w+)\s+([\d.]+)s", run.stderr)}
    stage_peaks: dict[str, int] = {}
    for line in rss_log.read_text().splitlines():
        task = json.loads(line)
        stage_peaks[task["stage"]] = max(stage_peaks.get(task["stage"], 0), round(task["peak_mb"]))
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far (KiB on Linux)
    return {"documents": n, "workers": workers, "one_core_per_worker": one_core, "seconds": round(seconds, 1),
            "docs_per_s": round(n / seconds), "docs_per_s_per_worker": round(n / seconds / workers),
            "peak_rss_mb_so_far": round(peak_mb), "stage_peak_rss_mb": stage_peaks, "stages_s": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000], help="end-to-end corpus sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partition_size", type=int, default=50_000)
    parser.add_argument("--ordering_sizes", type=int, nargs="*", default=[])
    parser.add_argument("--prepare_args", default="", help="more `lory prepare` flags, e.g. '--tokenizer_sample 10000'")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--trees", type=int, default=10)
    parser.add_argument("--skip_sample", action="store_true")
    parser.add_argument("--one_core_per_worker", action="store_true",
                        help="one thread per worker (tokenizer, BLAS), the one-worker run too: scaling per core")
    parser.add_argument("--corpora", type=Path, help="a folder to keep the synthetic corpora in between runs "
                        "(default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for n in args.sizes:
            for w in args.workers:
                runs.append(end_to_end(n, w, Path(tmp), args.partition_size, args.prepare_args.split(),
                                       args.one_core_per_worker, args.corpora))
                print("end to end: " + json.dumps(runs[-1]), flush=True)
        for a in runs:
            for b in runs:
                if a["documents"] == b["documents"] and a["workers"] == 1 and b["workers"] > 1:
                    print(f"  {a['documents']:,} documents: {b['workers']} workers {a['seconds'] / b['seconds']:.2f}x "
                          "the speed of 1", flush=True)
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
    if not args.ordering_sizes:
        return
    print(f"ordering on synthetic documents (dim {args.dim}, {args.trees} trees, k 10):")
    rows = []
    for n in args.ordering_sizes:
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
