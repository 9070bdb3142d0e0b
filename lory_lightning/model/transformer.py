"""The decoder: token embedding, pre-RMSNorm blocks (RoPE causal attention + Lory or dense FFN), LM head.

Shape legend: B batch, L positions, d width, nh heads, nkv key/value heads, hs head size, V vocabulary,
S cache length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .init import derive_seed, model_seed, normal_
from .moe import ROUTING_MODES, MergedFFNCache, RoutedExperts, Routing, RoutingMode
from .merged_swiglu import Scratch


class ModelOutput(NamedTuple):
    """logits (B, L, V) and, per layer, the Lory layer's Routing (None for a dense FFN)."""

    logits: Tensor
    routing: tuple[Routing | None, ...]


@dataclass
class InferenceCache:
    """Per-sequence decoding state: K/V per layer, and each Lory layer's merged FFN beside it.

    k, v: per layer (B, nkv, S, hs), preallocated for ``S = max_len`` positions.
    ffn: per layer, the FFN's decoding state from its prefill (a Lory layer's MergedFFNCache; None
        for dense, or before prefill).
    length: positions already written.
    """

    routing_mode: RoutingMode
    k: list[Tensor]
    v: list[Tensor]
    ffn: list[MergedFFNCache | Any]
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in fp32 so bf16 activations do not lose the mean of squares.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return h.type_as(x) * self.weight


