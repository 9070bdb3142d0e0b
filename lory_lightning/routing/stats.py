"""Routing statistics as pure tensor functions (LORY.md section 5): what the monitoring callbacks log.

Shape legend: S segments (any leading dims flattened), E experts, D domains.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def routing_entropy(weights: Tensor) -> Tensor:
    """Mean entropy (nats) of the routing distributions weights (..., E). log E when uniform, 0 one-hot."""
    w = weights.reshape(-1, weights.shape[-1]).double()  # (S, E)
    return (-(w * w.clamp_min(1e-30).log()).sum(dim=-1)).mean().abs()  # abs: one-hot gives -0.0


def expert_share(weights: Tensor) -> Tensor:
    """Mean weight of each expert over all segments: (..., E) -> (E,), sums to 1."""
    return weights.reshape(-1, weights.shape[-1]).double().mean(dim=0)


def activated(weights: Tensor) -> Tensor:
    """(E,) bool: experts whose weight exceeds 2/E on at least one segment (the paper's Fig. 9 rule)."""
    E = weights.shape[-1]
    return (weights.reshape(-1, E) > 2.0 / E).any(dim=0)


def segment_domain_counts(domains: Tensor, segment_len: int, num_domains: int) -> Tensor:
    """Tokens of each domain in each segment: domains (B, L) -> (B, N, D), N = ceil(L / T)."""
    B, L = domains.shape
    N = math.ceil(L / segment_len)
    onehot = torch.zeros(B, N * segment_len, num_domains, dtype=torch.float64, device=domains.device)
    onehot[:, :L].scatter_(2, domains.unsqueeze(-1), 1.0)
    return onehot.view(B, N, segment_len, num_domains).sum(dim=2)  # (B, N, D)


def domain_expert_sums(weights: Tensor, counts: Tensor) -> Tensor:
    """Token-weighted routing per (domain, expert): weights (B, N, E), counts (B, N, D) -> (D, E).

    Divided by the domain's token count, a row is the mean routing weight its tokens were computed
    with: the quantity of the paper's Fig. 6.
    """
    return torch.einsum("bnd,bne->de", counts.double(), weights.double())


def mutual_information(mean_weight: Tensor, domain_tokens: Tensor) -> Tensor:
    """I(domain; expert) in nats, where p(d) is the domain's token share and p(e | d) its mean weight.

    mean_weight (D, E) rows sum to 1; domain_tokens (D,). 0 when every domain routes alike; log D
    when D <= E domains each use their own experts. Domains without tokens are left out.
    """
    keep = domain_tokens > 0
    p_d = domain_tokens[keep].double() / domain_tokens[keep].sum()  # (D',)
    p_e_d = mean_weight[keep].double()  # (D', E)
    p_e = (p_d[:, None] * p_e_d).sum(dim=0)  # (E,)
    ratio = (p_e_d.clamp_min(1e-30) / p_e.clamp_min(1e-30)[None, :]).log()
    return (p_d[:, None] * p_e_d * ratio).sum()


def expert_domain_entropy(mean_weight: Tensor) -> Tensor:
    """Per expert, the entropy of its routing over domains, normalized by log D: (D, E) -> (E,).

    mean_weight (D, E) is each domain's mean routing weight. Expert e's distribution over domains
    is its column normalized to sum to 1, i.e. the share of its weight each domain gives it with
    every domain weighted alike (domain sizes do not tilt it). 0: the expert serves one domain;
    1: every domain routes to it alike. NaN for an expert no domain routes to, 0 with one domain.
    Domains without tokens (NaN rows) are left out.
    """
    keep = ~torch.isnan(mean_weight).any(dim=-1)
    w = mean_weight[keep].double()  # (D', E)
    D = w.shape[0]
    p = w / w.sum(dim=0, keepdim=True)  # (D', E): p(domain | expert), columns sum to 1
    entropy = -(p * p.clamp_min(1e-300).log()).sum(dim=0)  # (E,)
    return entropy / math.log(D) if D > 1 else torch.zeros_like(entropy)
