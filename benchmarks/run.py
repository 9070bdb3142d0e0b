#!/usr/bin/env python3
"""The benchmark suite, one command: layer, whole-model and data-side ratios, with both allocators.

    python benchmarks/run.py [--rounds 7] [--data data/sample-512] [--out benchmarks/results.md]

Runs each part of `benchmarks/suite.py` in its own process (glibc malloc, and tcmalloc through
LD_PRELOAD when libtcmalloc_minimal.so.4 is installed: Debian package libtcmalloc-minimal4), then
prints and writes a markdown table of ratios to dense, each beside its FLOP floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_part(part: str, allocator: str, rounds: int, data: str | None, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator == "tcmalloc":
        env["LD_PRELOAD"] = TCMALLOC
    out = tmp / f"{part}-{allocator}.json"
    cmd = [sys.executable, str(HERE / "suite.py"), part, "--out", str(out), "--rounds", str(rounds)]
    if data:
        cmd += ["--data", data]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def layer_table(results: dict[str, dict]) -> list[str]:
    lines = ["| T | E | variant | " + " | ".join(f"time x dense ({a})" for a in results) +
             " | FLOP floor | saved activations x dense |", "|---:|---:|---|" + "---:|" * (len(results) + 2)]
    first = next(iter(results.values()))["rows"]
    for i, row in enumerate(first):
        times = " | ".join(f"{results[a]['rows'][i]['time_ratio']:.2f}" for a in results)
        lines.append(f"| {row['T']} | {row['E']} | {row['variant']} | {times} | {row['floor']:.3f} | "
                     f"{row['saved_ratio']:.2f} ({row['saved_MB']:.0f} MB) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--data", help="a prepared folder with 512-token sequences (default: prepare the sample)")
    parser.add_argument("--out", default=str(HERE / "results.md"))
    args = parser.parse_args()
    allocators = ["glibc"] + (["tcmalloc"] if Path(TCMALLOC).exists() else [])
    main_alloc = allocators[-1]
    with tempfile.TemporaryDirectory() as tmp:
        layer = {a: run_part("layer", a, args.rounds, None, Path(tmp)) for a in allocators}
        model = {a: run_part("model", a, args.rounds, None, Path(tmp)) for a in allocators}
        adamw = run_part("adamw", main_alloc, args.rounds, None, Path(tmp))
        compiled = run_part("compile", main_alloc, args.rounds, None, Path(tmp))
        data = run_part("data", main_alloc, args.rounds, args.data, Path(tmp))
    meta = layer[main_alloc]["meta"]
    lines = [f"Machine: {cpu_model()}, {meta['threads']} threads, torch {meta['torch']}, Python "
             f"{platform.python_version()}; allocators measured: {', '.join(allocators)}.", "",
             "### FFN layer, forward + backward (2 x 2048 tokens, d 256, f 688)", ""]
    lines += layer_table(layer)
    lines += ["", "### Whole model, training step with AdamW (tiny: 4 layers, d 256, f 512, L 512, T 128, batch 8)", "",
              "| variant | " + " | ".join(f"time x dense ({a})" for a in allocators) + " | FLOP floor | tokens/s |",
              "|---|" + "---:|" * (len(allocators) + 2)]
    for i, row in enumerate(model[main_alloc]["rows"]):
        times = " | ".join(f"{model[a]['rows'][i]['time_ratio']:.3f}" for a in allocators)
        lines.append(f"| {row['variant']} | {times} | {row['floor']:.3f} | {row['tokens_per_s']:.0f} |")
    lines += ["", f"### AdamW kernels, whole training step of the tiny model ({main_alloc})", "",
              "| model | AdamW | step (ms) | time x dense for-loop |", "|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['adamw']} | {r['ms']:.0f} | {r['time_ratio']:.3f} |" for r in adamw["rows"]]
    lines += ["", f"### `model.compile`: forward + backward of the tiny model, blocks compiled ({main_alloc})", "",
              "| variant | fwd+bwd (ms) | time x eager | saved for backward (MB) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['ms']:.0f} | {r['time_ratio']:.3f} | {r['saved_MB']:.0f} |"
              for r in compiled["rows"]]
    consume = next(r["tokens_per_s"] for r in model[main_alloc]["rows"] if r["variant"] == "lory_8e")
    stream = data["rows"][0]["tokens_per_s"]
    lines += ["", "### Data side", "",
              f"LoryDataModule streams {stream:,.0f} tokens/s from the shards (one process, no workers) against "
              f"{consume:,.0f} tokens/s consumed by the tiny Lory 8E training step: {stream / consume:.0f}x."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
