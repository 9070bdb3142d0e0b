"""LoryMoE against LORY.md section 1: causality, stop-gradient, shift axis, degenerate cases, parity."""

import pytest
import torch
import torch.nn.functional as F

from lory_lightning.model.moe import (LoryMoE, Routing, SwiGLU, causal_shift, merge_experts,
                                      segment_means, swiglu)

D, FF, E, T = 16, 24, 4, 8


def make_layer(dtype=torch.float64, experts=E, segment_len=T, router_std=0.5):
    layer = LoryMoE(D, FF, experts, segment_len).to(dtype)
    # A large router std makes routing clearly non-uniform, so wrong shifts cannot hide.
    layer.reset_parameters(std=0.3, router_std=router_std)
    return layer


def reference_forward(layer: LoryMoE, x: torch.Tensor) -> torch.Tensor:
    """Slow float64 loop written straight from LORY.md section 1, token by token."""
    B, L, d = x.shape
    Tn = layer.segment_len
    N = -(-L // Tn)
    y = torch.zeros_like(x)
    for b in range(B):
        probs = []
        for k in range(N):
            seg = x[b, k * Tn:(k + 1) * Tn]
            hbar = seg.sum(0) / seg.shape[0]
            probs.append(torch.softmax(layer.router.weight @ hbar, dim=0))
        for k in range(N):
            e = probs[0].detach() if k == 0 else probs[k - 1]
            wg = sum(e[i] * layer.w_gate[i] for i in range(layer.num_experts))
            wu = sum(e[i] * layer.w_up[i] for i in range(layer.num_experts))
            wd = sum(e[i] * layer.w_down[i] for i in range(layer.num_experts))
            for t in range(k * Tn, min((k + 1) * Tn, L)):
                h = F.silu(x[b, t] @ wg) * (x[b, t] @ wu)
                y[b, t] = h @ wd
    return y


def test_parity_with_float64_loop_forward_and_gradients():
    layer = make_layer()
    x = torch.randn(2, 4 * T, D, dtype=torch.float64, requires_grad=True)
    assert_matches_reference(layer, x)


def assert_matches_reference(layer: LoryMoE, x: torch.Tensor) -> None:
    """The layer's output and gradients (input and every parameter) equal the float64 loop's."""
    y, y_ref = layer(x), reference_forward(layer, x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad((y * grad_out).sum(), [x, *layer.parameters()])
    grads_ref = torch.autograd.grad((y_ref * grad_out).sum(), [x, *layer.parameters()])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-11)


def test_parity_with_partial_last_segment_at_inference():
    layer = make_layer().eval()
    x = torch.randn(2, 3 * T + 3, D, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=0, atol=1e-12)


def test_a_partial_last_segment_trains_as_the_reference():
    # pre-training cuts whole segments (check_whole_segments); fine-tuning examples have any length
    layer = make_layer().train()
    assert_matches_reference(layer, torch.randn(2, 3 * T + 3, D, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("recompute", [True, False])
def test_padded_rows_compute_what_each_row_computes_alone(recompute):
    layer = make_layer().train()
    layer.recompute_merge = recompute
    lengths = torch.tensor([3 * T + 3, T - 2, 2 * T, 4 * T])
    x = torch.randn(4, 4 * T, D, dtype=torch.float64, requires_grad=True)  # rows from position 0, padding after
    y, routing = layer.forward_with_routing(x, lengths)
    real = torch.arange(4 * T) < lengths[:, None]  # (B, L)
    (g,) = torch.autograd.grad((y * real[..., None]).sum(), [x])
    assert g[~real].abs().max() == 0  # padding reaches no token
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[b, :n], reference_forward(layer, x[b:b + 1, :n])[0], rtol=0, atol=1e-12)
    # a segment of padding alone has mean 0, not 0 / 0
    assert torch.isfinite(routing.logits).all()
    means = segment_means(x.detach(), T, lengths)  # (B, N, d)
    assert means[1, 1:].abs().max() == 0 and torch.allclose(means[1, 0], x[1, :T - 2].detach().mean(0))


@pytest.mark.parametrize("q", [T, T + 3, 2 * T + 5, 4 * T - 1])
def test_causality_beyond_first_segment(q):
    layer = make_layer()
    x = torch.randn(2, 4 * T, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, q] += torch.randn(D, dtype=torch.float64)
    y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[:, :q], y2[:, :q], rtol=0, atol=0)
    assert (y[:, q] - y2[:, q]).abs().max() > 1e-3  # the perturbed token itself does change
    if q // T + 1 < 4:  # the next segment routes on the perturbed one
        nxt = (q // T + 1) * T
        assert (y[:, nxt:] - y2[:, nxt:]).abs().max() > 1e-6


def test_first_segment_routes_on_itself_by_design():
    layer = make_layer()
    x = torch.randn(1, 4 * T, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, T - 1] += 1.0  # last token of segment 0 changes the routing of all of segment 0
    assert (layer(x)[:, 0] - layer(x2)[:, 0]).abs().max() > 1e-9


def test_first_segment_routing_has_no_gradient():
    layer = make_layer()
    x = torch.randn(2, 4 * T, D, dtype=torch.float64)
    layer(x)[:, :T].pow(2).sum().backward()
    assert torch.count_nonzero(layer.router.weight.grad) == 0  # stop-gradient on e[:, 0]
    layer.zero_grad()
    layer(x)[:, T:2 * T].pow(2).sum().backward()
    assert layer.router.weight.grad.abs().max() > 1e-6  # later segments do train the router


def test_shift_runs_along_segment_axis():
    layer = make_layer()
    x = torch.randn(3, 4 * T, D, dtype=torch.float64)
    weights = layer.routing_weights(x)  # (B, N, E)
    assert weights.shape == (3, 4, E)
    own = torch.softmax(segment_means(x, T) @ layer.router.weight.T, dim=-1)  # (B, N, E)
    torch.testing.assert_close(weights[:, 0], own[:, 0], rtol=0, atol=1e-15)
    torch.testing.assert_close(weights[:, 1:], own[:, :-1], rtol=0, atol=1e-15)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    # The trap: a flat roll shifts the expert axis, which is a different (wrong) answer.
    assert (torch.roll(own, 1) - weights).abs().max() > 1e-3


def test_causal_shift_and_segment_means_small_cases():
    p = torch.arange(12.0).view(1, 3, 4)
    torch.testing.assert_close(causal_shift(p), torch.tensor([[[0.0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7]]]))
    x = torch.arange(10.0).view(1, 5, 2)  # segments of 2: [0,1,2,3], [4..7], partial [8,9]
    torch.testing.assert_close(segment_means(x, 2), torch.tensor([[[1.0, 2.0], [5.0, 6.0], [8.0, 9.0]]]))


def test_one_expert_equals_dense_swiglu():
    layer = make_layer(experts=1)
    dense = SwiGLU(D, FF).to(torch.float64)
    with torch.no_grad():
        dense.w_gate.copy_(layer.w_gate[0])
        dense.w_up.copy_(layer.w_up[0])
        dense.w_down.copy_(layer.w_down[0])
    x = torch.randn(2, 4 * T, D, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=1e-13)


def test_one_hot_routing_equals_the_chosen_expert():
    layer = make_layer()
    x = torch.randn(2, 4 * T, D, dtype=torch.float64)
    chosen = torch.tensor([[2, 0, 3, 1], [1, 1, 0, 2]])  # (B, N)
    onehot = F.one_hot(chosen, E).to(torch.float64)
    layer.route = lambda inp, lengths=None: Routing(logits=onehot.log(), weights=onehot)
    y = layer(x)
    for b in range(2):
        for k in range(4):
            i = chosen[b, k]
            seg = x[b, k * T:(k + 1) * T]
            expected = swiglu(seg, layer.w_gate[i], layer.w_up[i], layer.w_down[i])
            torch.testing.assert_close(y[b, k * T:(k + 1) * T], expected, rtol=0, atol=1e-13)


def test_merge_experts_is_the_weighted_sum():
    w = torch.randn(E, 3, 5, dtype=torch.float64)
    weights = torch.rand(2, 6, E, dtype=torch.float64)
    merged = merge_experts(weights, w)
    assert merged.shape == (2, 6, 3, 5)
    torch.testing.assert_close(merged, torch.einsum("bne,eij->bnij", weights, w), rtol=0, atol=1e-14)


def test_router_runs_in_fp32_under_bf16_weights():
    layer = make_layer(dtype=torch.bfloat16)
    routing = layer.route(torch.randn(1, 2 * T, D, dtype=torch.bfloat16))
    assert routing.logits.dtype == torch.float32 and routing.weights.dtype == torch.float32
    assert layer(torch.randn(1, 2 * T, D, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_equal_experts_break_symmetry_only_with_nonuniform_router():
    """LORY.md: after upcycling the router gradient is exactly zero; only a non-uniform router lets
    the (equal) experts receive different gradients and drift apart."""
    x = torch.randn(2, 4 * T, D, dtype=torch.float64)
    for router_std, expect_symmetric in ((0.0, True), (0.5, False)):
        layer = make_layer(router_std=1.0)
        with torch.no_grad():
            for w in (layer.w_gate, layer.w_up, layer.w_down):
                w.copy_(w[0].expand_as(w))
            layer.router.weight.normal_(std=1.0).mul_(router_std)
        layer(x).pow(2).sum().backward()
        assert layer.router.weight.grad.abs().max() < 1e-12  # equal experts: router gradient is zero
        spread = (layer.w_gate.grad - layer.w_gate.grad.mean(0, keepdim=True)).abs().max()
        assert (spread < 1e-12) == expect_symmetric
