"""`lory replicate` end to end in seconds: six small runs and a report whose numbers come from them."""

import csv

import pytest

from conftest import make_corpus
from lory_lightning.replicate import RUNS, replicate


def test_replicate_smoke(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=40)]
    report = tmp_path / "REPLICATION.md"
    log = tmp_path / "log.md"
    log.write_text("| probe | change | val ppl |\n|---|---|---:|\n| p1 | lr 1e-3 | 123.4 |\n")
    result = replicate(str(tmp_path / "study"), steps=4, report=str(report), inputs=inputs, seq_len=32, log=str(log),
                       model=dict(segment_len=8, n_layer=2, n_head=2, dim=32, hidden_dim=48, num_experts=4),
                       data=dict(vocab_size=300, batch_size=4, prepare_args={"val_fraction": 0.1,
                                                                             "sequences_per_shard": 8}))
    text = report.read_text()
    assert set(result["results"]) == set(RUNS)
    for name in RUNS:
        assert f"| {name} |" in text and f"configs/{name}.yaml" in text
    # the table's numbers are the runs' last validation
    with open(tmp_path / "study" / "runs" / "lory-similarity" / "version_0" / "metrics.csv") as f:
        last = [r for r in csv.DictReader(f) if r.get("val/ppl")][-1]
    assert f"{float(last['val/ppl']):.2f}" in text
    assert len(result["claims"]) == 3  # the layer claim needs 3+ layers
    verdicts = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(verdicts) == 3 and all(v.startswith(("- **held**", "- **did not hold**")) for v in verdicts)
    assert (tmp_path / "replication-figures" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "Every run: 2 layers, d 32, FFN 48, Lory with 4 experts and segments of 8 in sequences of 32; " \
           "4 steps of 4 sequences" in text
    assert "## Investigation log" in text and "| p1 | lr 1e-3 | 123.4 |" in text


def test_replicate_refuses_a_missing_log_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="--log .*nope.md"):
        replicate(str(tmp_path / "study"), steps=4, report=str(tmp_path / "R.md"), log=str(tmp_path / "nope.md"))
    assert not (tmp_path / "study").exists()


def _result(ppl, mi=None):
    domains = ["a", "b"]
    return {"ppl": dict(zip(domains, ppl)) | {"all": sum(ppl) / 2}, "mi": mi}


def test_claims_are_judged_from_the_numbers_they_print():
    from lory_lightning.replicate import claims

    res = {"dense-similarity": _result([110.0, 220.0]), "lory-similarity": _result([100.0, 200.0], [0.1, 0.2, 0.3, 0.5]),
           "dense-random": _result([105.0, 210.0]), "lory-random": _result([100.0, 200.0]),
           "expert-choice": _result([98.0, 196.0]), "segment-expert-choice": _result([120.0, 240.0])}
    held = claims(res, ["a", "b"])
    assert [ok for _, ok, _ in held] == [True, True, True, True]
    assert "+10.0% (similarity) against +5.0% (random)" in held[1][2]
    assert "per layer 0.100 / 0.200 / 0.300 / 0.500 nats: layer 0 0.100, upper half mean 0.400" in held[2][2]
    assert "token EC overall ppl 147.00 against Lory 150.00 (-2.0%, token EC better)" in held[3][2]

    # Lory loses one domain; random order gains more; the lowest layer specializes most; token EC far better
    res["lory-similarity"] = _result([100.0, 221.0], [0.5, 0.1, 0.1, 0.1])
    res["expert-choice"] = _result([90.0, 150.0])
    held = claims(res, ["a", "b"])
    assert [ok for _, ok, _ in held] == [False, False, False, False]
    assert held[0][2] == "not better on: b"
