"""REPLICATION.md from crafted result files: the verdicts follow the intervals, the tables print the
files' numbers, and the same files give the same bytes."""

import json
import math

import pytest

from lory_lightning.replication.report import Study, claims, load_results, write_report
from lory_lightning.replication.study import plan, write_result

DOMAINS = ["a", "b"]
SEEDS = [0, 1, 2, 3, 4]


def _result(setting, seed, lp, held_lp, mi=None, ffn="dense"):
    """A result file whose log perplexities are ``lp`` (per domain) and ``held_lp`` (held-out)."""
    sums = lambda d: {k: {"nll_sum": v * 1000.0, "tokens": 1000} for k, v in d.items()}  # noqa: E731
    return {"key": f"{setting}-seed{seed}", "setting": setting, "seed": seed, "fingerprint": "f" * 64,
            "validation": sums(lp), "heldout": sums(held_lp), "validation_step": 400,
            "loss": [[0, 9.0], [10, 8.0 - 0.01 * seed]], "utilization": [[10, 20.0]] if "lory" in setting else [],
            "mutual_information": mi, "mean_weight": [[[0.5, 0.5]] * 2] * len(mi) if mi else None,
            "near_duplicates_dropped": 12 if "dedup" in setting else 3, "setup": f"{ffn} setup.", "ffn": ffn, "wall_s": 60.0,
            "cpu_s": 58.0, "threads": 1, "commit": "abc123"}


