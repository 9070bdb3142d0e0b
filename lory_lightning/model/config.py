"""ModelConfig: the one typed description of a decoder, and what follows from it (parameters, FLOPs).

Its defaults are the tiny CPU model of configs/lory-tiny.yaml; the paper's shapes are written once
each, in configs/lory-0.3b-8e.yaml and configs/lory-1.5b-8e.yaml, which the other paper configs
extend (``base:``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .fused import KERNELS
from .ffn import FFN, ffn_class

EVAL_ROUTINGS = ("causal", "capacity")  # ModelConfig.eval_routing


@dataclass
class ModelConfig:
    """A LLaMA-style decoder whose FFNs are Lory layers (``ffn="lory"``) or dense SwiGLUs.

    Args:
        vocab_size: Size of the token vocabulary (the tokenizer's, linked by the CLI).
        seq_len: Training sequence length L. A multiple of ``segment_len`` for the kinds that route
            per segment.
        n_layer: Number of decoder blocks.
        n_head: Attention (query) heads; ``dim`` must divide evenly among them.
        n_kv_head: Key/value heads for grouped-query attention (Llama-style checkpoints); None means
            ``n_head`` (multi-head attention). Must divide ``n_head``.
        dim: Model width d.
        hidden_dim: Width f of each SwiGLU FFN (every expert has this width).
        ffn: The FFN kind, a key of ``model/ffn.py``'s ``FFN_KINDS``: ``"lory"`` (segment-routed
            merged experts), ``"dense"`` (the parameter-matched baseline), or a baseline of the paper:
            ``"expert_choice"`` (token level), ``"segment_expert_choice"``, ``"topk"`` (token top-k),
            ``"lory_prefix"`` (one merge per sequence). See model/baselines.py.
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
        eval_routing: How the Expert Choice kinds route outside training: ``causal`` (each token, or
            segment from the previous one, to its top-k experts, k = capacity factor: what a decoder
            can run, and what the paper's comparison reports) or ``capacity`` (the rule they train
            with, experts choosing among the whole sequence's tokens or the batch's segments: looks
            ahead, so it scores but cannot generate). Set it at validation to score a checkpoint
            both ways; other kinds take only ``causal``.
        recompute_merge: Lory layers recompute merged weights in backward (saved activations of a
            dense FFN); ``false`` keeps them through autograd (the plain path, for comparison).
        kernel: How Lory layers run: ``torch`` (merged matrices in device memory; the reference and
            the CPU path), ``triton`` (fused kernels that merge on chip, inside the GEMMs: no merged
            matrix or per-segment weight gradient is written; needs the ``gpu`` extra and a CUDA
            device), or ``auto`` (triton on CUDA when Triton imports, torch elsewhere). Both give
            the same model: a checkpoint trained with one runs with the other.
    """

    vocab_size: int = 8192
    seq_len: int = 512
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    dim: int = 256
    hidden_dim: int = 512
    ffn: str = "lory"
    num_experts: int = 8
    segment_len: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    router_init_std: float = 0.02
    tie_embeddings: bool = False
    top_k: int = 2
    capacity_factor: float = 1.0
    eval_routing: str = "causal"
    recompute_merge: bool = True
    kernel: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "dim", "hidden_dim",
                     "num_experts", "segment_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        kind = ffn_class(self.ffn)  # refuses an unknown kind, naming the known ones
        if self.kernel not in KERNELS:
            raise ValueError(f"model.kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.n_kv_head is not None and (not isinstance(self.n_kv_head, int) or self.n_kv_head < 1
                                           or self.n_head % self.n_kv_head):
            raise ValueError(f"model.n_kv_head must be a positive divisor of n_head {self.n_head} (or null for "
                             f"n_head), got {self.n_kv_head!r}")
        if self.dim % self.n_head:
            raise ValueError(
                f"model.dim {self.dim} is not a multiple of n_head {self.n_head}: "
                f"choose n_head among the divisors of {self.dim}")
        if self.head_dim % 2:
            raise ValueError(
                f"head size dim/n_head = {self.head_dim} is odd; RoPE rotates pairs of channels, "
                "so choose n_head such that dim / n_head is even")
        if self.init_std <= 0:
            raise ValueError(f"model.init_std must be > 0, got {self.init_std}")
        if self.router_init_std <= 0:
            raise ValueError(
                f"model.router_init_std must be > 0, got {self.router_init_std}: with all experts "
                "equal (after upcycling) a zero router never receives a gradient")
        if self.capacity_factor <= 0:
            raise ValueError(f"model.capacity_factor must be > 0, got {self.capacity_factor}")
        if self.eval_routing not in EVAL_ROUTINGS:
            raise ValueError(f"model.eval_routing must be one of {', '.join(EVAL_ROUTINGS)}, got {self.eval_routing!r}")
        if self.eval_routing != "causal" and self.ffn not in ("expert_choice", "segment_expert_choice"):
            raise ValueError(f"model.eval_routing {self.eval_routing!r} is for the Expert Choice kinds; model.ffn "
                             f"{self.ffn} routes causally in training already: leave it 'causal'")
        if self.rope_base <= 1:
            raise ValueError(f"model.rope_base must be > 1, got {self.rope_base}")
        kind.check_config(self)  # what this FFN kind needs (e.g. Lory: at least two segments)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_head``, or ``n_head`` when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def num_segments(self) -> int:
        """Segments N = L / T per training sequence."""
        return self.seq_len // self.segment_len

    @property
    def ffn_class(self) -> type[FFN]:
        """The class of this config's FFN kind (model/ffn.py)."""
        return ffn_class(self.ffn)

    @property
    def is_moe(self) -> bool:
        """Routed experts (Lory or a baseline), as opposed to the dense FFN."""
        return self.ffn_class.routed

    def replace(self, **changes: Any) -> "ModelConfig":
        """A validated copy with some fields changed (e.g. ``ffn="dense"`` for the dense twin)."""
        return dataclasses.replace(self, **changes)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts of ``cfg`` without building it (exactness is tested against a built model).

    Returns ``total`` (every parameter), ``active`` (parameters one token is computed with: one
    merged FFN per layer, the way the paper counts "0.3B" for 0.3B/8E; k experts for top-k, the
    target k for ReLU routing), and ``active_non_embedding``.
    """
    d, f, n_layer, vocab = cfg.dim, cfg.hidden_dim, cfg.n_layer, cfg.vocab_size
    kv = cfg.kv_heads * cfg.head_dim
    attention = 2 * d * d + 2 * d * kv  # q and output projections, k and v (fewer with grouped queries)
    norms = 2 * d
    ffn_one = 3 * d * f
    experts = cfg.num_experts if cfg.is_moe else 1
    active = cfg.ffn_class.active_experts(cfg) if cfg.is_moe else 1
    router = cfg.num_experts * d if cfg.is_moe else 0
    embedding = vocab * d * (1 if cfg.tie_embeddings else 2)
    per_layer_total = attention + norms + experts * ffn_one + router
    per_layer_active = attention + norms + active * ffn_one + router
    final_norm = d
    return {
        "total": n_layer * per_layer_total + embedding + final_norm,
        "active": n_layer * per_layer_active + embedding + final_norm,
        "active_non_embedding": n_layer * per_layer_active + final_norm,
    }


def ffn_flops_per_token(cfg: ModelConfig) -> float:
    """Training-forward FLOPs of one token's FFN (2 per multiply-add), router and merges included,
    as the FFN kind counts them (e.g. Lory: 6df + 6Edf / T + 2dE / T)."""
    return float(cfg.ffn_class.flops_per_token(cfg))


def training_flops_per_token(cfg: ModelConfig) -> float:
    """Forward and backward FLOPs of one training token (2 per multiply-add), the count MFU divides by.

    Per layer the forward runs the attention projections (4d^2 + 4d*kv for q, output, k and v; kv = d
    without grouped queries), QK^T and AV over the causal half of
    the context (2Ld) and the FFN kind's count (``ffn_flops_per_token``); the LM head adds 2dV. The
    backward costs twice the forward, and a Lory layer that recomputes its merges in backward adds
    one more merge per segment (``recomputed_flops_per_token``). Embedding lookups and norms are not
    counted.
    """
    d, n, V, L = cfg.dim, cfg.n_layer, cfg.vocab_size, cfg.seq_len
    kv = cfg.kv_heads * cfg.head_dim
    forward = n * (4 * d * d + 4 * d * kv + 2 * L * d + cfg.ffn_class.flops_per_token(cfg)) + 2 * d * V
    return float(3 * forward + n * cfg.ffn_class.recomputed_flops_per_token(cfg))
