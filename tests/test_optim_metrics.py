import math

import pytest
import torch

from lory_lightning.metrics import DomainPerplexity
from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.optim import OptimConfig, lr_multiplier, param_groups, upcycle_optimizer_state


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
