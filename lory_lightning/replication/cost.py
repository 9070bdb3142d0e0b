"""What a training step costs, measured side by side in one process: the equal-compute arm's ratio.

Equal tokens is not equal cost. The second study trains a dense model for as many more steps as a
Lory step costs more than a dense one on the machine the study runs on, measured here: whole
training steps (forward, backward, AdamW) of both models on the same batch, interleaved round by
round after a warm-up so that a change of machine load hits both, the median of each kept.
benchmarks/suite.py times its variants with the same two functions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..model import LoryTransformer, ModelConfig
from ..optim import OptimConfig, param_groups


def interleaved_medians(fns: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Seconds per call of each function: the median over ``rounds``, calls interleaved round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def training_step(cfg: ModelConfig, optim: OptimConfig, idx: torch.Tensor) -> Callable[[], None]:
    """One training step (forward, backward, AdamW with ``optim``'s kernel) of a fresh ``cfg`` model on
    ``idx`` (B, L + 1)."""
    torch.manual_seed(0)
    model = LoryTransformer(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, **optim.adamw_kwargs())

    def run() -> None:
        loss = F.cross_entropy(model(idx[:, :-1]).logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def step_time_ratio(cfg: ModelConfig, reference: ModelConfig, batch_size: int, rounds: int = 15) -> dict[str, Any]:
    """The training step of ``cfg`` timed against ``reference``'s on one random batch: {"ratio" (median
    step of cfg / median step of reference), "ms", "reference_ms", "rounds", "threads", "batch_size"}."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    idx = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))
    med = interleaved_medians({"cfg": training_step(cfg, OptimConfig(), idx),
                               "reference": training_step(reference, OptimConfig(), idx)}, rounds)
    return {"ratio": round(med["cfg"] / med["reference"], 4), "ms": round(med["cfg"] * 1e3, 2),
            "reference_ms": round(med["reference"] * 1e3, 2), "rounds": rounds, "threads": torch.get_num_threads(),
            "batch_size": batch_size}
