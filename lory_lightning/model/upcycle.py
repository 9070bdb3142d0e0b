"""Upcycling: turn a trained dense model into a Lory model by copying each FFN into every expert.

LORY.md section 3: train the parameter-matched dense model for the first steps, then copy each FFN
into all E experts and continue as Lory. All experts start equal, so the upcycled model computes
exactly the dense function (merging is a convex combination of equal matrices); the small random
router is what lets the experts drift apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig
from .transformer import LoryTransformer

EXPERT_MATRICES = ("w_gate", "w_up", "w_down")


def upcycle_state_dict(dense_state: dict[str, Tensor], cfg: ModelConfig,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The state dict of the Lory model ``cfg`` built from a dense model's state dict.

    Every ``*.ffn.w_gate`` (d, f) / ``w_up`` (d, f) / ``w_down`` (f, d) becomes (E, ...) with E equal
    copies; each layer gains ``*.ffn.router.weight`` (E, d) drawn from N(0, router_init_std^2).
    Everything else is copied unchanged.
    """
    if not cfg.is_moe:
        raise ValueError(f"upcycling targets a routed config (ffn='lory' or a baseline), got ffn={cfg.ffn!r}")
    out: dict[str, Tensor] = {}
    routers: list[str] = []
    for key, value in dense_state.items():
        prefix, _, name = key.rpartition(".")
        if prefix.endswith(".ffn") and name in EXPERT_MATRICES:
            out[key] = value.unsqueeze(0).expand(cfg.num_experts, *value.shape).clone()  # (E, ...)
            if name == "w_gate":
                routers.append(f"{prefix}.router.weight")
        else:
            out[key] = value.clone()
    if not routers:
        raise ValueError("no dense FFN weights (*.ffn.w_gate) found: is this a dense model's state dict?")
    for key in routers:
        if cfg.ffn in ("lory", "lory_prefix"):  # only Lory layers carry the dense-phase flag
            out[key.replace("router.weight", "dense_phase")] = torch.tensor(False)
        like = out[key.replace("router.weight", "w_gate")]  # (E, d, f)
        out[key] = torch.randn(cfg.num_experts, cfg.dim, generator=generator, dtype=torch.float32
                               ).mul_(cfg.router_init_std).to(device=like.device, dtype=like.dtype)
    return out


def upcycle(dense: LoryTransformer, num_experts: int,
            generator: torch.Generator | None = None) -> LoryTransformer:
    """A Lory model with ``num_experts`` experts per layer, each a copy of ``dense``'s FFN."""
    if dense.config.ffn != "dense":
        raise ValueError(f"upcycle() takes a dense model, got ffn={dense.config.ffn!r}")
    cfg = dense.config.replace(ffn="lory", num_experts=num_experts)
    ref = next(dense.parameters())
    with torch.device("meta"):
        lory = LoryTransformer(cfg)
    lory.load_state_dict(upcycle_state_dict(dense.state_dict(), cfg, generator), assign=True)
    return lory.to(device=ref.device, dtype=ref.dtype).train(dense.training)
