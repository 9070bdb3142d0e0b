"""`lory prepare` killed with SIGKILL at several moments: never a finished-looking folder; a rerun completes."""

import json
import subprocess
import sys
import tarfile
import time

import pytest

from lory_lightning.data.shards import verify_shards


def looks_finished_only_if_complete(folder):
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        # Without a manifest nothing claims completion; any shard under its final name is whole
        # (shards are written under *.tmp and renamed when complete).
        for shard in folder.glob("*.tar"):
            with tarfile.open(shard) as tar:
                assert all(tar.extractfile(m).read() is not None for m in tar.getmembers())
        return False
    manifest = json.loads(manifest_path.read_text())
    for split in ("train", "val"):
        assert list(verify_shards(folder, manifest["splits"][split]["shards"])) == []
    return True


@pytest.mark.parametrize("after_s", [1.5, 5.0, 8.0])
def test_kill_9_during_prepare(tmp_path, after_s):
    out = tmp_path / "sample"
    cmd = [sys.executable, "-m", "lory_lightning", "prepare", "--output", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after_s)
    proc.kill()  # SIGKILL
    proc.wait()
    finished = looks_finished_only_if_complete(out) if out.exists() else False
    assert finished == (proc.returncode == 0)  # killed mid-way: no manifest; finished first: all verified
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert looks_finished_only_if_complete(out)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
