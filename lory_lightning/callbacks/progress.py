"""What a run prints while it starts and trains: Lightning's progress bars made for step-based runs
(the step count to reach, tokens/s and the learning rate beside the loss), and a model summary
that states the model's own parameter and FLOP counts.

Lightning's defaults read "Epoch 0/-2" for a run sized by ``trainer.max_steps`` (its endless epoch
has max_epochs -1), and its summary prints "Total FLOPs: 0": it counts FLOPs only by running an
example input, which a sharded model cannot do on one rank. LoryCLI puts these in their place.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar, TQDMProgressBar

from ..model.config import param_counts, training_flops_per_token
from .throughput import batch_tokens


class StepRate:
    """Tokens per second over the last ``window`` training batches, by the host clock (what the bar shows)."""

    def __init__(self, window: int = 20) -> None:
        self.marks: deque[tuple[float, int]] = deque(maxlen=window + 1)
        self.tokens = 0

    def add(self, tokens: int, now: float | None = None) -> None:
        self.tokens += tokens
        self.marks.append((time.perf_counter() if now is None else now, self.tokens))

    def rate(self) -> float | None:
        if len(self.marks) < 2:
            return None
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def step_metrics(trainer: pl.Trainer, rate: StepRate) -> dict[str, str]:
    """The learning rate of the last step and the tokens/s of this process, formatted for a bar."""
    items = {}
    if trainer.optimizers:
        items["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.2e}"
    tokens_per_s = rate.rate()
    if tokens_per_s is not None:
        items["tok/s"] = f"{tokens_per_s:,.0f}"
    return items


def train_description(trainer: pl.Trainer) -> str:
    return f"step (to {trainer.max_steps})" if trainer.max_steps and trainer.max_steps > 0 else "train"


class _StepMetrics:
    """What both bars add to Lightning's: the tokens of every training batch counted, and the
    learning rate and tokens/s shown beside the loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_rate = StepRate()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.step_rate.add(batch_tokens(batch))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **step_metrics(trainer, self.step_rate)}


class LoryRichProgressBar(_StepMetrics, RichProgressBar):
    """Lightning's rich bar, for runs sized in steps: tokens/s and the learning rate beside the loss."""

    def _get_train_description(self, current_epoch: int) -> str:
        return train_description(self.trainer)


class LoryTQDMProgressBar(_StepMetrics, TQDMProgressBar):
    """Lightning's plain bar (where rich is not installed), with the same description and metrics."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(train_description(trainer))


def describe_model(pl_module: pl.LightningModule) -> list[str]:
    """Lines that describe a LoryLM's model: shape, parameters (total, active), training FLOPs."""
    cfg = pl_module.model.config
    counts = param_counts(cfg)
    experts = f", {cfg.num_experts} experts per FFN, segments of {cfg.segment_len}" if cfg.is_moe else ""
    flops = training_flops_per_token(cfg)
    return [f"model:    {cfg.ffn} decoder, {cfg.n_layer} layers, d {cfg.dim}, f {cfg.hidden_dim}{experts}, "
            f"sequences of {cfg.seq_len}",
            f"params:   {counts['total'] / 1e6:.1f}M in all, {counts['active'] / 1e6:.1f}M active per token",
            f"FLOPs:    {flops / 1e6:.1f}M per training token (forward and backward; model/config.py's count)"]


class LoryModelSummary(ModelSummary):
    """The model summary at the start of fit: the model's own parameter and FLOP counts, then Lightning's
    per-module table without its FLOPs column (0 without an example input)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._max_depth or not trainer.is_global_zero:
            return
        if not hasattr(getattr(pl_module, "model", None), "config"):
            return super().on_fit_start(trainer, pl_module)
        summary = self._summary(trainer, pl_module)
        rows = dict(summary._get_summary_data())
        lines = describe_model(pl_module)
        for name, kind, params in zip(rows["Name"], rows["Type"], rows["Params"]):
            lines.append(f"  {name:<12} {kind:<20} {params:>8}")
        print("\n".join(lines))