def rope_cos_sin(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin of RoPE angles for integer positions (L,): each (L, hs / 2), fp32."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (L, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + hs/2) of x (B, nh, L, hs) by the position's angle."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, L, hs/2) each
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, nh, L, hs)
    return rotated.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.kv_dim = self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(cfg.dim, cfg.dim + 2 * self.kv_dim, bias=False)  # q, k, v stacked
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                kv: tuple[Tensor, Tensor] | None = None, start: int = 0) -> Tensor:
        """x (B, L, d) at positions start..start+L-1; kv: this layer's cache tensors, written in place."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).split([d, self.kv_dim, self.kv_dim], dim=-1)  # (B, L, d), (B, L, kv), (B, L, kv)
        q = q.view(B, L, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, L, hs)
        k = k.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, L, hs)
        v = v.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, L, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            cache_k, cache_v = kv
            cache_k[:, :, start:start + L] = k
            cache_v[:, :, start:start + L] = v
            k, v = cache_k[:, :, :start + L], cache_v[:, :, :start + L]  # (B, nkv, start+L, hs)
        if start > 0 and L > 1:
            raise ValueError("attention after a cached prefix takes one query position at a time")
        # A single query after the prefix may see every cached key: no mask needed.
        # Grouped queries: each key/value head serves n_head / n_kv_head query heads.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and L > 1,
                                           enable_gqa=self.n_kv_head != self.n_head)  # (B, nh, L, hs)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = cfg.ffn_class.from_config(cfg)  # the kind's class, from model/ffn.py's table
        # Recompute this block's activations in backward instead of keeping them (set by the
        # sharded strategy's checkpoint_blocks): memory for one extra forward per block.
        self.checkpoint_activations = False

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Routing | None]:
        if self.checkpoint_activations and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, cos, sin, use_reentrant=False)
        return self._forward(x, cos, sin)

    def _forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Routing | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin)  # (B, L, d)
        h, routing = self.ffn.forward_with_routing(self.ffn_norm(x))  # (B, L, d)
        return x + h, routing

    def step(self, x: Tensor, cos: Tensor, sin: Tensor, cache: InferenceCache, layer: int) -> Tensor:
        """Inference: prefill when the cache is empty, else decode one token."""
        start = cache.length
        x = x + self.attn(self.attn_norm(x), cos, sin, (cache.k[layer], cache.v[layer]), start)
        h = self.ffn_norm(x)
        if start == 0:
            h, cache.ffn[layer] = self.ffn.prefill(h, cache.routing_mode)
        else:
            h = self.ffn.decode(h, cache.ffn[layer], start)
        return x + h  # (B, L, d)


class LoryTransformer(nn.Module):
    """A LLaMA-style decoder whose FFNs are Lory layers (or dense SwiGLUs for the baseline)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # Drawn before any submodule exists: their default inits consume the global RNG by shape.
        seed = model_seed()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters(seed)
        # One set of CPU buffers for all Lory layers: they run one after another (merged_swiglu.Scratch)
        shared = Scratch()
        for block in self.blocks:
            if hasattr(block.ffn, "scratch"):
                block.ffn.scratch = shared

    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw every weight; each part from a seed derived from ``seed`` (default: one draw of the
        global RNG)."""
        cfg = self.config
        std = cfg.init_std
        out_std = std / math.sqrt(2 * cfg.n_layer)  # residual writes add up over 2 * n_layer sublayers
        # Every part from a seed of its own (model/init.py): dense and Lory built after the same seed
        # share embeddings and attention, and Lory's expert 0 is the dense FFN.
        base = model_seed() if seed is None else seed
        normal_(self.tok_emb.weight, std, derive_seed(base, "tok_emb"))
        if not cfg.tie_embeddings:
            normal_(self.lm_head.weight, std, derive_seed(base, "lm_head"))
        for i, block in enumerate(self.blocks):
            normal_(block.attn.qkv.weight, std, derive_seed(base, i, "qkv"))
            normal_(block.attn.proj.weight, out_std, derive_seed(base, i, "proj"))
            block.ffn.reset_parameters(std, out_std, cfg.router_init_std, seed=derive_seed(base, i, "ffn"))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def moe_layers(self) -> list[RoutedExperts]:
        """The routed FFNs (Lory or a baseline), in layer order; empty for a dense model."""
        return [b.ffn for b in self.blocks if b.ffn.routed]

    def _rope(self, start: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(torch.arange(start, start + length, device=device),
                            self.config.head_dim, self.config.rope_base)

    def forward(self, idx: Tensor) -> ModelOutput:
        """Teacher-forced forward with causal segment routing: idx (B, L) -> logits (B, L, V)."""
        B, L = idx.shape
        cos, sin = self._rope(0, L, idx.device)  # (L, hs/2) each
        x = self.tok_emb(idx)  # (B, L, d)
        routing = []
        for block in self.blocks:
            x, r = block(x, cos, sin)
            routing.append(r)
        return ModelOutput(self.lm_head(self.norm(x)), tuple(routing))  # (B, L, V)

    def new_cache(self, batch_size: int, max_len: int, routing_mode: RoutingMode = "prompt") -> InferenceCache:
        """An empty cache for ``batch_size`` sequences of at most ``max_len`` positions."""
        if routing_mode not in ROUTING_MODES:
            raise ValueError(f"routing mode must be one of {ROUTING_MODES}, got {routing_mode!r}")
        cfg = self.config
        weight = self.tok_emb.weight
        shape = (batch_size, cfg.kv_heads, max_len, cfg.head_dim)  # (B, nkv, S, hs)
        k = [torch.empty(shape, device=weight.device, dtype=weight.dtype) for _ in range(cfg.n_layer)]
        v = [torch.empty(shape, device=weight.device, dtype=weight.dtype) for _ in range(cfg.n_layer)]
        return InferenceCache(routing_mode, k, v, [None] * cfg.n_layer)

    def step(self, idx: Tensor, cache: InferenceCache) -> Tensor:
        """Incremental inference: the prompt (B, P) on an empty cache, then one token (B, 1) a call.

        Returns logits (B, L, V) for the positions given; the cache advances by L.
        """
        B, L = idx.shape
        start = cache.length
        if start > 0 and L != 1:
            raise ValueError(f"after the prompt, step() takes one token at a time, got {L}")
        if start + L > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions; {start + L} needed")
        cos, sin = self._rope(start, L, idx.device)
        x = self.tok_emb(idx)  # (B, L, d)
        for layer, block in enumerate(self.blocks):
            x = block.step(x, cos, sin, cache, layer)
        cache.length = start + L
        return self.lm_head(self.norm(x))  # (B, L, V)


def compile_blocks(model: LoryTransformer) -> None:
    """``torch.compile`` each block in place (its forward; parameters and state-dict keys stay as
    they are). Blocks rather than the whole model: a sharded strategy wraps them one by one, and
    the embedding and head stay as they are. A second call does nothing."""
    for block in model.blocks:
        if not getattr(block, "compiled", False):
            block.compile()
            block.compiled = True
