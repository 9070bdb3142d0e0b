"""`lory prepare`: raw documents -> tokenizer, similarity-ordered packed sequences, WebDataset shards.

This module runs the command: the recipe's fingerprint, the output folder (folder.py: prepare's
own, locked), the stages in order (pipeline.py) on an engine (engine.py: datatrove, local or
Slurm). Every file is written under a temporary name and renamed when complete, and the manifest
comes last, so a killed run leaves nothing that looks finished; running it again continues from
the stage tasks that completed, and a folder whose manifest matches the recipe and whose shards
verify is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from ...atomic import TMP_SUFFIX
from ...errors import with_path
from ..location import sha256_of
from ..manifest import FORMAT_VERSION, MANIFEST, SPLITS, ManifestError, load_manifest
from ..shards import verify_shards
from ..sources import InputFile, input_files
from ..tokenizer import load_tokenizer, tokenizer_files
from .config import PrepareConfig
from .folder import OutputLock, clean
from .pipeline import STAGES
from .work import Work, atomic_json, read_plan
from .workfiles import WorkFiles

WORK_DIR = "_work" + TMP_SUFFIX


def _fingerprint(cfg: PrepareConfig, train_files: list[InputFile], val_files: list[InputFile]) -> dict:
    """What the output depends on: the config (output folder aside) and the inputs' content."""
    settings = dataclasses.asdict(cfg.recipe)
    files = {"train": [{"name": p.name, "sha256": sha256_of(p.location)} for p in train_files],
             "val": [{"name": p.name, "sha256": sha256_of(p.location)} for p in val_files]}
    if cfg.tokenizer:
        files["tokenizer"] = [{"name": p.name, "sha256": sha256_of(str(p))} for p in tokenizer_files(cfg.tokenizer)]
        # The given tokenizer's size is the truth; --vocab_size is not used and must not be recorded.
        settings["vocab_size"] = load_tokenizer(cfg.tokenizer)[0].get_vocab_size()
    return {"format_version": FORMAT_VERSION, "config": settings, "inputs": files}


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet, self.t0, self.stages = quiet, time.perf_counter(), {}
        self.last = self.t0

    def stage(self, name: str, message: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self.last, 3)
        self.last = now
        if not self.quiet:
            print(f"[prepare] {name:9s} {self.stages[name]:6.2f}s  {message}", file=sys.stderr, flush=True)


def prepare(cfg: PrepareConfig, quiet: bool = False, overwrite: bool = False, wait: bool = False) -> dict:
    """Run the pipeline; returns the manifest. A folder already prepared with this config is kept.

    overwrite: rebuild even a folder that is up to date or was prepared with another config.
    wait: if another process is preparing the folder, wait for it (the data module, where every
        node may prepare one shared folder) instead of stopping with a message (the CLI).
    A run killed midway leaves its work folder: the same command continues from the stage tasks
    it had completed (another config or other inputs start over).
    """
    out = Path(cfg.output)
    train_inputs, val_inputs = cfg.resolved_inputs()
    train_files, val_files = input_files(train_inputs), (input_files(val_inputs) if val_inputs else [])
    fingerprint = _fingerprint(cfg, train_files, val_files)
    _refuse_validation_from_training(fingerprint["inputs"], val_files)
    with OutputLock(out, wait):
        work = out / WORK_DIR
        if (out / MANIFEST).is_file() and not overwrite:
            shutil.rmtree(work, ignore_errors=True)  # scratch of a run killed after its manifest
            existing = _up_to_date(out, fingerprint, quiet)
            if existing is not None:
                return existing
        resumed = not overwrite and _same_plan(work, fingerprint)
        submitted = WorkFiles(work).submitted
        if resumed and submitted.is_file() and cfg.executor == "local":
            jobs = json.loads(submitted.read_text("utf-8"))["jobs"]
            raise FileExistsError(f"{out}: its stages were submitted to Slurm (jobs {', '.join(jobs)}): wait for "
                                  f"{out / MANIFEST} to appear, run the same --executor slurm command again to "
                                  "resubmit what did not complete, or pass --overwrite to start over here")
        if not resumed:
            clean(out)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            Work.write_plan(work, cfg.recipe, str(out), fingerprint, train_files, val_files)
        elif not quiet:
            print(f"[prepare] continuing the run in {work}: completed stage tasks are kept", file=sys.stderr)
        if cfg.executor == "slurm":
            return submit(work, cfg, quiet)
        try:
            timings = run_stages(work, cfg, _Log(quiet))
        except OSError as err:  # a full disk names no file: name the folder being written
            raise with_path(err, out) from err
        manifest = load_manifest(out)
        shutil.rmtree(work, ignore_errors=True)  # only once the manifest is written
        manifest["timings_s"] = timings  # returned for reports; kept out of the file (determinism)
        return manifest


