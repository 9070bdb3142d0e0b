"""The committed REPLICATION.md is what `lory replicate --report` makes of the committed result files,
byte for byte: the README's command, run as written in a copy of the repository's files."""

import os
import shutil
from pathlib import Path

from lory_lightning.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_in_copy(tmp_path, argv):
    """`lory <argv>` run in ``tmp_path`` holding a copy of the committed result files and the log."""
    shutil.copytree(REPO / "replication-results", tmp_path / "replication-results")
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "replication-log.md", tmp_path / "docs")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(argv) == 0
    finally:
        os.chdir(cwd)


def test_replicate_report_rebuilds_the_committed_report(tmp_path):
    run_in_copy(tmp_path, ["replicate", "--report", "--log", "docs/replication-log.md"])
    assert (tmp_path / "REPLICATION.md").read_bytes() == (REPO / "REPLICATION.md").read_bytes()
    made = sorted(p.name for p in (tmp_path / "replication-figures").iterdir())
    assert made == sorted(p.name for p in (REPO / "replication-figures").iterdir())
    # every figure the report shows is committed (the PNG bytes depend on matplotlib's version)
    text = (REPO / "REPLICATION.md").read_text()
    assert all(f"replication-figures/{name}" in text for name in made)


def test_readme_findings_quote_the_report():
    """Every interval and every mean ± sd the README's summary of findings quotes is in REPLICATION.md."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Replication\n"):readme.index("## Speed\n")]
    findings = section[section.index("What the study"):]
    # README says "log points" where the first report writes "%" (the same number: 100 x log perplexity)
    intervals = re.findall(r"([-+]\d+\.\d+) log points \[([-+]\d+\.\d+), ([-+]\d+\.\d+)\]", findings)
    quoted = [f"{m}% [{lo}, {hi}]" for m, lo, hi in intervals] + re.findall(r"\d+\.\d+ ± \d+\.\d+", findings)
    assert len(intervals) >= 3 and len(quoted) >= 5, "the summary should quote the report's intervals"
    report = (REPO / "REPLICATION.md").read_text()
    missing = [q for q in quoted if q not in report]
    assert not missing, f"README quotes numbers REPLICATION.md does not have: {missing}"


def test_committed_results_match_todays_configs():
    """Each committed result file carries the fingerprint `lory replicate` computes today for its run:
    a change to configs/lory-tiny.yaml, the study's settings or the corpus marks the study stale here
    (retrain those runs with `lory replicate`, which would not skip them)."""
    import json

    import yaml

    from lory_lightning.replication.study import (
        BASE_CONFIG, DEFAULT_STEPS, HELDOUT, Run, file_digests, fingerprint, run_config, training_inputs)

    base = yaml.safe_load(BASE_CONFIG.read_text())
    inputs, heldout = file_digests(training_inputs([])), file_digests([str(HELDOUT)])
    files = sorted((REPO / "replication-results").glob("*.json"))
    assert files
    for path in files:
        result = json.loads(path.read_text())
        cfg = run_config(base, Run(result["setting"], result["seed"]), REPO / "runs" / "replicate", DEFAULT_STEPS,
                         {"inputs": []}, {"seq_len": 512})
        assert fingerprint(cfg, inputs, heldout) == result["fingerprint"], f"{path.name} is stale"



def test_the_second_studys_report_rebuilds_from_its_committed_result_files(tmp_path):
    # the first study's files lie beside: the report shows their spread (why 5 seeds)
    run_in_copy(tmp_path, ["replicate", "--study", "second", "--report"])
    committed = REPO / "docs" / "replication-second.md"
    assert (tmp_path / "docs" / "replication-second.md").read_bytes() == committed.read_bytes()
    made = sorted(p.name for p in (tmp_path / "docs" / "replication-second-figures").iterdir())
    assert made == sorted(p.name for p in (REPO / "docs" / "replication-second-figures").iterdir())


def test_the_second_studys_committed_results_match_todays_configs(tmp_path):
    """As above, for the second study: its passage corpus is cut again here and fingerprinted by content,
    and its equal-compute runs train the committed step-time ratio's steps."""
    import json

    import yaml

    from lory_lightning.replication import cut_corpus
    from lory_lightning.replication.study import (
        BASE_CONFIG, DEFAULT_STEPS, HELDOUT, SECOND, STEP_TIME, Run, file_digests, fingerprint, run_config)

    folder = REPO / "replication-results" / "second"
    ratio = json.loads((folder / STEP_TIME).read_text())["ratio"]
    base = yaml.safe_load(BASE_CONFIG.read_text())
    data = {"batch_size": SECOND.batch_size}
    train = cut_corpus([], data, tmp_path / "passages", SECOND.passage_chars)
    inputs, heldout = file_digests(train + data["val_inputs"]), file_digests([str(HELDOUT)])
    files = sorted(p for p in folder.glob("*.json") if p.name != STEP_TIME)
    assert files
    for path in files:
        result = json.loads(path.read_text())
        run = Run(result["setting"], result["seed"], "second")
        steps = round(DEFAULT_STEPS * ratio) if run.spec.equal_compute else DEFAULT_STEPS
        cfg = run_config(base, run, REPO / "runs" / "replicate-second", steps,
                         {"inputs": train, **data}, {"seq_len": SECOND.seq_len})
        assert fingerprint(cfg, inputs, heldout) == result["fingerprint"], f"{path.name} is stale"
