"""Exact boundaries and messages of the validated settings, and the kNN paths with empty neighbour slots
(the survivors of the mutation run, RELIABILITY.md)."""

import json

import numpy as np
import pytest

from lory_lightning.callbacks.guard import NonFiniteGuard
from lory_lightning.data.manifest import load_manifest
from lory_lightning.data.ordering import KnnParams, close_beyond_k, greedy_path, knn, near_duplicates
from lory_lightning.model import ModelConfig
from lory_lightning.module import LoryLM
from lory_lightning.optim import OptimConfig
from lory_lightning.training import TrainingConfig

TINY = ModelConfig(vocab_size=64, seq_len=32, segment_len=8, n_layer=1, n_head=2, dim=16, hidden_dim=16, num_experts=2)


@pytest.mark.parametrize("ok", [dict(betas=(0.0, 0.0)), dict(betas=[0.9, 0.999]), dict(warmup_fraction=0.0),
                                dict(min_lr_ratio=0.0), dict(min_lr_ratio=1.0), dict(weight_decay=0.0)])
def test_optim_settings_at_their_bounds_are_accepted(ok):
    OptimConfig(**ok)


@pytest.mark.parametrize("bad,message", [
    (dict(lr=0.0), "optim.lr must be > 0, got 0.0"),
    (dict(betas=(1.0, 0.9)), r"optim.betas must be two numbers in \[0, 1\), got \(1.0, 0.9\)"),
    (dict(betas=(-0.1, 0.9)), r"optim.betas must be two numbers in \[0, 1\)"),
    (dict(betas=(0.9, 0.9, 0.9)), r"optim.betas must be two numbers in \[0, 1\), got \(0.9, 0.9, 0.9\)"),
    (dict(warmup_fraction=1.0), r"optim.warmup_fraction must be in \[0, 1\), got 1.0"),
    (dict(min_lr_ratio=1.5), r"optim.min_lr_ratio must be in \[0, 1\], got 1.5"),
    (dict(weight_decay=-0.1), "optim.weight_decay must be >= 0, got -0.1"),
])
def test_optim_settings_out_of_bounds_name_the_key(bad, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        OptimConfig(**bad)


def test_training_settings_bounds_and_messages():
    TrainingConfig(dense_warmup=0.0)
    TrainingConfig(dense_warmup=0.999, load_balance_coef=0.0, z_loss_coef=0.0)
    for value in (1.0, -0.01):
        with pytest.raises(ValueError, match=rf"^model.training.dense_warmup is a share of max_steps in \[0, 1\), "
                                             rf"got {value}$"):
            TrainingConfig(dense_warmup=value)
    for name in ("load_balance_coef", "z_loss_coef"):
        with pytest.raises(ValueError, match=f"^model.training.{name} must be >= 0, got -1.0$"):
            TrainingConfig(**{name: -1.0})
    with pytest.raises(ValueError, match="^model.training.upcycle_moments must be 'scaled' or 'copied', got 'reset'$"):
        TrainingConfig(upcycle_moments="reset")
    with pytest.raises(ValueError, match="^model.training.nonfinite must be 'stop' or 'skip', got 'ignore'$"):
        TrainingConfig(nonfinite="ignore")
    assert TrainingConfig().upcycle_step(100) is None
    assert TrainingConfig(dense_warmup=0.05).upcycle_step(100) == 5
    assert TrainingConfig(dense_warmup=0.25).upcycle_step(10) == 2  # rounded half to even, as round() does


def test_training_settings_are_checked_against_the_model():
    dense = TINY.replace(ffn="dense")
    LoryLM(model=dense)  # no router losses, no warmup: a dense model is fine
    LoryLM(model=TINY, training=TrainingConfig(load_balance_coef=0.01, z_loss_coef=0.001, dense_warmup=0.1))
    for coefs in (dict(load_balance_coef=0.01), dict(z_loss_coef=0.001)):
        with pytest.raises(ValueError, match=r"^router losses \(model.training.load_balance_coef, z_loss_coef\) "
                                             "need routed experts, not ffn: dense$"):
            LoryLM(model=dense, training=TrainingConfig(**coefs))
    with pytest.raises(ValueError, match="^model.training.dense_warmup needs model.model.ffn: lory or lory_prefix, "
                                         "got 'topk'"):
        LoryLM(model=TINY.replace(ffn="topk"), training=TrainingConfig(dense_warmup=0.1))


def test_the_guard_refuses_a_bad_policy_and_keeps_its_count_in_checkpoints():
    with pytest.raises(ValueError, match="^nonfinite must be 'stop' or 'skip', got 'drop'$"):
        NonFiniteGuard("drop")
    guard = NonFiniteGuard("skip")
    guard.skipped_steps = 3
    again = NonFiniteGuard("skip")
    again.load_state_dict(guard.state_dict())
    assert guard.state_dict() == {"skipped_steps": 3} and again.skipped_steps == 3
    again.load_state_dict({})
    assert again.skipped_steps == 0


def test_a_boolean_where_the_manifest_wants_a_number_is_refused_with_the_fix(tmp_path):
    from conftest import make_corpus
    from lory_lightning.data.prepare import PrepareConfig, prepare

    out = tmp_path / "data"
    prepare(PrepareConfig(output=str(out), inputs=[str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=10)],
                          seq_len=16, vocab_size=280, sequences_per_shard=8), quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["vocab_size"] = True
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"vocab_size.*a bool, not a int.*rerun `lory prepare --output {out} "
                                         "--overwrite`"):
        load_manifest(out)


def test_neighbour_slots_left_empty_are_skipped_everywhere():
    # 3 documents and k = 4: every row has 2 neighbours and 2 empty slots (-1, -inf).
    emb = np.array([[1.0, 0.0], [0.999, 0.04], [0.0, 1.0]], dtype=np.float32)
    nbrs, sims = knn(emb, KnnParams(k=4, n_trees=5, seed=0))
    assert nbrs.dtype == np.int64 and (nbrs[:, 2:] == -1).all() and np.isneginf(sims[:, 2:]).all()
    assert sorted(nbrs[0, :2].tolist()) == [1, 2] and nbrs[0, 0] == 1  # most similar first
    # rows with empty slots are never "saturated", whatever the threshold
    assert close_beyond_k(emb, nbrs, sims, threshold=-2.0, params=KnnParams(k=4, n_trees=5)) == {}
    drop = near_duplicates(nbrs, sims, threshold=0.99)
    assert drop.tolist() == [False, True, False]  # 1 is a near-copy of 0; -1 slots drop nothing
    # a document after a dropped one is still checked (the loop continues past a drop)
    emb4 = np.array([[1.0, 0.0], [0.9999, 0.01], [0.0, 1.0], [0.01, 0.9999]], dtype=np.float32)
    nbrs4, sims4 = knn(emb4, KnnParams(k=4, n_trees=5, seed=0))
    assert near_duplicates(nbrs4, sims4, threshold=0.99).tolist() == [False, True, False, True]
    order = greedy_path(nbrs, keep=~drop)
    assert sorted(order.tolist()) == [0, 2]
