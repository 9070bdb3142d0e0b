"""TrainingConfig: how LoryLM trains beyond the optimizer (dense warmup, upcycling, router losses, bad steps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .model import ModelConfig


@dataclass
class TrainingConfig:
    """The ``model.training`` section of a run config.

    Args:
        dense_warmup: Share of ``trainer.max_steps`` trained as the dense model before upcycling
            into experts (paper: 0.05; 0 starts as Lory). Only for Lory layers (``ffn: lory`` or
            ``lory_prefix``); the baselines start from a dense checkpoint with ``model.init_from``.
        upcycle_moments: At the end of the dense warmup every expert inherits the dense FFN's Adam
            moments, ``scaled`` to the 1/E share of the gradient each expert then gets, or ``copied``
            unscaled (which damps expert updates for ~100 steps; see REPLICATION.md).
        load_balance_coef: Weight of the Switch load-balancing loss (paper: 0, off).
        z_loss_coef: Weight of the router z-loss (paper: 0, off).
        remoe_l1_init: ``ffn: remoe``: the L1 coefficient lambda_0 its sparsity control starts from
            (ReMoE's 1e-8; model/remoe.py).
        remoe_l1_alpha: ``ffn: remoe``: the factor alpha > 1 lambda moves by each step toward the
            target sparsity 1 - top_k/num_experts (ReMoE's 1.2).
        balance_bias_rate: ``ffn: topk_aux_free``: the step gamma each expert's routing bias moves by
            after each optimizer step (DeepSeek-V3's 0.001).
        nonfinite: What a non-finite loss or gradient norm does: ``stop`` the run with a message,
            or ``skip`` the optimizer step (counted as ``train/skipped_steps``). Decided on a flag
            reduced over all ranks, so every rank does the same (callbacks/guard.py).
    """

    dense_warmup: float = 0.0
    upcycle_moments: Literal["scaled", "copied"] = "scaled"
    load_balance_coef: float = 0.0
    z_loss_coef: float = 0.0
    remoe_l1_init: float = 1e-8
    remoe_l1_alpha: float = 1.2
    balance_bias_rate: float = 0.001
    nonfinite: Literal["stop", "skip"] = "stop"

    def __post_init__(self) -> None:
        if not 0.0 <= self.dense_warmup < 1.0:
            raise ValueError(f"model.training.dense_warmup is a share of max_steps in [0, 1), got {self.dense_warmup}")
        if self.upcycle_moments not in ("scaled", "copied"):
            raise ValueError(f"model.training.upcycle_moments must be 'scaled' or 'copied', got {self.upcycle_moments!r}")
        for name in ("load_balance_coef", "z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.training.{name} must be >= 0, got {getattr(self, name)}")
        if self.remoe_l1_init <= 0:
            raise ValueError(f"model.training.remoe_l1_init must be > 0 (it is only ever multiplied), got "
                             f"{self.remoe_l1_init}")
        if self.remoe_l1_alpha <= 1:
            raise ValueError(f"model.training.remoe_l1_alpha must be > 1, got {self.remoe_l1_alpha}")
        if self.balance_bias_rate < 0:
            raise ValueError(f"model.training.balance_bias_rate must be >= 0, got {self.balance_bias_rate}")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"model.training.nonfinite must be 'stop' or 'skip', got {self.nonfinite!r}")

    def check(self, model: ModelConfig) -> None:
        """Refuse settings the model cannot use."""
        if self.dense_warmup and not model.ffn_class.has_dense_phase:
            raise ValueError(f"model.training.dense_warmup needs model.arch.ffn: lory or lory_prefix, got "
                             f"{model.ffn!r} (the baselines start from a dense model with model.init_from instead)")
        if (self.load_balance_coef or self.z_loss_coef) and not model.is_moe:
            raise ValueError("router losses (model.training.load_balance_coef, z_loss_coef) need routed experts, "
                             "not ffn: dense")

    def upcycle_step(self, max_steps: int) -> int | None:
        """The optimizer step at which the dense warmup ends (None without one)."""
        return int(round(self.dense_warmup * max_steps)) if self.dense_warmup else None
