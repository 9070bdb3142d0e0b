#!/usr/bin/env python3
"""`lory prepare` as benchmarks/prepare_scale.py runs it: the CLI, plus each stage task's peak resident
memory appended to the JSON-lines file $LORY_STAGE_RSS (one line per task: stage, rank, MB).

    LORY_STAGE_RSS=rss.jsonl python benchmarks/prepare_child.py --inputs corpus/ --output out/ --workers 2

A task's peak is its process's (getrusage), so with one worker, where every task runs in this
process, each line is the peak so far; with two or more each stage has pool processes of its own.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys

from lory_lightning.data.prepare.pipeline import STAGES


def _recorded(function):  # noqa: ANN001, ANN202
    @functools.wraps(function)  # same name and module: pool workers unpickle the wrapper
    def task(folder, rank, tasks):  # noqa: ANN001, ANN202
        function(folder, rank, tasks)
        with open(os.environ["LORY_STAGE_RSS"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"stage": function.__name__, "rank": rank,
                                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\n")
    return task


def main() -> None:
    for stage in STAGES:  # Stage.run looks the function up in its module when the stage runs
        setattr(stage.module, stage.name, _recorded(stage.run))
    from lory_lightning.cli import main as lory

    sys.exit(lory(["prepare", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
