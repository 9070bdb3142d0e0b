"""Optimizer settings, parameter groups and the learning-rate schedule (LORY.md section 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule, linear warmup and a floor.

    Args:
        lr: Peak learning rate (paper: 2e-4 at 0.3B).
        betas: AdamW betas (paper: 0.9, 0.95).
        weight_decay: Applied to matrices only (unstated in the paper; decided 0.1).
        warmup_fraction: Share of max_steps spent in linear warmup (paper: 5%).
        min_lr_ratio: The cosine ends at this fraction of the peak (decided: 10%).
        eps: AdamW epsilon.
        implementation: torch's AdamW kernel: ``fused`` (one kernel over all parameters and their
            moments: on 2 CPU cores the Lory 32E step of the tiny model took 5% less time than
            with the per-parameter loop, BENCHMARKS.md), ``foreach``, ``for-loop``, or ``auto``:
            fused, except under mixed precision (``*-mixed``), where Lightning refuses gradient
            clipping with a fused optimizer and ``foreach`` (torch's GPU default) is taken.
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    eps: float = 1e-8
    implementation: str = "auto"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives a list
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.implementation not in ADAMW_IMPLEMENTATIONS:
            raise ValueError(f"optim.implementation must be one of {', '.join(ADAMW_IMPLEMENTATIONS)}, "
                             f"got {self.implementation!r}")

    def adamw_kwargs(self, precision: str = "32-true") -> dict[str, bool]:
        """torch.optim.AdamW's switch for ``implementation`` under Lightning's ``precision``."""
        kind = self.implementation
        if kind == "auto":
            kind = "foreach" if str(precision).endswith("-mixed") else "fused"
        return {"fused": {"fused": True}, "foreach": {"foreach": True},
                "for-loop": {"foreach": False, "fused": False}}[kind]


ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")


def lr_multiplier(step: int, max_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from 1/warmup to 1, then cosine to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(max_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matrices (dim >= 2: projections, experts, router, embeddings); none on norm gains."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
