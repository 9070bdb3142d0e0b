"""The GPU benchmark of the paper's Table 3 runs end to end at a tiny size on CPU, so a GPU run is one call."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.isolated  # runs the script in a child process


def test_table3_runs_end_to_end_at_tiny_size(tmp_path):
    out = tmp_path / "table3.md"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table3.py"), "--device", "cpu", "--dtype", "bf16",
                             "--dim", "32", "--n_head", "2", "--hidden", "48", "--n_layer", "1", "--seq_len", "64",
                             "--segment_len", "16", "--batch", "2", "--vocab", "64", "--experts", "8", "16",
                             "--warmup", "1", "--steps", "1", "--passes", "2", "--peak_tflops", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.read_text().splitlines() if line.startswith("| ") and not line.startswith("| variant")}
    assert list(rows) == ["dense", "lory_8e", "lory_16e", "lory_8e_plain"]
    assert rows["dense"][5] == "1.000"  # step x dense
    assert rows["lory_8e"][6] == "1.18" and rows["lory_16e"][6] == "1.27"  # the paper's ratios beside ours
    assert rows["lory_8e_plain"][6] == "-"
    # FLOP floor: 1 + the merges over dense (model/config.py's count), larger with more experts
    assert 1.0 < float(rows["lory_8e"][7]) < float(rows["lory_16e"][7])
    assert all(r[4].endswith("%") for r in rows.values())  # MFU against the given peak
    assert "2 passes" in out.read_text().splitlines()[0]


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
