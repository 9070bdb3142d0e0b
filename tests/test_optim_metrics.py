import math

import pytest
import torch

from lory_lightning.metrics import DomainPerplexity
from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.model.upcycle import upcycle_optimizer_state
from lory_lightning.optim import OptimConfig, lr_multiplier, param_groups


def test_lr_schedule_warmup_cosine_and_floor():
    assert lr_multiplier(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_multiplier(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(500, 100, 10, 0.1) == pytest.approx(0.1)  # floor after the end
    assert lr_multiplier(0, 100, 0, 0.0) == pytest.approx(1.0)


def test_weight_decay_only_on_matrices():
    model = LoryTransformer(ModelConfig(vocab_size=50, seq_len=16, segment_len=8, n_layer=1, n_head=2, dim=8,
                                        hidden_dim=8, num_experts=2))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_optim_config_validation():
    with pytest.raises(ValueError, match="optim.lr must be > 0"):
        OptimConfig(lr=0)
    assert OptimConfig(betas=[0.9, 0.99]).betas == (0.9, 0.99)


def test_upcycle_optimizer_state_copies_expert_zero_and_resets_router():
    w = torch.nn.Parameter(torch.randn(3, 2, 2))
    r = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([w, r])
    (w.sum() * 2 + (w[1] ** 2).sum() + r.sum()).backward()
    opt.step()
    upcycle_optimizer_state(opt, [w], [r])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[w][key][1], opt.state[w][key][0])
    assert r not in opt.state


def _warmed_dense_and_experts(E: int, grads: list[torch.Tensor]):
    """A dense (1, 3, 2) weight and E experts whose expert 0 took the same AdamW steps on ``grads``."""
    dense = torch.nn.Parameter(torch.ones(1, 3, 2, dtype=torch.float64))
    experts = torch.nn.Parameter(torch.ones(E, 3, 2, dtype=torch.float64))
    kw = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0, eps=1e-30)  # eps does not scale: negligible here
    opt_d, opt_e = torch.optim.AdamW([dense], **kw), torch.optim.AdamW([experts], **kw)
    for g in grads:
        dense.grad, experts.grad = g.clone(), torch.zeros_like(experts)
        experts.grad[:1] = g
        opt_d.step(), opt_e.step()
    with torch.no_grad():
        experts.copy_(experts[:1].expand_as(experts))
    return dense, opt_d, experts, opt_e


def _step(param: torch.nn.Parameter, opt: torch.optim.Optimizer, grad: torch.Tensor) -> torch.Tensor:
    before = param.detach().clone()
    param.grad = grad
    opt.step()
    return param.detach() - before


def test_scaled_upcycled_moments_make_every_expert_step_like_the_dense_ffn():
    """With grad_ratio 1/E, experts fed 1/E of the dense gradient take exactly the dense steps."""
    torch.manual_seed(0)
    E = 8
    warm = [torch.randn(1, 3, 2, dtype=torch.float64) for _ in range(5)]
    after = [torch.randn(1, 3, 2, dtype=torch.float64) + 0.5 for _ in range(40)]
    dense, opt_d, experts, opt_e = _warmed_dense_and_experts(E, warm)
    upcycle_optimizer_state(opt_e, [experts], [], grad_ratio=1 / E)
    dense_total = torch.zeros(1, 3, 2, dtype=torch.float64)
    for g in after:
        dense_step = _step(dense, opt_d, g.clone())
        torch.testing.assert_close(_step(experts, opt_e, g.expand(E, 3, 2) / E), dense_step.expand(E, 3, 2),
                                   rtol=1e-9, atol=0)
        dense_total += dense_step
    # Copied (unscaled) moments: the E^2-too-large second moment holds the experts back for tens of steps.
    _, _, experts, opt_e = _warmed_dense_and_experts(E, warm)
    upcycle_optimizer_state(opt_e, [experts], [], grad_ratio=1.0)
    copied_total = sum(_step(experts, opt_e, g.expand(E, 3, 2) / E) for g in after)
    assert copied_total[0].abs().sum() < 0.6 * dense_total.abs().sum()  # measured 0.39
    with pytest.raises(ValueError, match="grad_ratio"):
        upcycle_optimizer_state(opt_e, [experts], [], grad_ratio=0.0)


def test_domain_perplexity_is_exact_however_batches_are_split():
    nll = torch.rand(6, 10) * 4
    dom = torch.randint(0, 3, (6, 10))
    whole = DomainPerplexity(3)
    whole.update(nll, dom)
    split = DomainPerplexity(3)
    for i in range(6):
        split.update(nll[i:i + 1], dom[i:i + 1])
    a, b = whole.compute(), split.compute()
    torch.testing.assert_close(a["per_domain"], b["per_domain"])
    for d in range(3):
        expected = math.exp(nll[dom == d].double().mean().item())
        assert a["per_domain"][d].item() == pytest.approx(expected, rel=1e-12)
    assert a["all"].item() == pytest.approx(math.exp(nll.double().mean().item()), rel=1e-12)
