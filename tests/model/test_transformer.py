"""The decoder: causality end to end, routing outputs, upcycling exactness, and no Lightning import."""

import subprocess
import sys

import pytest
import torch

from lory_lightning.model import LoryTransformer, ModelConfig, upcycle, upcycle_state_dict

SMALL = ModelConfig(vocab_size=97, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16,
                    hidden_dim=24, num_experts=4, router_init_std=0.5)


def test_forward_shapes_and_routing_per_layer():
    model = LoryTransformer(SMALL)
    out = model(torch.randint(0, 97, (3, 32)))
    assert out.logits.shape == (3, 32, 97)
    assert len(out.routing) == 2
    for r in out.routing:
        assert r.weights.shape == (3, 4, 4) and r.logits.shape == (3, 4, 4)
    dense_out = LoryTransformer(SMALL.replace(ffn="dense"))(torch.randint(0, 97, (3, 32)))
    assert dense_out.routing == (None, None)


@pytest.mark.parametrize("q", [8, 13, 31])
def test_model_is_causal_beyond_first_segment(q):
    model = LoryTransformer(SMALL).double()
    idx = torch.randint(0, 97, (2, 32))
    idx2 = idx.clone()
    idx2[:, q] = (idx2[:, q] + 1) % 97
    a, b = model(idx).logits, model(idx2).logits
    torch.testing.assert_close(a[:, :q], b[:, :q], rtol=0, atol=0)
    assert (a[:, q:] - b[:, q:]).abs().max() > 1e-6


def test_upcycled_model_gives_the_dense_logits():
    dense = LoryTransformer(SMALL.replace(ffn="dense")).double()
    lory = upcycle(dense, num_experts=4, generator=torch.Generator().manual_seed(1))
    assert lory.config.ffn == "lory" and lory.config.num_experts == 4
    idx = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(lory(idx).logits, dense(idx).logits, rtol=0, atol=1e-12)
    # ... and the router is not uniform, so the experts can drift apart.
    assert lory.blocks[0].ffn.router.weight.std() > 0.1
    for name, p in dense.named_parameters():
        if ".ffn." not in name:
            torch.testing.assert_close(lory.get_parameter(name), p, rtol=0, atol=0)


def test_upcycled_model_fp32_close_and_trainable():
    dense = LoryTransformer(SMALL.replace(ffn="dense"))
    lory = upcycle(dense, num_experts=4)
    idx = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(lory(idx).logits, dense(idx).logits, rtol=0, atol=1e-5)
    assert all(p.requires_grad and p.device.type == "cpu" for p in lory.parameters())


def test_upcycle_state_dict_rejects_a_lory_state():
    lory = LoryTransformer(SMALL)
    with pytest.raises(ValueError, match="no dense FFN weights"):
        upcycle_state_dict({k: v for k, v in lory.state_dict().items() if "ffn" not in k}, SMALL)
    with pytest.raises(ValueError, match="takes a dense model"):
        upcycle(lory, 4)


@pytest.mark.parametrize("module", ["lory_lightning.model", "lory_lightning.checkpoint_io"])
def test_model_package_does_not_import_lightning(module):
    # checkpoint_io turns a checkpoint into a model (generate, analyze) without Lightning too
    code = (f"import sys, {module}; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dense_and_lory_built_after_one_seed_share_their_common_parts():
    """model/init.py: the pairing `lory replicate` relies on. Same seed, different FFN shapes: the
    embeddings, every layer's attention and Lory's expert 0 (= the dense FFN) are equal; the other
    experts and the router are not copies; in the dense phase the two models give the same logits."""
    from dataclasses import replace

    from lory_lightning.model.upcycle import start_dense_phase

    torch.manual_seed(3)
    dense = LoryTransformer(replace(SMALL, ffn="dense"))
    torch.manual_seed(3)
    lory = LoryTransformer(SMALL)
    d, m = dense.state_dict(), lory.state_dict()
    shared = [k for k in d if ".ffn." not in k]
    assert len(shared) > 4 and all(torch.equal(d[k], m[k]) for k in shared)
    for i in range(SMALL.n_layer):
        for w in ("w_gate", "w_up", "w_down"):
            assert torch.equal(m[f"blocks.{i}.ffn.{w}"][0], d[f"blocks.{i}.ffn.{w}"])
            assert not torch.equal(m[f"blocks.{i}.ffn.{w}"][1], m[f"blocks.{i}.ffn.{w}"][0])
    assert not torch.equal(m["blocks.0.ffn.router.weight"], m["blocks.1.ffn.router.weight"])
    start_dense_phase(lory)
    idx = torch.randint(0, SMALL.vocab_size, (2, SMALL.seq_len))
    torch.testing.assert_close(lory(idx).logits, dense(idx).logits, rtol=0, atol=1e-6)
    # another seed, another model: the parts are seeded from the global RNG, not fixed
    torch.manual_seed(4)
    assert not torch.equal(LoryTransformer(SMALL).tok_emb.weight, lory.tok_emb.weight)


def test_seeded_init_draws_the_configured_scale_and_skips_meta():
    from lory_lightning.model.init import derive_seed, normal_

    w = torch.empty(256, 256)
    normal_(w, 0.02, derive_seed(1, "x"))
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert derive_seed(1, "x") != derive_seed(1, "y") and derive_seed(1, 0, "qkv") != derive_seed(1, 1, "qkv")
    with torch.device("meta"):
        model = LoryTransformer(SMALL)
    assert model.tok_emb.weight.is_meta
