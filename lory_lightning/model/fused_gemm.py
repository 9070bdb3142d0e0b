"""Triton kernels that merge expert weights inside the GEMM that uses them (LORY.md section 1, Cost).

A Lory layer multiplies each segment's tokens by that segment's merged matrices
M[r] = sum_e p[r, e] W_e. The torch path (model/merged_swiglu.py) writes every M[r] to device
memory and reads it back: 3 d f values per segment per layer, about 11x the segment's own
activations at the 0.3B shape. These kernels never write a merged matrix or a per-segment weight
gradient: each program forms the merged tile it needs on chip from the E expert tiles (read from
cache: programs that share an expert tile are scheduled together), and the backward accumulates the
expert gradients and the routing-weight gradients on chip from each segment's X_r^T dY_r tile.

Three kernels, each launched by a plain function below (shapes in the legend of merged_swiglu.py:
R segments, T tokens per segment, E experts, K input and N output width of the matrix):
- ``merged_matmul``: y[r] = x[r] @ M[r] (or y[r] += ..., to sum two products into one output);
  a transposed view of the experts gives the backward's dX through the same on-chip merge.
- ``merged_swiglu_up``: the gate and the up projection in one pass over x, with the SwiGLU in the
  epilogue: stores both pre-activations (for backward) and h = silu(g) * u.
- ``merged_weight_grad``: dW_e = sum_r p[r, e] a[r]^T g[r] and the partial routing gradients
  <W_e, a[r]^T g[r]>, one row of partials per (k, n) tile, summed by the caller (deterministic).

Accumulation is in fp32 whatever the inputs (fp32 or bf16); merged tiles are formed in fp32 from the
experts in their own dtype, then cast to the input dtype for the tensor-core product. The kernels
run on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before
triton is imported), which is how the test suite checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

try:  # imported only when fused.use_fused found Triton; transformers' import check of an export skips a try
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError('the fused Lory kernels need Triton: pip install -e ".[gpu]" (or set model.kernel: torch)') from err


@dataclass(frozen=True)
class Tiles:
    """Tile sizes: T rows of a segment, K the reduced width, N the output width, E experts at once."""

    t: int
    k: int
    n: int
    e: int
    warps: int


def tiles(E: int, device: torch.device) -> Tiles:
    """Tile sizes for a launch. 16 is the smallest tensor-core product; the interpreter runs numpy,
    where small tiles keep the tests fast. ``e`` bounds the expert-gradient accumulators a
    weight-gradient program holds on chip (e x k x n fp32 values): past it the experts are split over
    programs, each forming its segments' a^T g tile again."""
    if device.type != "cuda":
        return Tiles(t=16, k=16, n=16, e=min(triton.next_power_of_2(E), 16), warps=1)
    return Tiles(t=64, k=32, n=64, e=min(triton.next_power_of_2(E), 8), warps=4)


