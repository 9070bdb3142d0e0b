"""Upcycling, all of it: turn a dense model into a Lory model by copying each FFN into every expert.

LORY.md section 3: train the parameter-matched dense model for the first steps, then copy each FFN
into all E experts and continue as Lory. All experts start equal, so the upcycled model computes
exactly the dense function (merging is a convex combination of equal matrices); the small random
router is what lets the experts drift apart.

Two ways in, one rule: ``upcycle_state_dict`` / ``upcycle`` turn a dense model's weights into a
routed model's (``model.init_from`` a dense checkpoint); ``start_dense_phase`` / ``upcycle_in_place``
run the dense warmup inside one routed model, whose Lory layers compute exactly the dense FFN
(expert 0 alone) until upcycled; ``upcycle_optimizer_state`` carries the warmup's Adam moments over.
The layers hold only their phase flag (LoryMoE.dense_phase); every transition lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .config import ModelConfig
from .transformer import LoryTransformer

EXPERT_MATRICES = ("w_gate", "w_up", "w_down")


def upcycle_state_dict(dense_state: dict[str, Tensor], cfg: ModelConfig,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The state dict of the Lory model ``cfg`` built from a dense model's state dict.

    Every ``*.ffn.w_gate`` (d, f) / ``w_up`` (d, f) / ``w_down`` (f, d) becomes (E, ...) with E equal
    copies; each layer gains ``*.ffn.router.weight`` (E, d) drawn from N(0, router_init_std^2), and
    the buffers its kind starts with (``upcycled_buffers``: the aux-loss-free bias). Everything else is copied unchanged.
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
        if cfg.ffn_class.has_dense_phase:  # only Lory layers carry the dense-phase flag
            out[key.replace("router.weight", "dense_phase")] = torch.tensor(False)
        like = out[key.replace("router.weight", "w_gate")]  # (E, d, f)
        for name, value in cfg.ffn_class.upcycled_buffers(cfg).items():
            out[key.replace("router.weight", name)] = value.to(device=like.device, dtype=like.dtype)
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


def router_generator(step: int) -> torch.Generator:
    """The generator fresh routers are drawn from at upcycling: the run's seed (``seed_everything``)
    plus the step, so every rank draws the same routers and a rerun the same ones."""
    return torch.Generator().manual_seed(torch.initial_seed() % 2 ** 63 + step)


def start_dense_phase(model: LoryTransformer) -> None:
    """Dense warmup: every Lory layer computes exactly the dense FFN (expert 0 alone) until upcycled."""
    if not model.config.ffn_class.has_dense_phase:
        raise ValueError(f"a dense warmup needs Lory layers (ffn: lory or lory_prefix), got ffn={model.config.ffn!r}")
    for layer in model.moe_layers():
        layer.set_dense_phase(True)


def in_dense_phase(model: LoryTransformer) -> bool:
    return any(layer.is_dense for layer in model.moe_layers())


def _expert0_everywhere(w: Tensor, scale: float = 1.0) -> None:
    """Set every expert of ``w`` (E, ...) to expert 0 times ``scale``, in place.

    A parameter sharded by FSDP2 is a DTensor split along the experts: expert 0 lives on the first
    rank, so it is gathered and each rank fills its own experts (its local shard) from it.
    """
    if isinstance(w, DTensor):
        expert0 = w.full_tensor()[:1]  # (1, ...) on every rank
        local = w.to_local()  # (E_local, ...): this rank's experts
        src = expert0.expand_as(local)
    else:
        local, src = w, w[:1].expand_as(w)  # (E, ...) all equal to expert 0
    local.copy_(src * scale if scale != 1 else src)


def _assign(p: Tensor, value: Tensor) -> None:
    """``p.copy_(value)`` for a full ``value`` that is equal on every rank, also when ``p`` is sharded."""
    value = value.to(device=p.device, dtype=p.dtype)
    if isinstance(p, DTensor):  # each rank keeps its own slice: no communication
        value = distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
    p.copy_(value)


@torch.no_grad()
def upcycle_in_place(model: LoryTransformer, generator: torch.Generator | None = None) -> None:
    """End the dense warmup: copy expert 0 (the dense FFN that trained) into every expert and draw
    fresh routers from N(0, router_init_std^2). Works on a model sharded by FSDP2 alike."""
    std = model.config.router_init_std
    for layer in model.moe_layers():
        for w in (layer.w_gate, layer.w_up, layer.w_down):
            _expert0_everywhere(w)
        fresh = torch.randn(layer.router.weight.shape, generator=generator, dtype=torch.float32) * std  # (E, d)
        _assign(layer.router.weight, fresh)
        layer.set_dense_phase(False)


# How each Adam-family moment scales with the gradient: exp_avg linearly, the squared ones quadratically.
_MOMENT_POWER = {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}


@torch.no_grad()
def upcycle_optimizer_state(optimizer: torch.optim.Optimizer, experts: list[nn.Parameter],
                            routers: list[nn.Parameter], grad_ratio: float = 1.0) -> None:
    """After upcycling in place: every expert inherits expert 0's moments; routers start afresh.

    Expert 0 is the dense FFN that trained during warmup, so its Adam moments are the dense model's.
    Each expert's gradient after upcycling is the dense gradient times its routing weight, about 1/E
    under the near-uniform fresh router; ``grad_ratio`` (1/E) scales the first moment by that ratio
    and the second by its square, so every expert's first Adam steps are as large as the dense
    model's were and the merged FFN keeps moving at the dense pace. With ``grad_ratio`` 1 the stale
    second moment, E^2 too large, damps the experts' updates for the ~1/(1 - beta2) steps it takes to
    decay (measured in REPLICATION.md). Other optimizers' per-parameter state is copied unscaled.
    """
    if not 0 < grad_ratio <= 1:
        raise ValueError(f"grad_ratio must be in (0, 1], got {grad_ratio}")
    for p in experts:
        state = optimizer.state.get(p)
        if state:
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    _expert0_everywhere(value, grad_ratio ** _MOMENT_POWER.get(key, 0))
    for p in routers:
        optimizer.state.pop(p, None)


def upcycle_model_and_optimizer(model: LoryTransformer, optimizers: list[torch.optim.Optimizer],
                                step: int, moments: str = "scaled") -> None:
    """The end of the dense warmup at ``step``, on every rank alike: experts from expert 0, fresh routers
    from ``router_generator(step)``, and expert 0's Adam moments for every expert (``moments``:
    ``scaled`` to the 1/E gradient share each expert then gets, or ``copied``)."""
    upcycle_in_place(model, router_generator(step))
    layers = model.moe_layers()
    ratio = 1.0 / model.config.num_experts if moments == "scaled" else 1.0
    for opt in optimizers:
        upcycle_optimizer_state(opt, [w for layer in layers for w in (layer.w_gate, layer.w_up, layer.w_down)],
                                [layer.router.weight for layer in layers], grad_ratio=ratio)
