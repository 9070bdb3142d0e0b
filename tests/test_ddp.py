"""Two CPU processes (DDP over gloo) train the small config end to end."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_cli_lightning import small_config

pytestmark = pytest.mark.isolated  # runs lory code in child processes (pyproject.toml, markers)


def test_two_process_ddp_fit(small_data, tmp_path):
    cfg = small_config(tmp_path, small_data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lory_lightning", "fit", "--config", str(cfg), "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "6",
           "--trainer.val_check_interval", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    tokens = [float(r["train/tokens"]) for r in rows if r.get("train/tokens")]
    assert tokens[-1] == 6 * 2 * 4 * 32  # both ranks' tokens counted
    assert [r for r in rows if r.get("val/ppl")]
    assert "validation after step 6:" in result.stdout
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert str(saved["trainer"]["devices"]) == "2"
    assert Path(run / "checkpoints" / "last.ckpt").is_file()
