"""Every command README.md shows runs as written, in the README's order, in a fresh folder: only its size
arguments are shrunk (a small prepared corpus, a 1-layer model, 2 steps). A command this test does not
know how to run fails it, so a command cannot enter the README untested."""

import gzip
import json
import os
import re
import shlex
import shutil

import pytest

from conftest import make_corpus
from lory_lightning.cli import main
from test_cli_lightning import ROOT

pytestmark = pytest.mark.isolated  # works in another folder (chdir)

# What the test's fresh folder is given instead of the README's sizes.
MODEL = ["--model.arch.n_layer", "1", "--model.arch.dim", "32", "--model.arch.n_head", "2",
         "--model.arch.hidden_dim", "32", "--model.arch.seq_len", "32", "--model.arch.segment_len", "8"]
RUN = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2",
       "--data.batch_size", "2", "--data.vocab_size", "300", "--trainer.enable_progress_bar", "false"]
SHRUNK = {"--seq_len": "32", "--vocab_size": "300", "--max_new_tokens": "8"}

# Commands run by another test, as written there (the test named); the README's text must match.
ELSEWHERE = {
    "python3 -m venv .venv && . .venv/bin/activate": ".ci/run", 'pip install -e ".[dev]"': ".ci/run", "pytest": ".ci/run",
    "pytest -m slow": ".ci/run",
    "lory replicate --report --log docs/replication-log.md": "tests/replication/test_committed_report.py",
    "python benchmarks/table3.py --out benchmarks/table3.md --json benchmarks/table3.json":
        "tests/test_benchmarks.py::test_table3_runs_end_to_end_at_tiny_size",
    "torchrun --nnodes 4 --nproc_per_node 8 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint HOST:29500 "
    "--no-python lory fit --config configs/lory-1.5b-32e-fsdp.yaml": "tests/reliability/test_fsdp.py::"
                                                                     "test_the_readme_torchrun_launch",
}


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks, continuation lines joined, comments cut."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(" ".join(line.split()))
    return lines


def shrink(args: list[str]) -> list[str]:
    """The README's arguments with its sizes replaced by the test's, and the test's sizes added."""
    out = [SHRUNK.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    if out[0] == "finetune":
        out += ["--max_steps", "4"]
    if out[0] in ("fit", "validate"):
        run, model = RUN, MODEL
        if "--data.data_dir" in out:  # a folder the command prepares from the shipped sample: its sizes
            run, model = RUN[:-4] + RUN[-2:], MODEL[:-4]  # no vocab_size, seq_len or segment_len
        printing = "--print_config" in out
        if printing:  # LightningCLI prints and exits where the flag stands: last
            out.remove("--print_config")
        out += run + model + (["--print_config"] if printing else [])
    return out


def test_every_readme_command_runs_as_written(small_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for folder in ("configs", "callbacks", "lory_lightning"):  # the README runs in the repository root
        os.symlink(ROOT / folder, tmp_path / folder)
    shutil.copytree(small_data, tmp_path / "data" / "sample-512")  # the folder lory-tiny.yaml names
    # `lory prepare --inputs my/arxiv.jsonl.gz my/code/`: a gzipped jsonl and a folder of .txt files
    corpus = make_corpus(tmp_path / "corpus", docs_per_domain=30)
    (tmp_path / "my" / "code").mkdir(parents=True)
    with gzip.open(tmp_path / "my" / "arxiv.jsonl.gz", "wt") as f:
        f.write(corpus[0].read_text())
    for i, line in enumerate(corpus[1].read_text().splitlines()):
        (tmp_path / "my" / "code" / f"{i}.txt").write_text(json.loads(line)["text"])

    ran, elsewhere = [], []
    for line in readme_commands():
        args = shlex.split(line)
        if line in ELSEWHERE:
            elsewhere.append(line)
            continue
        assert args[0] == "lory", f"README command that no test runs: {line!r}"
        try:
            code = main(shrink(args[1:]))
        except SystemExit as done:  # --print_config prints and exits, as LightningCLI does
            code = done.code
        if code not in (0, None):
            printed = capsys.readouterr()
            pytest.fail(f"{line!r} exited {code}:\n{printed.out[-1500:]}\n{printed.err[-1500:]}")
        ran.append(args[1])
    out = capsys.readouterr().out
    for line in ELSEWHERE:  # the other tests run these strings: keep them equal to the README's
        if ELSEWHERE[line].startswith("tests/"):
            assert line in elsewhere, f"{line!r} is no longer in the README: update ELSEWHERE"
    assert {"fit", "validate", "generate", "prepare", "analyze", "export", "finetune", "evaluate", "perplexity"} <= set(ran)
    assert "validation after step 2" in out and (tmp_path / "exports" / "lory-tiny" / "config.json").is_file()
    assert (tmp_path / "exports" / "lory-tiny-chat" / "config.json").is_file()  # export -> finetune -> generate
    assert (tmp_path / "data" / "mine" / "manifest.json").is_file()
    assert (tmp_path / "data" / "sample-512-random" / "manifest.json").is_file()
