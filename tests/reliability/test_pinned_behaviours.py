"""Behaviours that 12 surviving mutants of the data, training and checkpoint code showed no test pinned.

Each test names the mutant it kills (RELIABILITY.md, mutation testing).
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_corpus
from lory_lightning.data.shards import ShardReader
from lory_lightning.data.stream import TrainStream
from lory_lightning.data.manifest import load_manifest
from lory_lightning.data.ordering import greedy_path
from lory_lightning.data.prepare import PrepareConfig, prepare
from lory_lightning.metrics import DomainPerplexity
from lory_lightning.model import ModelConfig
from lory_lightning.training import TrainingConfig
from lory_lightning.callbacks.guard import NonFiniteError, NonFiniteGuard
from lory_lightning.module import LoryLM

CFG = ModelConfig(vocab_size=64, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16, hidden_dim=24,
                  num_experts=4)


def test_block_shuffle_breaks_shard_order(small_data):
    # Mutant: a block hands its sequences back in shard order (all asserts on sets passed).
    manifest = load_manifest(small_data)
    shards = manifest["splits"]["train"]["shards"]
    n = manifest["splits"]["train"]["sequences"]
    stream = TrainStream(shards, 0, 1, seed=1, shuffle_block=4, reader=ShardReader(str(small_data))).samples(0, 1)
    keys = [next(stream)["key"] for _ in range(n)]
    plain = [s["key"] for e in TrainStream(shards, 0, 1, seed=1, shuffle_block=4).shards_for(0, 0, 1)
             for s in ShardReader(str(small_data)).read(e)]
    position = {k: i for i, k in enumerate(plain)}
    neighbours = np.mean([abs(position[a] - position[b]) == 1 for a, b in zip(keys, keys[1:])])
    assert neighbours < 0.3  # in shard order it would be ~1.0
    assert sorted(keys) == sorted(plain)  # and a pass is still every sequence once


def test_an_end_of_document_id_other_than_zero_separates_documents(tmp_path):
    # Mutant: packing writes id 0 between documents whatever the tokenizer's end-of-document id is.
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<unk>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((json.loads(line)["text"] for p in inputs for line in open(p)), trainer=trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    assert tok.token_to_id("<|endoftext|>") == 2
    out = tmp_path / "o"
    manifest = prepare(PrepareConfig(output=str(out), inputs=inputs, tokenizer=str(tmp_path / "tokenizer.json"),
                                     seq_len=64, sequences_per_shard=8, val_fraction=0.1), quiet=True)
    assert manifest["eod_id"] == 2
    from lory_lightning.data.shards import ShardReader

    seen = 0
    reader = ShardReader(str(out))
    for sample in (s for entry in manifest["splits"]["train"]["shards"] for s in reader.read(entry)):
        for _, start in sample["meta"]["documents"][1:]:  # every document after the first in a sequence
            if 0 < start <= 64:
                assert sample["tokens"][start - 1] == 2  # ... follows an end-of-document token
                seen += 1
        assert not (sample["tokens"] == 0).any()  # <pad> never appears
    assert seen > 20


def test_greedy_path_steps_to_the_most_similar_unvisited_neighbour():
    # Mutant: the path takes the least similar neighbour (neighbours come most similar first).
    nbrs = np.array([[2, 1], [0, 2], [0, 1], [1, 2]])  # in-degrees 2, 3, 3, 0: the walk starts at 3
    assert greedy_path(nbrs).tolist() == [3, 1, 0, 2]


def test_lr_warmup_is_sized_by_the_optimizer_setting_not_the_dense_warmup():
    # Mutant: the linear warmup length taken from dense_warmup instead of optim.warmup_fraction.
    from lory_lightning.optim import OptimConfig

    lm = LoryLM(arch=CFG, optim=OptimConfig(lr=1.0, warmup_fraction=0.5), training=TrainingConfig(dense_warmup=0.1))
    lm._trainer = SimpleNamespace(max_steps=20, precision="32-true")
    schedule = lm.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(12):
        rates.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()
        schedule.step()
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # 10 warmup steps (50% of 20)
    assert rates[10] == pytest.approx(1.0)


def test_per_domain_sums_are_summed_across_ranks_not_averaged():
    # Mutant: the NLL sums reduced with a mean over ranks (2-process perplexity 2.52 instead of 6.33).
    g = torch.Generator().manual_seed(0)
    nll = [torch.rand(3, 8, generator=g) * 3 for _ in range(2)]
    dom = [torch.randint(0, 2, (3, 8), generator=g) for _ in range(2)]
    ranks = [DomainPerplexity(2) for _ in range(2)]
    for m, x, d in zip(ranks, nll, dom):
        m.update(x, d)
    other = [ranks[1].nll_sum.clone(), ranks[1].count.clone()]
    ranks[0].sync(dist_sync_fn=lambda t, group=None: [t, other.pop(0)], distributed_available=lambda: True)
    both = DomainPerplexity(2)
    for x, d in zip(nll, dom):
        both.update(x, d)
    expected = DomainPerplexity.compute(both)
    got = DomainPerplexity.compute(ranks[0])  # the class's compute: the synced states as they are
    torch.testing.assert_close(got["per_domain"], expected["per_domain"])
    torch.testing.assert_close(got["all"], expected["all"])


def _guard_step(loss, grad):
    """One NonFiniteGuard check of a module whose every gradient is ``grad`` and whose loss is ``loss``;
    returns the logged gradient norm."""
    lm = LoryLM(arch=CFG)
    for p in lm.parameters():
        p.grad = torch.full_like(p, grad)
    lm.last_loss = torch.tensor(loss)
    logged = {}
    lm.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    NonFiniteGuard().on_before_optimizer_step(SimpleNamespace(world_size=1, global_step=3), lm, None)
    return logged["train/grad_norm"]


def test_the_nonfinite_guard_reads_the_loss_as_well_as_the_gradient():
    # Mutant: only the gradient norm is checked; a non-finite loss with finite gradients passed.
    with pytest.raises(NonFiniteError, match="non-finite loss at step 3"):
        _guard_step(float("inf"), 0.1)
    with pytest.raises(NonFiniteError, match="non-finite gradient norm at step 3"):
        _guard_step(1.0, float("nan"))
    # finite: nothing happens, and the logged norm is the global one (every gradient entry is 0.1)
    n = sum(p.numel() for p in LoryLM(arch=CFG).parameters())
    assert _guard_step(1.0, 0.1) == pytest.approx(0.1 * n ** 0.5, rel=1e-5)


def test_upcycling_happens_at_the_first_step_after_the_dense_warmup():
    # Mutant: upcycling one step late (global_step > upcycle_step instead of >=).
    lm = LoryLM(arch=CFG, training=TrainingConfig(dense_warmup=0.25))
    opt = torch.optim.AdamW(lm.parameters())
    lm._trainer = SimpleNamespace(max_steps=8, global_step=1, optimizers=[opt])
    lm.on_train_batch_start(None, 0)
    assert lm.in_dense_phase()  # step 1 of the 2-step warmup
    lm._trainer.global_step = 2
    lm.on_train_batch_start(None, 0)
    assert not lm.in_dense_phase()  # step 2 trains the experts


def test_fit_writes_checkpoints_through_the_atomic_writer(small_data, tmp_path, monkeypatch):
    # Mutant: fit saves with Lightning's plain writer (a crash mid-write leaves a torn last.ckpt).
    import lory_lightning.lightning_cli as io
    from lory_lightning.cli import main
    from test_cli_lightning import small_config

    written, real = [], io.save_atomically
    monkeypatch.setattr(io, "save_atomically", lambda ckpt, path: (written.append(str(path)), real(ckpt, path)))
    assert main(["fit", "--config", str(small_config(tmp_path, small_data)), "--trainer.max_steps", "8"]) == 0
    assert any(p.endswith("last.ckpt") for p in written) and any("step=8" in p or "last" in p for p in written)


def test_a_remote_checkpoint_is_loaded_weights_only_whatever_the_caller_asks(tmp_path):
    # Mutant: remote (fsspec) paths loaded with the caller's weights_only, which may be False.
    import fsspec

    from lory_lightning.lightning_cli import SafeCheckpointIO

    ran = []

    class Payload:
        def __reduce__(self):
            return (ran.append, ("ran",))

    with fsspec.open("memory://evil.ckpt", "wb") as f:
        torch.save({"state_dict": {}, "payload": Payload()}, f)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        SafeCheckpointIO().load_checkpoint("memory://evil.ckpt", weights_only=False)
    assert ran == []
