"""2 CPU processes (DDP, gloo) match 1 process at the same global batch; uneven shards do not hang."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_cli_lightning import small_config

pytestmark = pytest.mark.isolated  # runs lory code in child processes (pyproject.toml, markers)

HERE = Path(__file__).resolve().parent


def test_two_processes_match_one_within_1e_5_over_20_steps(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for kind, devices in (("single", 1), ("ddp", 2)):
        result = subprocess.run([sys.executable, str(HERE / "ddp_parity.py"), kind, str(devices),
                                 str(tmp_path / f"{devices}.pt")],
                                capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (torch.load(tmp_path / f"{d}.pt", weights_only=True) for d in (1, 2))
    w1, w2 = one["weights"], two["weights"]
    diff = max((w1[k].double() - w2[k].double()).abs().max().item() for k in w1 if w1[k].is_floating_point())
    assert diff < 1e-5, diff
    assert not bool(w1["blocks.0.ffn.dense_phase"])  # the run went through upcycling at step 4
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-5)
    assert two["val_ppl"] == pytest.approx(one["val_ppl"], rel=1e-5)  # per domain, summed over both ranks


def test_uneven_shards_across_ranks_do_not_hang(small_data, tmp_path):
    data = tmp_path / "uneven"
    shutil.copytree(small_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"] = manifest["splits"]["train"]["shards"][:3]  # rank 0: 2, rank 1: 1
    manifest["splits"]["train"]["sequences"] = sum(s["sequences"] for s in manifest["splits"]["train"]["shards"])
    (data / "manifest.json").write_text(json.dumps(manifest))
    cfg = small_config(tmp_path, data)
    spec = yaml.safe_load(cfg.read_text())
    spec["trainer"].update(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, val_check_interval=3)
    cfg.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "lory_lightning", "fit", "--config", str(cfg)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation after step 6:" in result.stdout  # rank 1 cycled its single shard 6 times
