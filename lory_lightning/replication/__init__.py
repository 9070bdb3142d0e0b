"""`lory replicate`: the paper's claims at small scale, over seeds, with intervals (LORY.md section 5).

study.py decides the runs and keeps each finished one as a result file; stats.py holds the paired
t intervals and verdicts; report.py writes REPLICATION.md and its figures from the result files alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .study import DEFAULT_SEEDS, DEFAULT_STEPS, HELDOUT, plan, train_runs


def replicate(output: str = "runs/replicate", results: str = "replication-results",
              report_path: str | None = "REPLICATION.md", seeds: Sequence[int] = DEFAULT_SEEDS,
              steps: int = DEFAULT_STEPS, inputs: Sequence[str] = (), heldout: Sequence[str] | None = None,
              seq_len: int = 512, model: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
              log: str | None = None, train: bool = True, allow_dirty: bool = False, print_fn=print) -> dict[str, Any]:
    """Train every run of the study whose result file is missing or stale (``train``), then write the
    report from all result files in ``results`` (``report_path`` None: no report). Training refuses
    a tree whose tracked source differs from its commit unless ``allow_dirty`` (study.refuse_uncommitted)."""
    if log and not Path(log).is_file():  # fail before hours of training, not after
        raise FileNotFoundError(f"--log {log}: no such file (a markdown log of what was tried, put in the report)")
    heldout = [str(HELDOUT)] if heldout is None else list(heldout)
    done: dict[str, str] = {}
    if train:
        done = train_runs(plan(seeds), Path(output), Path(results), steps, inputs, heldout, dict(data or {}),
                          {"seq_len": seq_len, **(model or {})}, print_fn, allow_dirty)
    out: dict[str, Any] = {"runs": done}
    if report_path is not None:
        from .report import write_report

        out["report"] = write_report(Path(results), Path(report_path), Path(log).read_text() if log else None)
    return out
