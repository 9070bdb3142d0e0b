"""Lightning callbacks that watch the experts while the model trains (LORY.md section 5).

Both read routing weights from the step outputs (``{"loss", "routing"}`` of LoryLM), never from module
state, and do nothing for a dense model (every layer's routing is None).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from ..routing.specialization import SpecializationAccumulator, default_layers, write_report
from ..routing.stats import activated, expert_share, routing_entropy


def _lory_routing(outputs: Any) -> list:
    routing = outputs.get("routing") if isinstance(outputs, dict) else None
    return [r for r in (routing or ()) if r is not None]


class RoutingMonitor(Callback):
    """Per Lory layer, every ``every_n_steps`` training steps: routing entropy, expert shares, utilization.

    Logged (layer i, expert e): ``routing/layer{i}/entropy`` (nats), ``routing/layer{i}/entropy_norm``
    (divided by log E: 1 is uniform), ``routing/layer{i}/expert{e}`` (mean weight), ``routing/layer{i}/max_share``,
    and at the end of every window of ``utilization_window`` steps ``routing/utilization`` (experts
    activated at least once in the window, weight > 2/E, summed over layers: the paper's Fig. 9) with
    ``routing/utilization_frac`` (over layers x E). Statistics are of this process's batches. For
    token-level baselines a routing row is a token and its weights are the gates it was applied with.

    Args:
        every_n_steps: Steps between logs of entropy and shares (the utilization mask is updated every
            step: one comparison per layer).
        utilization_window: Steps per utilization window (paper: 10).
    """

    def __init__(self, every_n_steps: int = 10, utilization_window: int = 10) -> None:
        if every_n_steps < 1 or utilization_window < 1:
            raise ValueError(f"every_n_steps ({every_n_steps}) and utilization_window ({utilization_window}) must be >= 1")
        self.every_n_steps, self.utilization_window = every_n_steps, utilization_window
        self._active: torch.Tensor | None = None  # (layers, E) bool
        self._window_start: int | None = None  # optimizer step at which the current window began
        self._last_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        layers = _lory_routing(outputs)
        if not layers:
            return
        # Windows and logging count optimizer steps (trainer.global_step), not micro-batches: with
        # gradient accumulation every micro-batch of a step adds to the step's activations.
        step = trainer.global_step
        if self._window_start is None:
            self._window_start = self._last_step = step - 1 if step > 0 else 0
        stepped = step != self._last_step
        self._last_step = step
        step_active = torch.stack([activated(r.weights) for r in layers])  # (layers, E)
        self._active = step_active if self._active is None else self._active | step_active
        metrics: dict[str, float] = {}
        if step - self._window_start >= self.utilization_window:
            count = int(self._active.sum())
            metrics["routing/utilization"] = float(count)
            metrics["routing/utilization_frac"] = count / self._active.numel()
            self._active, self._window_start = None, step
        if stepped and step % self.every_n_steps == 0:
            for i, r in enumerate(layers):
                E = r.weights.shape[-1]
                entropy = float(routing_entropy(r.weights))
                share = expert_share(r.weights).tolist()
                metrics[f"routing/layer{i}/entropy"] = entropy
                metrics[f"routing/layer{i}/entropy_norm"] = entropy / math.log(E) if E > 1 else 0.0
                metrics[f"routing/layer{i}/max_share"] = max(share)
                for e in range(E):
                    metrics[f"routing/layer{i}/expert{e}"] = share[e]
        if metrics and trainer.global_rank == 0:
            # Straight to the loggers, at the step's row: self.log would repeat these values on every
            # later step's row until the epoch ends.
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step - 1)


class DomainSpecialization(Callback):
    """At every validation: the mean routing weight of each (domain, layer, expert), exact across processes.

    Writes ``<log_dir>/specialization/step{N}.json``, ``.csv``, ``step{N}-layers.png`` (chosen layers)
    and ``step{N}-all-layers.png``; logs the figures to TensorBoard when a TensorBoardLogger is
    attached; logs ``specialization/layer{i}/mi`` (mutual information between domain and expert, nats),
    ``specialization/mi_mean``, and per expert ``specialization/layer{i}/expert{e}/domain_entropy``
    (the entropy of the expert's routing over domains divided by log D: 0 the expert serves one
    domain, 1 every domain alike), so curves show specialization appearing over training.

    Args:
        layers: Layers drawn in the chosen-layers figure (default: first, middle, last).
    """

    def __init__(self, layers: list[int] | None = None) -> None:
        self.layers = layers
        self._acc: SpecializationAccumulator | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        moe = pl_module.model.moe_layers() if hasattr(pl_module, "model") else []
        domains = getattr(pl_module, "domains", [])
        self._acc = None
        if moe and domains:
            self._acc = SpecializationAccumulator(len(moe), len(domains), moe[0].num_experts,
                                                  moe[0].segment_len, pl_module.device)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._acc is not None:
            self._acc.update(_lory_routing(outputs), batch["domains"])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        acc, self._acc = self._acc, None
        if acc is None or trainer.sanity_checking:
            return
        acc.reduce(lambda t: trainer.strategy.reduce(t, reduce_op="sum"))
        mi = acc.mutual_information()
        for i, value in enumerate(mi):
            pl_module.log(f"specialization/layer{i}/mi", value, sync_dist=False)
        for i, per_expert in enumerate(acc.expert_domain_entropy()):
            for e, value in enumerate(per_expert):
                if not math.isnan(value):
                    pl_module.log(f"specialization/layer{i}/expert{e}/domain_entropy", value, sync_dist=False)
        pl_module.log("specialization/mi_mean", sum(mi) / len(mi), sync_dist=False)
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank takes part
        if trainer.global_rank != 0 or log_dir is None:
            return
        tag = f"step{trainer.global_step}"
        written = write_report(acc, pl_module.domains, Path(log_dir) / "specialization", tag, self.layers)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                from ..routing.plots import specialization_figure

                mean = acc.mean_weight().cpu().numpy()
                chosen = self.layers if self.layers is not None else default_layers(mean.shape[0])
                logger.experiment.add_figure("specialization/layers", specialization_figure(
                    mean, pl_module.domains, chosen, tag), trainer.global_step)
        self.last_report = written
