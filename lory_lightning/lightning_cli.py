"""`lory fit | validate | test | predict` through LightningCLI, with the values that must agree linked."""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.trainer import Trainer

from .checkpoint_io import UNREADABLE, SafeCheckpointIO, checkpoint_error
from .data.datamodule import LoryDataModule
from .errors import one_line
from .module import LoryLM, NonFiniteError
from .summary import perplexity_table


class LoryCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        # Typed once: the tokenizer's size comes from the data, the sequence length from the model.
        parser.link_arguments("data.vocab_size", "model.model.vocab_size")
        parser.link_arguments("model.model.seq_len", "data.seq_len")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path itself (weights_only) to take the model's hyperparameters from
        # it; a truncated or pickled file must end in the same one-line reason as everywhere else.
        try:
            super()._parse_ckpt_path()
        except UNREADABLE as err:
            raise checkpoint_error(self.config[self.config.subcommand].get("ckpt_path"), err) from err

    def instantiate_trainer(self, **kwargs) -> Trainer:  # noqa: ANN003
        # A run must be resumable with --ckpt_path last whatever callback set a YAML composes in:
        # add a checkpoint (after every validation, plus last.ckpt) unless one is configured.
        trainer = super().instantiate_trainer(**kwargs)
        # Checkpoints written atomically and loaded weights_only (a custom CheckpointIO is kept).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        # Loggers sharing one save_dir/name (TensorBoard + CSV) write into one version folder; left
        # alone, each picks the next free version and the CSV lands in version_N+1.
        first = trainer.loggers[0] if trainer.loggers else None
        for logger in trainer.loggers[1:]:
            if (getattr(logger, "_version", 0) is None and logger.save_dir == first.save_dir
                    and logger.name == first.name):
                logger._version = first.version
        if not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks) and trainer.checkpoint_callback is None:
            trainer.callbacks.append(ModelCheckpoint(save_last=True))
        elif trainer.checkpoint_callback is not None and trainer.checkpoint_callback.save_last is None:
            trainer.checkpoint_callback.save_last = True
        return trainer


    def after_fit(self) -> None:
        self._report(f"validation after step {self.trainer.global_step}")

    def after_validate(self) -> None:
        ckpt = self.config.get("validate", {}).get("ckpt_path")
        self._report(f"validation of {ckpt}" if ckpt else "validation")

    def _report(self, title: str) -> None:
        """Print the per-domain perplexity table and where the run's files are (rank zero only)."""
        trainer = self.trainer
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must take part
        if trainer.global_rank != 0:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        manifest = getattr(self.datamodule, "manifest", None) or {}
        domains = manifest.get("domains", [])
        if not metrics:
            print("no validation ran, so no perplexity table (check trainer.limit_val_batches)")
        else:
            unigram = manifest.get("baselines", {}).get("unigram_val_ppl")
            print(f"\n{title}:\n" + perplexity_table(domains, metrics, unigram))
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and (ckpt.last_model_path or ckpt.best_model_path):
            print(f"checkpoint: {ckpt.last_model_path or ckpt.best_model_path}")
        if log_dir:
            print(f"config:     {Path(log_dir) / 'config.yaml'}")
        for logger in trainer.loggers:
            print(f"logs:       {logger.log_dir} ({type(logger).__name__})")


def run_lightning_cli(argv: list[str]) -> int:
    """Run one LightningCLI subcommand; bad paths and values end in one line and exit status 1."""
    try:
        # Lightning warns when args repeat sys.argv: pass them only when called from Python.
        args = None if argv == sys.argv[1:] else argv
        LoryCLI(LoryLM, LoryDataModule, args=args, seed_everything_default=0,
                parser_kwargs={"parser_mode": "omegaconf"},
                save_config_kwargs={"overwrite": True})
    except (OSError, ValueError, NonFiniteError) as err:  # FileNotFound/FileExists are OSErrors
        print(f"lory {argv[0]}: error: {one_line(err)}", file=sys.stderr)
        return 1
    finally:
        # Close the process group before the interpreter exits: a gloo group torn down by the
        # interpreter at exit aborts the process now and then ("terminate called without an active
        # exception", exit -6) after a run that succeeded.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
