"""`lory replicate` end to end at a tiny size: every run of the study trains once, keeps a result file,
is not trained again while its fingerprint holds, and `--report` rebuilds the report from the files."""

import json

import pytest
import yaml

from conftest import make_corpus
from lory_lightning.cli import main
from lory_lightning.replication import replicate
from lory_lightning.replication import study
from lory_lightning.replication.study import (
    BASE_CONFIG, DEFAULT_SEEDS, FIRST_SEED, NEAR_COPY_KEEP, PAIRED, Run, file_digests, fingerprint, plan, run_config,
    source_digest, uncommitted_source)

TINY = dict(model=dict(segment_len=8, n_layer=2, n_head=2, dim=32, hidden_dim=48, num_experts=4),
            data=dict(vocab_size=300, batch_size=4, prepare={"val_fraction": 0.1, "sequences_per_shard": 8}))


def test_plan_is_seed_major_with_the_single_runs_last():
    runs = plan([3, 7])
    assert [r.key for r in runs[:4]] == [f"{s}-seed3" for s in PAIRED]
    assert [r.key for r in runs[4:8]] == [f"{s}-seed7" for s in PAIRED]
    assert [r.key for r in runs[8:]] == [f"{s}-seed3" for s in FIRST_SEED]
    with pytest.raises(ValueError, match="repeats a seed"):
        plan([1, 1])
    # a pair shares its prepared data; order, seed and a prepare override each get their own
    assert Run("dense-similarity", 2).data_name == Run("lory-similarity", 2).data_name == "data-similarity-seed2"
    assert Run("lory-similarity-dedup-0.9", 0).data_name == "data-similarity-dedup-threshold-0.9-seed0"


def test_fingerprint_follows_the_config_and_contents_not_the_folders(tmp_path):
    base = yaml.safe_load(BASE_CONFIG.read_text())
    run = Run("lory-similarity", 1)
    one = run_config(base, run, tmp_path / "a", 400, {}, {"seq_len": 512})
    moved = run_config(base, run, tmp_path / "b", 400, {}, {"seq_len": 512})
    inputs = {"x/x.jsonl": "0" * 64}
    assert fingerprint(one, inputs, {}) == fingerprint(moved, inputs, {})
    assert one["seed_everything"] == one["data"]["seed"] == 1 and one["model"]["arch"]["ffn"] == "lory"
    longer = run_config(base, run, tmp_path / "a", 500, {}, {"seq_len": 512})
    assert fingerprint(longer, inputs, {}) != fingerprint(one, inputs, {})
    assert fingerprint(one, {"x/x.jsonl": "1" * 64}, {}) != fingerprint(one, inputs, {})
    dense = run_config(base, Run("dense-similarity", 1), tmp_path / "a", 400, {}, {"seq_len": 512})
    assert dense["model"]["training"]["dense_warmup"] == 0.0 and fingerprint(dense, inputs, {}) != fingerprint(one, inputs, {})
    probe = run_config(base, Run("lory-similarity-8-layers", 0), tmp_path / "a", 400, {}, {"seq_len": 512})
    assert probe["model"]["arch"]["n_layer"] == 8
    # where the files lie does not count, what they hold does
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "d.jsonl").write_text('{"text": "x"}\n')
    assert file_digests([str(tmp_path / "c")]) == {"d/d.jsonl": file_digests([str(tmp_path / "c" / "d.jsonl")])["d/d.jsonl"]}


