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


def _merge(weights: Tensor, w: Tensor) -> Tensor:
    """(R, E) x (E, a, b) -> (R, a, b): one matmul on a flat view."""
    E = w.shape[0]
    return (weights @ w.reshape(E, -1)).view(weights.shape[0], *w.shape[1:])


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class MergedSwiGLU(torch.autograd.Function):
    """y[r] = (silu(x[r] Wg[r]) * (x[r] Wu[r])) Wd[r] with W*[r] = sum_e weights[r, e] W*_e."""

    @staticmethod
    def forward(ctx, xs: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
        # xs (R, T, d), weights (R, E), experts (E, d, f), (E, d, f), (E, f, d). Under autocast the
        # work runs in the autocast dtype, explicitly, so backward can repeat it exactly.
        dtype = _compute_dtype(xs)
        with torch.autocast(xs.device.type, enabled=False):
            x, wts = xs.to(dtype), weights.to(dtype)
            g = x @ _merge(wts, w_gate.to(dtype))  # (R, T, f)
            u = x @ _merge(wts, w_up.to(dtype))  # (R, T, f)
            y = (F.silu(g) * u) @ _merge(wts, w_down.to(dtype))  # (R, T, d)
        ctx.save_for_backward(x, wts, g, u, w_gate, w_up, w_down)
        ctx.input_dtypes = (xs.dtype, weights.dtype)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x, wts, g, u, w_gate, w_up, w_down = ctx.saved_tensors
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            gy = gy.to(dtype)
            E = w_gate.shape[0]
            mats = [w.to(dtype) for w in (w_gate, w_up, w_down)]
            m_gate, m_up, m_down = (_merge(wts, w) for w in mats)  # recomputed: (R, d, f), (R, d, f), (R, f, d)
            sig = torch.sigmoid(g)
            s = g * sig  # silu(g)  (R, T, f)
            h = s * u  # (R, T, f)
            gm_down = h.transpose(1, 2) @ gy  # (R, f, d)
            gh = gy @ m_down.transpose(1, 2)  # (R, T, f)
            gu = gh * s
            gg = gh * u * (sig * (1 + g * (1 - sig)))  # silu'(g) = sig * (1 + g (1 - sig))
            gm_gate = x.transpose(1, 2) @ gg  # (R, d, f)
            gm_up = x.transpose(1, 2) @ gu  # (R, d, f)
            gx = gg @ m_gate.transpose(1, 2) + gu @ m_up.transpose(1, 2)  # (R, T, d)
            grads_w, g_wts = [], torch.zeros_like(wts)
            for gm, w in zip((gm_gate, gm_up, gm_down), mats):
                flat = gm.reshape(gm.shape[0], -1)  # (R, a*b)
                grads_w.append((wts.transpose(0, 1) @ flat).view_as(w))  # (E, a, b)
                g_wts = g_wts + flat @ w.reshape(E, -1).transpose(0, 1)  # (R, E)
        return (gx.to(ctx.input_dtypes[0]), g_wts.to(ctx.input_dtypes[1]),
                grads_w[0].to(w_gate.dtype), grads_w[1].to(w_up.dtype), grads_w[2].to(w_down.dtype))


def merged_swiglu(xs: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """(R, T, d) rows, (R, E) routing weights, expert weights -> (R, T, d), lean in memory."""
    return MergedSwiGLU.apply(xs, weights, w_gate, w_up, w_down)
