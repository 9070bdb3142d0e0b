"""FSDP for Lory, configurable from YAML: each decoder block (attention + its experts) is one shard unit.

Lightning's FSDPStrategy takes the wrap policy as a set of module classes, which a YAML file cannot
express; this subclass names the policy with plain flags so that `configs/*-fsdp.yaml` stays YAML.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy

from .model.transformer import Block


class LoryFSDPStrategy(FSDPStrategy):
    """FSDP that wraps every ``Block`` (so a block's experts are gathered only while it runs).

    Args:
        checkpoint_blocks: Recompute each block's activations in backward (activation checkpointing).
        **kwargs: Any other FSDPStrategy argument (sharding_strategy, state_dict_type, ...).
    """

    def __init__(self, checkpoint_blocks: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("auto_wrap_policy", {Block})
        if checkpoint_blocks:
            kwargs.setdefault("activation_checkpointing_policy", {Block})
        super().__init__(**kwargs)
