"""LoryLM: dense warmup equals the dense model, upcycling keeps the function, safe checkpoint loading."""

import pytest
import torch

from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.checkpoint_io import load_checkpoint
from lory_lightning.training import TrainingConfig
from lory_lightning.module import LoryLM
from lory_lightning.model.upcycle import upcycle_in_place

CFG = ModelConfig(vocab_size=64, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16, hidden_dim=24,
                  num_experts=4)


def test_dense_phase_is_exactly_the_dense_model():
    lm = LoryLM(arch=CFG, training=TrainingConfig(dense_warmup=0.5))
    assert lm.in_dense_phase()
    dense = LoryTransformer(CFG.replace(ffn="dense"))
    state = {}
    for k, v in lm.model.state_dict().items():
        if k.endswith(("w_gate", "w_up", "w_down")):
            state[k] = v[0]
        elif not k.endswith(("router.weight", "dense_phase")):
            state[k] = v
    dense.load_state_dict(state)
    idx = torch.randint(0, 64, (2, 32))
    torch.testing.assert_close(lm.model(idx).logits, dense(idx).logits, rtol=0, atol=1e-6)
    # the router is in the graph (DDP needs every parameter used) but learns nothing while dense
    lm.model(idx).logits.sum().backward()
    for layer in lm.model.moe_layers():
        assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().max() == 0
        assert layer.w_gate.grad[1:].abs().max() == 0


def test_upcycling_in_place_keeps_the_function_and_the_parameters():
    lm = LoryLM(arch=CFG, training=TrainingConfig(dense_warmup=0.5))
    idx = torch.randint(0, 64, (2, 32))
    before = lm.model(idx).logits
    params_before = [id(p) for p in lm.parameters()]
    upcycle_in_place(lm.model, torch.Generator().manual_seed(0))
    assert not lm.in_dense_phase()
    assert [id(p) for p in lm.parameters()] == params_before  # the optimizer and DDP keep working
    torch.testing.assert_close(lm.model(idx).logits, before, rtol=0, atol=1e-5)
    for layer in lm.model.moe_layers():
        assert torch.equal(layer.w_up[3], layer.w_up[0]) and layer.router.weight.abs().max() > 0


def test_config_conflicts_are_explained():
    with pytest.raises(ValueError, match="dense_warmup needs model.arch.ffn: lory"):
        LoryLM(arch=CFG.replace(ffn="dense"), training=TrainingConfig(dense_warmup=0.1))
    with pytest.raises(ValueError, match="share of max_steps"):
        LoryLM(arch=CFG, training=TrainingConfig(dense_warmup=1.5))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    with pytest.raises(ValueError, match="refused to load"):
        load_checkpoint(str(path))
    assert "this must never run" not in capsys.readouterr().out
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"model.a": torch.ones(2)}}, good)
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(str(truncated))


def test_a_checkpoint_taken_during_dense_warmup_restores_the_phase():
    warm = LoryLM(arch=CFG, training=TrainingConfig(dense_warmup=0.5))
    fresh = LoryLM(arch=CFG)
    assert not fresh.in_dense_phase()
    fresh.load_state_dict(warm.state_dict())
    assert fresh.in_dense_phase()
    idx = torch.randint(0, 64, (2, 32))
    torch.testing.assert_close(fresh.model(idx).logits, warm.model(idx).logits, rtol=0, atol=0)


@pytest.mark.parametrize("mode, ratio", [("scaled", 1 / CFG.num_experts), ("copied", 1.0)])
def test_upcycle_now_gives_every_expert_the_dense_moments_at_the_chosen_scale(mode, ratio):
    from types import SimpleNamespace

    lm = LoryLM(arch=CFG, training=TrainingConfig(dense_warmup=0.5, upcycle_moments=mode))
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    lm.model(torch.randint(0, 64, (2, 32))).logits.square().mean().backward()
    opt.step()
    layer = lm.model.moe_layers()[0]
    dense_sq = opt.state[layer.w_down]["exp_avg_sq"][0].clone()
    dense_avg = opt.state[layer.w_down]["exp_avg"][0].clone()
    lm._trainer = SimpleNamespace(optimizers=[opt], global_step=4)  # all upcycle_now reads from the trainer
    lm.upcycle_now()
    assert not lm.in_dense_phase() and layer.router.weight not in opt.state
    for e in range(CFG.num_experts):
        torch.testing.assert_close(opt.state[layer.w_down]["exp_avg"][e], dense_avg * ratio, rtol=1e-6, atol=0)
        torch.testing.assert_close(opt.state[layer.w_down]["exp_avg_sq"][e], dense_sq * ratio ** 2, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="upcycle_moments must be 'scaled' or 'copied'"):
        LoryLM(arch=CFG, training=TrainingConfig(dense_warmup=0.5, upcycle_moments="reset"))
