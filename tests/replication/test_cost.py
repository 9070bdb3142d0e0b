"""The equal-compute arm's measurement: training steps timed side by side in one process."""

import pytest

from lory_lightning.model import ModelConfig
from lory_lightning.replication.cost import interleaved_medians, step_time_ratio

SMALL = dict(vocab_size=97, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16, hidden_dim=24, num_experts=4)


def test_interleaved_medians_call_each_function_in_turn():
    calls = []
    med = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4 and set(med) == {"a", "b"} and all(v >= 0 for v in med.values())


def test_step_time_ratio_reports_both_steps_and_refuses_no_rounds():
    lory = ModelConfig(ffn="lory", **SMALL)
    out = step_time_ratio(lory, lory.replace(ffn="dense"), batch_size=2, rounds=3)
    assert set(out) == {"ratio", "ms", "reference_ms", "rounds", "threads", "batch_size"}
    assert out["ms"] > 0 and out["reference_ms"] > 0 and out["rounds"] == 3
    assert out["ratio"] == pytest.approx(out["ms"] / out["reference_ms"], rel=0.02)  # rounded to 4 digits, ms to 2
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        step_time_ratio(lory, lory, 2, rounds=0)
