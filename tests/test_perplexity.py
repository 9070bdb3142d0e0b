"""`lory perplexity`: per-domain perplexity of a checkpoint on raw text, checked against a direct
computation with the model and the checkpoint's tokenizer."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lory_lightning.checkpoint_io import load_model
from lory_lightning.cli import main
from lory_lightning.perplexity import domain_streams, stream_sequences
from test_cli_lightning import small_config


@pytest.fixture(scope="module")
def checkpoint(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ppl")
    cfg = small_config(tmp, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--trainer.val_check_interval", "6"]) == 0
    return tmp / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt"


def test_streams_and_sequences_follow_the_packing_of_prepared_data():
    streams = domain_streams([("a", "x"), ("b", "y"), ("a", "z")], lambda t: [ord(t), ord(t)], eod_id=0)
    assert list(streams) == ["a", "b"]
    assert streams["a"].tolist() == [120, 120, 0, 122, 122, 0]
    seqs = stream_sequences(streams["a"], seq_len=2)  # 6 tokens: windows [0:3], [2:5]; token 5 is left
    assert seqs.tolist() == [[120, 120, 0], [0, 122, 122]]
    assert stream_sequences(streams["b"], seq_len=3).shape == (0, 4)


def test_per_domain_perplexity_equals_the_models_own_nll(checkpoint, tmp_path, capsys):
    # Two held-out "domains" the model never saw, one as jsonl (domain field), one as a .txt folder.
    rng = torch.Generator().manual_seed(0)
    words = "alpha beta gamma delta oven flour court orbit".split()
    docs = [" ".join(words[i] for i in torch.randint(0, len(words), (40,), generator=rng).tolist()) for _ in range(6)]
    (tmp_path / "news.jsonl").write_text("\n".join(json.dumps({"text": t, "domain": "news"}) for t in docs[:3])
                                         + '\n{"text": "cut off\n')
    (tmp_path / "poems").mkdir()
    for i, text in enumerate(docs[3:]):
        (tmp_path / "poems" / f"{i}.txt").write_text(text)
    out = tmp_path / "ppl.json"
    assert main(["perplexity", "--ckpt_path", str(checkpoint), "--inputs", str(tmp_path / "news.jsonl"),
                 str(tmp_path / "poems"), "--batch_size", "3", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "news" in printed and "poems" in printed and "1 documents skipped: {'malformed_json': 1}" in printed
    got = json.loads(out.read_text())

    model, ckpt = load_model(checkpoint)
    tok = Tokenizer.from_str(ckpt["tokenizer"])
    eod = int(ckpt["eod_id"])
    L = model.config.seq_len
    total_nll, total_n = 0.0, 0
    for domain, texts in (("news", docs[:3]), ("poems", docs[3:])):
        stream = [i for t in texts for i in tok.encode(t).ids + [eod]]
        n = (len(stream) - 1) // L
        nll = 0.0
        with torch.no_grad():
            for k in range(n):  # one sequence at a time, log-softmax and gather
                seq = torch.tensor(stream[k * L:k * L + L + 1])
                logp = F.log_softmax(model(seq[None, :-1]).logits[0].double(), dim=-1)
                nll -= logp.gather(1, seq[1:, None]).sum().item()
        entry = got["domains"][domain]
        assert entry["documents"] == 3 and entry["scored"] == n * L and entry["targets"] == len(stream) - 1
        assert entry["ppl"] == pytest.approx(math.exp(nll / (n * L)), rel=1e-5)
        total_nll, total_n = total_nll + nll, total_n + n * L
    assert got["ppl"] == pytest.approx(math.exp(total_nll / total_n), rel=1e-5)
    assert got["skipped"]["by_reason"] == {"malformed_json": 1}


def test_max_sequences_and_bad_inputs(checkpoint, tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "oven flour " * 200}) + "\n")
    out = tmp_path / "p.json"
    assert main(["perplexity", "--ckpt_path", str(checkpoint), "--inputs", str(tmp_path / "x.jsonl"),
                 "--max_sequences", "2", "--output", str(out)]) == 0
    entry = json.loads(out.read_text())["domains"]["x"]
    assert entry["sequences"] == 2 and entry["scored"] == 2 * 32 and entry["targets"] > entry["scored"]
    capsys.readouterr()
    assert main(["perplexity", "--ckpt_path", str(checkpoint), "--inputs", str(tmp_path / "missing")]) == 1
    assert f"{tmp_path / 'missing'}: no such file or folder" in capsys.readouterr().err
    (tmp_path / "tiny.jsonl").write_text(json.dumps({"text": "oven"}) + "\n")
    assert main(["perplexity", "--ckpt_path", str(checkpoint), "--inputs", str(tmp_path / "tiny.jsonl")]) == 0
    assert "tiny: fewer than seq_len + 1 tokens, nothing scored" in capsys.readouterr().out


def test_the_shipped_heldout_domains(checkpoint, capsys):
    """README: `lory perplexity ... --inputs lory_lightning/sample_data/heldout` (as written, sizes shrunk):
    the two held-out domains of the replication study, each scored under its own name, nothing skipped."""
    from pathlib import Path

    heldout = Path(__file__).resolve().parents[1] / "lory_lightning" / "sample_data" / "heldout"
    assert main(["perplexity", "--ckpt_path", str(checkpoint), "--inputs", str(heldout),
                 "--max_sequences", "3"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"quotes", "dictionary", "all"} and "skipped" not in out
    assert rows["quotes"][2] == "172" and rows["dictionary"][2] == "156"  # documents: every passage read
    assert rows["quotes"][3] == "96"  # 3 sequences of 32 tokens scored


def test_heldout_files_are_well_formed():
    import gzip
    from pathlib import Path

    heldout = Path(__file__).resolve().parents[1] / "lory_lightning" / "sample_data" / "heldout"
    for name in ("quotes", "dictionary"):
        with gzip.open(heldout / f"{name}.jsonl.gz", "rt") as f:
            records = [json.loads(line) for line in f]
        assert records and all(r["domain"] == name and r["text"] and r["source"] and r["license"] for r in records)
        assert 290_000 < sum(len(r["text"]) for r in records) < 310_000  # the build's budget
        assert max(len(r["text"]) for r in records) <= 2_000  # passages of at most 2,000 characters


def test_a_lone_surrogate_in_the_inputs_is_skipped_and_counted(checkpoint, tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "' + "oven \\ud800 flour " * 50 + '"}\n' + json.dumps({"text": "oven flour " * 200}) + "\n")
    out = tmp_path / "p.json"
    assert main(["perplexity", "--ckpt_path", str(checkpoint), "--inputs", str(path), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["domains"]["x"]["documents"] == 1
    assert report["skipped"]["by_reason"] == {"bad_unicode": 1} and report["skipped"]["first"][0].startswith(f"{path}:1")
