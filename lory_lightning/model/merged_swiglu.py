"""A SwiGLU over merged expert weights that recomputes the merge in backward (LORY.md section 1, Cost).

Plain autograd keeps the three merged matrices of every segment for backward (3*d*f values per
segment per layer, E/T times the FFN's own activations at d = f). This function keeps what a dense
SwiGLU keeps (the input and the two hidden pre-activations) plus the routing weights, and merges
again in backward. Gradients equal the plain path (tested at float64).

Shape legend: R routing rows (segments, B*N), T tokens per row, E experts, d width, f FFN width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class Scratch:
    """Buffers kept between calls for temporaries that die within one forward or backward, on CPU.

    glibc's malloc maps and unmaps every block above 32 MB (its threshold cannot be raised past
    that), so each merge of that size paid for fresh pages on every call, several times the cost of
    the merge itself (BENCHMARKS.md). GPU allocators cache blocks themselves: no buffers there. A
    buffer is reused by the next call of the same shape, so the layers that share one Scratch must
    run one after another: one per model (LoryTransformer gives its Lory layers one), never shared
    between models or threads.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """The buffer ``name`` of ``shape`` in ``like``'s dtype (None off CPU: allocate as usual)."""
        if like.device.type != "cpu":
            return None
        key = (name, shape, like.dtype)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty(shape, dtype=like.dtype)
        return buf


def _merge(weights: Tensor, w: Tensor, scratch: Scratch | None, name: str) -> Tensor:
    """(R, E) x (E, a, b) -> (R, a, b): one matmul on a flat view (into a reused buffer on CPU)."""
    E = w.shape[0]
    shape = (weights.shape[0], *w.shape[1:])
    out = scratch.get(name, shape, weights) if scratch is not None else None
    if out is None:
        return (weights @ w.reshape(E, -1)).view(shape)
    torch.matmul(weights, w.reshape(E, -1), out=out.view(shape[0], -1))
    return out


def _matmul(a: Tensor, b: Tensor, scratch: Scratch | None, name: str) -> Tensor:
    """a @ b, batched, into a reused buffer on CPU."""
    out = scratch.get(name, (*a.shape[:-1], b.shape[-1]), a) if scratch is not None else None
    return a @ b if out is None else torch.matmul(a, b, out=out)


