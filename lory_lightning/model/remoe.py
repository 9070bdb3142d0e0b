"""ReMoE (Wang et al., ICLR 2025): ReLU routing, and the adaptive L1 control that keeps it sparse.

Shape legend: B batch, L positions, S tokens (any leading dims flattened), E experts, d width.

A token's gates are g = ReLU(router(x)) (E,): no softmax and no top-k, so the layer is
differentiable everywhere but at 0, and a token runs every expert whose gate is positive (none,
one, or all of them): y = sum_e g_e * FFN_e(x). What keeps it sparse is an L1 penalty on the gates
whose coefficient adapts each step toward a target sparsity 1 - k/E (k: ``model.top_k``, the
active experts the model should average):

    loss = LM loss + lambda_i * L_reg
    L_reg = mean over layers of sum_e f_e * mean_t g_{t,e},  f_e = E / (k S) * #{t : g_{t,e} > 0}
    lambda_{i+1} = lambda_i * alpha ** sign((1 - k/E) - sparsity_i)

f_e (no gradient) is the paper's load-balancing refinement of the plain L1: an expert that takes
more tokens is pushed harder. sparsity_i is the share of zero gates over all layers, tokens and
experts of step i; alpha = 1.2 and lambda_0 = 1e-8 are the paper's values (``model.training``).
Early in training lambda is tiny and the layer is nearly dense (the paper's stage I, when a step
costs up to E times the FFN); lambda grows until the sparsity reaches the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .baselines import _Stateless, grouped_ffn
from .moe import RoutedExperts, Routing

if TYPE_CHECKING:  # annotations only: config.py imports the layers through model/ffn.py
    from .config import ModelConfig


# ----------------------------------------------------------------------------- pure functions


def relu_gates(logits: Tensor) -> Tensor:
    """The gates of ReLU routing: (..., E) router logits -> (..., E), zero for inactive experts."""
    return F.relu(logits)


def gate_shares(gates: Tensor) -> Tensor:
    """(..., E) gates -> the share of each active expert in the token's output (..., E), rows summing
    to 1 (0 for a token no expert takes): what the routing monitors read as a distribution."""
    total = gates.sum(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(total > 0, gates / total.clamp_min(torch.finfo(gates.dtype).tiny), 0.0)


def balanced_l1(gates: Tensor, top_k: int) -> Tensor:
    """One layer's L1 with load balancing: sum_e f_e * mean_t g_{t,e}, f_e = E/(k S) * #{t: g_{t,e} > 0}.

    gates (..., E) -> scalar. f is counted without gradient, so the penalty's gradient is f_e / S on
    each positive gate: the more tokens an expert takes, the harder its gates are pushed to 0.
    """
    g = gates.reshape(-1, gates.shape[-1])  # (S, E)
    S, E = g.shape
    f = (g > 0).sum(dim=0).to(g.dtype) * (E / (top_k * S))  # (E,)
    return (f.detach() * g.mean(dim=0)).sum()


def remoe_l1_loss(routing: Sequence[Routing | None], top_k: int) -> Tensor:
    """L_reg: ``balanced_l1`` of each ReLU-routed layer's gates (from its logits), averaged over layers."""
    layers = [r for r in routing if r is not None]
    if not layers:
        raise ValueError("remoe_l1_loss needs at least one ReLU-routed layer's routing")
    return torch.stack([balanced_l1(relu_gates(r.logits), top_k) for r in layers]).mean()


def gate_sparsity(routing: Sequence[Routing | None]) -> Tensor:
    """The share of zero gates over every layer, token and expert (a detached scalar in [0, 1])."""
    zeros = [(relu_gates(r.logits.detach()) == 0).sum() for r in routing if r is not None]
    total = sum(r.logits.numel() for r in routing if r is not None)
    if not total:
        raise ValueError("gate_sparsity needs at least one ReLU-routed layer's routing")
    return torch.stack(zeros).sum().double() / total


def adapt_l1_coef(coef: float, sparsity: float, target: float, alpha: float) -> float:
    """lambda_{i+1} = lambda_i * alpha ** sign(target - sparsity): up while too few gates are zero,
    down while too many are, unchanged on target."""
    return coef * alpha ** ((target > sparsity) - (target < sparsity))


def target_sparsity(top_k: int, num_experts: int) -> float:
    """1 - k/E: the share of zero gates at which a token averages k active experts."""
    return 1.0 - top_k / num_experts


# ----------------------------------------------------------------------------- the layer


class ReMoE(_Stateless, RoutedExperts):
    """ReLU-routed experts (see the module docstring). ``forward_with_routing`` returns the router
    logits (the gates are their ReLU, which the L1 penalty reads) and the gates' shares as weights.

    Args:
        dim, hidden_dim, num_experts: as for LoryMoE.
        top_k: The target of active experts per token (sets the target sparsity 1 - k/E).
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, top_k: int) -> None:
        if not 1 <= top_k < num_experts:
            raise ValueError(f"top_k (the target of active experts) must be in [1, num_experts={num_experts}), "
                             f"got {top_k}")
        super().__init__(dim, hidden_dim, num_experts, segment_len=1)
        self.top_k = top_k

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ReMoE:
        return cls(cfg.dim, cfg.hidden_dim, cfg.num_experts, cfg.top_k)

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        if not 1 <= cfg.top_k < cfg.num_experts:
            raise ValueError(f"model.top_k is ReMoE's target of active experts per token, in [1, num_experts="
                             f"{cfg.num_experts}), got {cfg.top_k}: with k = E nothing is sparse")

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> float:
        # at the target sparsity: k experts on average, and a router per token (stage I costs more)
        return cfg.top_k * 6 * cfg.dim * cfg.hidden_dim + 2 * cfg.dim * cfg.num_experts

    @staticmethod
    def active_experts(cfg: ModelConfig) -> int:
        return cfg.top_k

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Routing]:
        B, L, d = x.shape  # per token: padding never reaches a token
        E = self.num_experts
        logits = self.router_logits(x)  # (B, L, E) fp32 or wider
        gates = relu_gates(logits).reshape(B * L, E)  # (S, E)
        flat = gates.reshape(-1).nonzero().squeeze(1)  # (P,) the positive gates, token-major
        token, expert = flat // E, flat % E  # (P,) each
        y = grouped_ffn(self, x.reshape(B * L, d), token, expert, gates.reshape(-1).index_select(0, flat))
        return y.view(B, L, d), Routing(logits=logits, weights=gate_shares(gates).view(B, L, E))

