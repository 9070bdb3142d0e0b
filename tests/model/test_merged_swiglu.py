"""The recompute-in-backward Lory layer: same gradients as plain autograd, less saved, bf16 autocast."""

import torch

from lory_lightning.model.moe import LoryMoE, SwiGLU


def pair(dtype=torch.float64):
    plain = LoryMoE(16, 24, 4, 8, recompute_merge=False).to(dtype)
    plain.reset_parameters(std=0.3, router_std=0.5)
    lean = LoryMoE(16, 24, 4, 8, recompute_merge=True).to(dtype)
    lean.load_state_dict(plain.state_dict())
    return plain, lean


def saved_bytes(fn, params):
    ptrs = {p.data_ptr() for p in params}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in ptrs:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


def test_recompute_gives_the_plain_gradients_at_float64():
    plain, lean = pair()
    x = torch.randn(3, 4 * 8, 16, dtype=torch.float64)
    gy = torch.randn(3, 32, 16, dtype=torch.float64)
    grads = []
    for layer in (plain, lean):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        grads.append([y.detach()] + list(torch.autograd.grad((y * gy).sum(), [xi, *layer.parameters()])))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_recompute_saves_no_more_than_a_dense_layer_plus_routing():
    plain, lean = pair(torch.float32)
    dense = SwiGLU(16, 24)
    x = torch.randn(4, 8 * 8, 16, requires_grad=True)
    _, b_plain = saved_bytes(lambda: plain(x), list(plain.parameters()))
    _, b_lean = saved_bytes(lambda: lean(x), list(lean.parameters()))
    _, b_dense = saved_bytes(lambda: dense(x), list(dense.parameters()))
    assert b_lean < b_plain
    assert b_lean <= 1.1 * b_dense


def test_bf16_autocast_runs_and_gradients_come_back_in_parameter_dtype():
    plain, lean = pair(torch.float32)
    x = torch.randn(2, 32, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_lean = lean(x)
        y_plain = plain(x)
    assert y_lean.dtype == torch.bfloat16
    torch.testing.assert_close(y_lean.float(), y_plain.float(), rtol=0.05, atol=0.05)
    y_lean.float().sum().backward()
    assert lean.w_gate.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.isfinite(lean.w_gate.grad).all() and lean.router.weight.grad.abs().max() > 0
