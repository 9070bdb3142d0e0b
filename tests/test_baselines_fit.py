"""Every baseline trains, validates, is monitored and generates through the same CLI."""

import csv
import json

import pytest
import yaml

from lory_lightning.cli import main
from test_cli_lightning import ROOT, resolved_config, small_config


@pytest.mark.parametrize("config", ["expert-choice-tiny", "segment-expert-choice-tiny", "topk-tiny", "lory-prefix-tiny"])
def test_baseline_config_fits_with_monitoring_and_generates(config, small_data, tmp_path, capsys):
    shipped = resolved_config(ROOT / "configs" / f"{config}.yaml")["model"]["init_args"]
    cfg = small_config(tmp_path, small_data, ffn=shipped["arch"]["ffn"])
    spec = yaml.safe_load(cfg.read_text())
    spec["model"]["training"] = dict(shipped["training"])
    spec["trainer"].update(max_steps=8, val_check_interval=4)
    cfg.write_text(yaml.safe_dump(spec))
    assert main(["fit", "--config", str(cfg), "--config", str(ROOT / "callbacks" / "expert-monitoring.yaml")]) == 0
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r for r in rows if r.get("val/ppl")] and [r for r in rows if r.get("specialization/mi_mean")]
    report = json.loads((run / "specialization" / "step8.json").read_text())
    for layer in report["mean_weight"]:
        for row in layer:
            assert 0 < sum(row) < 1 + 1e-6  # gates of the tokens of each domain, averaged
    capsys.readouterr()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["generate", "--ckpt_path", str(ckpt), "--prompt", "oven", "--max_new_tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("oven")
