"""The FFN kind table and its protocol, the segment routing policies, the decoding segment mean, and FLOPs."""

import math

import pytest
import torch
from torch import nn

from lory_lightning.model import LoryTransformer, ModelConfig, param_counts
from lory_lightning.model import ffn as ffn_table
from lory_lightning.model.config import ffn_flops_per_token, training_flops_per_token
from lory_lightning.model.ffn import FFN, FFN_KINDS, ffn_class
from lory_lightning.model.moe import CausalSegmentRouting, FirstSegmentRouting, SegmentMean, SwiGLU, causal_shift

SMALL = dict(vocab_size=64, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16, hidden_dim=24, num_experts=4)


@pytest.mark.parametrize("kind", list(FFN_KINDS))
def test_every_kind_keeps_the_protocol_and_builds_from_the_config(kind):
    cfg = ModelConfig(ffn=kind, **SMALL)
    layer = ffn_class(kind).from_config(cfg)
    assert isinstance(layer, FFN)
    assert cfg.is_moe == ffn_class(kind).routed == (kind != "dense")
    model = LoryTransformer(cfg)
    assert param_counts(cfg)["total"] == model.num_parameters()
    assert len(model.moe_layers()) == (cfg.n_layer if cfg.is_moe else 0)
    assert ffn_flops_per_token(cfg) >= 6 * cfg.dim * cfg.hidden_dim  # at least one SwiGLU per token


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="model.ffn must be one of lory, dense, .*topk, topk_aux_free, remoe, got 'moe'"):
        ModelConfig(ffn="moe")


class HalfDense(SwiGLU):
    """A new kind for the test: a dense SwiGLU whose output is halved."""

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.dim, cfg.hidden_dim)

    def forward(self, x):
        return 0.5 * super().forward(x)


def test_a_new_kind_is_one_class_and_one_line(monkeypatch):
    monkeypatch.setitem(ffn_table.FFN_KINDS, "half_dense", HalfDense)  # the one line
    cfg = ModelConfig(ffn="half_dense", **SMALL)
    model = LoryTransformer(cfg)
    assert all(isinstance(b.ffn, HalfDense) for b in model.blocks)
    idx = torch.randint(0, 64, (2, 32))
    out = model(idx)
    assert out.logits.shape == (2, 32, 64) and out.routing == (None, None)
    model.eval()
    cache = model.new_cache(2, 33)
    torch.testing.assert_close(model.step(idx, cache), out.logits)  # prefill through the protocol
    assert training_flops_per_token(cfg) == training_flops_per_token(cfg.replace(ffn="dense"))


def test_kind_checks_live_with_the_kind():
    with pytest.raises(ValueError, match="holds one segment"):  # Lory's own check
        ModelConfig(ffn="lory", **{**SMALL, "segment_len": 32})
    ModelConfig(ffn="dense", **{**SMALL, "segment_len": 32})  # a dense model has no segments to route
    with pytest.raises(ValueError, match=r"top_k must be in \[1, num_experts=4\]"):
        ModelConfig(ffn="topk", top_k=5, **SMALL)
    ModelConfig(ffn="lory", top_k=5, **SMALL)  # top_k is only the top-k kind's setting


def test_causal_and_first_segment_policies():
    probs = torch.softmax(torch.randn(2, 5, 4, requires_grad=True), dim=-1)  # (B, N, E)
    causal = CausalSegmentRouting().weights(probs)
    torch.testing.assert_close(causal, causal_shift(probs))
    first = FirstSegmentRouting().weights(probs)
    torch.testing.assert_close(first, probs[:, :1].expand(-1, 5, -1))
    first[:, 0].sum().backward()  # segment 0 routes on itself with the gradient cut
    assert probs.grad is None or probs.grad.abs().max() == 0
    assert [p for p in range(1, 20) if CausalSegmentRouting().reroutes_at(p, 4)] == [4, 8, 12, 16]
    assert [p for p in range(1, 20) if FirstSegmentRouting().reroutes_at(p, 4)] == [4]


def test_segment_mean_returns_each_completed_segment_once():
    x = torch.arange(10, dtype=torch.float64).view(1, 10, 1)  # one sequence, inputs 0..9, d = 1
    state = SegmentMean.after_prompt(x[:, :3], segment_len=4)  # prompt of 3: sum 0 + 1 + 2
    assert state.total.item() == 3
    completed = {pos: state.add(x[:, pos], pos) for pos in range(3, 10)}
    assert {p: v.item() for p, v in completed.items() if v is not None} == {4: 1.5, 8: 5.5}  # means of 0..3, 4..7
    assert state.total.item() == 8 + 9  # the current segment so far
    longer = SegmentMean.after_prompt(x[:, :6], segment_len=4)  # the last, partial segment only
    assert longer.total.item() == 4 + 5


def test_training_flops_count_by_hand():
    cfg = ModelConfig(**SMALL, ffn="dense")
    d, f, n, V, L = 16, 24, 2, 64, 32
    forward = n * (8 * d * d + 2 * L * d + 6 * d * f) + 2 * d * V
    assert training_flops_per_token(cfg) == 3 * forward
    lory = cfg.replace(ffn="lory")
    merges = 6 * 4 * d * f / 8  # three (d, f) merges over E = 4 experts, once per segment of 8
    router = 2 * d * 4 / 8
    assert training_flops_per_token(lory) == pytest.approx(3 * (forward + n * (merges + router)) + n * merges)
    assert training_flops_per_token(lory.replace(recompute_merge=False)) == pytest.approx(
        3 * (forward + n * (merges + router)))
    topk = cfg.replace(ffn="topk", top_k=2)
    assert training_flops_per_token(topk) == pytest.approx(3 * (forward + n * (6 * d * f + 2 * d * 4)))


def test_a_layer_without_a_kind_is_no_ffn():
    assert not isinstance(nn.Linear(2, 2), FFN)
    assert math.isfinite(ffn_flops_per_token(ModelConfig()))
