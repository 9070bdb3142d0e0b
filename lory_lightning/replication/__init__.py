"""`lory replicate`: the paper's claims at small scale, over seeds, with intervals (LORY.md section 5).

study.py decides the runs of each study (the first; the second: ordering with room to act, equal
compute, token-level baselines) and keeps each finished one as a result file; passages.py cuts the
second study's corpus; cost.py measures its equal-compute ratio; stats.py holds the paired t
intervals, verdicts and power; report.py and report_second.py write each study's report and
figures from the result files alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .study import BASE_CONFIG, DEFAULT_SEEDS, DEFAULT_STEPS, DESIGNS, HELDOUT, STEP_TIME, Design, plan, train_runs

DEFAULT = ""  # report_path: the study's own report (None: write no report)


def replicate(output: str | None = None, results: str | None = None, report_path: str | None = DEFAULT,
              seeds: Sequence[int] = DEFAULT_SEEDS, steps: int = DEFAULT_STEPS, inputs: Sequence[str] = (),
              heldout: Sequence[str] | None = None, seq_len: int | None = None, model: dict[str, Any] | None = None,
              data: dict[str, Any] | None = None, log: str | None = None, train: bool = True,
              allow_dirty: bool = False, study: str = "first", only: Sequence[str] = (),
              print_fn=print) -> dict[str, Any]:
    """Train every run of the study whose result file is missing or stale (``train``), then write the
    report from all result files in ``results`` (``report_path`` None: no report). Training refuses
    a tree whose tracked source differs from its commit unless ``allow_dirty`` (study.refuse_uncommitted).
    ``study``: "first" or "second" (study.DESIGNS); folders default to the study's own."""
    if study not in DESIGNS:
        raise ValueError(f"--study must be one of {', '.join(DESIGNS)}, got {study!r}")
    design = DESIGNS[study]
    if log and not Path(log).is_file():  # fail before hours of training, not after
        raise FileNotFoundError(f"--log {log}: no such file (a markdown log of what was tried, put in the report)")
    output = output or ("runs/replicate" if study == "first" else f"runs/replicate-{study}")
    results_dir = Path(results or design.results)
    heldout = [str(HELDOUT)] if heldout is None else list(heldout)
    runs = plan(seeds, design, only)  # refuses bad seeds and settings before anything is written
    thinned = sorted({r.setting for r in runs if "keep_fraction" in r.prepare})
    if train and inputs and thinned:  # their shares name the sample corpus's domains (study.NEAR_COPY_KEEP)
        raise ValueError(f"{', '.join(thinned)} thin the sample corpus's domains to the near-copy probe's shares; "
                         "with --inputs, leave them out (--only the other settings)")
    done: dict[str, str] = {}
    if train:
        data = dict(data or {})
        if design.batch_size is not None:
            data.setdefault("batch_size", design.batch_size)
        model = {"seq_len": seq_len or design.seq_len, **(model or {})}
        inputs = list(inputs)
        if design.passage_chars:
            inputs = cut_corpus(inputs, data, Path(output) / f"passages-{design.passage_chars}", design.passage_chars)
        ratio = None
        if any(r.spec.equal_compute for r in runs):
            ratio = measured_step_ratio(results_dir, design, model, data, print_fn)
        done = train_runs(runs, Path(output), results_dir, steps, inputs, heldout, data, model, print_fn, allow_dirty,
                          ratio)
    out: dict[str, Any] = {"runs": done}
    if report_path is not None:
        from .report import write_report
        from .report_second import write_second_report

        write = write_report if study == "first" else write_second_report
        out["report"] = write(results_dir, Path(report_path or design.report), Path(log).read_text() if log else None)
    return out


def cut_corpus(inputs: list[str], data: dict[str, Any], folder: Path, max_chars: int) -> list[str]:
    """The study's inputs cut into passages (passages.py) in ``folder``; for the sample corpus its own
    held-out files too, set as ``data["val_inputs"]`` so validation is the same documents as the first
    study's (cut likewise), never a fraction of the training files."""
    from ..data.prepare import sample_inputs
    from .passages import write_passage_corpus

    def cut(files: list[str]) -> list[str]:
        return [str(p) for p in write_passage_corpus(files, folder, max_chars)]

    if inputs:
        return cut(inputs)
    data.setdefault("val_inputs", cut(sample_inputs("val")))
    return cut(sample_inputs("train"))


def measured_step_ratio(results: Path, design: Design, model: dict[str, Any], data: dict[str, Any],
                        print_fn=print) -> float:
    """Lory's training step over dense's on this machine (cost.step_time_ratio), measured once and kept
    in ``results/step-time.json`` beside the result files, so every equal-compute run uses one ratio."""
    import yaml

    from ..atomic import atomic_file
    from ..model import ModelConfig
    from .cost import step_time_ratio

    path = results / STEP_TIME
    if path.exists():
        return float(json.loads(path.read_text())["ratio"])
    base = yaml.safe_load(BASE_CONFIG.read_text())
    vocab = data.get("vocab_size", base["data"]["vocab_size"])
    lory = ModelConfig(**{**base["model"]["arch"], **model, "ffn": "lory", "vocab_size": vocab})
    batch = data.get("batch_size", base["data"]["batch_size"])
    print_fn(f"measuring the step-time ratio of Lory to dense ({lory.seq_len} tokens x {batch}) for the "
             f"equal-compute runs of the {design.name} study")
    measured = step_time_ratio(lory, lory.replace(ffn="dense"), batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write((json.dumps(measured, indent=1, sort_keys=True) + "\n").encode())
    print_fn(f"Lory step {measured['ms']:.0f} ms, dense {measured['reference_ms']:.0f} ms: ratio {measured['ratio']} "
             f"({path})")
    return float(measured["ratio"])
