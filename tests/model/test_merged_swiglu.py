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


def _upcycled(recompute, spread, seed=0):
    """A layer right after upcycling: experts equal to one FFN up to a relative spread."""
    g = torch.Generator().manual_seed(seed)
    layer = LoryMoE(64, 96, 8, 16, recompute_merge=recompute)
    with torch.no_grad():
        for w in (layer.w_gate, layer.w_up, layer.w_down):
            base = torch.randn(w.shape[1:], generator=g) * 0.05
            w.copy_(base * (1 + spread * torch.randn(w.shape, generator=g)))
    return layer


def _weights_grad(layer, x, gy, weights, autocast):
    weights = weights.clone().requires_grad_(True)
    B, L, d = x.shape
    xs = x.reshape(B * L // 16, 16, d)
    from lory_lightning.model.merged_swiglu import merged_swiglu
    from lory_lightning.model.moe import swiglu

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if layer.recompute_merge:
            y = merged_swiglu(xs, weights, layer.w_gate, layer.w_up, layer.w_down)
        else:
            y = swiglu(xs, *layer.merged(weights))
    (grad,) = torch.autograd.grad((y.float() * gy.reshape_as(y)).sum(), [weights])
    return grad


import pytest  # noqa: E402


@pytest.mark.parametrize("recompute", [True, False], ids=["lean", "plain"])
def test_bf16_routing_gradient_keeps_the_expert_differences_right_after_upcycling(recompute):
    # Experts differ by 1e-4 (relative) right after upcycling: cast to bf16 (8 bits of mantissa) they
    # are equal, and a routing gradient computed from the cast weights is rounding noise.
    layer = _upcycled(recompute, spread=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 64, generator=g)
    gy = torch.randn(4, 64, 64, generator=g)
    weights = torch.softmax(torch.randn(16, 8, generator=g), dim=-1)
    ref = _weights_grad(layer, x, gy, weights, autocast=False)
    got = _weights_grad(layer, x, gy, weights, autocast=True)
    # Only the part of the gradient that differs between experts reaches the router through the
    # softmax; compare that part (row means removed) as well as the whole.
    centred = lambda t: (t - t.mean(dim=-1, keepdim=True)).flatten()  # noqa: E731
    assert torch.nn.functional.cosine_similarity(centred(ref), centred(got), dim=0) >= 0.99
    assert torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0) >= 0.99


def test_merged_swiglu_refuses_double_backward():
    _, lean = pair()
    x = torch.randn(2, 16, 16, dtype=torch.float64, requires_grad=True)
    y = lean(x)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(y.sum(), [x], create_graph=True)
    plain, _ = pair()  # the plain path is differentiable twice
    y = plain(x)
    (gx,) = torch.autograd.grad(y.sum(), [x], create_graph=True)
    assert gx.requires_grad


def test_the_cpu_buffers_belong_to_one_model_and_reuse_gives_the_same_gradients():
    from lory_lightning.model import LoryTransformer, ModelConfig
    from lory_lightning.model.merged_swiglu import Scratch, merged_swiglu

    cfg = ModelConfig(vocab_size=64, seq_len=32, segment_len=8, n_layer=3, dim=16, n_head=2, hidden_dim=24,
                      num_experts=4)
    one, two = LoryTransformer(cfg), LoryTransformer(cfg)
    assert len({id(b.ffn.scratch) for b in one.blocks}) == 1  # the layers of a model run in turn: one set
    assert one.blocks[0].ffn.scratch is not two.blocks[0].ffn.scratch  # never shared between models
    _, lean = pair()
    torch.manual_seed(0)
    xs, weights = torch.randn(6, 8, 16, dtype=torch.float64), torch.softmax(torch.randn(6, 4, dtype=torch.float64), -1)
    params = [lean.w_gate, lean.w_up, lean.w_down]
    grads = {}
    scratch = Scratch()
    for name, buffers in (("fresh", None), ("kept once", scratch), ("kept twice", scratch)):
        y = merged_swiglu(xs, weights, *params, buffers)
        grads[name] = [y.detach(), *torch.autograd.grad(y.square().sum(), params)]
    assert scratch.buffers  # the buffers were used and kept
    for name in ("kept once", "kept twice"):
        assert all(torch.equal(a, b) for a, b in zip(grads[name], grads["fresh"]))
