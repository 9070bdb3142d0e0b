"""The paper's comparison points (LORY.md section 5), each a routed FFN with Lory's parameters.

Shape legend: B batch, L positions, N segments, T segment length, E experts, C capacity (rows an
expert takes), k experts per token, d width, f FFN width.

- ``ExpertChoiceMoE`` (token level; Zhou et al. 2022): every expert picks its top-C tokens of the
  sequence, C = L * capacity_factor / E, so the FFN costs what a dense FFN costs at capacity 1, the
  same as Lory. **Look-ahead:** a token's expert depends on the scores of every token of the
  sequence, later ones included, so training is not causal; at inference each token goes to its
  top-k experts (k = capacity factor), as the paper did. ``eval_routing="capacity"`` scores with
  the training rule instead (both Expert Choice kinds): the model is then judged by the rule it
  learned, which no decoder can run.
- ``SegmentExpertChoiceMoE``: every expert picks its top-C segments of the batch (routed on each
  segment's own mean), C = B * N * capacity_factor / E, and runs all their tokens: at capacity 1
  the compute of a dense FFN, as token Expert Choice. Non-causal in training (a segment's expert
  depends on its own later tokens and on the other segments' scores, across the batch); at
  inference each segment goes to its top-k experts routed on the previous segment, as in Lory.
- ``TopKMoE``: token top-k (Mixtral-style renormalized gates), computed grouped by expert after a
  sort of the token-expert pairs: the Python loop runs over experts, never over tokens.
- ``AuxFreeTopKMoE``: token top-k balanced without an auxiliary loss, as DeepSeek-V3 describes it:
  sigmoid affinities, experts chosen on affinity + a per-expert bias that only a load count moves,
  gates the chosen affinities renormalized (the bias never enters a gate).
- ``LoryPrefixMoE``: one merge per sequence from the first segment, applied to every segment: the
  paper's weaker ablation of causal segment routing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .moe import (CausalSegmentRouting, check_whole_segments, FirstSegmentRouting, LoryMoE, RoutedExperts, Routing, RoutingMode,
                  SegmentMean, segment_means, swiglu)

if TYPE_CHECKING:  # annotations only: config.py imports the layers through model/ffn.py
    from .config import ModelConfig


def grouped_ffn(experts: RoutedExperts, x: Tensor, token: Tensor, expert: Tensor, gate: Tensor) -> Tensor:
    """sum over pairs p of gate[p] * FFN_{expert[p]}(x[token[p]]): tokens x (S, d), pairs (P,) -> (S, d).

    The P (token, expert) pairs are sorted by expert, so each expert runs once on a contiguous block
    of its tokens; a token may have any number of pairs (top-k: k each; ReLU routing: as many as
    its gates are positive, none included).
    """
    order = torch.argsort(expert, stable=True)
    token = token[order]  # (P,) token of each sorted pair
    counts = torch.bincount(expert, minlength=experts.num_experts).tolist()
    # index_select, not x[token]: a token taken by several experts gets its gradient summed, and the
    # backward of advanced indexing sums in a thread-dependent order on CPU (runs not reproducible)
    x_sorted = x.index_select(0, token)  # (P, d)
    outs = [swiglu(chunk, experts.w_gate[e], experts.w_up[e], experts.w_down[e])  # (n_e, d)
            for e, chunk in enumerate(torch.split(x_sorted, counts)) if chunk.shape[0]]
    if not outs:  # no pair at all: the FFN adds nothing
        return torch.zeros_like(x)
    y_sorted = torch.cat(outs) * gate.index_select(0, order)[:, None].to(x.dtype)  # (P, d)
    return torch.zeros_like(x).index_add_(0, token, y_sorted)  # (S, d)


def grouped_topk_ffn(experts: RoutedExperts, x: Tensor, idx: Tensor, gates: Tensor) -> Tensor:
    """sum_j gates[t, j] * FFN_{idx[t, j]}(x[t]) for tokens x (S, d), idx and gates (S, k) -> (S, d)."""
    S, k = idx.shape
    token = torch.arange(S, device=x.device).repeat_interleave(k)  # (S*k,)
    return grouped_ffn(experts, x, token, idx.reshape(-1), gates.reshape(-1))


def dense_gates(idx: Tensor, gates: Tensor, num_experts: int) -> Tensor:
    """The applied routing as a dense (..., E) tensor: gates scattered at their experts."""
    return torch.zeros(*idx.shape[:-1], num_experts, dtype=gates.dtype, device=gates.device).scatter(-1, idx, gates)


class _Stateless:
    """Token-level routing needs no decoding state: prefill and decode are the inference forward."""

    def prefill(self, x: Tensor, mode: RoutingMode, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        return self.forward_with_routing(x, lengths)[0], None

    def decode(self, x: Tensor, cache: None, pos: int | Tensor) -> Tensor:
        return self.forward_with_routing(x)[0]


def refuse_padding(kind: str, lengths: Tensor | None) -> None:
    """Expert Choice kinds pick among the batch's tokens or segments: padding would take capacity."""
    if lengths is not None:
        raise ValueError(f"model.ffn {kind}: its experts choose among the batch's tokens or segments, so padding "
                         "would take their capacity; give it unpadded batches (lory, dense and top-k take padded ones)")


