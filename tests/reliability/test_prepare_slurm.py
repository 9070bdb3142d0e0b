"""`lory prepare --executor slurm` on an emulated cluster: a fake `sbatch` records each job, the test
then runs every array task in submission order (the order the dependencies allow), and the folder
equals a local prepare's byte for byte."""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.isolated]  # one process per array task: about a minute

FAKE_SBATCH = """#!{python}
import json, os, pathlib, sys
log = pathlib.Path(os.environ["FAKE_SLURM_LOG"])
n = len(list(log.glob("*.json")))
(log / f"{{n:03d}}.json").write_text(json.dumps({{"args": sys.argv[1:-1], "script": pathlib.Path(sys.argv[-1]).read_text()}}))
print(f"Submitted batch job {{1000 + n}}")
"""


def guide_commands(heading: str) -> list[list[str]]:
    text = (ROOT / "docs" / "data.md").read_text().split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("  #")[0]) for line in text.strip().splitlines()]


def test_the_readme_commands_at_scale_locally_and_on_an_emulated_slurm_cluster(tmp_path):
    # docs/data.md, "Your own corpus at scale": its three commands as written, in a fresh folder; only sizes
    # shrunk (100,000 documents -> 3,000; --tasks 64 -> 2); the cluster is a fake sbatch and this test.
    generate, local, slurm = guide_commands("## Your own corpus at scale")
    assert generate[:4] == ["python", "benchmarks/synthetic_corpus.py", "--documents", "100000"]
    assert local[:2] == slurm[:2] == ["lory", "prepare"] and "--executor" in slurm
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch-log"
    bin_dir.mkdir()
    log.mkdir()
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").symlink_to(Path(sys.executable).parent / "activate")
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH.format(python=sys.executable))
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    scontrol = bin_dir / "scontrol"  # `scontrol show hostnames` expands the node list inside a job
    scontrol.write_text("#!/bin/sh\necho node1\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_LOG": str(log)}

    def run(argv, **extra_env):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env={**env, **extra_env}, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run([sys.executable, *generate[1:3], "3000", *generate[4:]])
    run([sys.executable, "-m", "lory_lightning", *local[1:]])
    mine = tmp_path / "data" / "mine"
    local_files = {p.name: p.read_bytes() for p in mine.iterdir() if p.name != ".lory-prepare"}
    assert "manifest.json" in local_files
    shutil.rmtree(mine)

    slurm = [a if a != "64" else "2" for a in slurm]
    submitted = run([sys.executable, "-m", "lory_lightning", *slurm[1:]])
    assert "submitted Slurm jobs" in submitted.stdout and not (mine / "manifest.json").exists()
    meanwhile = subprocess.run([sys.executable, "-m", "lory_lightning", *local[1:]], capture_output=True, text=True,
                               cwd=tmp_path, env=env, timeout=300)  # a local run must not write beside the jobs
    assert meanwhile.returncode == 1 and "its stages were submitted to Slurm (jobs 1000" in meanwhile.stderr
    jobs = [json.loads(p.read_text()) for p in sorted(log.glob("*.json"))]
    stage_jobs = [j for j in jobs if "launch_pickled_pipeline" in j["script"]]
    assert [re.search(r"--job-name=lory-prepare-(\w+)", j["script"]).group(1) for j in stage_jobs] == [
        "read", "dedup", "merge", "fit", "encode", "cluster", "assign", "split", "order", "pack",
        "shards", "finish"]
    arrays = [int(re.search(r"--array=0-(\d+)", j["script"]).group(1)) + 1 for j in stage_jobs]
    assert arrays == [2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 1]  # parallel stages: --tasks 2
    assert all("--partition=cpu" in j["script"] and "source .venv/bin/activate" in j["script"] for j in stage_jobs)
    ids = {j["script"]: 1000 + i for i, j in enumerate(jobs)}
    for before, after in zip(stage_jobs, stage_jobs[1:]):  # each stage waits for the one before
        assert any(a.startswith("--dependency=") and str(ids[before["script"]]) in a for a in after["args"])
    for i, (job, n) in enumerate(zip(stage_jobs, arrays)):  # the cluster: every array task, stage after stage
        script = tmp_path / f"job-{i}.sh"
        script.write_text(job["script"])
        for task in range(n):
            run(["bash", str(script)], SLURM_ARRAY_TASK_ID=str(task), RUN_OFFSET="0", SLURM_NODELIST="node1")
    for name, data in sorted(local_files.items()):  # the cluster's folder is the local run's, byte for byte
        assert (mine / name).read_bytes() == data, name
    again = run([sys.executable, "-m", "lory_lightning", *local[1:]])  # finished: up to date, work folder removed
    assert "is up to date" in again.stderr and not (mine / "_work.tmp").exists()