@pytest.mark.slow  # thirteen trainings and their prepares: about two minutes on 2 cores
def test_replicate_trains_each_run_once_and_the_report_rebuilds_byte_for_byte(tmp_path, capsys):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=40)]
    results, report = tmp_path / "results", tmp_path / "REPLICATION.md"
    log = tmp_path / "log.md"
    log.write_text("| probe | change | val ppl |\n|---|---|---:|\n| p1 | lr 1e-3 | 123.4 |\n")
    # a working copy may have changes here; a clean clone (CI) has none, and the files say which
    kw = dict(seeds=[0, 1], steps=4, inputs=inputs, seq_len=32, log=str(log), allow_dirty=True, **TINY)
    out = replicate(str(tmp_path / "study"), str(results), str(report), **kw)
    assert list(out["runs"].values()) == ["trained"] * 13 and len(list(results.glob("*.json"))) == 13
    res = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    lory, dense = res["lory-similarity-seed0"], res["dense-similarity-seed0"]
    # a pair starts from one initialization and sees one stream: the first logged losses agree
    assert lory["loss"][0][0] == dense["loss"][0][0] == 0
    assert lory["loss"][0][1] == pytest.approx(dense["loss"][0][1], abs=1e-5)
    assert res["lory-similarity-seed1"]["loss"][0][1] != pytest.approx(lory["loss"][0][1], abs=1e-5)
    assert set(lory["heldout"]) == {"quotes", "dictionary"} and lory["heldout"]["quotes"]["tokens"] > 1000
    assert set(lory["validation"]) == {"cooking", "space", "law"} and len(lory["mutual_information"]) == 2
    assert lory["config"]["data"]["data_dir"] == "runs/replicate/data-similarity-seed0" and lory["cpu_s"] > 0
    assert res["lory-similarity-8-layers-seed0"]["config"]["model"]["arch"]["n_layer"] == 8
    assert res["lory-similarity-dedup-0.9-seed0"]["config"]["data"]["prepare"]["dedup_threshold"] == 0.9
    assert lory["source_sha256"] == source_digest() and lory.get("uncommitted", []) == uncommitted_source()
    written = report.read_bytes()
    assert b"All 13 runs" not in written  # the default study has 5 seeds: this one is partial, and says so
    assert b"**In progress**: 13 of the 25 runs" in written and b"| p1 | lr 1e-3 | 123.4 |" in written

    # again: nothing trains; the report is the same bytes
    again = replicate(str(tmp_path / "study"), str(results), str(report), **kw)
    assert set(again["runs"].values()) == {"kept"} and report.read_bytes() == written
    # `lory replicate --report` from the result files alone, into another folder: the same bytes
    other = tmp_path / "other" / "REPLICATION.md"
    assert main(["replicate", "--report", "--results", str(results), "--report_path", str(other),
                 "--log", str(log)]) == 0
    assert other.read_bytes() == written
    for fig in (tmp_path / "replication-figures").iterdir():
        assert (tmp_path / "other" / "replication-figures" / fig.name).read_bytes() == fig.read_bytes()
    assert "report: " in capsys.readouterr().out


def test_replicate_refuses_a_missing_log_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="--log .*nope.md"):
        replicate(str(tmp_path / "study"), str(tmp_path / "r"), str(tmp_path / "R.md"), log=str(tmp_path / "nope.md"))
    assert not (tmp_path / "study").exists()


def test_source_digest_follows_each_files_path_and_bytes(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not source")
    first = source_digest(tmp_path)
    assert source_digest(tmp_path) == first and len(first) == 64
    (tmp_path / "notes.txt").write_text("changed")
    assert source_digest(tmp_path) == first  # only Python source counts
    (tmp_path / "b.py").write_text("y = 3\n")
    assert source_digest(tmp_path) != first
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "b.py").rename(tmp_path / "c.py")
    assert source_digest(tmp_path) != first  # a moved file is other code


def test_replicate_refuses_uncommitted_source_before_training_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "uncommitted_source", lambda: ["lory_lightning/model/moe.py"])
    with pytest.raises(RuntimeError, match="differs from commit .*lory_lightning/model/moe.py.*--allow_dirty"):
        replicate(str(tmp_path / "study"), str(tmp_path / "r"), str(tmp_path / "R.md"))
    assert not (tmp_path / "study").exists()
    assert study.refuse_uncommitted(allow_dirty=True) == ["lory_lightning/model/moe.py"]
    with pytest.raises(SystemExit):  # the flag is a switch of the command
        main(["replicate", "--allow_dirty", "maybe"])


