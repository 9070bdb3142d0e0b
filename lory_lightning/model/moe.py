"""Lory's FFN: causal segment routing + expert merging (LORY.md section 1), and its dense twin.

Shape legend: B batch, L positions, P prompt positions, N segments, T segment length,
E experts, d model width (``dim``), f FFN width (``hidden_dim``).

The layer never evaluates E experts. Per segment it merges the experts' weights into one SwiGLU with
the routing weights taken on the *previous* segment, and applies that one FFN to the segment's T
tokens, so the FFN costs a dense FFN plus one merge per segment (E/T more FLOPs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import derive_seed, normal_
from .fused import KERNELS, merged_swiglu_fused, use_fused
from .merged_swiglu import Scratch, merged_swiglu

if TYPE_CHECKING:  # annotations only: config.py imports the layers through model/ffn.py
    from .config import ModelConfig

RoutingMode = Literal["prompt", "segment"]
ROUTING_MODES: tuple[str, ...] = get_args(RoutingMode)  # the same list, written once


class Routing(NamedTuple):
    """What one Lory layer decided for a batch: read by losses and monitoring callbacks.

    logits: (B, N, E) router logits (fp32 or wider) of each segment's own mean input (before the shift).
    weights: (B, N, E) the weights actually merged for each segment, after the causal shift.
    """

    logits: Tensor
    weights: Tensor


# ----------------------------------------------------------------------------- pure functions


def segment_means(x: Tensor, segment_len: int, lengths: Tensor | None = None) -> Tensor:
    """Mean of the FFN inputs over each segment: (B, L, d) -> (B, N, d), N = ceil(L / T).

    A partial last segment is averaged over the positions it has. ``lengths`` (B,) gives each row's
    tokens in a padded batch whose rows start at position 0 (model/padding.py): a segment averages
    only its tokens, so padding never moves a routing decision; a segment of padding alone is 0.
    """
    B, L, d = x.shape
    N = math.ceil(L / segment_len)
    pad = N * segment_len - L
    if pad == 0 and lengths is None:
        return x.view(B, N, segment_len, d).mean(dim=2)  # (B, N, d)
    limit = torch.full((B,), L, device=x.device) if lengths is None else lengths
    real = torch.arange(N * segment_len, device=x.device) < limit[:, None]  # (B, N*T): a token, not padding
    xs = F.pad(x, (0, 0, 0, pad)).masked_fill(~real[..., None], 0)  # (B, N*T, d)
    sums = xs.view(B, N, segment_len, d).sum(dim=2)  # (B, N, d)
    counts = real.view(B, N, segment_len).sum(dim=2, keepdim=True).clamp(min=1)  # (B, N, 1)
    return sums / counts.to(x.dtype)  # (B, N, d)


def causal_shift(probs: Tensor) -> Tensor:
    """Routing weights applied to each segment from each segment's own router probabilities.

    (B, N, E) -> (B, N, E). Segment k >= 1 uses segment k-1's probabilities; segment 0 uses its
    own, with the gradient cut so the model cannot learn to exploit seeing its own future tokens.
    The shift runs along the segment axis (dim 1): a flat ``roll(e, 1)`` as in the paper's
    pseudo-code would shift the expert axis instead.
    """
    return torch.cat([probs[:, :1].detach(), probs[:, :-1]], dim=1)  # (B, N, E)


def merge_experts(weights: Tensor, expert_weight: Tensor) -> Tensor:
    """Soft-merge the experts of one weight matrix, once per routing row.

    weights (..., E), expert_weight (E, a, b) -> (..., a, b). One matmul over the expert axis on
    a flattened view (one large GEMM rather than an einsum the backend may split; see BENCHMARKS.md for
    the layer's measured cost), and no loop over segments or experts.
    """
    E = expert_weight.shape[0]
    lead = weights.shape[:-1]
    # In the experts' own precision even under autocast: right after upcycling experts differ by
    # 1e-4 relative, which a bf16 cast erases, and the routing gradient (d merged / d weights = the
    # experts) would be rounding noise. The merged matrix is cast when the FFN applies it.
    with torch.autocast(weights.device.type, enabled=False):
        flat = weights.reshape(-1, E).to(expert_weight.dtype) @ expert_weight.reshape(E, -1)  # (rows, a*b)
    return flat.view(*lead, *expert_weight.shape[1:])  # (..., a, b)


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """SwiGLU with weights stored (in, out): (..., T, d) with (..., d, f), (..., d, f), (..., f, d).

    Leading dims broadcast, so one call serves a dense FFN (weights without leading dims), one
    merged FFN per segment (batched matmul over B*N) and one merged FFN per sequence.
    """
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down  # (..., T, d)


# ----------------------------------------------------------------------------- inference state


@dataclass
class SegmentMean:
    """While decoding, the running sum of the current segment's FFN inputs, from which the next
    segment routes (the causal segment routing of training, one token at a time).

    total: (B, d) sum of the inputs seen so far in the current segment.
    """

    total: Tensor
    segment_len: int

    def add(self, x: Tensor, pos: int | Tensor) -> Tensor | None:
        """Take the input x (B, d) of the token at absolute position ``pos``: an int, or (B,) each
        row's own position in a padded batch.

        Returns the mean input (B, d) of the segment that ended just before ``pos`` where ``pos``
        starts a new segment (a multiple of T): with an int, None when it does not; with (B,), every
        row's current sum / T, which only the rows that start a segment use.
        """
        if isinstance(pos, Tensor):
            starts = (pos % self.segment_len == 0)[:, None]  # (B, 1)
            completed = self.total / self.segment_len  # (B, d)
            self.total = self.total.masked_fill(starts, 0) + x  # (B, d)
            return completed
        completed = None
        if pos % self.segment_len == 0:
            completed = self.total / self.segment_len  # (B, d)
            self.total = torch.zeros_like(self.total)
        self.total = self.total + x  # (B, d)
        return completed

    @classmethod
    def after_prompt(cls, x: Tensor, segment_len: int, lengths: Tensor | None = None) -> "SegmentMean":
        """The state after a prompt x (B, P, d): the sum over its last (possibly partial) segment;
        with ``lengths`` (B,) (a padded batch, rows from position 0), each row's own last segment."""
        if lengths is None:
            last_start = (x.shape[1] - 1) // segment_len * segment_len
            return cls(x[:, last_start:].sum(dim=1), segment_len)  # (B, d)
        pos = torch.arange(x.shape[1], device=x.device)  # (P,)
        last_start = (lengths - 1) // segment_len * segment_len  # (B,)
        in_last = (pos >= last_start[:, None]) & (pos < lengths[:, None])  # (B, P)
        return cls(x.masked_fill(~in_last[..., None], 0).sum(dim=1), segment_len)  # (B, d)


@dataclass
class MergedFFNCache:
    """One Lory layer's state while decoding, kept next to the KV cache.

    w_gate, w_up: (B, d, f) and w_down: (B, f, d): the merged FFN of the current segment
    (prompt mode: of the whole sequence). segment: the running segment mean (segment mode only).
    """

    mode: RoutingMode
    w_gate: Tensor
    w_up: Tensor
    w_down: Tensor
    segment: SegmentMean | None = None


# ----------------------------------------------------------------------------- routing policies


class CausalSegmentRouting:
    """Lory's routing (LORY.md section 1): segment k merges with segment k-1's router probabilities."""

    def weights(self, probs: Tensor) -> Tensor:
        """(B, N, E) each segment's own probabilities -> (B, N, E) the weights each segment merges."""
        return causal_shift(probs)

    def reroutes_at(self, pos: int | Tensor, segment_len: int) -> bool | Tensor:
        """While decoding: does the token at ``pos`` (an int, or (B,) positions) start a segment with a
        new merge?"""
        return pos % segment_len == 0


class FirstSegmentRouting(CausalSegmentRouting):
    """The paper's prefix ablation: one merge per sequence, from the first segment, for every segment.

    The first segment routes on itself with the gradient cut, as in Lory; later segments use the same
    weights with the gradient flowing, so the router learns from them.
    """

    def weights(self, probs: Tensor) -> Tensor:
        first = probs[:, :1]  # (B, 1, E)
        return torch.cat([first.detach(), first.expand(-1, probs.shape[1] - 1, -1)], dim=1)  # (B, N, E)

    def reroutes_at(self, pos: int | Tensor, segment_len: int) -> bool | Tensor:
        # A prompt shorter than one segment routed segment 0 on what it had; when segment 0
        # completes, the rest of the sequence routes on its full mean, as the full forward does.
        return pos == segment_len


# ----------------------------------------------------------------------------- layers


def init_swiglu(w_gate: Tensor, w_up: Tensor, w_down: Tensor, std: float, out_std: float | None,
                seed: int | None) -> None:
    """One SwiGLU's weights ~ N(0, std^2), w_down with ``out_std``; with ``seed``, each matrix from a
    seed derived from it (gate, up, down), else from the global RNG."""
    gen_seeds = [None] * 3 if seed is None else [derive_seed(seed, name) for name in ("gate", "up", "down")]
    with torch.no_grad():
        normal_(w_gate, std, gen_seeds[0])
        normal_(w_up, std, gen_seeds[1])
        normal_(w_down, std if out_std is None else out_std, gen_seeds[2])


class SwiGLU(nn.Module):
    """The dense FFN: the parameter-matched baseline and the model that upcycling copies."""

    routed: ClassVar[bool] = False
    has_dense_phase: ClassVar[bool] = False

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(dim, hidden_dim))  # (d, f)
        self.w_up = nn.Parameter(torch.empty(dim, hidden_dim))  # (d, f)
        self.w_down = nn.Parameter(torch.empty(hidden_dim, dim))  # (f, d)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SwiGLU:
        return cls(cfg.dim, cfg.hidden_dim)

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        """Nothing beyond ModelConfig's own checks."""

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> float:
        return 6.0 * cfg.dim * cfg.hidden_dim  # three (d, f) matmuls, 2 FLOPs per multiply-add

    @staticmethod
    def recomputed_flops_per_token(cfg: ModelConfig) -> float:
        return 0.0

    def reset_parameters(self, std: float = 0.02, out_std: float | None = None, router_std: float = 0.02,
                         seed: int | None = None) -> None:
        """``seed`` (model/init.py): drawn as expert 0 of a routed FFN with that seed would be."""
        expert_seed = None if seed is None else derive_seed(seed, "expert", 0)
        init_swiglu(self.w_gate, self.w_up, self.w_down, std, out_std, expert_seed)

    def forward(self, x: Tensor) -> Tensor:
        return swiglu(x, self.w_gate, self.w_up, self.w_down)  # (B, L, d)

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        return self(x), None  # per token: padding never reaches a token

    def prefill(self, x: Tensor, mode: RoutingMode, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        return self(x), None

    def decode(self, x: Tensor, cache: None, pos: int | Tensor) -> Tensor:
        return self(x)


class RoutedExperts(nn.Module):
    """E SwiGLU experts and a linear router: the parameters every routed FFN here shares.

    ``segment_len`` is the number of tokens one routing decision covers: the segment length T for
    segment routing, 1 for token routing (a token is a segment of one). Monitoring callbacks use it
    to attribute routing weights to tokens.
    """

    routed: ClassVar[bool] = True
    has_dense_phase: ClassVar[bool] = False  # only Lory layers train as the dense model first

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, segment_len: int) -> None:
        super().__init__()
        if num_experts < 1 or segment_len < 1:
            raise ValueError(f"num_experts ({num_experts}) and segment_len ({segment_len}) must be >= 1")
        self.dim, self.hidden_dim = dim, hidden_dim
        self.num_experts, self.segment_len = num_experts, segment_len
        self.router = nn.Linear(dim, num_experts, bias=False)  # weight (E, d)
        self.w_gate = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))  # (E, d, f)
        self.w_up = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))  # (E, d, f)
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))  # (E, f, d)
        self.is_dense = False  # only Lory layers have a dense phase
        self.reset_parameters()

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        """Nothing beyond ModelConfig's own checks."""

    @staticmethod
    def recomputed_flops_per_token(cfg: ModelConfig) -> float:
        return 0.0

    @staticmethod
    def active_experts(cfg: ModelConfig) -> int:
        """Experts one token is computed with (Lory: one merged FFN; top-k: k), for ``param_counts``."""
        return 1

    @staticmethod
    def upcycled_buffers(cfg: ModelConfig) -> dict[str, Tensor]:
        """Buffers a layer of this kind starts with when upcycled from a dense FFN, by name."""
        return {}

    def reset_parameters(self, std: float = 0.02, out_std: float | None = None,
                         router_std: float = 0.02, seed: int | None = None) -> None:
        """``seed`` (model/init.py): expert e draws from a seed of its own, so expert 0 equals a dense
        SwiGLU reset with the same seed."""
        for e in range(self.num_experts):
            init_swiglu(self.w_gate[e], self.w_up[e], self.w_down[e], std, out_std,
                        None if seed is None else derive_seed(seed, "expert", e))
        # Small but non-zero: a zero router over equal (upcycled) experts has zero gradient.
        normal_(self.router.weight, router_std, None if seed is None else derive_seed(seed, "router"))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_experts={self.num_experts}, "
                f"segment_len={self.segment_len}")

    def router_logits(self, h: Tensor) -> Tensor:
        """(..., d) -> (..., E), in at least fp32 whatever the autocast dtype: the softmax decides merges."""
        dtype = torch.promote_types(h.dtype, torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            return F.linear(h.to(dtype), self.router.weight.to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_routing(x)[0]


def check_whole_segments(cfg: ModelConfig) -> None:
    """For the FFN kinds that route per segment (their ``check_config``): L must cut into whole segments."""
    if cfg.seq_len % cfg.segment_len:
        raise ValueError(
            f"model.seq_len {cfg.seq_len} is not a multiple of model.segment_len {cfg.segment_len}: "
            f"model.ffn {cfg.ffn} routes per segment and cuts every training sequence into whole segments "
            f"(try segment_len {_largest_divisor_at_most(cfg.seq_len, cfg.segment_len)})")


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class LoryMoE(RoutedExperts):
    """E SwiGLU experts merged per segment by a segment routing policy (LORY.md section 1).

    Args:
        dim: Model width d.
        hidden_dim: Width f of every expert.
        num_experts: E.
        segment_len: T; training inputs must have L a multiple of T.
        recompute_merge: In training, recompute the merged weights in backward (memory of a dense
            FFN) instead of letting autograd keep them (``False``: the plain path, for comparison).
        policy: How each segment's router probabilities become the weights it merges: Lory's causal
            segment routing (the default) or a variant such as ``FirstSegmentRouting``.
        kernel: ``torch``, ``triton`` or ``auto`` (ModelConfig.kernel): the fused kernels merge on
            chip (kernels/), the torch path through device memory.
    """

    has_dense_phase: ClassVar[bool] = True

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, segment_len: int,
                 recompute_merge: bool = True, policy: CausalSegmentRouting | None = None,
                 kernel: str = "auto") -> None:
        super().__init__(dim, hidden_dim, num_experts, segment_len)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.kernel = kernel
        # True: merged weights are recomputed in backward instead of kept (the plain path keeps them).
        self.recompute_merge = recompute_merge
        self.policy = policy if policy is not None else CausalSegmentRouting()
        # Dense warmup (LORY.md section 3): while set, every segment uses expert 0 alone, which is
        # exactly a dense SwiGLU; model/upcycle.py ends it. A buffer, so checkpoints keep it.
        self.register_buffer("dense_phase", torch.tensor(False))
        self.is_dense = False  # host-side mirror: reading the buffer every forward would sync a GPU
        # CPU buffers of the recomputing path; a model gives all its Lory layers one (they run in turn)
        self.scratch = Scratch()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> LoryMoE:
        return cls(cfg.dim, cfg.hidden_dim, cfg.num_experts, cfg.segment_len, cfg.recompute_merge, kernel=cfg.kernel)

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        check_whole_segments(cfg)
        if cfg.num_segments < 2:
            raise ValueError(
                f"model.seq_len {cfg.seq_len} holds one segment of model.segment_len {cfg.segment_len}: "
                "the first segment routes on itself with its gradient cut, so with one segment the "
                "router never receives a gradient. Choose segment_len at most seq_len / 2 (the paper: "
                "16 segments of 256 in 4096)")

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> float:
        # The merged SwiGLU (6df) plus its share of one merge per segment (6Edf / T) and of the
        # segment router (2dE / T).
        d, f, E, T = cfg.dim, cfg.hidden_dim, cfg.num_experts, cfg.segment_len
        return 6 * d * f + 6 * E * d * f / T + 2 * d * E / T

    @staticmethod
    def recomputed_flops_per_token(cfg: ModelConfig) -> float:
        # recompute_merge: backward merges the three matrices again, once per segment
        return 6 * cfg.num_experts * cfg.dim * cfg.hidden_dim / cfg.segment_len if cfg.recompute_merge else 0.0

    def route(self, x: Tensor, lengths: Tensor | None = None) -> Routing:
        """Segment routing of x (B, L, d) (``lengths``: segment_means): logits and applied weights, each (B, N, E)."""
        logits = self.router_logits(segment_means(x, self.segment_len, lengths))  # (B, N, E)
        probs = logits.softmax(dim=-1)  # (B, N, E)
        if self.is_dense:
            return Routing(logits=logits, weights=self._first_expert_only(probs))
        return Routing(logits=logits, weights=self.policy.weights(probs))

    def _first_expert_only(self, probs: Tensor) -> Tensor:
        """Dense phase: one-hot on expert 0, which merges to exactly w[0]. "+ 0 * probs" keeps the
        router in the graph with a zero gradient, so DDP sees every parameter used."""
        onehot = torch.zeros_like(probs)
        onehot[..., 0] = 1.0
        return onehot + 0.0 * probs

    def _inference_probs(self, h: Tensor) -> Tensor:
        probs = self.router_logits(h).softmax(dim=-1)  # (B, E)
        return self._first_expert_only(probs) if self.is_dense else probs

    def routing_weights(self, x: Tensor) -> Tensor:
        """The weights merged for each segment of x (B, L, d), after the policy: (B, N, E)."""
        return self.route(x).weights

    def merged(self, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three merged matrices for routing weights (..., E): (..., d, f), (..., d, f), (..., f, d)."""
        return (merge_experts(weights, self.w_gate), merge_experts(weights, self.w_up),
                merge_experts(weights, self.w_down))

    def set_dense_phase(self, flag: bool) -> None:
        self.dense_phase.fill_(flag)
        self.is_dense = flag

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_dense = bool(self.dense_phase)  # the checkpoint decides the phase; read it once here

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Routing]:
        """y (B, L, d) and the layer's Routing. A partial last segment is averaged over the positions
        it has (pre-training cuts whole segments: check_whole_segments; fine-tuning examples and
        prompts have any length); ``lengths`` (B,): each row's tokens in a padded batch (segment_means)."""
        B, L, d = x.shape
        T = self.segment_len
        routing = self.route(x, lengths)
        N = routing.weights.shape[1]
        pad = N * T - L
        xs = (F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(B * N, T, d)  # (B*N, T, d)
        if use_fused(self.kernel, xs):
            # The merge happens on chip inside each GEMM (kernels/); saves what a dense SwiGLU saves.
            y = merged_swiglu_fused(xs, routing.weights.reshape(B * N, -1), self.w_gate, self.w_up, self.w_down)
        elif self.recompute_merge and torch.is_grad_enabled():
            # Saves what a dense SwiGLU saves; the merge runs again in backward (model/merged_swiglu.py).
            y = merged_swiglu(xs, routing.weights.reshape(B * N, -1), self.w_gate, self.w_up, self.w_down,
                              self.scratch)
        else:
            w_gate, w_up, w_down = self.merged(routing.weights)  # (B, N, d, f), (B, N, d, f), (B, N, f, d)
            y = swiglu(xs, w_gate.view(B * N, d, -1), w_up.view(B * N, d, -1),
                       w_down.view(B * N, -1, d))  # (B*N, T, d)
        y = y.view(B, N * T, d)
        return (y[:, :L] if pad else y), routing  # (B, L, d)

    # ------------------------------------------------------------------ incremental decoding

    def prefill(self, x: Tensor, mode: RoutingMode,
                lengths: Tensor | None = None) -> tuple[Tensor, MergedFFNCache]:
        """Run the prompt x (B, P, d) and return y (B, P, d) with the state for decoding.

        prompt: route once on the mean of the whole prompt, merge once, and keep that FFN for the
            prompt and every generated token (LORY.md section 2; a dense model's decoding cost).
        segment: exactly the training computation; the state holds the last segment's merged FFN
            and the running input sum from which the next segment will route.
        ``lengths`` (B,): each row's tokens in a padded batch whose rows start at position 0.
        """
        if mode == "prompt":
            if lengths is None:
                mean = x.mean(dim=1)  # (B, d)
            else:
                real = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # (B, P)
                mean = x.masked_fill(~real[..., None], 0).sum(dim=1) / lengths[:, None].to(x.dtype)  # (B, d)
            w_gate, w_up, w_down = self.merged(self._inference_probs(mean))  # (B, d, f), (B, d, f), (B, f, d)
            return swiglu(x, w_gate, w_up, w_down), MergedFFNCache(mode, w_gate, w_up, w_down)
        if mode != "segment":
            raise ValueError(f"routing mode must be one of {ROUTING_MODES}, got {mode!r}")
        y, routing = self.forward_with_routing(x, lengths)
        if lengths is None:
            current = routing.weights[:, -1]  # (B, E): the last segment's
        else:  # each row's own last segment
            rows = torch.arange(x.shape[0], device=x.device)
            current = routing.weights[rows, (lengths - 1) // self.segment_len]  # (B, E)
        w_gate, w_up, w_down = self.merged(current)  # (B, d, f), (B, d, f), (B, f, d)
        return y, MergedFFNCache(mode, w_gate, w_up, w_down, SegmentMean.after_prompt(x, self.segment_len, lengths))

    def decode(self, x: Tensor, cache: MergedFFNCache, pos: int | Tensor) -> Tensor:
        """One new token x (B, 1, d) at absolute position ``pos`` -> y (B, 1, d); updates cache.

        ``pos`` is an int, or (B,) each row's own position in a padded batch: there the rows start
        segments at different steps, and only the rows that start one merge anew.
        """
        if cache.segment is not None:
            completed = cache.segment.add(x[:, 0], pos)  # (B, d) when a segment just completed
            due = self.policy.reroutes_at(pos, self.segment_len)  # bool, or (B,) bool
            if isinstance(due, Tensor):
                if bool(due.any()):  # a host sync per layer and token, in padded batches only
                    merged = self.merged(self._inference_probs(completed))
                    keep = ~due[:, None, None]  # (B, 1, 1)
                    cache.w_gate, cache.w_up, cache.w_down = (
                        torch.where(keep, old, new) for old, new in zip((cache.w_gate, cache.w_up, cache.w_down), merged))
            elif completed is not None and due:
                cache.w_gate, cache.w_up, cache.w_down = self.merged(self._inference_probs(completed))
        return swiglu(x, cache.w_gate, cache.w_up, cache.w_down)  # (B, 1, d)