def refuse_capacity_decoding(eval_routing: str) -> None:
    """Expert Choice's training rule picks among tokens not yet generated: it scores, it cannot decode."""
    if eval_routing != "causal":
        raise ValueError(f"model.eval_routing {eval_routing!r}: the experts choose among the whole sequence, "
                         "which a decoder does not have yet; generate with model.eval_routing causal")


class TopKMoE(_Stateless, RoutedExperts):
    """Token top-k routing: each token runs its k best experts, gates renormalized over the k.

    Args:
        dim, hidden_dim, num_experts: as for LoryMoE.
        top_k: Experts per token.
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, top_k: int) -> None:
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        super().__init__(dim, hidden_dim, num_experts, segment_len=1)
        self.top_k = top_k

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TopKMoE:
        return cls(cfg.dim, cfg.hidden_dim, cfg.num_experts, cfg.top_k)

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        if not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(f"model.top_k must be in [1, num_experts={cfg.num_experts}], got {cfg.top_k}")

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> float:
        return cfg.top_k * 6 * cfg.dim * cfg.hidden_dim + 2 * cfg.dim * cfg.num_experts  # k experts + router

    @staticmethod
    def active_experts(cfg: ModelConfig) -> int:
        return cfg.top_k

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Routing]:
        B, L, d = x.shape  # per token: padding never reaches a token (its routing stats count it)
        logits = self.router_logits(x)  # (B, L, E)
        top_logits, idx = logits.topk(self.top_k, dim=-1)  # (B, L, k)
        gates = top_logits.softmax(dim=-1)  # (B, L, k)
        y = grouped_topk_ffn(self, x.reshape(B * L, d), idx.reshape(B * L, -1), gates.reshape(B * L, -1))
        return y.view(B, L, d), Routing(logits=logits, weights=dense_gates(idx, gates, self.num_experts))


class AuxFreeTopKMoE(TopKMoE):
    """Token top-k balanced without an auxiliary loss (DeepSeek-V3, its auxiliary-loss-free strategy).

    Per token, affinities s = sigmoid(router(x)) (E,); the k experts are the top-k of s + b, where
    b (E,) is a per-expert bias no gradient moves; their gates are their affinities s renormalized
    over the k, so b decides who runs but never how much. After each optimizer step
    ``update_balance_bias`` moves every b_e by ``rate`` toward balance: down for an expert that took
    more than the mean load of the step's tokens, up for one that took less.

    With k = 1 the renormalized gate is exactly 1 and the router would get no gradient, so the
    configs use fine-grained experts (k = 2 of 2E experts of half width: Lory's active and total
    parameters). DeepSeek-V3's extra sequence-wise balance loss (weight 1e-4) is not added: the
    study measures the bias alone; ``model.training.load_balance_coef`` adds the Switch loss.

    Args:
        dim, hidden_dim, num_experts: as for LoryMoE.
        top_k: Experts per token.
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, top_k: int) -> None:
        super().__init__(dim, hidden_dim, num_experts, top_k)
        # Persistent: inference routes with it. Moves in steps of ``rate`` (1e-3): train in fp32 or
        # bf16-mixed (fp32 weights and buffers), not bf16-true, whose spacing near 1 is 8e-3.
        self.register_buffer("balance_bias", torch.zeros(num_experts))
        # Tokens each expert took since the last bias update. A plain attribute, not a buffer: DDP
        # broadcasts buffers from rank 0 before each forward, which would overwrite each rank's count.
        self.expert_load: Tensor | None = None

    @staticmethod
    def upcycled_buffers(cfg: ModelConfig) -> dict[str, Tensor]:
        return {"balance_bias": torch.zeros(cfg.num_experts)}  # no bias until the first step's load

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Routing]:
        B, L, d = x.shape
        logits = self.router_logits(x)  # (B, L, E) fp32 or wider
        scores = logits.sigmoid()  # (B, L, E) affinities
        idx = (scores + self.balance_bias.to(scores.dtype)).topk(self.top_k, dim=-1).indices  # (B, L, k)
        chosen = scores.gather(-1, idx)  # (B, L, k)
        gates = chosen / chosen.sum(dim=-1, keepdim=True)  # (B, L, k)
        if self.training:
            counted = idx if lengths is None else idx[torch.arange(L, device=x.device) < lengths[:, None]]
            load = torch.bincount(counted.reshape(-1), minlength=self.num_experts)  # (E,)
            self.expert_load = load if self.expert_load is None else self.expert_load + load
        y = grouped_topk_ffn(self, x.reshape(B * L, d), idx.reshape(B * L, -1), gates.reshape(B * L, -1))
        return y.view(B, L, d), Routing(logits=logits, weights=dense_gates(idx, gates, self.num_experts))

    def take_load(self) -> Tensor:
        """(E,) tokens each expert took since the last call (zeros if none), and reset the count."""
        load = self.expert_load
        self.expert_load = None
        return torch.zeros(self.num_experts, dtype=torch.long, device=self.balance_bias.device) if load is None else load

    @torch.no_grad()
    def update_balance_bias(self, load: Tensor, rate: float) -> None:
        """b_e += rate * sign(mean(load) - load_e) for the (E,) token counts of a step (all ranks')."""
        load = load.to(self.balance_bias.device, torch.float64)
        self.balance_bias += rate * torch.sign(load.mean() - load).to(self.balance_bias.dtype)


