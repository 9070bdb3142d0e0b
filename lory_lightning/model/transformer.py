"""The decoder: token embedding, pre-RMSNorm blocks (RoPE causal attention + Lory or dense FFN), LM head.

Shape legend: B batch, L positions, d width, nh heads, nkv key/value heads, hs head size, V vocabulary,
S cache length.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .init import derive_seed, model_seed, normal_
from .moe import ROUTING_MODES, MergedFFNCache, RoutedExperts, Routing, RoutingMode
from .merged_swiglu import Scratch
from .padding import Padding


class ModelOutput(NamedTuple):
    """logits (B, L, V); per layer, the Lory layer's Routing (None for a dense FFN); when asked for,
    the hidden states: the embeddings, each block's output, the last one after the final norm
    (n_layer + 1 of (B, L, d), as transformers' ``output_hidden_states`` gives them)."""

    logits: Tensor
    routing: tuple[Routing | None, ...]
    hidden: tuple[Tensor, ...] | None = None


@dataclass
class InferenceCache:
    """Per-sequence decoding state: K/V per layer, and each Lory layer's merged FFN beside it.

    k, v: per layer (B, nkv, S, hs), preallocated for ``S = max_len`` positions.
    ffn: per layer, the FFN's decoding state from its prefill (a Lory layer's MergedFFNCache; None
        for dense, or before prefill).
    length: positions already written (the longest row's, in a padded batch).
    lengths: (B,) each row's positions written, for a batch whose prompt was padded (its rows are
        aligned to start at position 0: model/padding.py); None when the rows are equally long.
    """

    routing_mode: RoutingMode
    k: list[Tensor]
    v: list[Tensor]
    ffn: list[MergedFFNCache | Any]
    length: int = 0
    lengths: Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def reorder_cache(self, rows: Tensor) -> None:
        """Keep rows ``rows`` (B',) of every state, in that order (beam search picks its beams so;
        transformers calls this method by this name)."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]
        self.ffn = [_select_rows(state, rows) for state in self.ffn]
        if self.lengths is not None:
            self.lengths = self.lengths.index_select(0, rows)


def _select_rows(state: Any, rows: Tensor) -> Any:
    """An FFN's decoding state (a dataclass of per-row tensors, possibly nested, or None) at ``rows``."""
    if isinstance(state, Tensor):
        return state.index_select(0, rows)
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{f.name: _select_rows(getattr(state, f.name), rows)
                                             for f in dataclasses.fields(state) if f.init})
    return state


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

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv: tuple[Tensor, Tensor] | None = None,
                start: int | Tensor = 0, key_mask: Tensor | None = None) -> Tensor:
        """x (B, L, d) at positions start..start+L-1; kv: this layer's cache tensors, written in place.

        A padded batch decodes one token per row at its own position: ``start`` (B,), cos and sin
        (B, 1, 1, hs/2), and ``key_mask`` (B, 1, 1, S) the cached positions each row may see.
        """
        B, L, d = x.shape
        q, k, v = self.qkv(x).split([d, self.kv_dim, self.kv_dim], dim=-1)  # (B, L, d), (B, L, kv), (B, L, kv)
        q = q.view(B, L, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, L, hs)
        k = k.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, L, hs)
        v = v.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, L, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(start, Tensor):  # a padded batch: each row writes at its own position
            cache_k, cache_v = kv
            rows = torch.arange(B, device=x.device)
            cache_k[rows, :, start] = k[:, :, 0]  # (B, nkv, hs)
            cache_v[rows, :, start] = v[:, :, 0]
            k, v = cache_k[:, :, :key_mask.shape[-1]], cache_v[:, :, :key_mask.shape[-1]]  # (B, nkv, S, hs)
            causal = False
        else:
            if kv is not None:
                cache_k, cache_v = kv
                cache_k[:, :, start:start + L] = k
                cache_v[:, :, start:start + L] = v
                k, v = cache_k[:, :, :start + L], cache_v[:, :, :start + L]  # (B, nkv, start+L, hs)
            if start > 0 and L > 1:
                raise ValueError("attention after a cached prefix takes one query position at a time")
            # A single query after the prefix may see every cached key: no mask needed. A padded
            # batch's rows start at 0 with padding after them (model/padding.py): causal suffices.
            causal = start == 0 and L > 1
        # Grouped queries: each key/value head serves n_head / n_kv_head query heads.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=causal,
                                           enable_gqa=self.n_kv_head != self.n_head)  # (B, nh, L, hs)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = cfg.ffn_class.from_config(cfg)  # the kind's class, from model/ffn.py's table
        # Recompute this block's activations in backward instead of keeping them: memory for one
        # extra forward per block. Set by the sharded strategy's checkpoint_blocks, and under these
        # names by transformers' gradient_checkpointing_enable on an exported model.
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func: Callable = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                lengths: Tensor | None = None) -> tuple[Tensor, Routing | None]:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(self._forward, x, cos, sin, lengths)
        return self._forward(x, cos, sin, lengths)

    def _forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                 lengths: Tensor | None = None) -> tuple[Tensor, Routing | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin)  # (B, L, d)
        h, routing = self.ffn.forward_with_routing(self.ffn_norm(x), lengths)  # (B, L, d)
        return x + h, routing

    def step(self, x: Tensor, cos: Tensor, sin: Tensor, cache: InferenceCache, layer: int,
             key_mask: Tensor | None = None, lengths: Tensor | None = None) -> Tensor:
        """Inference: prefill when the cache is empty (``lengths``: a padded prompt's rows), else
        decode one token (at each row's own position when ``cache.lengths`` is set)."""
        start = cache.length if cache.lengths is None or cache.length == 0 else cache.lengths
        x = x + self.attn(self.attn_norm(x), cos, sin, (cache.k[layer], cache.v[layer]), start, key_mask)
        h = self.ffn_norm(x)
        if cache.length == 0:
            h, cache.ffn[layer] = self.ffn.prefill(h, cache.routing_mode, lengths)
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

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None,
                output_hidden_states: bool = False) -> ModelOutput:
        """Teacher-forced forward with causal segment routing: idx (B, L) -> logits (B, L, V).

        attention_mask (B, L): 1 a token, 0 padding (left, right or both). Each row then computes
        what it computes alone (model/padding.py); logits at padded positions are not defined.
        The Routing of a padded batch is that of its aligned rows.
        """
        h, routing, hidden = self.features(idx, attention_mask, output_hidden_states)
        return ModelOutput(self.lm_head(h), routing, hidden)  # (B, L, V)

    def features(self, idx: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool = False
                 ) -> tuple[Tensor, tuple[Routing | None, ...], tuple[Tensor, ...] | None]:
        """``forward`` up to the LM head: the final normalized hidden state (B, L, d), the Routing,
        and the hidden states when asked for (see ModelOutput)."""
        B, L = idx.shape
        padding = Padding.from_mask(attention_mask)
        lengths = None
        if padding is not None:
            idx, lengths = padding.aligned(idx), padding.lengths  # (B, L): rows from position 0
        cos, sin = self._rope(0, L, idx.device)  # (L, hs/2) each
        x = self.tok_emb(idx)  # (B, L, d)
        routing, hidden = [], []
        for block in self.blocks:
            hidden.append(x)
            x, r = block(x, cos, sin, lengths)
            routing.append(r)
        x = self.norm(x)  # (B, L, d)
        if padding is not None:
            x, hidden = padding.restored(x), [padding.restored(h) for h in hidden]
        return x, tuple(routing), (*hidden, x) if output_hidden_states else None

    def new_cache(self, batch_size: int, max_len: int, routing_mode: RoutingMode = "prompt") -> InferenceCache:
        """An empty cache for ``batch_size`` sequences of at most ``max_len`` positions."""
        if routing_mode not in ROUTING_MODES:
            raise ValueError(f"routing mode must be one of {ROUTING_MODES}, got {routing_mode!r}")
        cfg = self.config
        weight = self.tok_emb.weight
        shape = (batch_size, cfg.kv_heads, max_len, cfg.head_dim)  # (B, nkv, S, hs)
        # Zeros, not empty: in a padded batch a row's masked keys still enter attention's matmul with
        # weight 0, and 0 * a NaN left in uninitialized memory is NaN.
        k = [torch.zeros(shape, device=weight.device, dtype=weight.dtype) for _ in range(cfg.n_layer)]
        v = [torch.zeros(shape, device=weight.device, dtype=weight.dtype) for _ in range(cfg.n_layer)]
        return InferenceCache(routing_mode, k, v, [None] * cfg.n_layer)

    def step(self, idx: Tensor, cache: InferenceCache, attention_mask: Tensor | None = None) -> Tensor:
        """Incremental inference: the prompt (B, P) on an empty cache, then one token (B, 1) a call.

        Returns logits (B, L, V) for the positions given; the cache advances by L. A prompt with
        ``attention_mask`` (B, P) padding is aligned (model/padding.py): each row then decodes at its
        own position, and every row generates what it would alone. Later calls need no mask.
        """
        B, L = idx.shape
        start = cache.length
        if start > 0 and L != 1:
            raise ValueError(f"after the prompt, step() takes one token at a time, got {L}")
        padding = Padding.from_mask(attention_mask) if start == 0 else None
        if start == 0 and padding is not None:
            idx = padding.aligned(idx)
            cache.lengths = padding.lengths
        if cache.lengths is not None and start > 0:
            return self._step_rows(idx, cache)
        if start + L > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions; {start + L} needed")
        cos, sin = self._rope(start, L, idx.device)
        x = self.tok_emb(idx)  # (B, L, d)
        for layer, block in enumerate(self.blocks):
            x = block.step(x, cos, sin, cache, layer, lengths=None if padding is None else padding.lengths)
        cache.length = start + L
        logits = self.lm_head(self.norm(x))  # (B, L, V)
        return logits if padding is None else padding.restored(logits)

    def _step_rows(self, idx: Tensor, cache: InferenceCache) -> Tensor:
        """One token (B, 1) per row of a padded batch, each at its own position ``cache.lengths``."""
        pos = cache.lengths  # (B,)
        needed = int(pos.max()) + 1  # one host sync per token
        if needed > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions; {needed} needed")
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_base)  # (B, hs/2) each
        cos, sin = cos[:, None, None], sin[:, None, None]  # (B, 1, 1, hs/2): per row
        key_mask = (torch.arange(needed, device=idx.device) <= pos[:, None])[:, None, None]  # (B, 1, 1, S)
        x = self.tok_emb(idx)  # (B, 1, d)
        for layer, block in enumerate(self.blocks):
            x = block.step(x, cos, sin, cache, layer, key_mask)
        cache.lengths = pos + 1
        cache.length = max(cache.length, needed)
        return self.lm_head(self.norm(x))  # (B, 1, V)


def compile_blocks(model: LoryTransformer) -> None:
    """``torch.compile`` each block in place (its forward; parameters and state-dict keys stay as
    they are). Blocks rather than the whole model: a sharded strategy wraps them one by one, and
    the embedding and head stay as they are. A second call does nothing."""
    for block in model.blocks:
        if not getattr(block, "compiled", False):
            block.compile()
            block.compiled = True
