"""Hugging Face interop (the ``hf`` extra): ``import lory_lightning.hf`` registers the ``lory`` model type
with the Auto classes, so an exported folder loads without trust_remote_code."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from .model.configuration_lory import LoryConfig
from .model.modeling_lory import LoryForCausalLM

AutoConfig.register("lory", LoryConfig, exist_ok=True)
AutoModelForCausalLM.register(LoryConfig, LoryForCausalLM, exist_ok=True)

__all__ = ["LoryConfig", "LoryForCausalLM"]
