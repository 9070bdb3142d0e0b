"""The expert-monitoring callback set end to end: logs, tables, heatmaps, `lory analyze`, dense models."""

import csv
import json

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
    entropy = report["expert_domain_entropy"]  # per layer and expert, in [0, 1]
    assert len(entropy) == 2 and all(len(row) == 4 and all(0 <= v <= 1 + 1e-9 for v in row) for row in entropy)
    assert next(csv.reader(open(spec / "step16.csv")))[-1] == "expert_domain_entropy"
    logged_entropy = [r for r in logged if r.get("specialization/layer1/expert3/domain_entropy")]
    assert len(logged_entropy) == 2  # at each validation
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())

    capsys.readouterr()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["analyze", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "analysis")]) == 0
    out = capsys.readouterr().out
    assert "I(domain; expert)" in out and "cooking" in out and "per-expert domain entropy" in out
    assert (tmp_path / "analysis" / "specialization-layers.png").read_bytes()[:8] == PNG


def test_monitoring_a_dense_model_logs_nothing_and_does_not_fail(small_data, tmp_path):
    cfg = small_config(tmp_path, small_data, ffn="dense")
    cfg.write_text(cfg.read_text().replace("dense_warmup: 0.25", "dense_warmup: 0.0"))
    assert main(["fit", "--config", str(cfg), "--config", str(ROOT / "callbacks" / "expert-monitoring.yaml"),
                 "--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]) == 0
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    assert not any(k.startswith(("routing/", "specialization/")) for k in rows(run)[0])
    assert not (run / "specialization").exists()


def _routing(weights):
    from lory_lightning.model.moe import Routing

    return {"routing": (Routing(logits=weights.log(), weights=weights),)}


class _Logger:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def test_utilization_windows_count_optimizer_steps_not_micro_batches():
    # With gradient accumulation of 2, the trainer's global_step moves every second micro-batch:
    # a 10-step window is 20 micro-batches, and each step's logs come once, at that step.
    import types

    import torch

    from lory_lightning.callbacks import RoutingMonitor

    monitor = RoutingMonitor(every_n_steps=5, utilization_window=10)
    logger = _Logger()
    trainer = types.SimpleNamespace(global_step=0, global_rank=0, loggers=[logger])
    E = 4
    for micro in range(40):
        expert = (micro // 2) % E if micro < 20 else 0  # steps 0-9 use every expert, steps 10-19 expert 0
        weights = torch.full((2, 3, E), 0.1 / (E - 1))
        weights[..., expert] = 0.9
        trainer.global_step = (micro + 1) // 2  # the step's optimizer update happens on its 2nd micro-batch
        monitor.on_train_batch_end(trainer, None, _routing(weights), None, micro)
    util = [(step, m["routing/utilization"]) for step, m in logger.rows if "routing/utilization" in m]
    assert util == [(9, 4.0), (19, 1.0)]  # windows of 10 optimizer steps: all 4 experts, then expert 0
    logged_at = [step for step, m in logger.rows if "routing/layer0/entropy" in m]
    assert logged_at == [4, 9, 14, 19]  # every 5 optimizer steps, once each