def crafted(tmp_path, lory_gain=0.03, order_effect=0.0):
    """Five seeds: Lory lower than dense by ``lory_gain`` (log ppl) on every domain with a small
    seed-dependent wobble; similarity order moves both models by ``order_effect``; MI rises with depth."""
    folder = tmp_path / "results"
    for run in plan(SEEDS):
        s, wobble = run.seed, 0.002 * ((run.seed * 7) % 5 - 2)
        base = 5.0 + 0.05 * s  # seeds differ a lot in absolute terms; the pairs share it
        lp = base - (lory_gain + wobble if run.ffn == "lory" else 0.0)
        lp += order_effect if "similarity" in run.setting else 0.0
        lp += {"expert_choice": 0.01, "segment_expert_choice": 0.2}.get(run.ffn, 0.0)
        mi = [0.1, 0.2, 0.3 + 0.01 * s, 0.4] if run.ffn == "lory" else None
        if run.setting == "lory-similarity-8-layers":
            mi = [0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
        write_result(folder / f"{run.key}.json",
                     _result(run.setting, s, {"a": lp, "b": lp + 0.5}, {"q": lp + 1.0}, mi, run.ffn))
    return folder


def test_claims_follow_the_intervals(tmp_path):
    st = Study(load_results(crafted(tmp_path)))
    held = {c: (v, e) for c, v, e in claims(st)}
    lory = held["Lory 8E has lower perplexity than the parameter-matched dense model (similarity order, all "
                "validation tokens)"]
    # per-seed differences: -3% plus wobbles 0.002 * [-2, 0, 2, -1, 1] * 100 (seeds 0..4: (7s % 5) - 2)
    diffs = [-3.0 - 0.2 * w for w in (-2, 0, 2, -1, 1)]
    assert lory[0] == "holds" and lory[1].startswith(f"{sum(diffs) / 5:+.2f}% [") and lory[1].endswith("5 seeds")
    assert held["... on every training domain"][0] == "holds"
    gap = held["The gain over dense is larger with similarity order than with random order (all validation tokens)"]
    assert gap[0] == "not shown"  # the same gain with either order: the interval straddles zero
    assert held["Similarity order gives lower perplexity than random order: dense"][0] == "not shown"
    spec = [v for c, v in held.items() if c.startswith("Experts specialize")][0]
    assert spec[0] == "holds" and "nats" in spec[1]
    ec = [v for c, v in held.items() if c.startswith("Lory beats segment-level")][0]
    assert ec[0] == "seen at one seed" and "Lory lower on 2/2 domains" in ec[1]


def test_a_reversed_order_effect_is_called_reversed(tmp_path):
    st = Study(load_results(crafted(tmp_path, order_effect=0.02)))  # similarity order 2% worse at every seed
    held = {c: v for c, v, _ in claims(st)}
    assert held["Similarity order gives lower perplexity than random order: dense"] == "reversed"
    assert held["Similarity order gives lower perplexity than random order: Lory"] == "reversed"


def test_report_prints_the_files_numbers_and_is_byte_for_byte(tmp_path):
    folder = crafted(tmp_path)
    first = write_report(folder, tmp_path / "one" / "REPLICATION.md", "| probe | x |\n|---|---|\n| p | 1 |")
    second = write_report(folder, tmp_path / "two" / "REPLICATION.md", "| probe | x |\n|---|---|\n| p | 1 |")
    one, two = (tmp_path / "one" / "REPLICATION.md").read_bytes(), (tmp_path / "two" / "REPLICATION.md").read_bytes()
    assert one == two and {**first, "path": None} == {**second, "path": None}
    for name in first["figures"]:
        assert (tmp_path / "one" / "replication-figures" / name).read_bytes() == \
            (tmp_path / "two" / "replication-figures" / name).read_bytes()
    assert set(first["figures"]) == {"loss.png", "utilization.png", "mutual-information.png", "specialization.png"}
    text = one.decode()
    # dense-similarity's pooled perplexity over seeds: exp(mean of (lp_a + lp_b) / 2), lp_a = 5 + 0.05 s
    ppl = [math.exp(5.0 + 0.05 * s + 0.25) for s in SEEDS]
    mean = sum(ppl) / 5
    sd = math.sqrt(sum((p - mean) ** 2 for p in ppl) / 4)
    assert "| dense-similarity | 0 1 2 3 4 | " in text and f"{mean:.2f} ± {sd:.2f}" in text
    assert "All 25 runs of the study (seeds 0 1 2 3 4) are in." in text
    assert "at 8 layers the peak stays" not in text and "the lowest layer specializes most at 8 layers too" in text
    assert "Near-duplicates dropped: 3 at 0.99, 12 at 0.9." in text
    assert "## Investigation log" in text and "| p | 1 |" in text
    assert "Every run: lory setup. " in text  # the setup sentence names Lory's warmup: from a Lory run
    assert "25 runs, 0.4 CPU-hours in all" in text  # 25 x 58 s


def test_partial_study_says_what_is_missing(tmp_path):
    folder = crafted(tmp_path)
    for p in folder.glob("*-seed4.json"):
        p.unlink()
    for p in folder.glob("*-seed3.json"):
        p.unlink()
    write_report(folder, tmp_path / "R.md")
    text = (tmp_path / "R.md").read_text()
    assert "**In progress**: 17 of the 25 runs" in text and "dense-similarity-seed3" in text
    assert "3 seeds" in text


def test_bad_result_files_are_named(tmp_path):
    folder = crafted(tmp_path)
    (folder / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json: not a result file"):
        load_results(folder)
    (folder / "x.json").write_text(json.dumps({**_result("nonsense", 0, {"a": 1.0, "b": 1.0}, {"q": 1.0}),
                                               "key": "x"}))
    with pytest.raises(ValueError, match="x.json: unknown setting 'nonsense'"):
        load_results(folder)
    (folder / "x.json").write_text(json.dumps(_result("dense-similarity", 9, {"a": 1.0, "c": 1.0}, {"q": 1.0})))
    with pytest.raises(ValueError, match="different corpora"):
        Study(load_results(folder))
    with pytest.raises(FileNotFoundError, match="no result folder"):
        load_results(tmp_path / "nowhere")


def test_dedup_verdict_reads_a_move_within_one_sd_as_no_effect():
    from lory_lightning.replication.report import dedup_verdict

    none = dedup_verdict({"dense": (2.03, 3.95), "lory": (-1.0, 2.0)})
    assert "dense, lory: a change within one sd" in none and "no support" in none
    support = dedup_verdict({"dense": (-5.0, 3.95), "lory": (-3.0, 2.0)})
    assert "dense, lory: lower perplexity by more than one sd" in support and "supports" in support
    split = dedup_verdict({"dense": (5.0, 3.95), "lory": (-3.0, 2.0)})
    assert "lory: lower" in split and "dense: higher" in split and "disagree" in split
