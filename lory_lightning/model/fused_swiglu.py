"""The Lory SwiGLU on the fused kernels, as torch.library operators with their own autograd.

``merged_swiglu`` and ``merged_swiglu_backward`` are custom operators with fake
(meta) implementations, so torch.compile traces a model through them (as single graph nodes) and
FSDP2's gathered parameters reach them as plain tensors. Forward saves what a dense SwiGLU saves
(the input and the two pre-activations) plus the routing weights, like the torch path's
recomputing function (merged_swiglu.py), whose numbers these reproduce.

Shape legend: R segments, T tokens per segment, E experts, d width, f FFN width.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

from .fused_gemm import merged_matmul, merged_swiglu_up, merged_weight_grad
from .merged_swiglu import compute_dtype

# The operators' namespace is this module's name: an exported model (transformers loads a copy of
# these files as another module) registers its own, beside the package's, in one process.
_NS = re.sub(r"\W", "_", __name__)


def _t(w: Tensor) -> Tensor:
    """(E, a, b) -> the (E, b, a) view: the backward multiplies by each merged matrix transposed."""
    return w.transpose(1, 2)


@torch.library.custom_op(f"{_NS}::merged_swiglu", mutates_args=())
def merged_swiglu_forward(x: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor,
                          w_down: Tensor) -> tuple[Tensor, Tensor]:
    """x (R, T, d), weights (R, E), experts (E, d, f) x2, (E, f, d) -> y (R, T, d), gu (R, T, 2f)."""
    gu, h = merged_swiglu_up(x, w_gate, w_up, weights)  # (R, T, 2f), (R, T, f)
    return merged_matmul(h, w_down, weights), gu  # (R, T, d)


@merged_swiglu_forward.register_fake
def _(x: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> tuple[Tensor, Tensor]:
    R, T, _ = x.shape
    return x.new_empty((R, T, w_down.shape[2])), x.new_empty((R, T, 2 * w_gate.shape[2]))


@torch.library.custom_op(f"{_NS}::merged_swiglu_backward", mutates_args=())
def merged_swiglu_backward(gy: Tensor, x: Tensor, weights: Tensor, gu: Tensor, w_gate: Tensor, w_up: Tensor,
                           w_down: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (x, weights, w_gate, w_up, w_down) from gy (R, T, d) and what forward saved."""
    f = w_gate.shape[2]
    gy = gy.to(x.dtype)
    g, u = gu[..., :f], gu[..., f:]  # (R, T, f) each
    gh = merged_matmul(gy, _t(w_down), weights)  # (R, T, f): dY through the merged down matrix
    s = F.silu(g)
    d_gu = torch.empty_like(gu)  # (R, T, 2f): the gate half through silu, the up half through the product
    torch.ops.aten.silu_backward.grad_input(gh * u, g, grad_input=d_gu[..., :f])
    torch.mul(gh, s, out=d_gu[..., f:])
    d_g, d_u = d_gu[..., :f], d_gu[..., f:]
    gx = merged_matmul(d_g, _t(w_gate), weights)  # (R, T, d)
    merged_matmul(d_u, _t(w_up), weights, out=gx)  # += the up half's share
    g_down, p_down = merged_weight_grad(s * u, gy, w_down, weights)  # (E, f, d), (R, E)
    g_gate, p_gate = merged_weight_grad(x, d_g, w_gate, weights)  # (E, d, f), (R, E)
    g_up, p_up = merged_weight_grad(x, d_u, w_up, weights)
    g_weights = (p_down + p_gate + p_up).to(weights.dtype)  # (R, E)
    return gx, g_weights, g_gate, g_up, g_down


@merged_swiglu_backward.register_fake
def _(gy: Tensor, x: Tensor, weights: Tensor, gu: Tensor, w_gate: Tensor, w_up: Tensor,
      w_down: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(x), torch.empty_like(weights), torch.empty_like(w_gate), torch.empty_like(w_up),
            torch.empty_like(w_down))


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:  # noqa: ANN001
    x, weights, w_gate, w_up, w_down = inputs
    ctx.save_for_backward(x, weights, output[1], w_gate, w_up, w_down)


def _backward(ctx, gy: Tensor, _ggu: Tensor) -> tuple[Tensor, ...]:  # noqa: ANN001
    if torch.is_grad_enabled():  # create_graph=True: a second derivative would be silently wrong
        raise RuntimeError("the fused Lory kernels have no double backward (create_graph=True): "
                           "set model.kernel: torch and model.recompute_merge: false to differentiate twice")
    x, weights, gu, w_gate, w_up, w_down = ctx.saved_tensors
    return merged_swiglu_backward(gy, x, weights, gu, w_gate, w_up, w_down)


merged_swiglu_forward.register_autograd(_backward, setup_context=_setup_context)


def merged_swiglu_fused(xs: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """(R, T, d) rows, (R, E) routing weights, expert weights -> (R, T, d) in the compute dtype.

    Under autocast the rows are cast to the autocast dtype (as the torch path computes); the
    experts and the routing weights stay as they are: the kernels merge them in fp32 on chip.
    """
    dtype = compute_dtype(xs)
    x = xs if xs.dtype == dtype else xs.to(dtype)
    return merged_swiglu_forward(x, weights, w_gate, w_up, w_down)[0]