def _refuse_validation_from_training(inputs: dict, val_files: list[InputFile]) -> None:
    """A --val_inputs file whose content is also among --inputs: each of its documents would be
    dropped as an exact duplicate of a training one, and the run would end saying only that no
    validation sequence is left."""
    train = {f["sha256"] for f in inputs["train"]}
    for entry, file in zip(inputs["val"], val_files):
        if entry["sha256"] in train:
            raise ValueError(f"--val_inputs {file.location} is also in --inputs (the same content): every validation "
                             "document would be dropped as an exact duplicate of a training one; give held-out "
                             "files, or no --val_inputs to hold out --val_fraction of the documents")


def _same_plan(work: Path, fingerprint: dict) -> bool:
    """Whether ``work`` holds a stopped run of these settings on these inputs (then it continues,
    with any engine settings: they change no byte of the output)."""
    plan = read_plan(work)
    return plan is not None and plan.get("fingerprint") == fingerprint


def run_stages(work: Path, cfg: PrepareConfig, log: "_Log") -> dict[str, float]:
    """Every stage (pipeline.STAGES) on the chosen engine, in order; a completed task is skipped.

    executor "local": datatrove's LocalPipelineExecutor, ``workers`` tasks at once (1: in this
    process). The parallel stages run ``tasks`` tasks (0: as many as workers); what they write
    does not depend on either number.
    """
    from concurrent.futures.process import BrokenProcessPool

    from loguru import logger

    from .engine import local_stage

    tasks = cfg.tasks or cfg.workers
    logger.disable("datatrove")  # our own one line per stage; datatrove's task logs stay in the work folder
    try:
        for stage in STAGES:
            try:
                local_stage(stage.run, work, stage.name, tasks if stage.key else 1, cfg.workers).run()
            except BrokenProcessPool as err:
                raise ChildProcessError(f"a `lory prepare` worker process died in stage {stage.name!r} (killed, or "
                                        "out of memory): run the same command again, it continues from the tasks "
                                        "that completed") from err
            # read back from the stage's small outputs: this process forks every later stage's
            # workers, and what it holds, they hold too
            log.stage(stage.name, stage.summary(Work(work)))
    finally:
        logger.enable("datatrove")
    return dict(log.stages)


def _up_to_date(out: Path, fingerprint: dict, quiet: bool) -> dict | None:
    """The existing manifest if it matches the config and inputs and every shard verifies; None to rebuild."""
    try:
        existing = load_manifest(out)
    except ManifestError as err:
        print(f"[prepare] {err}: rebuilding", file=sys.stderr)
        return None
    if {k: existing.get(k) for k in fingerprint} != fingerprint:
        raise FileExistsError(f"{out} holds data prepared with another config or other inputs; "
                              "choose another --output or pass --overwrite")
    problems = [p for split in SPLITS for p in verify_shards(out, existing["splits"][split]["shards"])]
    if problems:
        print(f"[prepare] {len(problems)} shard(s) fail verification ({problems[0].message}"
              f"{', ...' if len(problems) > 1 else ''}): rebuilding {out}", file=sys.stderr)
        return None
    if not quiet:
        print(f"[prepare] {out} is up to date (manifest matches config and inputs, every shard verifies)",
              file=sys.stderr)
    return existing


def submit(work: Path, cfg: PrepareConfig, quiet: bool) -> dict:
    """Submit the stages to Slurm and return at once: {"submitted": job ids, "manifest": where it will be}."""
    from .engine import SlurmSettings, submit_slurm

    tasks = cfg.tasks or 1
    settings = SlurmSettings(cfg.slurm_partition, cfg.slurm_time, cfg.slurm_cpus_per_task, cfg.slurm_mem_per_cpu_gb,
                             cfg.slurm_env_command)
    jobs = submit_slurm([(s.name, s.run, tasks if s.key else 1) for s in STAGES], work, settings)
    atomic_json(WorkFiles(work).submitted, {"jobs": jobs})  # a local run on this folder now waits for them
    manifest = str(Path(cfg.output) / MANIFEST)
    if not quiet:
        print(f"[prepare] submitted {len(jobs)} Slurm jobs ({', '.join(jobs)}); the folder is finished when {manifest} "
              f"appears (task logs: {work / 'logs'}); the same command again continues a stopped run", file=sys.stderr)
    return {"submitted": jobs, "manifest": manifest}
