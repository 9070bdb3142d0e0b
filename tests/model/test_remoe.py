"""ReMoE: ReLU routing against a float64 loop, its degenerate cases, and the adaptive L1 control."""

import pytest
import torch

from lory_lightning.model import LoryTransformer, ModelConfig, param_counts
from lory_lightning.model.moe import Routing, swiglu
from lory_lightning.model.remoe import (ReMoE, adapt_l1_coef, balanced_l1, gate_sparsity, remoe_l1_loss,
                                        target_sparsity)

D, FF, E = 16, 24, 4


def layer(top_k=1):
    m = ReMoE(D, FF, E, top_k).double()
    m.reset_parameters(std=0.3, router_std=0.5)
    return m


def loop_forward(m, x):
    """y_t = sum_e relu(r_e(x_t)) FFN_e(x_t), token by token and expert by expert."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        gates = torch.relu(m.router.weight @ x[t])
        for e in range(E):
            if gates[e] > 0:
                out[t] += gates[e] * swiglu(x[t], m.w_gate[e], m.w_up[e], m.w_down[e])
    return out


def test_forward_and_gradients_equal_a_float64_loop():
    m = layer()
    x = torch.randn(2, 9, D, dtype=torch.float64, requires_grad=True)
    y, routing = m.forward_with_routing(x)
    ref = loop_forward(m, x.reshape(-1, D)).view_as(x)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, m.router.weight, m.w_up])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, m.router.weight, m.w_up])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    gates = torch.relu(routing.logits)
    assert 0 < (gates > 0).sum() < gates.numel()  # some experts on, some off: the test sees both
    shares = routing.weights.reshape(-1, E)
    on = gates.reshape(-1, E).sum(-1) > 0
    torch.testing.assert_close(shares[on].sum(-1), torch.ones(int(on.sum()), dtype=torch.float64))
    assert (shares[~on] == 0).all()


def test_equal_experts_give_the_dense_ffn_scaled_by_the_gates_l1_norm():
    m = layer()
    with torch.no_grad():
        for w in (m.w_gate, m.w_up, m.w_down):
            w.copy_(w[:1].expand_as(w))
    x = torch.randn(3, 7, D, dtype=torch.float64)
    scale = torch.relu(x @ m.router.weight.T).sum(-1, keepdim=True)  # (3, 7, 1)
    torch.testing.assert_close(m(x), scale * swiglu(x, m.w_gate[0], m.w_up[0], m.w_down[0]), rtol=0, atol=1e-12)


def test_a_token_no_expert_takes_gets_nothing_and_a_negative_router_is_the_zero_ffn():
    m = layer()
    with torch.no_grad():
        m.router.weight.zero_()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    y, routing = m.forward_with_routing(x)
    assert torch.equal(y, torch.zeros_like(y)) and torch.equal(routing.weights, torch.zeros_like(routing.weights))


def test_balanced_l1_equals_its_formula_in_float64():
    gates = torch.relu(torch.randn(5, 7, E, dtype=torch.float64))
    k, S = 1, 35
    expected = 0.0
    for e in range(E):
        f = E / (k * S) * sum(1 for t in gates.reshape(-1, E) if t[e] > 0)
        expected += f * gates.reshape(-1, E)[:, e].mean().item()
    assert balanced_l1(gates, k).item() == pytest.approx(expected, rel=1e-14)
    # the gradient of each positive gate is f_e / S (f counted, not differentiated)
    g = gates.clone().requires_grad_()
    balanced_l1(g, k).backward()
    f = (gates.reshape(-1, E) > 0).sum(0).double() * E / (k * S)
    torch.testing.assert_close(g.grad.reshape(-1, E), f.expand(S, E) / S)


def test_sparsity_and_the_penalty_average_over_layers():
    a = torch.tensor([[[1.0, -1.0, -2.0, 3.0]]], dtype=torch.float64)  # 2 of 4 gates zero
    b = torch.tensor([[[-1.0, -1.0, -2.0, 0.5]]], dtype=torch.float64)  # 3 of 4
    routing = [Routing(a, a), None, Routing(b, b)]  # a dense layer in between is skipped
    assert gate_sparsity(routing).item() == pytest.approx(5 / 8)
    expected = (balanced_l1(torch.relu(a), 2) + balanced_l1(torch.relu(b), 2)) / 2
    assert remoe_l1_loss(routing, 2).item() == pytest.approx(expected.item())


def test_the_coefficient_moves_by_alpha_toward_the_target():
    target = target_sparsity(1, 8)
    assert target == 0.875
    assert adapt_l1_coef(1e-8, 0.5, target, 1.2) == pytest.approx(1.2e-8)  # too dense: push harder
    assert adapt_l1_coef(1e-8, 0.95, target, 1.2) == pytest.approx(1e-8 / 1.2)  # too sparse: ease
    assert adapt_l1_coef(1e-8, 0.875, target, 1.2) == 1e-8  # on target: unchanged


def test_the_control_brings_a_layer_to_its_target_sparsity():
    # A ReMoE layer fitting a random map, with the penalty and the control of model/remoe.py, in
    # float64: sparsity starts near 1/2 (a random router), the coefficient grows from 1e-8 until the
    # share of zero gates sits at 1 - k/E, and stays there. The inputs have a mean, as hidden states
    # do: around zero-mean isotropic inputs a bias-free router's sign pattern cannot change.
    torch.manual_seed(0)
    offset = torch.randn(D, dtype=torch.float64)
    m = ReMoE(D, FF, 8, top_k=2).double()
    m.reset_parameters(std=0.2, router_std=0.2)
    target_map = torch.randn(D, D, dtype=torch.float64) / D ** 0.5
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    coef, target, seen = 1e-8, target_sparsity(2, 8), []
    for step in range(400):
        x = offset + torch.randn(64, 1, D, dtype=torch.float64)
        y, routing = m.forward_with_routing(x)
        loss = (y - x @ target_map).pow(2).mean() + coef * remoe_l1_loss([routing], 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsity = gate_sparsity([routing]).item()
        coef = adapt_l1_coef(coef, sparsity, target, 1.2)
        seen.append(sparsity)
    assert seen[0] < 0.7  # starts dense-ish
    late = torch.tensor(seen[-100:], dtype=torch.float64)
    assert abs(late.mean().item() - target) < 0.03, late.mean()


def test_config_counts_k_active_experts_and_refuses_a_target_of_every_expert():
    cfg = ModelConfig(ffn="remoe", top_k=1, vocab_size=97, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16,
                      hidden_dim=24, num_experts=4)
    lory = param_counts(cfg.replace(ffn="lory"))
    assert param_counts(cfg) == lory  # k = 1: Lory's total and active parameters
    model = LoryTransformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == param_counts(cfg)["total"]
    assert param_counts(cfg.replace(top_k=2))["active"] - lory["active"] == 2 * 3 * 16 * 24
    with pytest.raises(ValueError, match="model.top_k is ReMoE's target of active experts.*got 4"):
        cfg.replace(top_k=4)
