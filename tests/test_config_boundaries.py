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
    LoryLM(arch=dense)  # no router losses, no warmup: a dense model is fine
    LoryLM(arch=TINY, training=TrainingConfig(load_balance_coef=0.01, z_loss_coef=0.001, dense_warmup=0.1))
    for coefs in (dict(load_balance_coef=0.01), dict(z_loss_coef=0.001)):
        with pytest.raises(ValueError, match=r"^router losses \(model.training.load_balance_coef, z_loss_coef\) "
                                             "need routed experts, not ffn: dense$"):
            LoryLM(arch=dense, training=TrainingConfig(**coefs))
    with pytest.raises(ValueError, match="^model.training.dense_warmup needs model.arch.ffn: lory or lory_prefix, "
                                         "got 'topk'"):
        LoryLM(arch=TINY.replace(ffn="topk"), training=TrainingConfig(dense_warmup=0.1))


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


def test_manifest_errors_are_exact(tmp_path):
    from lory_lightning.data.manifest import ManifestError, check_manifest

    path = tmp_path / "data" / "manifest.json"
    fix = f"the manifest was edited or damaged: rerun `lory prepare --output {tmp_path / 'data'} --overwrite`"
    with pytest.raises(ManifestError) as err:
        check_manifest([], path)
    assert str(err.value) == f"{path}: key '(top level)' is a list, not a dict; {fix}"
    with pytest.raises(ManifestError) as err:
        check_manifest({}, path)
    assert str(err.value) == f"{path}: key 'format_version' is missing; {fix}"


def test_upcycling_errors_and_key_matching_are_exact():
    import torch

    from lory_lightning.model import LoryTransformer
    from lory_lightning.model.upcycle import router_generator, upcycle_state_dict

    dense = LoryTransformer(TINY.replace(ffn="dense")).state_dict()
    with pytest.raises(ValueError) as err:
        upcycle_state_dict(dense, TINY.replace(ffn="dense"))
    assert str(err.value) == "upcycling targets a routed config (ffn='lory' or a baseline), got ffn='dense'"
    with pytest.raises(ValueError) as err:
        upcycle_state_dict({"tok_emb.weight": dense["tok_emb.weight"]}, TINY)
    assert str(err.value) == "no dense FFN weights (*.ffn.w_gate) found: is this a dense model's state dict?"
    # only *.ffn.w_* are expanded into experts; a matrix of that name elsewhere is copied as it is
    odd = {**dense, "blocks.0.attn.w_gate": torch.ones(3, 3)}
    out = upcycle_state_dict(odd, TINY, torch.Generator().manual_seed(0))
    assert out["blocks.0.attn.w_gate"].shape == (3, 3) and "blocks.0.attn.router.weight" not in out
    assert out["blocks.0.ffn.w_up"].shape == (2, 16, 16) and out["blocks.0.ffn.router.weight"].shape == (2, 16)
    assert not out["blocks.0.ffn.dense_phase"]
    # fresh routers: the run's seed plus the step, as documented
    torch.manual_seed(1234)
    assert router_generator(7).initial_seed() == 1234 + 7


