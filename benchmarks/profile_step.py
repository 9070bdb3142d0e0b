#!/usr/bin/env python3
"""Where a training step's time goes: torch.profiler over a few steps of the tiny model, per variant.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/profile_step.py [--experts 8 32]

Prints the operators by total self CPU time for dense and Lory, so the extra time of Lory can be
read off operator by operator.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.optim import param_groups


def profile_variant(cfg: ModelConfig, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = LoryTransformer(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    idx = torch.randint(0, cfg.vocab_size, (8, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        F.cross_entropy(model(idx[:, :-1]).logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}  # ms per step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    base = ModelConfig()  # the tiny model of configs/lory-tiny.yaml
    dense = profile_variant(base.replace(ffn="dense"), args.steps)
    total_dense = sum(dense.values())
    for E in args.experts:
        for recompute in (True, False):
            lory = profile_variant(base.replace(num_experts=E, recompute_merge=recompute), args.steps)
            total = sum(lory.values())
            print(f"\nLory {E}E ({'recompute' if recompute else 'plain'}): {total:.0f} ms/step vs dense "
                  f"{total_dense:.0f} ms ({total / total_dense:.3f}x, profiler self time)")
            print(f"{'operator':34s}{'lory ms':>10s}{'dense ms':>10s}{'extra ms':>10s}")
            keys = sorted(set(lory) | set(dense), key=lambda k: -(lory.get(k, 0) - dense.get(k, 0)))
            shown = keys[: args.top] + [k for k in ("aten::mm", "aten::bmm") if k not in keys[: args.top]]
            for k in shown:
                print(f"{k[:34]:34s}{lory.get(k, 0):10.1f}{dense.get(k, 0):10.1f}{lory.get(k, 0) - dense.get(k, 0):10.1f}")


if __name__ == "__main__":
    main()
