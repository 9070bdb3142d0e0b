"""`lory prepare` end to end on small corpora: outputs, determinism, bad input, restarts."""

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import webdataset as wds
from tokenizers import Tokenizer

from conftest import make_corpus
from lory_lightning.cli import main
from lory_lightning.data.prepare import run as prepare_mod
from lory_lightning.data.prepare import stage_documents, stage_encode, stage_write
from lory_lightning.data.prepare import PrepareConfig, prepare
from lory_lightning.data.shards import verify_shards
from lory_lightning.data.sources import read_documents

SMALL = dict(seq_len=64, vocab_size=400, sequences_per_shard=8, val_fraction=0.1)


def read_split(folder: Path, manifest: dict, split: str):
    urls = [str(folder / s["name"]) for s in manifest["splits"][split]["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False).decode())


def test_outputs_are_consistent(tmp_path):
    inputs = make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    manifest = prepare(PrepareConfig(output=str(out), inputs=[str(p) for p in inputs], **SMALL), quiet=True)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["splits"] == manifest["splits"]
    assert manifest["domains"] == ["cooking", "space", "law"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".lory-prepare", "manifest.json", "tokenizer.json", "unigram.npy"]
        + [s["name"] for sp in ("train", "val") for s in manifest["splits"][sp]["shards"]])
    assert list(verify_shards(out, manifest["splits"]["train"]["shards"])) == []
    train = read_split(out, manifest, "train")
    assert len(train) == manifest["splits"]["train"]["sequences"] > 10
    assert len({s["__key__"] for s in train}) == len(train)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for s in train:
        assert s["tokens.npy"].shape == (65,) and s["domains.npy"].shape == (65,)
        assert s["domains.npy"].max() < 3
        assert s["tokens.npy"].max() < manifest["vocab_size"]
    # Each sequence is a slice of the path stream: every document it lists sits at its offset,
    # tokenized exactly, followed by the end-of-document token, with its domain on every token.
    docs = list(read_documents(inputs))
    checked = 0
    for s in train:
        tokens, doms = s["tokens.npy"], s["domains.npy"]
        for index, start in s["json"]["documents"]:
            ids = tok.encode(docs[index].text).ids + [0]
            lo, hi = max(start, 0), min(start + len(ids), 65)
            assert tokens[lo:hi].tolist() == ids[lo - start:hi - start]
            assert set(doms[lo:hi].tolist()) == {manifest["domains"].index(docs[index].domain)}
            checked += 1
    assert checked > len(train)
    counts = manifest["counts_by_domain"]
    assert sum(c["train_documents"] + c["val_documents"] for c in counts.values()) == 120
    assert sum(c["val_documents"] for c in counts.values()) > 0  # held out by hash


def test_tokenizer_round_trips_exactly(tmp_path):
    inputs = make_corpus(tmp_path / "in")
    prepare(PrepareConfig(output=str(tmp_path / "o"), inputs=[str(p) for p in inputs], **SMALL), quiet=True)
    tok = Tokenizer.from_file(str(tmp_path / "o" / "tokenizer.json"))
    for text in ["Déjà vu: naïve café ☕ 東京", "def f(x):\n\treturn x ** 2\n", "   spaces   "]:
        assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id("<|endoftext|>") == 0


def test_same_input_gives_byte_identical_output(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    for name in ("a", "b"):
        prepare(PrepareConfig(output=str(tmp_path / name), inputs=inputs, **SMALL), quiet=True)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_similarity_order_keeps_domains_together_random_does_not(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=60)]
    sim = prepare(PrepareConfig(output=str(tmp_path / "s"), inputs=inputs, **SMALL), quiet=True)
    rnd = prepare(PrepareConfig(output=str(tmp_path / "r"), inputs=inputs, order="random", **SMALL), quiet=True)
    assert sim["ordering"]["path_same_domain_fraction"] > 0.9
    assert rnd["ordering"]["path_same_domain_fraction"] < 0.6
    assert sim["splits"]["train"]["documents"] == rnd["splits"]["train"]["documents"]  # same dedup


def test_broken_lines_are_counted_in_the_manifest_and_strict_fails(tmp_path, capsys):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", broken=True)]
    assert main(["prepare", "--output", str(tmp_path / "o"), "--inputs", *inputs, "--seq_len", "64",
                 "--vocab_size", "400", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["skipped"]["by_reason"] == {"malformed_json": 1, "missing_text": 1}
    assert any("space.jsonl:4: malformed_json" in e for e in manifest["skipped"]["first"])
    assert any("space.jsonl:8: missing_text" in e for e in manifest["skipped"]["first"])
    assert sum(c["train_documents"] + c["val_documents"] for c in manifest["counts_by_domain"].values()) == 120
    capsys.readouterr()
    assert main(["prepare", "--output", str(tmp_path / "s"), "--inputs", *inputs, "--strict", "--quiet"]) == 1
    assert "space.jsonl:4: malformed_json" in capsys.readouterr().err


def test_prepared_folder_is_reused_and_a_changed_config_is_refused(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    cfg = PrepareConfig(output=str(tmp_path / "o"), inputs=inputs, **SMALL)
    prepare(cfg, quiet=True)
    stamp = (tmp_path / "o" / "manifest.json").stat().st_mtime_ns
    with mock.patch.object(prepare_mod, "run_stages") as run:
        prepare(cfg, quiet=True)
        run.assert_not_called()
    assert (tmp_path / "o" / "manifest.json").stat().st_mtime_ns == stamp
    changed = PrepareConfig(output=str(tmp_path / "o"), inputs=inputs, **{**SMALL, "seq_len": 32})
    with pytest.raises(FileExistsError, match="another config"):
        prepare(changed, quiet=True)
    assert prepare(changed, quiet=True, overwrite=True)["seq_len"] == 32


def test_a_killed_run_leaves_nothing_that_looks_finished_and_continues_where_it_stopped(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    cfg = PrepareConfig(output=str(tmp_path / "o"), inputs=inputs, **SMALL)
    real, calls = stage_write.write_shard, []

    def dies_midway(path, samples):
        calls.append(path.name)
        if len(calls) == 2:  # the second shard is half written when the run stops
            with open(path.with_name(path.name + ".tmp"), "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
        return real(path, samples)

    with mock.patch.object(stage_write, "write_shard", dies_midway), pytest.raises(KeyboardInterrupt):
        prepare(cfg, quiet=True)
    out = tmp_path / "o"
    assert not (out / "manifest.json").exists() and not (out / "tokenizer.json").exists()
    assert (out / "_work.tmp" / "read" / "000000.npz").is_file()
    reads = []
    real_read = stage_documents.read
    with mock.patch.object(stage_documents, "read", lambda *a: reads.append(a) or real_read(*a)):
        manifest = prepare(cfg, quiet=True)  # continues: the completed stages are not run again
    assert reads == [] and not (out / "_work.tmp").exists()
    assert calls == ["train-00000.tar.gz", "train-00001.tar.gz"]
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert list(verify_shards(out, manifest["splits"]["train"]["shards"])) == []
    # the same bytes as a run never interrupted
    fresh = prepare(PrepareConfig(**{**cfg.__dict__, "output": str(tmp_path / "fresh")}), quiet=True)
    assert fresh["splits"] == manifest["splits"]


def test_given_tokenizer_is_used(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    first = prepare(PrepareConfig(output=str(tmp_path / "a"), inputs=inputs, **SMALL), quiet=True)
    second = prepare(PrepareConfig(output=str(tmp_path / "b"), inputs=inputs,
                                   tokenizer=str(tmp_path / "a" / "tokenizer.json"), **SMALL), quiet=True)
    assert second["vocab_size"] == first["vocab_size"]
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="order must be 'similarity' or 'random'"):
        PrepareConfig(output="x", order="shuffled")
    with pytest.raises(ValueError, match="needs embed_model"):
        PrepareConfig(output="x", embedder="sentence-transformers")
    with pytest.raises(ValueError, match="min_chars"):
        PrepareConfig(output="x", min_chars=0)


def test_shipped_sample_prepares_with_no_inputs(tmp_path, capsys):
    assert main(["prepare", "--output", str(tmp_path / "sample"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "5 domains (books, code, legal, techdocs, wiki)" in out
    manifest = json.loads((tmp_path / "sample" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["sequences"] > 4000
    assert set(manifest["counts_by_domain"]) == {"books", "code", "legal", "techdocs", "wiki"}
    assert all(c["val_documents"] > 10 for c in manifest["counts_by_domain"].values())
    assert manifest["ordering"]["path_same_domain_fraction"] > 0.9
    sample = read_split(tmp_path / "sample", manifest, "val")[0]
    assert sample["tokens.npy"].dtype == np.uint16


@pytest.mark.isolated  # runs `lory prepare` with two worker processes in a child
def test_the_number_of_workers_and_tasks_does_not_change_a_byte(tmp_path):
    import subprocess
    import sys

    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    args = ["--inputs", *inputs, "--seq_len", "64", "--vocab_size", "400", "--sequences_per_shard", "4",
            "--val_fraction", "0.1", "--partition_size", "50", "--quiet"]
    for name, engine in (("one", []), ("many", ["--workers", "2", "--tasks", "3"])):
        done = subprocess.run([sys.executable, "-m", "lory_lightning", "prepare", "--output", str(tmp_path / name),
                               *args, *engine], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "many").iterdir())
    # the training documents, at most 50 a partition
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["ordering"]["partitions"] == 3
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes(), name


def test_the_bpe_is_trained_on_a_seeded_sample_when_the_corpus_is_larger(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    full = prepare(PrepareConfig(output=str(tmp_path / "full"), inputs=inputs, **SMALL), quiet=True)
    everything = prepare(PrepareConfig(output=str(tmp_path / "all"), inputs=inputs, tokenizer_sample=1000, **SMALL),
                         quiet=True)  # more than the documents: all of them, the same BPE
    assert (tmp_path / "full" / "tokenizer.json").read_bytes() == (tmp_path / "all" / "tokenizer.json").read_bytes()
    assert full["splits"] == everything["splits"]
    few = [prepare(PrepareConfig(output=str(tmp_path / f"few{i}"), inputs=inputs, tokenizer_sample=5, **SMALL),
                   quiet=True) for i in range(2)]
    a, b = ((tmp_path / f"few{i}" / "tokenizer.json").read_bytes() for i in range(2))
    assert a == b != (tmp_path / "full" / "tokenizer.json").read_bytes()  # seeded, and from 5 documents only
    assert few[0]["config"]["tokenizer_sample"] == 5
    with pytest.raises(ValueError, match="tokenizer_sample must be >= 1 document, got 0"):
        PrepareConfig(tokenizer_sample=0)


def test_a_run_continued_with_another_task_count_redoes_unfinished_stages_and_gives_the_same_bytes(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    cfg = PrepareConfig(output=str(tmp_path / "o"), inputs=inputs, tasks=3, **SMALL)
    real_encode = stage_encode.encode

    def encode_then_stop(folder, rank, tasks):  # rank 0 of 3 completes, rank 1 is interrupted
        if rank == 1:
            raise KeyboardInterrupt
        return real_encode(folder, rank, tasks)

    with mock.patch.object(stage_encode, "encode", encode_then_stop), pytest.raises(KeyboardInterrupt):
        prepare(cfg, quiet=True)
    assert (tmp_path / "o" / "_work.tmp" / "logs" / "encode-3" / "completions" / "00000").is_file()
    continued = prepare(PrepareConfig(**{**cfg.__dict__, "tasks": 2}), quiet=True)  # rank 0 of 2 is not rank 0 of 3
    fresh = prepare(PrepareConfig(**{**cfg.__dict__, "output": str(tmp_path / "fresh"), "tasks": 1}), quiet=True)
    assert continued["splits"] == fresh["splits"]
