"""`lory fit | validate | test | predict` through LightningCLI, with the values that must agree linked."""

from __future__ import annotations

import csv
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, RichModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer import Trainer

from .atomic import recover_folder
from .checkpoint_io import META_FILE, load_checkpoint, read_checkpoint_meta, save_atomically, upgrade_hparams
from .data.datamodule import LoryDataModule
from .errors import one_line
from .callbacks.guard import NonFiniteError
from .callbacks.progress import LoryModelSummary, LoryRichProgressBar, LoryTQDMProgressBar
from .module import LoryLM
from .summary import perplexity_table


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic local writes and ``weights_only`` loading for resume.

    Remote paths (``s3://`` and other fsspec URLs) keep Lightning's own writing.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint(path, map_location if map_location is not None else "cpu")


class LoryCLI(LightningCLI):
    """LightningCLI with the model and data module swappable by ``class_path`` (subclasses of LoryLM
    and LoryDataModule), values that must agree linked, and ``--ckpt_path last`` resuming the latest
    run of the config in that run's own folder."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        # A config file may extend another (`base: lory-tiny.yaml`); expand_bases() puts the base
        # first on the command line, so here the key is only accepted (and cleared before saving).
        parser.add_argument("--base", type=Optional[str], default=None,
                            help="In a config file: the config it extends, relative to the file's folder")
        # Typed once: the tokenizer's size comes from the data, the sequence length from the model.
        parser.link_arguments("data.init_args.vocab_size", "model.init_args.arch.vocab_size")
        parser.link_arguments("model.init_args.arch.seq_len", "data.init_args.seq_len")

    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 (jsonargparse parser, argv)
        super().parse_arguments(parser, args)
        self._args = args  # parsed again without defaults only for a Hugging Face import (_fill_from_hf)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        self._fill_from_hf(config)
        # The saved config.yaml holds every resolved value: it must not extend its base again.
        config["base"] = None
        check_trainer_values(config.trainer)
        pin_shared_versions(config.trainer)
        # Loggers pinned to one version folder (a new one, or the resumed run's) find it made by the
        # first of them; the CSV logger's "will be deleted" warning is then false (a resumed run's
        # rows are kept: continue_csv_logs), so it is not shown for these folders.
        for args in _logger_dirs(config.trainer):
            if args.get("version") is not None:
                folder = os.path.join(str(args.save_dir), str(args.name), f"version_{args.version}")
                warnings.filterwarnings("ignore", message=re.escape(f"Experiment logs directory {folder} exists"))

    def _fill_from_hf(self, config) -> None:  # noqa: ANN001 (jsonargparse Namespace)
        """``model.init_from`` a Hugging Face folder: the model keys its config.json fixes come from it."""
        model = _node(config, "model", "init_args")
        init_from = model.get("init_from") if model is not None else None
        if not init_from:
            return
        from .hf_import import fill_arch, hf_folder

        folder = hf_folder(init_from)
        if folder is None:
            return
        if not init_from.startswith("hf:"):
            print(f"model.init_from {init_from}: a Hugging Face model folder (it has a config.json), read as "
                  f"hf:{init_from}", file=sys.stderr)
        # The keys the user gave (config files and command line), told apart from defaults: they must
        # agree with the checkpoint; the others are filled from its config.json.
        args = getattr(self, "_args", None)
        explicit = _node(self.parser.parse_args(args, defaults=False), self.subcommand) if args else None
        filled = fill_arch(model.arch, _node(explicit, "model", "init_args", "arch"), folder,
                           _node(config, "data", "init_args"), _node(explicit, "data", "init_args"))
        if filled:
            print(f"model.init_from hf:{folder}: {', '.join(filled)} read from its config.json", file=sys.stderr)

    def _parse_ckpt_path(self) -> None:
        # As LightningCLI does, the model's hyperparameters come from --ckpt_path; here through
        # load_checkpoint (weights_only, the same one-line reason for a damaged file as everywhere
        # else), and those of checkpoints written with older keys are moved to today's (upgrade_hparams).
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand or "", None)
        self._resume: tuple[Path, int] | None = None
        if config is None:
            return
        if config.get("ckpt_path") == "last":
            # fit continues the run in its own folder; validate/test/predict only read it, and log
            # into a new version folder of their own (they never edit the run they read)
            resuming = subcommand == "fit"
            config.ckpt_path, found = resolve_last(config.trainer, pin=resuming)
            self._resume = found if resuming else None
        path = config.get("ckpt_path")
        if not path or not Path(path).exists():
            return
        hparams = upgrade_hparams(read_checkpoint_meta(path).get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        # How to score is this run's choice, not a property of the weights: the config's value wins.
        for key in RUN_CHOICES:
            value = _node(config, "model", "init_args", "arch", key)
            if value is not None and isinstance(hparams.get("arch"), dict):
                hparams["arch"][key] = value
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def instantiate_trainer(self, **kwargs) -> Trainer:  # noqa: ANN003
        # A run must be resumable with --ckpt_path last whatever callback set a YAML composes in:
        # add a checkpoint (after every validation, plus last.ckpt) unless one is configured.
        trainer = super().instantiate_trainer(**kwargs)
        # Checkpoints written atomically and loaded weights_only (a custom CheckpointIO is kept).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        if not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks) and trainer.checkpoint_callback is None:
            trainer.callbacks.append(ModelCheckpoint(save_last=True))
        elif trainer.checkpoint_callback is not None and trainer.checkpoint_callback.save_last is None:
            trainer.checkpoint_callback.save_last = True
        if self._resume is not None:
            continue_csv_logs(trainer, self._resume[1])
        configured = self.config[self.subcommand].trainer.get("callbacks") or []
        use_lory_summary_and_bar(trainer, {str(c.get("class_path", "")).rsplit(".", 1)[-1] for c in configured
                                           if hasattr(c, "get")})
        return trainer


    def after_fit(self) -> None:
        ckpt = self.trainer.checkpoint_callback
        self._report(f"validation after step {self.trainer.global_step}",
                     ckpt.last_model_path or ckpt.best_model_path if ckpt is not None else None)

    def after_validate(self) -> None:
        # The footer names the checkpoint validated, not what a restored ModelCheckpoint remembers.
        ckpt = self.config.get("validate", {}).get("ckpt_path")
        self._report(f"validation of {ckpt}" if ckpt else "validation", ckpt)

    def _report(self, title: str, checkpoint: str | None) -> None:
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
        if checkpoint:
            print(f"checkpoint: {checkpoint}")
        if log_dir:
            print(f"config:     {Path(log_dir) / 'config.yaml'}")
        for logger in trainer.loggers:
            print(f"logs:       {logger.log_dir} ({type(logger).__name__})")


RUN_CHOICES = ("eval_routing",)  # model.arch keys a run with --ckpt_path sets itself (not the checkpoint)


def _node(namespace, *keys: str):  # noqa: ANN001, ANN202 (jsonargparse Namespace)
    """``namespace[k1][k2]...``, or None where a key is missing."""
    for key in keys:
        namespace = namespace.get(key) if namespace is not None and hasattr(namespace, "get") else None
    return namespace


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_tips() -> None:
    """Lightning's advertisements ("Tip: ... try installing litlogger") are not printed: they are not
    about the run. Filtered where they are logged (rank_zero_info's logger), once."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def use_lory_summary_and_bar(trainer: Trainer, configured: set[str] = frozenset()) -> None:
    """Lightning's default progress bar and model summary become ours (callbacks/progress.py): a step
    count instead of "Epoch 0/-2", tokens/s and the learning rate, and the model's own FLOP count
    instead of "Total FLOPs: 0". A bar or summary a config names (``configured``: class names) stays."""
    swaps = {RichProgressBar: LoryRichProgressBar, TQDMProgressBar: LoryTQDMProgressBar,
             RichModelSummary: LoryModelSummary, ModelSummary: LoryModelSummary}
    for i, callback in enumerate(trainer.callbacks):
        ours = None if type(callback).__name__ in configured else swaps.get(type(callback))
        if ours is LoryModelSummary:
            trainer.callbacks[i] = LoryModelSummary(max_depth=callback._max_depth)
        elif ours is not None:
            trainer.callbacks[i] = ours()


def check_trainer_values(trainer_config) -> None:  # noqa: ANN001 (jsonargparse Namespace)
    """Values Lightning takes and then fails on mid-run (a modulo by zero at the first step) or
    quietly ignores (a negative clip disables clipping): refused here, by key, before anything runs."""
    steps = trainer_config.get("max_steps")
    if steps is not None and steps < -1:
        raise ValueError(f"trainer.max_steps is {steps}: give the number of optimizer steps to train (>= 1), "
                         "or -1 for no limit")
    interval = trainer_config.get("val_check_interval")
    if interval is not None and interval <= 0:
        raise ValueError(f"trainer.val_check_interval is {interval}: validate every N >= 1 training batches (an "
                         "int) or after a fraction in (0, 1] of an epoch; null once per epoch")
    clip = trainer_config.get("gradient_clip_val")
    if clip is not None and clip < 0:
        raise ValueError(f"trainer.gradient_clip_val is {clip}: a gradient norm bound must be >= 0 (0 or null: "
                         "no clipping)")


def _logger_dirs(trainer_config) -> list:  # noqa: ANN001 (jsonargparse Namespace)
    """The init_args of every configured logger that writes to ``save_dir/name/version_N``."""
    loggers = trainer_config.get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    return [lg.init_args for lg in loggers
            if hasattr(lg, "init_args") and lg.init_args.get("save_dir") and lg.init_args.get("name")]


def pin_shared_versions(trainer_config) -> None:  # noqa: ANN001 (jsonargparse Namespace)
    """Loggers sharing one save_dir/name (TensorBoard + CSV) write into one version folder.

    Left alone, each picks the next free ``version_N`` when it first writes, and the second lands in
    N+1. Here the next free version is chosen once, from the folder, as Lightning does, and given to
    each of them through their ``version`` argument. Every rank computes the same number: ranks
    parse their config before any of them logs (only rank 0 ever writes logs).
    """
    groups: dict[tuple[str, str], list] = {}
    for args in _logger_dirs(trainer_config):
        if args.get("version") is None:
            groups.setdefault((str(args.save_dir), str(args.name)), []).append(args)
    for (save_dir, name), members in groups.items():
        if len(members) < 2:
            continue
        taken = [int(p.name.removeprefix("version_")) for p in (Path(save_dir) / name).glob("version_*")
                 if p.is_dir() and p.name.removeprefix("version_").isdigit()]
        for args in members:
            args.version = max(taken, default=-1) + 1


def resolve_last(trainer_config, pin: bool = True) -> tuple[str, tuple[Path, int] | None]:  # noqa: ANN001
    """``--ckpt_path last``: the last.ckpt (file, or folder of shards) of the latest run of this
    config, and (run folder, step).

    Lightning alone looks for last.ckpt in the new run's folder, finds none, warns and trains from
    step 0. Here the latest ``save_dir/name/version_N`` with a ``checkpoints/last.ckpt`` is found and
    with ``pin`` (fit) every logger of that save_dir and name is pinned to version N, so the run
    continues in its own folder and its curves are not split; without (validate, test, predict)
    they log into a new version folder and the run read is left as it was. Nothing to resume is
    an error.
    """
    loggers = _logger_dirs(trainer_config)
    if not loggers:
        if trainer_config.get("logger") is False:
            root = Path(trainer_config.get("default_root_dir") or ".")
            last = root / "checkpoints" / "last.ckpt"
            if _is_checkpoint(last):
                return str(last), None
            raise FileNotFoundError(f"--ckpt_path last: nothing to resume: no {last}; start without --ckpt_path")
        raise ValueError("--ckpt_path last needs trainer.logger entries with save_dir and name (as the shipped "
                         "configs have) to find the run; give --ckpt_path PATH/last.ckpt instead")
    first = loggers[0]
    runs = Path(first.save_dir) / first.name
    found = []
    for folder in runs.glob("version_*"):
        number = folder.name.removeprefix("version_")
        if number.isdigit() and _is_checkpoint(folder / "checkpoints" / "last.ckpt"):
            found.append((int(number), folder))
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: nothing to resume: no {runs}/version_*/checkpoints/last.ckpt; "
                                "start without --ckpt_path")
    version, folder = max(found)
    for args in loggers if pin else ():
        if args.save_dir == first.save_dir and args.name == first.name:
            args.version = version
    last = folder / "checkpoints" / "last.ckpt"
    step = int(read_checkpoint_meta(last).get("global_step", 0))  # only the step is read
    return str(last), (folder, step)


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a sharded checkpoint folder (LoryFSDPStrategy), whole or mid-swap."""
    recover_folder(path)  # a sharded save killed between its two renames: the old folder comes back
    return path.is_file() or (path / META_FILE).is_file()


def continue_csv_logs(trainer: Trainer, step: int) -> None:
    """Keep a resumed run's metrics.csv (Lightning's CSVLogger deletes it): rows before ``step`` stay,
    later rows (logged after the checkpoint by the run that died) are dropped, new rows append."""
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows, header = [], []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                header = sorted(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) < step]
        writer = logger.experiment  # created now: it deletes metrics.csv
        if header:
            with open(path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=header)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = header  # new keys extend the header, old rows are kept


OPTIMIZER_KEYS = ("model.optim.lr, model.optim.betas, model.optim.weight_decay, model.optim.eps, "
                  "model.optim.warmup_fraction, model.optim.min_lr_ratio, model.optim.implementation")


def refuse_optimizer_flags(argv: list[str]) -> None:
    """LightningCLI's --optimizer / --lr_scheduler would drop the no-decay parameter group and step
    the schedule once per (endless) epoch: refused with the keys that configure AdamW and its
    per-step cosine schedule instead."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith(("--optimizer", "--lr_scheduler")):
            raise ValueError(f"{flag} is not supported: LoryLM builds AdamW (no weight decay on norms) with a "
                             f"per-step cosine schedule; set {OPTIMIZER_KEYS} instead")