class ExpertChoiceMoE(_Stateless, RoutedExperts):
    """Token-level Expert Choice with capacity factor c (see the module docstring for its look-ahead).

    Args:
        dim, hidden_dim, num_experts: as for LoryMoE.
        capacity_factor: c; each expert takes C = max(1, L * c / E) tokens of each sequence.
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, capacity_factor: float = 1.0,
                 eval_routing: str = "causal") -> None:
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
        super().__init__(dim, hidden_dim, num_experts, segment_len=1)
        self.capacity_factor = capacity_factor
        self.inference_k = max(1, min(num_experts, round(capacity_factor)))
        self.eval_routing = eval_routing

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ExpertChoiceMoE:
        return cls(cfg.dim, cfg.hidden_dim, cfg.num_experts, cfg.capacity_factor, cfg.eval_routing)

    def prefill(self, x: Tensor, mode: RoutingMode, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        refuse_capacity_decoding(self.eval_routing)
        return super().prefill(x, mode, lengths)

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> float:
        # c experts' SwiGLU per token on average, and a router per token
        return cfg.capacity_factor * 6 * cfg.dim * cfg.hidden_dim + 2 * cfg.dim * cfg.num_experts

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Routing]:
        refuse_padding("expert_choice", lengths)
        B, L, d = x.shape
        logits = self.router_logits(x)  # (B, L, E)
        scores = logits.softmax(dim=-1)  # (B, L, E)
        if not self.training and self.eval_routing == "causal":  # each token to its top-k experts, gates = scores
            gates, idx = scores.topk(self.inference_k, dim=-1)  # (B, L, k)
            y = grouped_topk_ffn(self, x.reshape(B * L, d), idx.reshape(B * L, -1), gates.reshape(B * L, -1))
            return y.view(B, L, d), Routing(logits, dense_gates(idx, gates, self.num_experts))
        E = self.num_experts
        C = max(1, min(L, int(L * self.capacity_factor / E)))
        top_s, top_i = scores.transpose(1, 2).topk(C, dim=-1)  # (B, E, C): each expert's tokens
        rows = (top_i + torch.arange(B, device=x.device)[:, None, None] * L).transpose(0, 1).reshape(E, B * C)
        # index_select for a reproducible backward (see grouped_topk_ffn)
        x_sel = x.reshape(B * L, d).index_select(0, rows.reshape(-1)).view(E, B * C, d)  # (E, B*C, d)
        y_sel = swiglu(x_sel, self.w_gate, self.w_up, self.w_down)  # (E, B*C, d): one bmm per matrix
        y_sel = y_sel * top_s.transpose(0, 1).reshape(E, B * C, 1).to(x.dtype)
        y = torch.zeros(B * L, d, dtype=x.dtype, device=x.device).index_add_(0, rows.reshape(-1), y_sel.reshape(-1, d))
        weights = torch.zeros_like(scores).scatter(1, top_i.transpose(1, 2), top_s.transpose(1, 2))  # (B, L, E)
        return y.view(B, L, d), Routing(logits, weights)


@dataclass
class SegmentChoiceCache:
    """Decoding state of segment Expert Choice: current segment's experts and the running segment mean."""

    mode: RoutingMode
    idx: Tensor  # (B, k)
    gates: Tensor  # (B, k)
    segment: SegmentMean | None = None  # segment mode only


