#!/usr/bin/env python3
"""The training side of the data at scale: time to the first batch of a resumed run, and shard verification.

    python benchmarks/data_scale.py [--data data/sample] [--batches 10 10000 100000] [--out FILE]

Resume: a LoryDataModule restored after n training batches (its checkpoint state) seeks to the
next sequence by arithmetic on the manifest's counts and reads one block of shards; the time to
its first batch should not grow with n. Beside it, what replaying the n batches (round 1's resume:
read and drop every consumed sequence) would cost at the stream rate measured here.
Verification: every training shard's bytes read and hashed (sha256, done at every read), beside
the parsing every read pays (decompression to the gzip trailer, untar, load), and the setup (a
stat per shard).
Without --data the shipped sample is prepared into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lory_lightning.data.datamodule import LoryDataModule  # noqa: E402
from lory_lightning.data.manifest import load_manifest  # noqa: E402
from lory_lightning.data.location import member  # noqa: E402
from lory_lightning.data.shards import ShardReader, parse_shard  # noqa: E402


def module(data_dir: str, batch_size: int) -> LoryDataModule:
    manifest = load_manifest(data_dir)
    dm = LoryDataModule(data_dir=data_dir, seq_len=manifest["seq_len"], vocab_size=manifest["config"]["vocab_size"],
                        order=manifest["config"]["order"], batch_size=batch_size)
    dm.setup("fit")
    return dm


def first_batch_seconds(data_dir: str, batches: int, batch_size: int, rounds: int) -> float:
    """Median seconds from a restored data module to its first batch."""
    times = []
    for _ in range(rounds):
        dm = module(data_dir, batch_size)
        dm.load_state_dict({"train_batches": batches})
        t0 = time.perf_counter()
        next(iter(dm.train_dataloader()))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stream_rate(data_dir: str, batch_size: int) -> float:
    """Training sequences per second the stream delivers over one whole pass (one process:
    reading, verifying, decompressing and parsing blocks included)."""
    dm = module(data_dir, batch_size)
    n = dm.manifest["splits"]["train"]["sequences"] // batch_size
    it = iter(dm.train_dataloader())
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * batch_size / (time.perf_counter() - t0)


def verification_rows(data_dir: str) -> list[dict]:
    """Setup, then reading and hashing every training shard (what verification adds to a read), and
    parsing them (what every read pays anyway)."""
    shards = load_manifest(data_dir)["splits"]["train"]["shards"]
    t0 = time.perf_counter()
    module(data_dir, 8)
    rows = [{"what": "setup (manifest + a stat per shard)", "seconds": time.perf_counter() - t0}]
    reader = ShardReader(data_dir)
    t0 = time.perf_counter()
    datas = [reader.verified_bytes(member(data_dir, e["name"]), e)[1] for e in shards]
    rows.append({"what": f"read + sha256 all {len(shards)} training shards (at every read)",
                 "seconds": time.perf_counter() - t0})
    t0 = time.perf_counter()
    for entry, data in zip(shards, datas):
        parse_shard(data, entry["name"])
    rows.append({"what": f"parse all {len(shards)} (decompress to the gzip trailer, untar, load)",
                 "seconds": time.perf_counter() - t0})
    return rows


def run(data_dir: str, batches: list[int], batch_size: int, rounds: int) -> dict:
    verification = verification_rows(data_dir)
    rate = stream_rate(data_dir, batch_size)
    resume = [{"batches": n, "seconds": first_batch_seconds(data_dir, n, batch_size, rounds),
               "replay_seconds": n * batch_size / rate} for n in batches]
    manifest = load_manifest(data_dir)
    train = manifest["splits"]["train"]
    return {"data": data_dir, "train_sequences": train["sequences"], "seq_len": manifest["seq_len"],
            "bytes_per_token": sum(s["bytes"] for s in train["shards"]) / (train["sequences"] * manifest["seq_len"]),
            "train_shards": len(manifest["splits"]["train"]["shards"]), "batch_size": batch_size,
            "stream_sequences_per_s": rate, "resume": resume, "verification": verification}


def table(result: dict) -> str:
    lines = [f"Data: {result['train_sequences']} training sequences of {result['seq_len']} tokens in "
             f"{result['train_shards']} shards, {result['bytes_per_token']:.2f} bytes per token; batch "
             f"{result['batch_size']}; stream {result['stream_sequences_per_s']:.0f} sequences/s "
             f"({result['stream_sequences_per_s'] * result['seq_len'] / 1e6:.2f}M tokens/s, one process).", "",
             "| resumed after (batches) | time to first batch (s) | replaying them instead (s, at the stream rate) |",
             "|---:|---:|---:|"]
    lines += [f"| {r['batches']:,} | {r['seconds']:.3f} | {r['replay_seconds']:.1f} |" for r in result["resume"]]
    first = result["resume"][0]["seconds"]
    lines += ["", f"Slowest / fastest time to first batch: {max(r['seconds'] for r in result['resume']) / first:.2f}x "
                  "(target: within 2x).", "", "| verification | seconds |", "|---|---:|"]
    lines += [f"| {r['what']} | {r['seconds']:.3f} |" for r in result["verification"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a prepared folder (default: prepare the shipped sample in a temp dir)")
    parser.add_argument("--batches", type=int, nargs="+", default=[10, 10_000, 100_000])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from lory_lightning.data.prepare import PrepareConfig, prepare

            data = f"{tmp}/sample"
            prepare(PrepareConfig(output=data), quiet=True)
        result = run(data, args.batches, args.batch_size, args.rounds)
    text = table(result)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
