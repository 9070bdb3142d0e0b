"""`lory prepare` killed with SIGKILL at chosen stages: never a finished-looking folder; a rerun completes.

The kill points are stages the test chooses (a patched step of the pipeline kills its own process),
not moments on a clock: a kill timed in seconds races the machine's speed and fails CI at random.
"""

import json
import subprocess
import sys
import tarfile

import pytest

from conftest import make_corpus
from lory_lightning.data.shards import verify_shards

pytestmark = pytest.mark.isolated  # runs lory code in child processes (pyproject.toml, markers)

# Runs `lory prepare ARGS` in a fresh interpreter after wrapping one pipeline step so that the
# process SIGKILLs itself at the chosen point (before or after the step's n-th call).
DRIVER = """
import os, signal, sys
import importlib
from lory_lightning.cli import main

module, name, when, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
target = importlib.import_module(f"lory_lightning.data.prepare.{module}")
real, calls = getattr(target, name), [0]

def killing(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if calls[0] == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(target, name, killing)
sys.exit(main(["prepare", *sys.argv[5:]]))
"""

STAGES = {  # id: (module of lory_lightning.data.prepare where it is called, function, before/after, n-th call);
    # stages run in this process with one worker
    "while-deduplicating": ("stage_documents", "later_copies", "before", 1),
    "while-training-the-tokenizer": ("stage_encode", "train_tokenizer", "before", 1),
    "while-encoding": ("stage_encode", "encode", "before", 1),
    "while-clustering": ("stage_order", "embedding_rows", "before", 1),  # cluster's first read of the embeddings
    "while-ordering": ("stage_order", "order_partition", "before", 1),
    "after-the-first-piece": ("stage_pack", "write_piece", "after", 1),  # pack: one piece of the stream written
    "after-two-shards": ("stage_write", "write_shard", "after", 2),
    "after-unigram-before-manifest": ("stage_write", "sha256_file", "after", 1),  # unigram.npy written, then its hash
    "after-the-manifest": ("run", "load_manifest", "before", 1),  # finished, killed before cleaning up
}
ARGS = ["--seq_len", "32", "--vocab_size", "300", "--sequences_per_shard", "4", "--val_fraction", "0.1", "--quiet"]


def looks_finished_only_if_complete(folder):
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        # Without a manifest nothing claims completion; any shard under its final name is whole
        # (shards are written under *.tmp and renamed when complete).
        for shard in folder.glob("*.tar.gz"):
            with tarfile.open(shard) as tar:
                assert all(tar.extractfile(m).read() is not None for m in tar.getmembers())
        return False
    manifest = json.loads(manifest_path.read_text())
    for split in ("train", "val"):
        assert list(verify_shards(folder, manifest["splits"][split]["shards"])) == []
    return True


@pytest.fixture(scope="module")
def never_killed(tmp_path_factory):
    """The corpus the kills prepare, and its folder prepared once without a kill: what every rerun must equal."""
    tmp = tmp_path_factory.mktemp("never-killed")
    inputs = [str(p) for p in make_corpus(tmp / "in", docs_per_domain=60)]
    fresh = subprocess.run([sys.executable, "-m", "lory_lightning", "prepare", "--output", str(tmp / "fresh"),
                            "--inputs", *inputs, *ARGS], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    return inputs, tmp / "fresh"


@pytest.mark.slow  # nine kills, each a full prepare in a child process and its rerun
@pytest.mark.parametrize("stage", list(STAGES), ids=list(STAGES))
def test_kill_9_during_prepare(tmp_path, stage, never_killed):
    inputs, fresh = never_killed
    out = tmp_path / "data"
    args = ["--output", str(out), "--inputs", *inputs, *ARGS]
    killed = subprocess.run([sys.executable, "-c", DRIVER, *map(str, STAGES[stage]), *args], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    finished = looks_finished_only_if_complete(out) if out.exists() else False
    assert finished == (stage == "after-the-manifest")  # only a written manifest claims completion
    if not finished:  # the work folder stays, with the stage tasks that completed
        assert (out / "_work.tmp" / "logs" / "read-1" / "completions" / "00000").is_file()
    again = subprocess.run([sys.executable, "-m", "lory_lightning", "prepare", *args], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert looks_finished_only_if_complete(out)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for name in sorted(p.name for p in fresh.iterdir() if p.name != ".lory-prepare"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name  # as if never killed


def test_a_killed_worker_stops_the_run_with_a_message_and_a_rerun_continues(tmp_path):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=60)]
    out = tmp_path / "data"
    args = ["--output", str(out), "--inputs", *inputs, *ARGS, "--workers", "2", "--tasks", "2"]
    # encode runs in the two worker processes: the first call in each SIGKILLs that worker, not the run
    killed = subprocess.run([sys.executable, "-c", DRIVER, "stage_encode", "encode", "before", "1", *args],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 1, killed.stderr[-2000:]
    assert killed.stderr.strip().splitlines()[-1] == (
        "lory prepare: error: a `lory prepare` worker process died in stage 'encode' (killed, or out of memory): "
        "run the same command again, it continues from the tasks that completed")
    assert not (out / "manifest.json").exists()
    again = subprocess.run([sys.executable, "-m", "lory_lightning", "prepare", *args], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert looks_finished_only_if_complete(out)