def _cat_experts(w_gate: Tensor, w_up: Tensor, scratch: Scratch | None) -> Tensor:
    """(E, d, f) twice -> (E, d, 2f), into a reused buffer on CPU."""
    out = scratch.get("w_gu", (*w_gate.shape[:-1], 2 * w_gate.shape[-1]), w_gate) if scratch is not None else None
    return torch.cat([w_gate, w_up], dim=2, out=out) if out is not None else torch.cat([w_gate, w_up], dim=2)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a Lory layer computes in: autocast's where it is on, else the input's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class MergedSwiGLU(torch.autograd.Function):
    """y[r] = (silu(x[r] Wg[r]) * (x[r] Wu[r])) Wd[r] with W*[r] = sum_e weights[r, e] W*_e.

    Gate and up are merged and applied as one (d, 2f) matrix: one merge and one batched matmul
    instead of two, in forward and in backward (bigger matmuls run closer to peak on a CPU).
    """

    @staticmethod
    def forward(ctx, xs: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                scratch: Scratch | None) -> Tensor:
        # xs (R, T, d), weights (R, E), experts (E, d, f), (E, d, f), (E, f, d). Under autocast the
        # work runs in the autocast dtype, explicitly, so backward can repeat it exactly.
        dtype = compute_dtype(xs)
        f = w_gate.shape[2]
        with torch.autocast(xs.device.type, enabled=False):
            # Cast only when the dtype differs: `xs.to(xs.dtype)` returns xs itself, and torch.compile
            # refuses to save for backward an intermediate that aliases an input (a fresh process
            # failed in backward with InternalTorchDynamoError).
            x = xs if xs.dtype == dtype else xs.to(dtype)
            wts = weights if weights.dtype == dtype else weights.to(dtype)
            w_gu = _cat_experts(w_gate, w_up, scratch).to(dtype)  # (E, d, 2f)
            gu = x @ _merge(wts, w_gu, scratch, "m_gu")  # (R, T, 2f): gate and up pre-activations together
            g, u = gu[..., :f], gu[..., f:]
            y = (F.silu(g) * u) @ _merge(wts, w_down.to(dtype), scratch, "m_down")  # (R, T, d)
        ctx.save_for_backward(x, wts, gu, w_gate, w_up, w_down)
        ctx.input_dtypes = (xs.dtype, weights.dtype)
        ctx.scratch = scratch
        return y

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, None]:
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would be silently wrong
            raise RuntimeError("the recomputing Lory layer has no double backward (create_graph=True): "
                               "set model.recompute_merge: false to differentiate twice")
        x, wts, gu, w_gate, w_up, w_down = ctx.saved_tensors
        dtype = x.dtype
        f = w_gate.shape[2]
        with torch.autocast(x.device.type, enabled=False):
            gy = gy.to(dtype)
            scratch = ctx.scratch
            w_gu_full = _cat_experts(w_gate, w_up, scratch)  # (E, d, 2f) in the parameters' dtype
            w_gu, w_d = w_gu_full.to(dtype), w_down.to(dtype)
            m_gu, m_down = _merge(wts, w_gu, scratch, "m_gu"), _merge(wts, w_d, scratch, "m_down")  # recomputed
            g, u = gu[..., :f], gu[..., f:]
            s = F.silu(g)
            gm_down = _matmul((s * u).transpose(1, 2), gy, scratch, "gm_down")  # (R, f, d)
            gh = gy @ m_down.transpose(1, 2)  # (R, T, f)
            # (R, T, 2f): through silu into the gate half (torch's fused kernel), the product into the
            # up half, each written in place (a chain of elementwise ops and a cat cost twice as much)
            d_gu = torch.empty_like(gu)
            torch.ops.aten.silu_backward.grad_input(gh * u, g, grad_input=d_gu[..., :f])
            torch.mul(gh, s, out=d_gu[..., f:])
            gm_gu = _matmul(x.transpose(1, 2), d_gu, scratch, "gm_gu")  # (R, d, 2f)
            gx = d_gu @ m_gu.transpose(1, 2)  # (R, T, d)
            g_wts = torch.zeros(wts.shape, dtype=w_gate.dtype, device=wts.device)  # (R, E)
            grads = []
            for gm, w, w_full in ((gm_gu, w_gu, w_gu_full), (gm_down, w_d, w_down)):
                flat = gm.reshape(gm.shape[0], -1)  # (R, a*b)
                grads.append((wts.transpose(0, 1) @ flat).view_as(w))  # (E, a, b)
                g_wts = g_wts + routing_grad(flat, w_full, dtype)  # (R, E)
        g_gate, g_up = grads[0][..., :f], grads[0][..., f:]
        return (gx.to(ctx.input_dtypes[0]), g_wts.to(ctx.input_dtypes[1]),
                g_gate.to(w_gate.dtype), g_up.to(w_up.dtype), grads[1].to(w_down.dtype), None)


def routing_grad(flat: Tensor, w: Tensor, dtype: torch.dtype) -> Tensor:
    """Gradient of the routing weights: flat (R, a*b) merged-matrix gradients, w (E, a, b) experts -> (R, E).

    In the parameters' precision it is ``flat @ w^T``. In a lower compute dtype (bf16 autocast)
    the experts must not be cast as they are: right after upcycling they differ by 1e-4 to 1e-3
    relative, below bf16's resolution, so the cast experts are equal and the router would learn
    from rounding noise exactly when routing is decided. Instead each expert is written as
    expert 0 plus its difference, the difference is formed in full precision (bf16 keeps its
    relative precision, however small it is), and expert 0's share, one dot product per row, is
    added to every expert alike. That share is computed in the compute dtype too: its rounding is
    the same for every expert, and a shift common to all experts never reaches the router (the
    softmax's gradient removes it, as routing weights sum to 1). Taken in full precision it would
    cast the whole merged gradient (R, a*b) to fp32 in every layer (its cost: BENCHMARKS.md, GPU).
    """
    E = w.shape[0]
    if dtype == w.dtype:
        return flat @ w.reshape(E, -1).transpose(0, 1)  # (R, E)
    base = w[:1].reshape(1, -1)  # (1, a*b) expert 0, full precision
    diff = (w.reshape(E, -1) - base).to(dtype)  # (E, a*b): the differences, exactly as small as they are
    shared = flat @ base.to(dtype).transpose(0, 1)  # (R, 1): expert 0's share, the same for every expert
    return (flat @ diff.transpose(0, 1)).to(w.dtype) + shared.to(w.dtype)  # (R, E)


def merged_swiglu(xs: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                  scratch: Scratch | None = None) -> Tensor:
    """(R, T, d) rows, (R, E) routing weights, expert weights -> (R, T, d), lean in memory; on CPU the
    temporaries go into ``scratch``'s buffers (None: allocated per call)."""
    return MergedSwiGLU.apply(xs, weights, w_gate, w_up, w_down, scratch)
