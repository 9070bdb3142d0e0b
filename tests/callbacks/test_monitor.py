"""The expert-monitoring callback set end to end: logs, tables, heatmaps, `lory analyze`, dense models."""

import csv
import json
from pathlib import Path

from test_cli_lightning import ROOT, small_config

from lory_lightning.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_monitoring_writes_curves_tables_and_heatmaps(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    monitoring = ROOT / "callbacks" / "expert-monitoring.yaml"
    assert main(["fit", "--config", str(cfg), "--config", str(monitoring)]) == 0
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    logged = rows(run)
    util = [float(r["routing/utilization"]) for r in logged if r.get("routing/utilization")]
    assert len(util) == 1 and 1 <= util[0] <= 2 * 4  # one window of 10 steps, 2 layers x 4 experts
    entropy = [float(r["routing/layer0/entropy_norm"]) for r in logged if r.get("routing/layer0/entropy_norm")]
    assert len(entropy) == 1 and 0 <= entropy[0] <= 1 + 1e-6  # at the 10th step
    mi = [float(r["specialization/mi_mean"]) for r in logged if r.get("specialization/mi_mean")]
    assert len(mi) == 2 and all(m >= 0 for m in mi)  # one per validation
    spec = run / "specialization"
    for name in ("step8-layers.png", "step8-all-layers.png", "step16-layers.png", "step16-all-layers.png"):
        assert (spec / name).read_bytes()[:8] == PNG
    report = json.loads((spec / "step16.json").read_text())
    assert report["domains"] == ["cooking", "space", "law"] and report["layers"] == 2
    for layer in report["mean_weight"]:
        for row in layer:
            assert abs(sum(row) - 1) < 1e-6  # each domain's mean routing weights sum to 1 (fp32 softmax)
    assert len(list(csv.reader(open(spec / "step16.csv")))) == 1 + 2 * 3 * 4
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())

    capsys.readouterr()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["analyze", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "analysis")]) == 0
    out = capsys.readouterr().out
    assert "I(domain; expert)" in out and "cooking" in out
    assert (tmp_path / "analysis" / "specialization-layers.png").read_bytes()[:8] == PNG


def test_monitoring_a_dense_model_logs_nothing_and_does_not_fail(small_data, tmp_path):
    cfg = small_config(tmp_path, small_data, ffn="dense")
    cfg.write_text(cfg.read_text().replace("dense_warmup: 0.25", "dense_warmup: 0.0"))
    assert main(["fit", "--config", str(cfg), "--config", str(ROOT / "callbacks" / "expert-monitoring.yaml"),
                 "--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]) == 0
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    assert not any(k.startswith(("routing/", "specialization/")) for k in rows(run)[0])
    assert not (run / "specialization").exists()
