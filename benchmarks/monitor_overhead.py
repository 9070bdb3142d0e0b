#!/usr/bin/env python3
"""Cost of the RoutingMonitor callback against a training step of the tiny preset, in one process.

    python benchmarks/monitor_overhead.py [--rounds 10]

Times, interleaved over rounds (medians): one training step (forward, backward, AdamW) of the tiny
Lory model at batch 8 x 512, the callback on a step where it only updates the utilization mask, and
on a step where it also computes and logs entropies and shares (every 10th step by default).
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from lory_lightning.callbacks import RoutingMonitor
from lory_lightning.routing.specialization import SpecializationAccumulator
from lory_lightning.model import LoryTransformer, ModelConfig


class _NullLogger:
    def log_metrics(self, metrics, step):  # noqa: ANN001
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig()  # the tiny model of configs/lory-tiny.yaml
    model = LoryTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, cfg.vocab_size, (8, cfg.seq_len + 1))
    monitor = RoutingMonitor(every_n_steps=10, utilization_window=10)

    def train_step():
        out = model(idx[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        return {"loss": loss.detach(), "routing": tuple(r._replace(weights=r.weights.detach()) for r in out.routing)}

    outputs = train_step()  # warm-up
    quiet = SimpleNamespace(global_step=3, global_rank=0, loggers=[_NullLogger()])
    logging = SimpleNamespace(global_step=10, global_rank=0, loggers=[_NullLogger()])
    step_t, quiet_t, log_t = [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        outputs = train_step()
        t1 = time.perf_counter()
        for _ in range(10):
            monitor.on_train_batch_end(quiet, None, outputs, None, 0)
        t2 = time.perf_counter()
        monitor.on_train_batch_end(logging, None, outputs, None, 0)
        t3 = time.perf_counter()
        step_t.append(t1 - t0)
        quiet_t.append((t2 - t1) / 10)
        log_t.append(t3 - t2)
    # DomainSpecialization, at validation: one accumulator update per batch against a forward pass.
    acc = SpecializationAccumulator(cfg.n_layer, 5, cfg.num_experts, cfg.segment_len)
    domains = torch.randint(0, 5, (8, cfg.seq_len))
    fwd_t, acc_t = [], []
    with torch.no_grad():
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            out = model(idx[:, :-1])
            t1 = time.perf_counter()
            acc.update(out.routing, domains)
            t2 = time.perf_counter()
            fwd_t.append(t1 - t0)
            acc_t.append(t2 - t1)
    s, q, lg = (statistics.median(x) for x in (step_t, quiet_t, log_t))
    f, a = statistics.median(fwd_t), statistics.median(acc_t)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny preset, batch 8 x {cfg.seq_len}")
    print(f"training step                  {s * 1e3:8.2f} ms")
    print(f"monitor, mask-only step        {q * 1e3:8.3f} ms  ({q / s:.3%} of a step)")
    print(f"monitor, logging step          {lg * 1e3:8.3f} ms  ({lg / s:.3%} of a step)")
    print(f"average at every_n_steps=10    {(9 * q + lg) / 10 / s:.3%} of a step")
    print(f"validation forward             {f * 1e3:8.2f} ms")
    print(f"specialization update          {a * 1e3:8.3f} ms  ({a / f:.3%} of a validation forward)")


if __name__ == "__main__":
    main()
