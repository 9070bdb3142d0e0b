"""A NaN gradient stops the run with a message, or skips exactly that step."""

import csv
import math

import torch

from lory_lightning.cli import main
from lory_lightning.checkpoint_io import load_checkpoint
from test_cli_lightning import small_config


def test_nan_gradient_stops_the_run_by_default(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    code = main(["fit", "--config", str(cfg), "--trainer.callbacks+=faults.NanGradAt", "--trainer.callbacks.step=5"])
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite gradient norm at step 5" in err and "model.training.nonfinite: skip" in err


def test_nan_gradient_skips_that_step_only(small_data, tmp_path):
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--model.training.nonfinite", "skip", "--trainer.callbacks+=faults.NanGradAt",
                 "--trainer.callbacks.step=5"]) == 0
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/skipped_steps")]
    skipped = {int(r["step"]): float(r["train/skipped_steps"]) for r in rows}
    assert skipped[4] == 0 and skipped[5] == 1 and skipped[15] == 1
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)
    state = load_checkpoint(str(run / "checkpoints" / "last.ckpt"))["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
