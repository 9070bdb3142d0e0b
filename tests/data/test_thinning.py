"""Thinning (data/thinning.py) and `lory prepare --keep_fraction` end to end."""

import json

import numpy as np
import pytest

from conftest import make_corpus
from lory_lightning.cli import main
from lory_lightning.data.thinning import keep_fractions, thin, uniform_keys

SMALL = ["--seq_len", "64", "--vocab_size", "400", "--sequences_per_shard", "8", "--val_fraction", "0.1", "--quiet"]


def test_keys_are_seeded_uniform_and_depend_on_the_id_alone():
    ids = np.arange(200_000)
    keys = uniform_keys(ids, 3)
    assert keys.dtype == np.float64 and keys.min() >= 0.0 and keys.max() < 1.0
    # uniform: each tenth of [0, 1) holds a tenth of the keys within 4 standard deviations (binomial)
    counts = np.bincount((keys * 10).astype(int), minlength=10)
    assert np.all(np.abs(counts - 20_000) < 4 * np.sqrt(200_000 * 0.1 * 0.9))
    assert np.array_equal(uniform_keys(ids[::-1], 3), keys[::-1])  # a key does not depend on its neighbours
    assert np.array_equal(uniform_keys(ids[5:9], 3), keys[5:9])
    assert abs(np.corrcoef(keys, uniform_keys(ids, 4))[0, 1]) < 0.01  # another seed, other keys
    assert abs(np.corrcoef(keys[:-1], keys[1:])[0, 1]) < 0.01  # consecutive ids are not alike


def test_thin_keeps_each_domain_s_share():
    rng = np.random.default_rng(0)
    ids, domains = np.arange(100_000), rng.integers(0, 3, 100_000)
    keep = np.array([1.0, 0.25, 0.6])
    kept = thin(ids, domains, keep, seed=0)
    assert kept[domains == 0].all()  # 1.0 keeps every document
    for d in (1, 2):
        n = (domains == d).sum()
        assert abs(kept[domains == d].mean() - keep[d]) < 4 * np.sqrt(keep[d] * (1 - keep[d]) / n)
    # the documents kept at a smaller share are among those kept at a larger one (the same keys)
    assert not (thin(ids, domains, np.array([1.0, 0.2, 0.6]), 0) & ~kept).any()
    # any split of the documents into tasks keeps the same ones
    halves = np.concatenate([thin(ids[:40_000], domains[:40_000], keep, 0), thin(ids[40_000:], domains[40_000:], keep, 0)])
    assert np.array_equal(halves, kept)


def test_keep_fractions_name_the_unknown_domain():
    assert keep_fractions({"law": 0.5}, ["cooking", "law"]).tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match=r"\['lwa'\].*cooking, law"):
        keep_fractions({"lwa": 0.5}, ["cooking", "law"])


def test_a_share_outside_0_1_is_refused():
    from lory_lightning.data.prepare import PrepareConfig

    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"keep_fraction\['law'\].*\(0, 1\]"):
            PrepareConfig(output="x", keep_fraction={"law": bad})


def test_prepare_thins_one_domain_with_the_same_tokenizer(tmp_path, capsys):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=60)]
    assert main(["prepare", "--output", str(tmp_path / "full"), "--inputs", *inputs, *SMALL]) == 0
    assert main(["prepare", "--output", str(tmp_path / "thin"), "--inputs", *inputs, *SMALL,
                 "--keep_fraction", '{"space": 0.5}']) == 0
    full, thinned = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("full", "thin"))
    # fit before thinning: the same tokenizer, so perplexities on the two corpora compare
    assert (tmp_path / "full" / "tokenizer.json").read_bytes() == (tmp_path / "thin" / "tokenizer.json").read_bytes()
    a, b = full["counts_by_domain"], thinned["counts_by_domain"]
    for name in ("cooking", "law"):  # untouched domains are untouched
        assert a[name] == b[name] and b[name]["train_documents_thinned"] == 0
    space = b["space"]
    assert 0 < space["train_documents_thinned"] < a["space"]["train_documents"]
    assert space["train_documents"] + space["train_documents_thinned"] == a["space"]["train_documents"]
    assert space["train_tokens"] + space["train_tokens_thinned"] == a["space"]["train_tokens"]
    assert space["val_documents"] == a["space"]["val_documents"]  # validation is never thinned
    assert thinned["config"]["keep_fraction"] == {"space": 0.5}
    # an unknown domain is named, with the corpus's domains
    assert main(["prepare", "--output", str(tmp_path / "bad"), "--inputs", *inputs, *SMALL,
                 "--keep_fraction", '{"spaec": 0.5}']) != 0
    assert "['spaec']" in capsys.readouterr().err