def test_the_guard_decides_on_the_flag_summed_over_ranks():
    import torch
    from types import SimpleNamespace

    from lory_lightning.callbacks.guard import NonFiniteError

    lm = LoryLM(arch=TINY)
    for p in lm.parameters():
        p.grad = torch.full_like(p, 0.1)
    lm.last_loss = torch.tensor(1.0)  # finite here: another rank saw a non-finite value
    lm.log = lambda *a, **k: None
    other_rank_bad = SimpleNamespace(world_size=2, global_step=4,
                                     strategy=SimpleNamespace(reduce=lambda t, reduce_op: t + 1.0))
    guard = NonFiniteGuard("skip")
    guard.on_before_optimizer_step(other_rank_bad, lm, None)
    assert guard.skipped_steps == 1 and all(p.grad is None for p in lm.parameters())
    for p in lm.parameters():
        p.grad = torch.full_like(p, 0.1)
    with pytest.raises(NonFiniteError) as err:
        NonFiniteGuard("stop").on_before_optimizer_step(other_rank_bad, lm, None)
    assert str(err.value).startswith("non-finite gradient norm at step 4 (loss 1.0, grad norm ")
    assert str(err.value).endswith(") on some rank: stopping. Set model.training.nonfinite: skip to skip such "
                                   "steps instead")
    every_rank_fine = SimpleNamespace(world_size=2, global_step=4, strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    guard.on_before_optimizer_step(every_rank_fine, lm, None)
    assert guard.skipped_steps == 1 and all(p.grad is not None for p in lm.parameters())


def test_a_cluster_larger_than_twice_k_is_found_whole():
    # 13 near-copies with k = 2: every member's 2 neighbours are copies, so the index is asked again
    # with k doubled until a neighbour below the threshold appears; each must then list all 12 others.
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    cluster = base + 1e-3 * rng.normal(size=(13, 8))
    far = rng.normal(size=(3, 8))
    emb = np.vstack([cluster, far]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    params = KnnParams(k=2, n_trees=20, seed=0)
    nbrs, sims = knn(emb, params)
    extra = close_beyond_k(emb, nbrs, sims, threshold=0.99, params=params)
    assert sorted(extra) == list(range(13))
    for i in range(13):
        assert sorted(extra[i].tolist()) == [j for j in range(13) if j != i]
    drop = near_duplicates(nbrs, sims, 0.99, extra)
    assert drop.tolist() == [False] + [True] * 12 + [False] * 3


def test_dedup_on_one_sided_neighbour_lists():
    # kNN lists need not be symmetric: a document is dropped when it lists a kept earlier document
    # above the threshold, even if that one does not list it; dropped documents cause no drop; the
    # loop goes on past a dropped document.
    inf = -np.inf
    nbrs = np.array([[4, -1], [0, -1], [-1, -1], [1, 2], [0, -1], [2, -1]])
    sims = np.array([[0.999, inf], [0.995, inf], [inf, inf], [0.999, 0.995], [0.999, inf], [0.999, inf]])
    assert near_duplicates(nbrs, sims, 0.99).tolist() == [False, True, False, True, True, True]
    assert near_duplicates(nbrs, sims, 0.999).tolist() == [False] * 6  # strictly above the threshold


def test_fresh_routers_come_from_the_given_generator_alone():
    import torch

    from lory_lightning.model import LoryTransformer
    from lory_lightning.model.upcycle import start_dense_phase, upcycle_in_place, upcycle_state_dict

    dense = LoryTransformer(TINY.replace(ffn="dense")).state_dict()
    routers = []
    for global_seed in (1, 2):  # the global RNG differs; the generator's seed does not
        torch.manual_seed(global_seed)
        out = upcycle_state_dict(dense, TINY, torch.Generator().manual_seed(5))
        routers.append(out["blocks.0.ffn.router.weight"])
    assert torch.equal(routers[0], routers[1])
    in_place = []
    for global_seed in (1, 2):
        torch.manual_seed(0)
        model = LoryTransformer(TINY)
        start_dense_phase(model)
        torch.manual_seed(global_seed)
        upcycle_in_place(model, torch.Generator().manual_seed(5))
        in_place.append(model.moe_layers()[0].router.weight.detach().clone())
    assert torch.equal(in_place[0], in_place[1])


def test_the_guard_counts_every_skipped_step_and_logs_the_count():
    import torch
    from types import SimpleNamespace

    lm = LoryLM(arch=TINY)
    logged = {}
    lm.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    guard = NonFiniteGuard("skip")
    trainer = SimpleNamespace(world_size=1, global_step=0)
    for _ in range(3):
        for p in lm.parameters():
            p.grad = torch.full_like(p, float("nan"))
        lm.last_loss = torch.tensor(1.0)
        guard.on_before_optimizer_step(trainer, lm, None)
    guard.on_train_batch_end(trainer, lm, None, None, 0)
    assert guard.skipped_steps == 3 and logged["train/skipped_steps"] == 3.0


def test_knn_settings_at_their_bounds():
    KnnParams(k=1, n_trees=1)  # one neighbour from one tree is a valid (if rough) search
    for bad in (dict(k=0), dict(n_trees=0)):
        with pytest.raises(ValueError):
            KnnParams(**bad)


def test_packing_at_its_bounds():
    from lory_lightning.data.packing import num_sequences

    assert num_sequences(5, 1) == (4, 0)  # sequences of one token: every token but the last is an input
    assert num_sequences(1, 1) == (0, 1)  # one token is no (input, target) pair
    assert num_sequences(0, 4) == (0, 0)
    with pytest.raises(ValueError) as err:
        num_sequences(10, 0)
    assert str(err.value) == "seq_len must be >= 1, got 0"


def test_the_unigram_baseline_sums_every_document_of_a_domain():
    from lory_lightning.data.stats import unigram_counts, unigram_log_probs, unigram_ppl

    tokens = np.array([1, 2, 1, 3, 2], dtype=np.uint16)  # eval docs [1, 2], [1], [3, 2]: domains 0, 0, 1
    offsets, lengths = np.array([0, 2, 3]), np.array([2, 1, 2])
    counts = unigram_counts(tokens, offsets, lengths, np.array([0, 1, 2]), 4, 0)
    assert counts.dtype == np.int64 and counts.tolist() == [1 + 3, 1 + 2, 1 + 2, 1 + 1]
    logp = unigram_log_probs(counts)
    assert logp.dtype == np.float64
    ppl = unigram_ppl(counts, tokens, offsets, lengths, np.array([0, 1, 2]), np.array([0, 0, 1]), 0)
    nll0 = -(logp[1] + logp[2] + logp[0] + logp[1] + logp[0])  # both domain-0 documents, each with its eod
    nll1 = -(logp[3] + logp[2] + logp[0])
    assert ppl == {0: pytest.approx(np.exp(nll0 / 5)), 1: pytest.approx(np.exp(nll1 / 3))}


def test_nonfinite_skip_is_accepted_and_the_schedule_decays_over_one_step():
    from lory_lightning.optim import lr_multiplier

    assert TrainingConfig(nonfinite="skip").nonfinite == "skip"
    # 3 steps, 2 of warmup: one decay step, from 1 at step 2 to the floor at step 3
    assert lr_multiplier(2, 3, 2, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(3, 3, 2, 0.1) == pytest.approx(0.1)


def test_domain_perplexity_of_one_token_and_of_empty_domains():
    import math

    import torch

    from lory_lightning.metrics import DomainPerplexity, perplexity_metrics

    metric = DomainPerplexity(3)
    assert metric.num_domains == 3
    metric.update(torch.tensor([[2.0]]), torch.tensor([[1]]))  # one token, of domain 1
    out = perplexity_metrics(metric, ["a", "b", "c"])
    assert set(out) == {"val/b/ppl", "val/ppl"}  # a and c had no token: left out, domain b with 1 is in
    assert out["val/ppl"].item() == pytest.approx(math.exp(2.0))
    assert out["val/b/ppl"].item() == pytest.approx(math.exp(2.0))


def test_the_gradient_norm_of_a_module_without_gradients_is_a_zero_scalar():
    import torch

    from lory_lightning.callbacks.guard import grad_norm

    norm = grad_norm(torch.nn.Linear(2, 2))
    assert norm.shape == () and norm.item() == 0.0
    layer = torch.nn.Linear(2, 2).half()  # a bf16/fp16 model's gradients: the norm is taken in fp32
    layer.weight.grad = torch.full((2, 2), 300.0, dtype=torch.float16)  # squares overflow fp16 (max 65504)
    assert grad_norm(layer).dtype == torch.float32 and grad_norm(layer).item() == pytest.approx(600.0)


def test_the_adamw_implementation_follows_the_precision():
    assert OptimConfig().adamw_kwargs("32-true") == {"fused": True}
    # Lightning refuses gradient clipping with a fused optimizer under mixed precision
    assert OptimConfig().adamw_kwargs("bf16-mixed") == {"foreach": True}
    assert OptimConfig(implementation="fused").adamw_kwargs("bf16-mixed") == {"fused": True}
    assert OptimConfig(implementation="for-loop").adamw_kwargs() == {"foreach": False, "fused": False}
    with pytest.raises(ValueError) as err:
        OptimConfig(implementation="apex")
    assert str(err.value) == "optim.implementation must be one of auto, fused, foreach, for-loop, got 'apex'"