def _precision(x: Tensor) -> str:
    # fp32 inputs: tf32 only where torch itself would use it for a matmul (the torch path's numbers)
    if x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _upcast(x: Tensor) -> bool:
    # Triton 3.9's interpreter multiplies bf16 operands as raw integers (a product of two N(0, 1)
    # bf16 matrices came out near 1e10). There the 16-bit operands are widened to fp32 before the
    # product: a bf16 x bf16 product is exact in fp32, so this is what the tensor cores compute with
    # their fp32 accumulator, up to the order of the sums.
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with a and b of one dtype, accumulated in fp32 (see _upcast for UPCAST)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _merged_tile(w_ptr, p_ptr, r, E, offs_k, offs_n, K, N, s_we, s_wk, s_wn, s_pr, s_pe,
                 BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """(BLOCK_K, BLOCK_N) fp32 tile of M[r] = sum_e p[r, e] W_e, formed on chip."""
    mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
    ptrs = w_ptr + offs_k[:, None] * s_wk + offs_n[None, :] * s_wn
    m = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for e in range(0, E):
        p = tl.load(p_ptr + r * s_pr + e * s_pe).to(tl.float32)
        m += p * tl.load(ptrs + e * s_we, mask=mask, other=0.0).to(tl.float32)
    return m


@triton.jit
def _tile_ids(T, N, R, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """(segment, t tile, n tile) of this program. The n tile varies slowest, so the programs running
    together share the expert tiles of one column block and read them from cache."""
    pid = tl.program_id(0)
    num_t = tl.cdiv(T, BLOCK_T)
    per_n = R * num_t
    pid_n = pid // per_n
    rest = pid % per_n
    return rest // num_t, rest % num_t, pid_n


@triton.jit
def _merged_matmul_kernel(x_ptr, w_ptr, p_ptr, y_ptr, R, T, K, N, E,
                          s_xr, s_xt, s_xk, s_we, s_wk, s_wn, s_pr, s_pe, s_yr, s_yt, s_yn,
                          ACCUMULATE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    r, pid_t, pid_n = _tile_ids(T, N, R, BLOCK_T, BLOCK_N)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + r * s_xr + offs_t[:, None] * s_xt + offs_k[None, :] * s_xk,
                    mask=(offs_t[:, None] < T) & (offs_k[None, :] < K), other=0.0)  # (BT, BK)
        m = _merged_tile(w_ptr, p_ptr, r, E, offs_k, offs_n, K, N, s_we, s_wk, s_wn, s_pr, s_pe,
                         BLOCK_K, BLOCK_N)  # (BK, BN)
        acc = _dot(x, m.to(x.dtype), acc, PRECISION, UPCAST)
    ptrs = y_ptr + r * s_yr + offs_t[:, None] * s_yt + offs_n[None, :] * s_yn
    mask = (offs_t[:, None] < T) & (offs_n[None, :] < N)
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merged_swiglu_up_kernel(x_ptr, wg_ptr, wu_ptr, p_ptr, gu_ptr, h_ptr, R, T, K, N, E,
                             s_xr, s_xt, s_xk, s_we, s_wk, s_wn, s_pr, s_pe, s_gr, s_gt, s_hr, s_ht,
                             PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                             BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    r, pid_t, pid_n = _tile_ids(T, N, R, BLOCK_T, BLOCK_N)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    u = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + r * s_xr + offs_t[:, None] * s_xt + offs_k[None, :] * s_xk,
                    mask=(offs_t[:, None] < T) & (offs_k[None, :] < K), other=0.0)  # (BT, BK)
        mg = _merged_tile(wg_ptr, p_ptr, r, E, offs_k, offs_n, K, N, s_we, s_wk, s_wn, s_pr, s_pe, BLOCK_K, BLOCK_N)
        mu = _merged_tile(wu_ptr, p_ptr, r, E, offs_k, offs_n, K, N, s_we, s_wk, s_wn, s_pr, s_pe, BLOCK_K, BLOCK_N)
        g = _dot(x, mg.to(x.dtype), g, PRECISION, UPCAST)
        u = _dot(x, mu.to(x.dtype), u, PRECISION, UPCAST)
    mask = (offs_t[:, None] < T) & (offs_n[None, :] < N)
    # what backward needs: both pre-activations, in the compute dtype, gate in [:N] and up in [N:]
    gu = gu_ptr + r * s_gr + offs_t[:, None] * s_gt + offs_n[None, :]
    g_out = g.to(gu_ptr.dtype.element_ty)
    u_out = u.to(gu_ptr.dtype.element_ty)
    tl.store(gu, g_out, mask=mask)
    tl.store(gu + N, u_out, mask=mask)
    # the epilogue: h = silu(g) * u from the stored (rounded) values, as the torch path computes it
    gf = g_out.to(tl.float32)
    h = gf * tl.sigmoid(gf) * u_out.to(tl.float32)
    tl.store(h_ptr + r * s_hr + offs_t[:, None] * s_ht + offs_n[None, :], h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merged_weight_grad_kernel(a_ptr, g_ptr, w_ptr, p_ptr, dw_ptr, gp_ptr, R, T, K, N, E,
                               s_ar, s_at, s_ak, s_gr, s_gt, s_gn, s_we, s_wk, s_wn, s_pr, s_pe,
                               s_de, s_dk, s_dn, s_q, s_qr,
                               PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_E: tl.constexpr,
                               BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    tile = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_k, pid_n = tile // num_n, tile % num_n
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kn = (offs_k[:, None] < K) & (offs_n[None, :] < N)  # (BK, BN)
    ekn = (offs_e[:, None, None] < E) & kn[None, :, :]  # (BE, BK, BN)
    w_ptrs = w_ptr + offs_e[:, None, None] * s_we + offs_k[None, :, None] * s_wk + offs_n[None, None, :] * s_wn
    dw = tl.zeros((BLOCK_E, BLOCK_K, BLOCK_N), dtype=tl.float32)
    for r in range(0, R):
        # this segment's a^T g tile, on chip only: (BK, BN)
        c = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            a = tl.load(a_ptr + r * s_ar + offs_t[:, None] * s_at + offs_k[None, :] * s_ak,
                        mask=(offs_t[:, None] < T) & (offs_k[None, :] < K), other=0.0)  # (BT, BK)
            g = tl.load(g_ptr + r * s_gr + offs_t[:, None] * s_gt + offs_n[None, :] * s_gn,
                        mask=(offs_t[:, None] < T) & (offs_n[None, :] < N), other=0.0)  # (BT, BN)
            c = _dot(tl.trans(a), g.to(a.dtype), c, PRECISION, UPCAST)
        p = tl.load(p_ptr + r * s_pr + offs_e * s_pe, mask=offs_e < E, other=0.0).to(tl.float32)  # (BE,)
        dw += p[:, None, None] * c[None, :, :]
        # routing gradient: <W_e, c> over this tile; the expert tiles come from cache, once per segment
        w = tl.load(w_ptrs, mask=ekn, other=0.0).to(tl.float32)  # (BE, BK, BN)
        part = tl.sum(tl.sum(w * c[None, :, :], axis=2), axis=1)  # (BE,)
        tl.store(gp_ptr + tile * s_q + r * s_qr + offs_e, part, mask=offs_e < E)
    dw_ptrs = dw_ptr + offs_e[:, None, None] * s_de + offs_k[None, :, None] * s_dk + offs_n[None, None, :] * s_dn
    tl.store(dw_ptrs, dw.to(dw_ptr.dtype.element_ty), mask=ekn)


# ---------------------------------------------------------------------------------- launchers


def merged_matmul(x: Tensor, w: Tensor, p: Tensor, out: Tensor | None = None) -> Tensor:
    """x (R, T, K), experts w (E, K, N) (any strides: a transposed view works), routing weights
    p (R, E) -> x[r] @ sum_e p[r, e] w[e], (R, T, N) in x's dtype. With ``out``, the product is
    added to it in place (two products summed without a second output)."""
    R, T, K = x.shape
    E, _, N = w.shape
    cfg = tiles(E, x.device)
    accumulate = out is not None
    y = out if accumulate else torch.empty((R, T, N), dtype=x.dtype, device=x.device)
    grid = (R * triton.cdiv(T, cfg.t) * triton.cdiv(N, cfg.n),)
    _merged_matmul_kernel[grid](x, w, p, y, R, T, K, N, E, *x.stride(), *w.stride(), *p.stride(), *y.stride(),
                                ACCUMULATE=accumulate, PRECISION=_precision(x), UPCAST=_upcast(x),
                                BLOCK_T=cfg.t, BLOCK_K=cfg.k, BLOCK_N=cfg.n, num_warps=cfg.warps)
    return y


def merged_swiglu_up(x: Tensor, w_gate: Tensor, w_up: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """x (R, T, d), w_gate and w_up (E, d, f), p (R, E) -> gu (R, T, 2f): the gate and up
    pre-activations side by side, and h = silu(g) * u (R, T, f), both in x's dtype."""
    R, T, K = x.shape
    E, _, N = w_gate.shape
    if w_up.shape != w_gate.shape or w_up.stride() != w_gate.stride():
        raise ValueError(f"w_up {tuple(w_up.shape)} must have w_gate's shape {tuple(w_gate.shape)} and strides")
    cfg = tiles(E, x.device)
    gu = torch.empty((R, T, 2 * N), dtype=x.dtype, device=x.device)
    h = torch.empty((R, T, N), dtype=x.dtype, device=x.device)
    grid = (R * triton.cdiv(T, cfg.t) * triton.cdiv(N, cfg.n),)
    _merged_swiglu_up_kernel[grid](x, w_gate, w_up, p, gu, h, R, T, K, N, E, *x.stride(), *w_gate.stride(),
                                   *p.stride(), gu.stride(0), gu.stride(1), h.stride(0), h.stride(1),
                                   PRECISION=_precision(x), UPCAST=_upcast(x), BLOCK_T=cfg.t, BLOCK_K=cfg.k, BLOCK_N=cfg.n,
                                   num_warps=cfg.warps)
    return gu, h


def merged_weight_grad(a: Tensor, g: Tensor, w: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """a (R, T, K), g (R, T, N), experts w (E, K, N), p (R, E) ->
    dW (E, K, N) = sum_r p[r, e] a[r]^T g[r] in w's dtype, and the routing-weight gradient
    (R, E) fp32 = <W_e, a[r]^T g[r]>, without forming any a[r]^T g[r] in device memory."""
    R, T, K = a.shape
    E, _, N = w.shape
    cfg = tiles(E, a.device)
    n_tiles = triton.cdiv(K, cfg.k) * triton.cdiv(N, cfg.n)
    dw = torch.empty_like(w, memory_format=torch.contiguous_format)
    parts = torch.empty((n_tiles, R, E), dtype=torch.float32, device=a.device)  # a row of partials per tile
    grid = (n_tiles, triton.cdiv(E, cfg.e))
    _merged_weight_grad_kernel[grid](a, g, w, p, dw, parts, R, T, K, N, E, *a.stride(), *g.stride(), *w.stride(),
                                     *p.stride(), *dw.stride(), parts.stride(0), parts.stride(1),
                                     PRECISION=_precision(a), UPCAST=_upcast(a), BLOCK_E=cfg.e,
                                     BLOCK_T=cfg.t, BLOCK_K=cfg.k, BLOCK_N=cfg.n, num_warps=cfg.warps)
    return dw, parts.sum(dim=0)
