"""NonFiniteGuard: the global gradient norm of every step, logged, and a stop or a skip when it or the loss is not finite."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.tensor import DTensor


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient norm with ``nonfinite: stop``."""


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """The global L2 norm of every gradient (fp32), zero when there is none.

    Gradients sharded by FSDP2 (DTensors) count once each: torch's total norm of them is a partial
    result per rank, summed across the shards by ``full_tensor`` (one all-reduce).
    """
    grads = [p.grad.float() for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class NonFiniteGuard(Callback):
    """Before every optimizer step: logs ``train/grad_norm`` (before clipping) and, when the loss or
    that norm is not finite on any rank, stops the run or skips the step, on every rank alike.

    LoryLM adds it itself (``configure_callbacks``) with ``model.training.nonfinite``; it reads the
    step's loss from ``pl_module.last_loss``. Skipped steps are counted in ``train/skipped_steps``
    and the count is kept in checkpoints.

    Args:
        nonfinite: ``stop`` (raise NonFiniteError with a message) or ``skip`` (drop the gradients:
            AdamW leaves parameters without gradients untouched, so the step is skipped).
    """

    def __init__(self, nonfinite: Literal["stop", "skip"] = "stop") -> None:
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.skipped_steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        norm = grad_norm(pl_module).to(pl_module.device)
        pl_module.log("train/grad_norm", norm)
        loss = getattr(pl_module, "last_loss", None)
        loss = loss if loss is not None else torch.zeros((), device=pl_module.device)
        bad = (~torch.isfinite(loss) | ~torch.isfinite(norm)).float()
        bad = trainer.strategy.reduce(bad, reduce_op="sum") if trainer.world_size > 1 else bad
        if bad.item() == 0:
            return
        message = (f"non-finite {'loss' if not torch.isfinite(loss) else 'gradient norm'} at step "
                   f"{trainer.global_step} (loss {loss.item()}, grad norm {norm.item()}) on some rank")
        if self.nonfinite == "stop":
            raise NonFiniteError(f"{message}: stopping. Set model.training.nonfinite: skip to skip such steps instead")
        for p in pl_module.parameters():
            p.grad = None  # AdamW leaves parameters without gradients untouched: the step is skipped
        self.skipped_steps += 1
        rank_zero_info(f"{message}: step skipped ({self.skipped_steps} so far)")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped_steps))

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
