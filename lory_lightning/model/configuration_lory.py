"""LoryConfig: ModelConfig as a Hugging Face ``PretrainedConfig`` (model_type ``lory``), for exported models.

This file and modeling_lory.py are copied into every exported folder with the rest of model/, so
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` needs neither lory_lightning nor
Lightning: only torch and transformers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from .config import ModelConfig

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
# ModelConfig.top_k (experts per token of the top-k baseline) would read as a generation setting to
# transformers, which refuses generation settings in a model config: here it is router_top_k.
RENAMED = {"top_k": "router_top_k"}


class LoryConfig(PretrainedConfig):
    """Every ModelConfig field under its own name (``top_k`` as ``router_top_k``), plus ``routing``: how
    generation routes (``prompt``: one merge per layer from the prompt; ``segment``: the training
    computation)."""

    model_type = "lory"

    def __init__(self, routing: str = "prompt", **kwargs: Any) -> None:
        defaults = dataclasses.asdict(ModelConfig())
        model = {name: kwargs.pop(RENAMED.get(name, name), defaults[name]) for name in MODEL_FIELDS}
        ModelConfig(**model)  # validated with ModelConfig's own messages
        for name, value in model.items():
            setattr(self, RENAMED.get(name, name), value)
        self.routing = routing
        kwargs.setdefault("tie_word_embeddings", model["tie_embeddings"])
        super().__init__(**kwargs)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, RENAMED.get(name, name)) for name in MODEL_FIELDS})

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs: Any) -> "LoryConfig":
        return cls(**{RENAMED.get(k, k): v for k, v in dataclasses.asdict(cfg).items()}, **kwargs)
