"""What Lightning's ThroughputMonitor needs to read a LoryDataModule batch: its rows and its tokens.

Used by the run configs:

    - class_path: lightning.pytorch.callbacks.ThroughputMonitor
      init_args:
        batch_size_fn: lory_lightning.callbacks.batch_rows
        length_fn: lory_lightning.callbacks.batch_tokens

It logs ``train/device/items_per_sec`` (tokens/s of one rank), ``train/items_per_sec`` (all ranks),
``train/device/flops_per_sec`` and, on accelerators whose peak it knows, ``train/device/mfu``,
from LoryLM's ``flops_per_batch`` (model/config.py, ``training_flops_per_token``).
"""

from __future__ import annotations

from typing import Any


def batch_rows(batch: dict[str, Any]) -> int:
    """Sequences in a batch."""
    return int(batch["targets"].shape[0])


def batch_tokens(batch: dict[str, Any]) -> int:
    """Tokens in a batch (the ThroughputMonitor's items)."""
    return int(batch["targets"].numel())
