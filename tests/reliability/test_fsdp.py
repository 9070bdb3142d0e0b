"""Sharded training (FSDP2, the shipped configs/lory-1.5b-32e-fsdp.yaml strategy) on 2 CPU processes:
parity with one process through dense warmup and upcycling, the non-finite guard and per-domain
metrics under sharding, kill -9 and exact resume from a sharded checkpoint folder, and every command
that takes a checkpoint taking that folder."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lory_lightning.checkpoint_io import load_checkpoint, model_state

pytestmark = [pytest.mark.slow, pytest.mark.isolated]  # multi-process runs (pyproject.toml, markers)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FSDP_CONFIG = ROOT / "configs" / "lory-1.5b-32e-fsdp.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def parity_run(tmp_path: Path, kind: str, devices: int, *nan: int) -> dict:
    out = tmp_path / f"{kind}-{devices}{'-nan' if nan else ''}.pt"
    result = subprocess.run([sys.executable, str(HERE / "ddp_parity.py"), kind, str(devices), str(out),
                             *map(str, nan)], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_sharded_training_matches_one_process_through_upcycling(tmp_path):
    one, two = parity_run(tmp_path, "single", 1), parity_run(tmp_path, "fsdp", 2)
    assert max_diff(one["weights"], two["weights"]) < 1e-5  # 20 steps; upcycled at step 4
    assert not bool(two["weights"]["blocks.0.ffn.dense_phase"])
    experts = two["weights"]["blocks.1.ffn.w_up"]  # (E, d, f), split 2 + 2 across the ranks
    assert not torch.equal(experts[0], experts[3])  # experts drifted apart after the copy
    # the guard's gradient norm sums every shard (before clipping), step by step
    assert len(two["grad_norms"]) == 20
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-5)
    # per-domain perplexities: each rank validated half of the sequences, the metric sums both halves
    assert set(two["val_ppl"]) == {"val/ppl", "val/even/ppl", "val/odd/ppl"}
    assert two["val_ppl"] == pytest.approx(one["val_ppl"], rel=1e-5)
    # the sharded checkpoint folder consolidates to the same full weights
    folder = tmp_path / "fsdp-2.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert max_diff(model_state(load_checkpoint(folder)), two["weights"]) == 0


def test_a_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    # rank 1 alone sees a NaN gradient at step 7: both ranks skip it, as one process skipping step 7 does
    one, two = parity_run(tmp_path, "single", 1, 7, 0), parity_run(tmp_path, "fsdp", 2, 7, 1)
    assert one["skipped"] == two["skipped"] == 1
    assert max_diff(one["weights"], two["weights"]) < 1e-5
    clean = parity_run(tmp_path, "single", 1)
    assert max_diff(one["weights"], clean["weights"]) > 1e-4  # the skip changed the run


# ---------------------------------------------------------------- the shipped config through `lory fit`

def fsdp_overrides(tmp_path: Path, data: Path) -> Path:
    """configs/lory-1.5b-32e-fsdp.yaml at test size: 2 CPU processes of one node, a 2-layer model, the
    test corpus. Its strategy section and bf16-mixed precision are used as shipped."""
    spec = {
        "trainer": {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "max_steps": 12,
                    "val_check_interval": 5, "limit_val_batches": 2, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "lory-1.5b-32e-fsdp"}}},
        "model": {"arch": {"seq_len": 32, "segment_len": 8, "n_layer": 2, "n_head": 2, "dim": 32, "hidden_dim": 48,
                            "num_experts": 4},
                  "training": {"dense_warmup": 0.25}, "optim": {"lr": 3.0e-3}},
        "data": {"data_dir": str(data), "vocab_size": 300, "batch_size": 4},
    }
    path = tmp_path / "test-size.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lory(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lory_lightning", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def losses(run: Path) -> dict[int, str]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.fixture(scope="module")
def fsdp_config(small_data, tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("fsdp")
    return tmp, ["--config", str(FSDP_CONFIG), "--config", str(fsdp_overrides(tmp, small_data))]


@pytest.fixture(scope="module")
def sharded_runs(fsdp_config):
    """An uninterrupted 12-step run, one killed at step 8, and its resume with --ckpt_path last."""
    tmp, config = fsdp_config
    full = lory(tmp, "fit", *config)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = lory(tmp, "fit", *config, "--trainer.callbacks+=faults.KillAt", "--trainer.callbacks.step=8")
    resumed = lory(tmp, "fit", *config, "--ckpt_path", "last")
    return tmp, config, full, killed, resumed


def test_kill_9_and_resume_last_from_a_sharded_folder_is_bit_exact(sharded_runs):
    tmp, _, full, killed, resumed = sharded_runs
    runs = tmp / "runs" / "lory-1.5b-32e-fsdp"
    assert "step 3: dense warmup over" in full.stdout + full.stderr  # the run upcycled sharded experts
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference, after = losses(runs / "version_0"), losses(runs / "version_1")
    assert sorted(reference) == list(range(12))
    assert sorted(after) == list(range(12))  # steps 0-4 kept from before the kill, 5-11 after the resume
    assert after == reference  # bit for bit (the CSV keeps the full float repr)
    last = runs / "version_1" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and sorted(p.name for p in last.iterdir())[:3] == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not list(last.parent.glob("*.tmp")) and not list(last.parent.glob("*.lory-old"))
    assert "validation after step 12:" in resumed.stdout


def test_every_command_that_takes_a_checkpoint_takes_the_sharded_folder(sharded_runs, small_data):
    tmp, config, *_ = sharded_runs
    folder = tmp / "runs" / "lory-1.5b-32e-fsdp" / "version_0" / "checkpoints" / "last.ckpt"
    state = model_state(load_checkpoint(folder))
    assert state["blocks.0.ffn.w_up"].shape == (4, 32, 48)  # whole, not one rank's half

    one_process = ["--trainer.devices", "1", "--trainer.strategy", "auto"]
    validated = lory(tmp, "validate", *config, *one_process, "--ckpt_path", str(folder))
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert "validation of" in validated.stdout
    generated = lory(tmp, "generate", "--ckpt_path", str(folder), "--prompt", "oven", "--max_new_tokens", "4")
    assert generated.returncode == 0, generated.stderr[-3000:]
    analyzed = lory(tmp, "analyze", "--ckpt_path", str(folder), "--data", str(small_data), "--output",
                    str(tmp / "analysis"), "--max_batches", "2")
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    exported = lory(tmp, "export", "--ckpt_path", str(folder), "--output", str(tmp / "hf"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads((tmp / "hf" / "config.json").read_text())["model_type"] == "lory"
    evaluated = lory(tmp, "evaluate", "--ckpt_path", str(folder), "--tasks", "lory_toy_ppl", "--limit", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # a one-process run initialized from the sharded folder starts from its weights
    init = lory(tmp, "fit", *config, *one_process, "--model.init_from", str(folder), "--trainer.max_steps", "1",
                "--trainer.logger.init_args.name", "from-sharded")
    assert init.returncode == 0, init.stderr[-3000:]
    assert f"initialized from {folder}" in init.stdout + init.stderr


def test_the_readme_torchrun_launch(fsdp_config):
    # README, "Multi-node": the torchrun line, at test size (1 node of 2 processes instead of 4 x 8).
    tmp, config = fsdp_config
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(["torchrun", "--nnodes", "1", "--nproc_per_node", "2", "--node_rank", "0",
                             "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--no-python",
                             "lory", "fit", *config, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                             "--trainer.logger.init_args.name", "torchrun"],
                            capture_output=True, text=True, env=ENV, cwd=tmp, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation after step 2:" in result.stdout
    assert (tmp / "runs" / "torchrun" / "version_0" / "checkpoints" / "last.ckpt" / "__1_0.distcp").is_file()


def test_one_file_checkpoints_and_a_sharded_validate(fsdp_config, sharded_runs):
    # save_distributed_checkpoint: false gathers the weights into one file on rank 0; a run resumes
    # from it on 2 processes. And `lory validate` of a sharded folder runs sharded too.
    tmp, config = fsdp_config
    one_file = ["--trainer.strategy.init_args.save_distributed_checkpoint", "false",
                "--trainer.logger.init_args.name", "one-file", "--trainer.val_check_interval", "2"]
    first = lory(tmp, "fit", *config, *one_file, "--trainer.max_steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp / "runs" / "one-file" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file() and model_state(load_checkpoint(last))["blocks.0.ffn.w_up"].shape == (4, 32, 48)
    resumed = lory(tmp, "fit", *config, *one_file, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "validation after step 4:" in resumed.stdout
    folder = tmp / "runs" / "lory-1.5b-32e-fsdp" / "version_0" / "checkpoints" / "last.ckpt"
    validated = lory(tmp, "validate", *config, "--ckpt_path", str(folder))
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert "validation of" in validated.stdout


def per_domain_table(fsdp_config, *setting: str) -> dict[str, float]:
    """The final per-domain perplexity table of a 4-step sharded run with ``setting`` (flag, value)."""
    tmp, config = fsdp_config
    name = "-".join(setting).replace("--", "").replace(".", "-") or "plain"
    result = lory(tmp, "fit", *config, *setting, "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
                  "--trainer.logger.init_args.name", f"table-{name}")
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split()[0]: float(line.split()[1]) for line in result.stdout.splitlines()
            if line.split()[:1] in (["cooking"], ["space"], ["law"], ["all"])}


@pytest.fixture(scope="module")
def plain_table(fsdp_config) -> dict[str, float]:
    """The same 4 steps eager, on the torch path (model.kernel auto on CPU): what both tests below compare with."""
    return per_domain_table(fsdp_config)


def test_sharded_training_with_compiled_blocks(fsdp_config, plain_table):
    # model.compile under the sharded strategy: blocks compiled, then sharded; the same run as eager
    table = per_domain_table(fsdp_config, "--model.compile", "true")
    assert set(table) == {"cooking", "space", "law", "all"}
    assert table == pytest.approx(plain_table, rel=1e-3)


def test_sharded_training_with_the_fused_kernels(fsdp_config, plain_table):
    # model.kernel: triton under the sharded strategy (Triton's interpreter here: TRITON_INTERPRET from
    # conftest reaches the ranks): FSDP2 hands the gathered expert weights to the custom operators as
    # plain tensors; 4 steps under the config's bf16-mixed precision give the torch path's per-domain
    # perplexities within bf16 rounding (the kernels merge in fp32 on chip, the torch path in bf16).
    table = per_domain_table(fsdp_config, "--model.arch.kernel", "triton")
    assert set(table) == {"cooking", "space", "law", "all"}
    assert table == pytest.approx(plain_table, rel=1e-2)