def test_cli_defaults_are_the_studys():
    from lory_lightning.cli import ReplicateArgs, build_parser, parsed
    from lory_lightning.replication.study import DEFAULT_SEEDS, DEFAULT_STEPS, DESIGNS

    command, values = parsed(build_parser(), ["replicate"])
    args = ReplicateArgs(**values)
    assert tuple(args.seeds) == DEFAULT_SEEDS and args.steps == DEFAULT_STEPS and not args.report
    assert (args.study, args.results, args.report_path, args.output) == ("first", None, None, None)  # the study's own
    first, second = DESIGNS["first"], DESIGNS["second"]
    assert (first.results, first.report) == ("replication-results", "REPLICATION.md")
    assert (second.results, second.report) == ("replication-results/second", "docs/replication-second.md")
    assert parsed(build_parser(), ["replicate", "--report", "--seeds", "1", "2"])[1]["seeds"] == [1, 2]


@pytest.mark.slow  # five tiny trainings, one more validation and their prepares: under a minute on 2 cores
def test_the_second_study_trains_equal_compute_and_both_expert_choice_scores(tmp_path, capsys):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=40)]
    results, report = tmp_path / "results", tmp_path / "second.md"
    only = ["dense-similarity", "lory-similarity", "dense-similarity-equal-compute", "expert-choice"]
    kw = dict(seeds=[0], steps=4, inputs=inputs, seq_len=64, allow_dirty=True, study="second", only=only, **TINY)
    out = replicate(str(tmp_path / "study"), str(results), str(report), **kw)
    assert sorted(out["runs"]) == sorted(f"{s}-seed0" for s in only)
    ratio = json.loads((results / "step-time.json").read_text())
    assert ratio["ratio"] > 0 and ratio["batch_size"] == 4 and ratio["rounds"] == 15
    res = {p.stem: json.loads(p.read_text()) for p in results.glob("*-seed0.json")}
    compute = res["dense-similarity-equal-compute-seed0"]
    assert compute["steps"] == round(4 * ratio["ratio"]) and compute["step_ratio"] == ratio["ratio"]
    assert res["dense-similarity-seed0"]["steps"] == 4 and res["dense-similarity-seed0"]["tokens_seen"] == 4 * 4 * 64
    # the passage corpus: every document cut to at most 1,000 characters, measured per domain
    docs = res["lory-similarity-seed0"]["documents_per_sequence"]
    assert set(docs) == {"cooking", "space", "law"} and all(v >= 1 for v in docs.values())
    ec = res["expert-choice-seed0"]
    assert set(ec["validation_capacity"]) == set(ec["validation"])
    assert ec["validation_capacity"] != ec["validation"]  # the training rule scores otherwise
    text = report.read_text()
    assert "**In progress**: 4 of the 37 runs" in text and "| token-level, seed 0 | capacity" in text
    assert "Lory 8E has lower perplexity than dense at equal compute" in text
    again = tmp_path / "other" / "second.md"  # figures go beside the report, named after it
    assert main(["replicate", "--study", "second", "--report", "--results", str(results), "--report_path", str(again)]) == 0
    assert again.read_bytes() == report.read_bytes()
    assert f"report: {again}" in capsys.readouterr().out


def test_the_second_studys_plan_pairs_every_arm_and_scores_expert_choice_at_the_first_seed():
    from lory_lightning.replication.study import SECOND

    runs = plan([5, 6], SECOND)
    paired = list(SECOND.paired)
    assert [r.key for r in runs[:5]] == [f"{s}-seed5" for s in paired] and len(paired) == 5
    assert [r.key for r in runs[10:]] == [
        "topk-aux-free-similarity-seed5", "remoe-similarity-seed5", "expert-choice-seed5", "segment-expert-choice-seed5",
        "dense-similarity-dedup-0.9-seed5", "lory-similarity-dedup-0.9-seed5", "dense-similarity-thinned-seed5",
        "lory-similarity-thinned-seed5", "topk-aux-free-similarity-seed6", "remoe-similarity-seed6"]
    assert len(plan(DEFAULT_SEEDS, SECOND)) == 5 * 5 + 2 * 3 + 6
    assert {r.design for r in runs} == {"second"} and runs[0].data_name == "data-similarity-seed5"
    thinned = next(r for r in runs if r.setting == "dense-similarity-thinned")
    assert thinned.data_name == "data-similarity-keep-fraction-" + "-".join(
        f"{d}{v:g}" for d, v in sorted(NEAR_COPY_KEEP.items())) + "-seed5"
    assert thinned.prepare == {"keep_fraction": NEAR_COPY_KEEP}
    assert SECOND.settings["expert-choice"].eval_routings == ("capacity",)
    assert [r.key for r in plan([5, 6], SECOND, only=["lory-random"])] == ["lory-random-seed5", "lory-random-seed6"]
    with pytest.raises(ValueError, match=r"--only: \['lory-8e'\] are not settings of the second study"):
        plan([0], SECOND, only=["lory-8e"])
    # the baselines are at Lory 8E's active and total parameters (16 experts: a router twice as large)
    from lory_lightning.model import ModelConfig, param_counts

    base = ModelConfig()
    lory = param_counts(base)
    for setting, extra_router in (("topk-aux-free-similarity", 8), ("remoe-similarity", 0)):
        spec = SECOND.settings[setting]
        counts = param_counts(ModelConfig(ffn=spec.ffn, **spec.model))
        assert {k: v - lory[k] for k, v in counts.items()} == dict.fromkeys(lory, base.n_layer * extra_router * base.dim)


