#!/usr/bin/env python3
"""Where a training step's GPU time goes, dense against Lory on each kernel: torch.profiler's top CUDA kernels.

    python benchmarks/profile_gpu.py [--experts 8] [--n_layer 8] [--kernels torch triton]   # table3.py's model
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import table3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--n_layer", type=int, default=8)
    parser.add_argument("--kernels", nargs="+", choices=["torch", "triton"], default=["torch", "triton"])
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    bench = table3.parse([f"--experts={args.experts}", f"--n_layer={args.n_layer}", "--device=cuda", "--dtype=bf16",
                          "--modes", "eager", "--kernels", *args.kernels])
    device = torch.device("cuda")
    for v in table3.variants(bench, device):
        step, cleanup = table3.build_step(v.cfg, bench, device)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        print(f"\n=== {v.name}: 2 steps")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
        cleanup()


if __name__ == "__main__":
    main()
