"""The engine `lory prepare` runs its stages on: datatrove executors (completion records per task, so
a killed run continues; task logs in the work folder).

Slurm: datatrove's SlurmPipelineExecutor, one array job per stage, each depending on the one before;
`lory prepare` submits them and returns, and the folder is finished when its manifest.json appears.

Local: datatrove's LocalPipelineExecutor with its pool replaced. Its pool (multiprocess.Pool's
imap_unordered) waits forever for a task whose process was killed (measured: a SIGKILLed task hung
the run); concurrent.futures raises BrokenProcessPool instead, which `lory prepare` turns into a
message. Completion records, task logs and the skipping of completed tasks are datatrove's.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor


@dataclass(frozen=True)
class StageTask:
    """One stage as a datatrove pipeline step: ``(data, rank, world_size)`` -> runs the stage's task."""

    function: Callable[[Path, int, int], None]
    work: str

    def __call__(self, data: object, rank: int = 0, world_size: int = 1) -> None:
        self.function(Path(self.work), rank, world_size)


class LocalExecutor(LocalPipelineExecutor):
    """``workers`` tasks at once on this machine (1: one after another in this process)."""

    def run(self) -> None:
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if self.workers == 1:
            for rank in ranks:
                self._run_for_rank(rank)
            return
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=share_cores, initargs=(self.workers,)) as pool:
            for done in as_completed([pool.submit(self._run_for_rank, rank) for rank in ranks]):
                done.result()  # a task's exception, or BrokenProcessPool if a worker died


def share_cores(workers: int) -> None:
    """In a pool process: the tokenizer's threads (HF tokenizers' rayon pool, created at its first
    parallel call) get this worker's share of the cores, so that ``workers`` workers do not each start
    one thread per core (measured: encode scaled 1.41x from 1 to 2 workers on 2 cores while one
    worker's tokenizer already used both). Token ids do not depend on the thread count."""
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(threads)


def local_stage(function: Callable[[Path, int, int], None], work: Path, name: str, tasks: int,
                workers: int) -> LocalExecutor:
    # With more than one worker every task runs in a pool process, one-task stages too: the memory a
    # stage held goes back with its process instead of staying in this one (and in every worker
    # forked from it later).
    return LocalExecutor(pipeline=[StageTask(function, str(work))], tasks=tasks,
                         workers=1 if workers == 1 else max(2, min(workers, tasks)),
                         logging_dir=str(logs(work, name, tasks)))


def logs(work: Path, name: str, tasks: int) -> Path:
    """A stage's datatrove folder (task logs, completion records), one per task count: rank r of 3
    tasks is not rank r of 2, so a run continued with another --tasks redoes the stages it had not
    finished instead of skipping work a completion record under the other count stood for."""
    return work / "logs" / f"{name}-{tasks}"


@dataclass(frozen=True)
class SlurmSettings:
    """Where and how each stage's array job runs (sbatch directives)."""

    partition: str
    time: str = "24:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 4
    env_command: str | None = None  # run before each task, e.g. "source /shared/lory/.venv/bin/activate"
    job_name: str = "lory-prepare"


def submit_slurm(stages: list[tuple[str, Callable[[Path, int, int], None], int]], work: Path,
                 settings: SlurmSettings) -> list[str]:
    """Submit every stage as a Slurm array job of its tasks, each after the one before; returns the
    job ids (stages whose tasks all completed are not submitted: their id is -1)."""
    previous, executors = None, []
    for name, function, tasks in stages:
        previous = SlurmPipelineExecutor(
            pipeline=[StageTask(function, str(work))], tasks=tasks, time=settings.time, partition=settings.partition,
            cpus_per_task=settings.cpus_per_task, mem_per_cpu_gb=settings.mem_per_cpu_gb,
            job_name=f"{settings.job_name}-{name}", env_command=settings.env_command, depends=previous,
            logging_dir=str(logs(work, name, tasks)), slurm_logs_folder=str(work / "slurm" / name), with_srun=False)
        executors.append(previous)
    previous.run()  # launches its dependencies first
    return [str(e.job_id) for e in executors]
