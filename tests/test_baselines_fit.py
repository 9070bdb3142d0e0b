"""Every baseline trains, validates, is monitored and generates through the same CLI."""

import csv
import json

import pytest
import torch
import yaml

from lory_lightning.cli import main
from test_cli_lightning import ROOT, resolved_config, small_config


@pytest.mark.parametrize("config", ["expert-choice-tiny", "segment-expert-choice-tiny", "topk-tiny", "lory-prefix-tiny",
                                    "topk-aux-free-tiny", "remoe-tiny"])
def test_baseline_config_fits_with_monitoring_and_generates(config, small_data, tmp_path, capsys):
    shipped = resolved_config(ROOT / "configs" / f"{config}.yaml")["model"]["init_args"]
    cfg = small_config(tmp_path, small_data, **{k: v for k, v in shipped["arch"].items() if k in ("ffn", "top_k")})
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
    state = torch.load(ckpt, weights_only=True)
    if config == "remoe-tiny":  # the sparsity control ran, moved its coefficient, and resumes from it
        sparsity = [float(r["train/sparsity"]) for r in rows if r.get("train/sparsity")]
        assert len(sparsity) == 8 and all(0 <= s <= 1 for s in sparsity)
        assert state["remoe_l1_coef"] > shipped["training"]["remoe_l1_init"]
    if config == "topk-aux-free-tiny":  # every layer's bias moved, in steps of the rate
        biases = [v for k, v in state["state_dict"].items() if k.endswith("balance_bias")]
        assert len(biases) == 2 and all(b.abs().max() > 0 for b in biases)
        steps = biases[0] / shipped["training"]["balance_bias_rate"]
        torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)
    assert main(["generate", "--ckpt_path", str(ckpt), "--prompt", "oven", "--max_new_tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("oven")
    if "expert-choice" in config:  # the same checkpoint scored with the rule it trained with: another number
        assert main(["validate", "--config", str(cfg), "--ckpt_path", str(ckpt),
                     "--model.arch.eval_routing", "capacity"]) == 0
        with open(run.parent / "version_1" / "metrics.csv") as f:
            capacity_ppl = [float(r["val/ppl"]) for r in csv.DictReader(f) if r.get("val/ppl")]
        causal_ppl = [float(r["val/ppl"]) for r in rows if r.get("val/ppl")][-1]
        assert len(capacity_ppl) == 1 and capacity_ppl[0] != pytest.approx(causal_ppl, rel=1e-4)