RENAMED = {"model.model": "model.arch", "model.init_args.model": "model.init_args.arch",
           "data.prepare_args": "data.prepare", "data.init_args.prepare_args": "data.init_args.prepare"}


def refuse_renamed_keys(argv: list[str]) -> None:
    """A key renamed since an earlier release, on the command line or in a config file, is named
    with its new name (jsonargparse alone would list every key the model accepts)."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            path = next(args, "")
            try:
                tree = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
            except (yaml.YAMLError, OSError):
                continue  # jsonargparse names the problem
            for old, new in RENAMED.items():
                node = tree
                for part in old.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node is not None:
                    raise ValueError(f"{path}: {old} is now {new} (rename the key; checkpoints written with "
                                     "the old names still load)")
            continue
        flag = arg.split("=", 1)[0]
        for old, new in RENAMED.items():
            if flag.startswith(f"--{old}."):
                raise ValueError(f"{flag} is now --{new}{flag.removeprefix('--' + old)}")


MODEL_KEYS = ("The model's keys: `lory {0} --model.help LoryLM` (model.arch.*: the decoder, model.optim.*, "
              "model.training.*); the data's: `lory {0} --data.help LoryDataModule`.")
PARSER_KWARGS = {"parser_mode": "omegaconf",  # `${...}` interpolation in config files, as every lory command
                 **{c: {"parser_mode": "omegaconf", "description": f"{text}. {MODEL_KEYS.format(c)}"}
                    for c, text in (("fit", "Train a model"), ("validate", "Validate a checkpoint per domain"),
                                    ("test", "Score a checkpoint on the held-out split"),
                                    ("predict", "Per-sequence NLL and routing weights of a checkpoint"))}}


def run_lightning_cli(argv: list[str]) -> int:
    """Run one LightningCLI subcommand; bad paths and values end in one line and exit status 1."""
    try:
        refuse_optimizer_flags(argv)
        refuse_renamed_keys(argv)
        with warnings.catch_warnings():
            # The arguments are always passed (bases expanded); Lightning warns when the process has
            # command-line arguments of its own (pytest's, a notebook's), which it then ignores.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            # Lightning's own call into torch's pytree, deprecated in torch 2.13: nothing a user can act on
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            quiet_tips()
            LoryCLI(LoryLM, LoryDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    args=argv, seed_everything_default=0, parser_kwargs=PARSER_KWARGS,
                    save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
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
