"""`lory prepare` as a wing of its own: documents in, a folder of similarity-ordered WebDataset shards
out (LORY.md section 4). The data module reads the folder (data/datamodule.py); this package writes it.

    config.py      the typed recipe (what decides the output) and where and how it runs
    run.py         the command: fingerprint, the output folder, the stages on an engine
    folder.py      the output folder is prepare's own: owner mark, lock, cleaning
    pipeline.py    the stages in order, each a record (name, key, run, summary)
    work.py        the work folder's plan as every stage reads it; dealing keys to tasks
    workfiles.py   every intermediate file's name, format and dtype
    stage_*.py     the stages by phase: documents, encode, order, pack, write
    engine.py      datatrove executors: local processes or Slurm array jobs
"""

from .config import PrepareConfig, Recipe, sample_inputs
from .run import prepare, run_stages

__all__ = ["PrepareConfig", "Recipe", "prepare", "run_stages", "sample_inputs"]
