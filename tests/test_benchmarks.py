"""The GPU benchmark of the paper's Table 3 runs end to end at a tiny size on CPU, so a GPU run is one call."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.isolated  # runs the script in a child process


def test_table3_runs_end_to_end_at_tiny_size(tmp_path):
    # the torch path and the fused kernels (Triton's interpreter on CPU: TRITON_INTERPRET from conftest)
    out, raw = tmp_path / "table3.md", tmp_path / "table3.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table3.py"), "--device", "cpu", "--dtype", "bf16",
                             "--dim", "32", "--n_head", "2", "--hidden", "48", "--n_layer", "1", "--seq_len", "64",
                             "--segment_len", "16", "--batch", "2", "--vocab", "64", "--experts", "8",
                             "--modes", "eager", "--warmup", "1", "--steps", "1", "--passes", "2", "--peak_tflops", "1",
                             "--peak_gbps", "100", "--out", str(out), "--json", str(raw)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.read_text().splitlines() if line.startswith("| ") and not line.startswith("| variant")}
    assert list(rows) == ["dense_1l", "lory_8e_1l_torch", "lory_8e_1l_triton"]
    col = {name: i for i, name in enumerate(["layers", "kernel", "mode", "step", "spread", "tokens", "memory", "mfu",
                                              "x_dense", "paper", "target", "flop_floor", "floor_ms", "x_floor"])}
    assert rows["dense_1l"][col["x_dense"]] == "1.000"  # each ratio against dense in the same mode
    assert rows["lory_8e_1l_torch"][col["paper"]] == "1.18" and rows["lory_8e_1l_triton"][col["kernel"]] == "triton"
    assert rows["lory_8e_1l_triton"][col["target"]].startswith("<= 1.10: ")  # met or missed, with the number
    assert rows["lory_8e_1l_torch"][col["target"]] == "-"
    assert 1.0 < float(rows["lory_8e_1l_torch"][col["flop_floor"]])  # the merges' extra arithmetic
    assert all(r[col["mfu"]].endswith("%") and float(r[col["floor_ms"]]) > 0 for r in rows.values())
    assert "2 passes" in out.read_text().splitlines()[0]
    numbers = json.loads(raw.read_text())
    for name, row in numbers["rows"].items():  # the raw per-step times behind every row
        steps = [t for run in numbers["runs"][name] for t in run["steps"]]
        assert len(steps) == 2 and row["step_s"] == pytest.approx(sum(steps) / 2)
    assert numbers["rows"]["lory_8e_1l_torch"]["bytes"]["merged"] > 0 == numbers["rows"]["lory_8e_1l_triton"]["bytes"]["merged"]


def test_the_roofline_counts_merged_matrices_only_for_the_torch_path():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import roofline

    from lory_lightning.model import ModelConfig

    cfg = ModelConfig(vocab_size=64, seq_len=64, segment_len=16, n_layer=2, dim=32, hidden_dim=48, num_experts=4)
    torch_bytes, fused_bytes = roofline.step_bytes(cfg, 2, "torch"), roofline.step_bytes(cfg, 2, "triton")
    # 2 x 64 tokens = 8 segments; per segment and layer 6 passes of 3 d f bf16 values
    assert torch_bytes["merged"] == 6 * 8 * 2 * 3 * 32 * 48 * 2 and fused_bytes["merged"] == 0
    assert {k: v for k, v in torch_bytes.items() if k != "merged"} == {k: v for k, v in fused_bytes.items() if k != "merged"}
    dense = roofline.step_bytes(cfg.replace(ffn="dense"), 2, "torch")
    assert dense["merged"] == 0 and dense["parameters"] < torch_bytes["parameters"]
    assert roofline.floor_seconds(2e12, 1e9, 1e12, 1e12) == 2.0 and roofline.floor_seconds(1, 3e12, 1e12, 1e12) == 3.0


def test_data_scale_benchmark_runs_end_to_end_at_tiny_size(small_data, tmp_path):
    import json

    out, raw = tmp_path / "data_scale.md", tmp_path / "data_scale.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_scale.py"), "--data", str(small_data),
                             "--batches", "1", "50", "--batch_size", "2", "--rounds", "1", "--out", str(out),
                             "--json", str(raw)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads(raw.read_text())
    assert [r["batches"] for r in numbers["resume"]] == [1, 50]
    assert numbers["resume"][1]["replay_seconds"] == pytest.approx(50 * 2 / numbers["stream_sequences_per_s"])
    assert [r["what"] for r in numbers["verification"]] == [
        "setup (manifest + a stat per shard)", f"read + sha256 all {numbers['train_shards']} training shards (at every read)",
        f"parse all {numbers['train_shards']} (decompress to the gzip trailer, untar, load)"]
    assert "| 50 |" in out.read_text() and "target: within 2x" in out.read_text()


def test_benchmarks_md_shows_the_committed_cpu_results():
    # Each CPU number lives once: BENCHMARKS.md shows benchmarks/results.md, the committed output of
    # `python benchmarks/run.py`, line for line (a rerun that is not copied over fails here).
    results = (ROOT / "benchmarks" / "results.md").read_text().splitlines()
    shown = set((ROOT / "BENCHMARKS.md").read_text().splitlines())
    tables = [line for line in results if line.startswith("|") or line.startswith("LoryDataModule streams")]
    assert len(tables) > 40
    assert [line for line in tables if line not in shown] == []
