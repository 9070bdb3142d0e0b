"""Fault-injection callbacks for the reliability tests."""

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """Kill the process with SIGKILL after a given training step: no cleanup, like a lost node."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NanGradAt(Callback):
    """Make one gradient NaN after the backward pass of a given step (one bad batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module):  # noqa: ANN001
        if trainer.global_step == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = torch.nan
