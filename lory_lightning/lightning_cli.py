"""`lory fit | validate | test | predict` through LightningCLI, with the values that must agree linked."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.trainer import Trainer

from .data.datamodule import LoryDataModule
from .module import LoryLM


class LoryCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        # Typed once: the tokenizer's size comes from the data, the sequence length from the model.
        parser.link_arguments("data.vocab_size", "model.model.vocab_size")
        parser.link_arguments("model.model.seq_len", "data.seq_len")

    def instantiate_trainer(self, **kwargs) -> Trainer:  # noqa: ANN003
        # A run must be resumable with --ckpt_path last whatever callback set a YAML composes in:
        # add a checkpoint (after every validation, plus last.ckpt) unless one is configured.
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks) and trainer.checkpoint_callback is None:
            trainer.callbacks.append(ModelCheckpoint(save_last=True))
        elif trainer.checkpoint_callback is not None and trainer.checkpoint_callback.save_last is None:
            trainer.checkpoint_callback.save_last = True
        return trainer


def run_lightning_cli(argv: list[str]) -> int:
    """Run one LightningCLI subcommand; bad paths and values end in one line and exit status 1."""
    try:
        # Lightning warns when args repeat sys.argv: pass them only when called from Python.
        args = None if argv == sys.argv[1:] else argv
        LoryCLI(LoryLM, LoryDataModule, args=args, seed_everything_default=0,
                parser_kwargs={"parser_mode": "omegaconf"},
                save_config_kwargs={"overwrite": True})
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"lory {argv[0]}: error: {err}", file=sys.stderr)
        return 1
    return 0
