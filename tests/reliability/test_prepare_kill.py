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
import lory_lightning.data.prepare as prepare_mod
import lory_lightning.data.shards as shards_mod
from lory_lightning.cli import main

module, name, when, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
target = {"prepare": prepare_mod, "shards": shards_mod}[module]
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

STAGES = {  # id: (module, function, before/after, n-th call)
    "while-training-the-tokenizer": ("prepare", "train_tokenizer", "before", 1),
    "while-embedding": ("prepare", "tfidf_svd_embed", "before", 1),
    "after-two-shards": ("shards", "_write_one", "after", 2),
    "after-tokenizer-before-manifest": ("prepare", "atomic_write_bytes", "after", 2),  # unigram.npy, tokenizer.json
    "after-the-manifest": ("prepare", "atomic_write_bytes", "after", 3),  # finished, killed before exit
}


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


@pytest.mark.parametrize("stage", list(STAGES), ids=list(STAGES))
def test_kill_9_during_prepare(tmp_path, stage):
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=60)]
    out = tmp_path / "data"
    args = ["--output", str(out), "--inputs", *inputs, "--seq_len", "32", "--vocab_size", "300",
            "--sequences_per_shard", "4", "--val_fraction", "0.1", "--quiet"]
    killed = subprocess.run([sys.executable, "-c", DRIVER, *map(str, STAGES[stage]), *args], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    finished = looks_finished_only_if_complete(out) if out.exists() else False
    assert finished == (stage == "after-the-manifest")  # only a written manifest claims completion
    again = subprocess.run([sys.executable, "-m", "lory_lightning", "prepare", *args], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert looks_finished_only_if_complete(out)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
