"""The Lory model in plain PyTorch (no Lightning import): config, decoder, MoE layer, inference."""

from .config import ModelConfig, param_counts
from .generate import generate, sample_next
from .losses import load_balancing_loss, router_z_loss
from .moe import LoryMoE, MergedFFNCache, Routing, SwiGLU
from .transformer import InferenceCache, LoryTransformer, ModelOutput
from .upcycle import upcycle, upcycle_state_dict

__all__ = [
    "InferenceCache", "LoryMoE", "LoryTransformer", "MergedFFNCache", "ModelConfig",
    "ModelOutput", "Routing", "SwiGLU", "generate", "load_balancing_loss", "param_counts",
    "router_z_loss", "sample_next", "upcycle", "upcycle_state_dict",
]
