"""ModelConfig: the one typed description of a decoder, with named presets (LORY.md section 3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

FFN_KINDS = ("lory", "dense", "expert_choice", "segment_expert_choice", "topk", "lory_prefix")
ROUTED = ("lory", "expert_choice", "segment_expert_choice", "topk", "lory_prefix")


@dataclass
class ModelConfig:
    """A LLaMA-style decoder whose FFNs are Lory layers (``ffn="lory"``) or dense SwiGLUs.

    Args:
        vocab_size: Size of the token vocabulary (the tokenizer's, linked by the CLI).
        seq_len: Training sequence length L. Must be a multiple of ``segment_len``.
        n_layer: Number of decoder blocks.
        n_head: Attention heads; ``dim`` must divide evenly among them.
        dim: Model width d.
        hidden_dim: Width f of each SwiGLU FFN (every expert has this width).
        ffn: ``"lory"`` (segment-routed merged experts), ``"dense"`` (the parameter-matched baseline),
            or a baseline of the paper: ``"expert_choice"`` (token level), ``"segment_expert_choice"``,
            ``"topk"`` (token top-k), ``"lory_prefix"`` (one merge per sequence). See model/baselines.py.
        num_experts: Experts E per Lory layer. Ignored for ``ffn="dense"``.
        segment_len: Segment length T for causal segment routing (paper: 256 at L = 4096).
        rope_base: RoPE frequency base.
        norm_eps: RMSNorm epsilon.
        init_std: Std of the normal init of every matrix (residual projections are further
            scaled by 1/sqrt(2 * n_layer), as in GPT-2).
        router_init_std: Std of the router init. Must be > 0: after upcycling all experts are
            equal and a zero router has an exactly zero gradient forever (LORY.md section 1).
        tie_embeddings: Share the token embedding with the LM head.
        top_k: Experts per token for ``ffn: topk``.
        capacity_factor: Expert Choice capacity (1: the FLOPs of a dense FFN, as Lory).
        recompute_merge: Lory layers recompute merged weights in backward (saved activations of a
            dense FFN); ``false`` keeps them through autograd (the plain path, for comparison).
    """

    vocab_size: int = 8192
    seq_len: int = 512
    n_layer: int = 4
    n_head: int = 4
    dim: int = 256
    hidden_dim: int = 512
    ffn: Literal["lory", "dense", "expert_choice", "segment_expert_choice", "topk", "lory_prefix"] = "lory"
    num_experts: int = 8
    segment_len: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    router_init_std: float = 0.02
    tie_embeddings: bool = False
    top_k: int = 2
    capacity_factor: float = 1.0
    recompute_merge: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "dim", "hidden_dim",
                     "num_experts", "segment_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"model.ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.dim % self.n_head:
            raise ValueError(
                f"model.dim {self.dim} is not a multiple of n_head {self.n_head}: "
                f"choose n_head among the divisors of {self.dim}")
        if self.head_dim % 2:
            raise ValueError(
                f"head size dim/n_head = {self.head_dim} is odd; RoPE rotates pairs of channels, "
                "so choose n_head such that dim / n_head is even")
        if self.seq_len % self.segment_len:
            raise ValueError(
                f"model.seq_len {self.seq_len} is not a multiple of model.segment_len "
                f"{self.segment_len}: causal segment routing cuts every training sequence into "
                f"whole segments (try segment_len {_largest_divisor_at_most(self.seq_len, self.segment_len)})")
        if self.ffn in ("lory", "lory_prefix") and self.num_segments < 2:
            raise ValueError(
                f"model.seq_len {self.seq_len} holds one segment of model.segment_len {self.segment_len}: "
                "the first segment routes on itself with its gradient cut, so with one segment the "
                "router never receives a gradient. Choose segment_len at most seq_len / 2 (the paper: "
                "16 segments of 256 in 4096)")
        if self.init_std <= 0:
            raise ValueError(f"model.init_std must be > 0, got {self.init_std}")
        if self.router_init_std <= 0:
            raise ValueError(
                f"model.router_init_std must be > 0, got {self.router_init_std}: with all experts "
                "equal (after upcycling) a zero router never receives a gradient")
        if self.ffn == "topk" and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"model.top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        if self.capacity_factor <= 0:
            raise ValueError(f"model.capacity_factor must be > 0, got {self.capacity_factor}")
        if self.rope_base <= 1:
            raise ValueError(f"model.rope_base must be > 1, got {self.rope_base}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def num_segments(self) -> int:
        """Segments N = L / T per training sequence."""
        return self.seq_len // self.segment_len

    @property
    def is_moe(self) -> bool:
        """Routed experts (Lory or a baseline), as opposed to the dense FFN."""
        return self.ffn in ROUTED

    def replace(self, **changes: Any) -> "ModelConfig":
        """A validated copy with some fields changed (e.g. ``ffn="dense"`` for the dense twin)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A preset by name (see ``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts of ``cfg`` without building it (exactness is tested against a built model).

    Returns ``total`` (every parameter), ``active`` (parameters one token is computed with: one
    merged FFN per layer, the way the paper counts "0.3B" for 0.3B/8E), and ``active_non_embedding``.
    """
    d, f, n_layer, vocab = cfg.dim, cfg.hidden_dim, cfg.n_layer, cfg.vocab_size
    attention = 4 * d * d
    norms = 2 * d
    ffn_one = 3 * d * f
    experts = cfg.num_experts if cfg.is_moe else 1
    router = cfg.num_experts * d if cfg.is_moe else 0
    embedding = vocab * d * (1 if cfg.tie_embeddings else 2)
    per_layer_total = attention + norms + experts * ffn_one + router
    per_layer_active = attention + norms + ffn_one + router
    final_norm = d
    return {
        "total": n_layer * per_layer_total + embedding + final_norm,
        "active": n_layer * per_layer_active + embedding + final_norm,
        "active_non_embedding": n_layer * per_layer_active + final_norm,
    }


def ffn_flops_per_token(cfg: ModelConfig) -> float:
    """Training-forward FLOPs of one token's FFN (2 per multiply-add), router and merges included.

    Lory: the merged SwiGLU (6df) plus its share of one merge per segment (6Edf / T) and of the
    segment router (2dE / T). Expert Choice at capacity c: c experts' SwiGLU per token on average
    plus a token router. Token top-k: k experts plus the router. Dense: 6df.
    """
    d, f, E, T = cfg.dim, cfg.hidden_dim, cfg.num_experts, cfg.segment_len
    ffn = 6 * d * f
    if cfg.ffn == "dense":
        return float(ffn)
    if cfg.ffn in ("lory", "lory_prefix"):  # lory_prefix as implemented merges per segment too
        return ffn + 6 * E * d * f / T + 2 * d * E / T
    if cfg.ffn == "expert_choice":
        return cfg.capacity_factor * ffn + 2 * d * E
    if cfg.ffn == "segment_expert_choice":
        return cfg.capacity_factor * ffn + 2 * d * E / T
    return cfg.top_k * ffn + 2 * d * E  # topk


def _paper(n_layer: int, dim: int, n_head: int, hidden_dim: int, experts: int) -> dict[str, Any]:
    # LLaMA tokenizer (32k), L = 4096, T = 256 (LORY.md section 3).
    return dict(vocab_size=32000, seq_len=4096, segment_len=256, n_layer=n_layer, dim=dim,
                n_head=n_head, hidden_dim=hidden_dim, ffn="lory", num_experts=experts)


PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: ~18M total parameters, 4 segments of 128 tokens per 512-token sequence.
    "tiny": dict(vocab_size=8192, seq_len=512, segment_len=128, n_layer=4, dim=256, n_head=4,
                 hidden_dim=512, ffn="lory", num_experts=8),
    "tiny-dense": dict(vocab_size=8192, seq_len=512, segment_len=128, n_layer=4, dim=256, n_head=4,
                       hidden_dim=512, ffn="dense", num_experts=8),
    **{f"0.3b-{e}e": _paper(24, 1024, 16, 2816, e) for e in (8, 16, 32)},
    "0.3b-dense": {**_paper(24, 1024, 16, 2816, 8), "ffn": "dense"},
    **{f"1.5b-{e}e": _paper(48, 1536, 24, 4096, e) for e in (8, 16, 32)},
    "1.5b-dense": {**_paper(48, 1536, 24, 4096, 8), "ffn": "dense"},
}