class SegmentExpertChoiceMoE(RoutedExperts):
    """Segment-level Expert Choice: each expert picks whole segments (see the module docstring).

    Args:
        dim, hidden_dim, num_experts, segment_len: as for LoryMoE.
        capacity_factor: c; each expert takes C = max(1, B * N * c / E) of the batch's B * N segments.
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, segment_len: int,
                 capacity_factor: float = 1.0, eval_routing: str = "causal") -> None:
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
        super().__init__(dim, hidden_dim, num_experts, segment_len=segment_len)
        self.capacity_factor = capacity_factor
        self.inference_k = max(1, min(num_experts, round(capacity_factor)))
        self.policy = CausalSegmentRouting()  # at inference, as Lory: route on the previous segment
        self.eval_routing = eval_routing

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SegmentExpertChoiceMoE:
        return cls(cfg.dim, cfg.hidden_dim, cfg.num_experts, cfg.segment_len, cfg.capacity_factor, cfg.eval_routing)

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        check_whole_segments(cfg)

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> float:
        # c experts' SwiGLU per token on average, and a router per segment
        return cfg.capacity_factor * 6 * cfg.dim * cfg.hidden_dim + 2 * cfg.dim * cfg.num_experts / cfg.segment_len

    def capacity(self, rows: int) -> int:
        """Segments C each expert takes in training among ``rows`` (the batch's B*N) segments."""
        return max(1, min(rows, int(rows * self.capacity_factor / self.num_experts)))

    def _apply_topk(self, xs: Tensor, idx: Tensor, gates: Tensor) -> Tensor:
        """xs (R, T, d) rows each run by their k experts idx (R, k) with gates (R, k) -> (R, T, d)."""
        y = torch.zeros_like(xs)
        for j in range(idx.shape[1]):  # k is small (the capacity factor)
            e = idx[:, j]
            y = y + gates[:, j, None, None].to(xs.dtype) * swiglu(xs, self.w_gate[e], self.w_up[e], self.w_down[e])
        return y

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Routing]:
        refuse_padding("segment_expert_choice", lengths)
        B, L, d = x.shape
        T, E = self.segment_len, self.num_experts
        N = math.ceil(L / T)
        pad = N * T - L
        xs = (F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(B, N, T, d)
        logits = self.router_logits(segment_means(x, T))  # (B, N, E)
        scores = logits.softmax(dim=-1)  # (B, N, E)
        if not self.training and self.eval_routing == "causal":  # route on the previous segment, top-k
            gates, idx = self.policy.weights(scores).topk(self.inference_k, dim=-1)  # (B, N, k)
            y = self._apply_topk(xs.reshape(B * N, T, d), idx.reshape(B * N, -1), gates.reshape(B * N, -1))
            weights = dense_gates(idx, gates, E)
        else:
            # The experts choose among the batch's R = B*N segments, C = R * c / E each, so E*C
            # segment-expert pairs run: c times a dense FFN's compute, as ffn_flops_per_token counts.
            # (Per sequence, C = max(1, N*c/E) was 1 at N < E: E pairs for N segments.)
            R = B * N
            C = self.capacity(R)
            top_s, top_i = scores.reshape(R, E).transpose(0, 1).topk(C, dim=-1)  # (E, C): each expert's segments
            rows = top_i.reshape(-1)  # (E*C,)
            x_sel = xs.reshape(R, T, d).index_select(0, rows).reshape(E, C * T, d)  # (E, C*T, d)
            y_sel = swiglu(x_sel, self.w_gate, self.w_up, self.w_down).reshape(E, C, T, d)
            y_sel = y_sel * top_s.reshape(E, C, 1, 1).to(x.dtype)
            y = torch.zeros(R, T, d, dtype=x.dtype, device=x.device).index_add_(0, rows, y_sel.reshape(E * C, T, d))
            weights = torch.zeros(R, E, dtype=scores.dtype, device=scores.device).scatter(
                0, top_i.transpose(0, 1), top_s.transpose(0, 1)).view(B, N, E)  # (B, N, E)
        y = y.reshape(B, N * T, d)
        return (y[:, :L] if pad else y), Routing(logits, weights)

    def prefill(self, x: Tensor, mode: RoutingMode,
                lengths: Tensor | None = None) -> tuple[Tensor, SegmentChoiceCache]:
        """prompt: the prompt's top-k experts (routed on its mean) serve it and every new token;
        segment: the inference forward, then a new choice at every segment boundary."""
        refuse_capacity_decoding(self.eval_routing)
        refuse_padding("segment_expert_choice", lengths)
        if mode == "prompt":
            gates, idx = self.router_logits(x.mean(dim=1)).softmax(dim=-1).topk(self.inference_k, dim=-1)
            return self._apply_topk(x, idx, gates), SegmentChoiceCache(mode, idx, gates)
        y, routing = self.forward_with_routing(x)
        gates, idx = routing.weights[:, -1].topk(self.inference_k, dim=-1)  # (B, k)
        return y, SegmentChoiceCache(mode, idx, gates, SegmentMean.after_prompt(x, self.segment_len))

    def decode(self, x: Tensor, cache: SegmentChoiceCache, pos: int | Tensor) -> Tensor:
        if cache.segment is not None:
            completed = cache.segment.add(x[:, 0], pos)  # (B, d) when a segment just completed
            if completed is not None and self.policy.reroutes_at(pos, self.segment_len):
                scores = self.router_logits(completed).softmax(dim=-1)  # (B, E)
                cache.gates, cache.idx = scores.topk(self.inference_k, dim=-1)
        return self._apply_topk(x, cache.idx, cache.gates)  # (B, 1, d)


class LoryPrefixMoE(LoryMoE):
    """Lory with one merge per sequence: every segment uses the first segment's routing
    (``FirstSegmentRouting``); everything else is the Lory layer."""

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, segment_len: int,
                 recompute_merge: bool = True, kernel: str = "auto") -> None:
        super().__init__(dim, hidden_dim, num_experts, segment_len, recompute_merge, policy=FirstSegmentRouting(),
                         kernel=kernel)
