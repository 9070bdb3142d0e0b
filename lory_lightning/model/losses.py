"""Optional router losses. The paper trains Lory with LM cross-entropy only (LORY.md section 1);
these exist, off by default, so that the ablation is one config line."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .moe import Routing


def load_balancing_loss(routing: Sequence[Routing | None]) -> Tensor:
    """Switch-Transformer balance loss on segment routing, averaged over Lory layers.

    Per layer, with p (.., E) the router probabilities of every segment, f_i the fraction of
    segments whose largest probability is expert i, and P_i the mean of p_i:
    ``E * sum_i f_i * P_i`` (Fedus et al. 2021, eq. 4). It is 1 when routing is uniform and
    grows as segments concentrate on few experts; the gradient flows through P only.
    """
    layers = [r for r in routing if r is not None]
    if not layers:
        raise ValueError("load_balancing_loss needs at least one Lory layer's routing")
    losses = []
    for r in layers:
        probs = r.logits.softmax(dim=-1).reshape(-1, r.logits.shape[-1])  # (B*N, E)
        E = probs.shape[-1]
        frac = torch.bincount(probs.argmax(dim=-1), minlength=E).to(probs.dtype) / probs.shape[0]  # (E,)
        losses.append(E * (frac * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def router_z_loss(routing: Sequence[Routing | None]) -> Tensor:
    """Router z-loss ``mean(logsumexp(logits)^2)`` (Zoph et al. 2022, ST-MoE eq. 5), averaged over layers.

    Keeps router logits small so the fp32 softmax stays well conditioned.
    """
    layers = [r for r in routing if r is not None]
    if not layers:
        raise ValueError("router_z_loss needs at least one Lory layer's routing")
    return torch.stack([r.logits.logsumexp(dim=-1).pow(2).mean() for r in layers]).mean()
