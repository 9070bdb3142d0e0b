"""What every stage of `lory prepare` starts from: the work folder's plan (the typed recipe, the output
folder, the input files), its file names, and how a stage's keys are dealt to its tasks."""

from __future__ import annotations

import dataclasses
import heapq
import json
from pathlib import Path

import numpy as np

from ..shards import atomic_write_bytes, npy_bytes
from ..sources import InputFile
from .config import Recipe
from .workfiles import WorkFiles


class Work:
    """The plan of a run, as every stage reads it: the recipe, the output folder, the fingerprint
    (the manifest's first keys) and the input files; ``files`` names the work folder's files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.at = WorkFiles(self.folder)
        plan = json.loads(self.at.plan.read_text("utf-8"))
        self.recipe = Recipe(**plan["recipe"])
        self.out = Path(plan["output"])
        self.fingerprint = plan["fingerprint"]
        self.files = [InputFile(f["location"], f["kind"], f["default_domain"]) for f in plan["files"]]
        self.val_file = [bool(f["val"]) for f in plan["files"]]  # a --val_inputs file (else held out by hash)

    @staticmethod
    def write_plan(folder: Path, recipe: Recipe, output: str, fingerprint: dict, train: list[InputFile],
                   val: list[InputFile]) -> None:
        files = [{**dataclasses.asdict(f), "val": is_val} for group, is_val in ((train, False), (val, True))
                 for f in group]
        plan = {"recipe": dataclasses.asdict(recipe), "output": output, "fingerprint": fingerprint, "files": files}
        atomic_json(WorkFiles(folder).plan, plan)


def read_plan(folder: Path) -> dict | None:
    """The plan of a stopped run in ``folder`` (None: none, or one this version cannot continue)."""
    try:
        plan = json.loads(WorkFiles(folder).plan.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and "recipe" in plan else None


def atomic_json(path: Path, value: object) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def atomic_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, npy_bytes(array))


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text("utf-8"))


def mine(n: int, rank: int, tasks: int) -> range:
    """The keys 0..n-1 task ``rank`` of ``tasks`` owns: every tasks-th one (the split does not change
    what a key's output is, only who writes it)."""
    return range(rank, n, tasks)


def balanced(sizes: np.ndarray, rank: int, tasks: int) -> list[int]:
    """The keys task ``rank`` of ``tasks`` owns when key k costs about ``sizes[k]``: largest first,
    each to the task with the least work so far, ties to the lower rank (longest-processing-time
    scheduling: round robin gave one of two tasks 71k of 99k documents to order). Like ``mine``, it
    decides only who writes a key."""
    load = [(0, t) for t in range(tasks)]  # (work so far, task): a heap
    owned = []
    for key in sorted(range(len(sizes)), key=lambda k: (-int(sizes[k]), k)):
        work, task = heapq.heappop(load)
        heapq.heappush(load, (work + int(sizes[key]), task))
        if task == rank:
            owned.append(key)
    return owned


def token_dtype(vocab: int) -> type:
    """The dtype token ids are stored in: uint16 while the vocabulary fits, else int32."""
    return np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32