def test_thinning_to_match_keeps_the_target_share_of_each_shrunk_domain():
    from lory_lightning.replication.study import thinning_to_match

    assert thinning_to_match({"a": 1000, "b": 300, "c": 7}, {"a": 600, "b": 300, "c": 3}) == {"a": 0.6, "c": 0.4286}
    with pytest.raises(ValueError, match=r"\['d'\] are in one corpus only"):
        thinning_to_match({"a": 1000}, {"a": 600, "d": 5})


def test_the_near_copy_probe_is_thinned_to_the_tokens_dedup_0_9_leaves():
    """NEAR_COPY_KEEP is thinning_to_match of the committed seed-0 corpora (its result files record them)."""
    from lory_lightning.replication.study import REPO, SECOND, thinning_to_match

    folder = REPO / SECOND.results
    full, dedup = (folder / f"{s}-seed0.json" for s in ("dense-similarity", "dense-similarity-dedup-0.9"))
    if not dedup.exists():
        pytest.skip(f"{dedup.name} is not committed yet (the probe's constants were computed from a prepare)")
    tokens = lambda p: json.loads(p.read_text())["train_tokens_by_domain"]  # noqa: E731
    assert thinning_to_match(tokens(full), tokens(dedup)) == NEAR_COPY_KEEP


def test_the_thinned_arms_need_the_sample_corpus(tmp_path):
    with pytest.raises(ValueError, match="dense-similarity-thinned.*sample corpus.*--only"):
        replicate(str(tmp_path / "s"), str(tmp_path / "r"), None, seeds=[0], inputs=[str(tmp_path / "x.jsonl")],
                  study="second", only=["dense-similarity-thinned"], allow_dirty=True)


def test_the_sample_corpus_is_cut_with_its_own_held_out_files_as_validation(tmp_path):
    from lory_lightning.replication import cut_corpus

    data = {}
    train = cut_corpus([], data, tmp_path / "cut", 1000)
    domains = ("books", "code", "legal", "techdocs", "wiki")
    assert [p.rsplit("/", 1)[1] for p in train] == [f"{d}-train.jsonl.gz" for d in domains]
    assert [p.rsplit("/", 1)[1] for p in data["val_inputs"]] == [f"{d}-val.jsonl.gz" for d in domains]
    # the fingerprint reads the validation files by content, not by where they lie
    base = yaml.safe_load(BASE_CONFIG.read_text())
    run = Run("lory-similarity", 0, "second")
    digests = file_digests(train + data["val_inputs"])
    a = run_config(base, run, tmp_path / "a", 400, {"inputs": train, **data}, {"seq_len": 1024})
    moved = {"inputs": [p.replace(str(tmp_path), "/elsewhere") for p in train],
             "val_inputs": [p.replace(str(tmp_path), "/elsewhere") for p in data["val_inputs"]]}
    b = run_config(base, run, tmp_path / "b", 400, moved, {"seq_len": 1024})
    assert fingerprint(a, digests, {}) == fingerprint(b, digests, {})
    other = cut_corpus([], {}, tmp_path / "cut2", 500)
    assert file_digests(other) != file_digests(train)  # other passages, other content
