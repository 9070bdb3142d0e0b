"""The `lory` command line: each command's typed arguments and what it runs.

Every command is parsed the same way, by jsonargparse as LightningCLI parses `lory fit`: its
arguments are a dataclass (types, defaults and help from it), ``--config FILE`` reads them from YAML
(``${...}`` interpolation included: OmegaConf mode), later arguments override earlier ones left to
right, ``--print_config`` prints the resolved whole, and a config file may extend another with
``base:`` (config_files.py, expanded before any parser runs).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from . import __version__
from .config_files import expand_bases
from .errors import one_line

LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI: --config YAML, --print_config, --ckpt_path to resume)",
    "validate": "per-domain validation perplexity of a checkpoint (LightningCLI)",
    "test": "the same on the test split, here the held-out split (LightningCLI)",
    "predict": "per-sequence NLL and routing weights on the held-out split (LightningCLI)",
}


@dataclass
class PrepareCommand:
    """What `lory prepare` does besides the settings that decide its output.

    Args:
        overwrite: Rebuild: a folder prepared with another config, or one that is up to date.
        quiet: Print only the summary.
    """

    overwrite: bool = False
    quiet: bool = False


@dataclass
class GenerateArgs:
    """Sample text from a LoryLM checkpoint (prompt-only routing by default).

    Args:
        ckpt_path: A checkpoint written by `lory fit` (file or sharded folder), or a Hugging Face
            model folder (`lory export`'s, or a saved Llama's).
        prompt: Text to continue.
        max_new_tokens: Tokens to generate.
        temperature: Softmax temperature; 0 means greedy.
        top_k: Sample among the k most likely tokens.
        routing: ``prompt``: one merge per layer from the prompt (the paper's default); ``segment``:
            as in training.
        tokenizer: tokenizer.json, if the checkpoint carries none.
        seed: Seeds the sampling.
    """

    ckpt_path: str
    prompt: str
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int = 50
    routing: Literal["prompt", "segment"] = "prompt"
    tokenizer: Optional[str] = None
    seed: int = 0


@dataclass
class ExportArgs:
    """Write a checkpoint as a folder that transformers' AutoModelForCausalLM loads: a routed model as
    model_type lory with its modeling code in the folder (trust_remote_code=True, or `import
    lory_lightning.hf`), a dense model as a plain Llama; tokenizer and generation config included
    (needs the ``hf`` extra: pip install -e ".[hf]").

    Args:
        ckpt_path: A checkpoint written by `lory fit`.
        output: A new (or empty) folder.
        routing: How the exported model routes when it generates (config.routing, changeable later).
        chat_template: A Jinja file: the tokenizer's chat template (apply_chat_template), for chat fine-tuning.
    """

    ckpt_path: str
    output: str
    routing: Literal["prompt", "segment"] = "prompt"
    chat_template: Optional[str] = None


@dataclass
class FinetuneArgs:
    """Fine-tune an exported model on chat examples: LoRA on the attention (PEFT) trained by TRL's
    SFTTrainer on padded batches, the adapter merged, the folder written as `lory export` writes one
    (generate, evaluate and perplexity take it). Needs the ``finetune`` extra: pip install -e ".[finetune]".

    Args:
        model: A folder written by `lory export` with a chat template (--chat_template).
        chats: A .jsonl file, one example a line: {"messages": [{"role": "user", "content": ...},
            {"role": "assistant", "content": ...}]}.
        output: A new (or empty) folder for the fine-tuned model and its tokenizer.
        max_steps: Optimizer steps.
        batch_size: Examples per step, padded to the longest.
        lr: Learning rate (constant).
        lora_r: LoRA rank.
        lora_alpha: LoRA scale (the update is scaled by lora_alpha / lora_r).
        targets: Modules LoRA wraps (default: the attention's Linear layers, qkv and proj).
        seed: Seed of the adapter's initialization and the example order.
    """

    model: str
    chats: str
    output: str
    max_steps: int = 400
    batch_size: int = 8
    lr: float = 3e-3
    lora_r: int = 64
    lora_alpha: int = 128
    targets: Optional[list[str]] = None
    seed: int = 0


@dataclass
class TaskGroup:
    """Tasks scored with one shot count.

    Args:
        name: The group's name in the printed tables.
        tasks: lm-eval task names.
        num_fewshot: In-context examples per question.
    """

    name: str
    tasks: list[str]
    num_fewshot: Optional[int] = None


@dataclass
class EvaluateArgs:
    """Score a checkpoint on lm-eval tasks: names lm-eval knows (their datasets come from the hub), or
    local ones such as configs/eval/tasks (lory_toy_mc, lory_toy_ppl). Give ``tasks``, or ``groups``
    (a config file of them: configs/eval/paper-downstream.yaml). Needs the ``eval`` extra.

    Args:
        ckpt_path: A checkpoint written by `lory fit` (file or sharded folder), or a Hugging Face
            model folder (`lory export`'s, or a saved Llama's).
        tasks: Comma-separated task names, e.g. lory_toy_mc,lory_toy_ppl.
        num_fewshot: In-context examples per question (with ``tasks``).
        groups: Task groups, each with its shot count (instead of ``tasks``).
        routing: ``segment``: teacher-forced, as in training; ``prompt``: one merge per layer from
            the context.
        include_path: More folders of lm-eval task YAMLs.
        limit: At most this many examples per task.
        batch_size: Sequences per forward pass.
        output: Write lm-eval's results (JSON) here.
    """

    ckpt_path: str
    tasks: Optional[str] = None
    num_fewshot: Optional[int] = None
    groups: list[TaskGroup] = field(default_factory=list)
    routing: Literal["segment", "prompt"] = "segment"
    include_path: list[str] = field(default_factory=list)
    limit: Optional[int] = None
    batch_size: int = 8
    output: Optional[str] = None

    def task_groups(self) -> list[TaskGroup]:
        if bool(self.tasks) == bool(self.groups):
            raise ValueError("give tasks or groups (one of them; groups usually from a --config file such as "
                             "configs/eval/paper-downstream.yaml)")
        if self.tasks:
            return [TaskGroup("tasks", [t for t in self.tasks.split(",") if t], self.num_fewshot)]
        for i, group in enumerate(self.groups):
            if not group.tasks:
                raise ValueError(f"groups[{i}] ({group.name}) has no tasks")
        return self.groups


@dataclass
class AnalyzeArgs:
    """The DomainSpecialization report for a trained checkpoint on any prepared data, with no
    training: mean routing weight per (domain, layer, expert), mutual information per layer,
    per-domain perplexity, heatmaps.

    Args:
        ckpt_path: A checkpoint written by `lory fit`.
        data: A folder written by `lory prepare` (default: the run's data_dir).
        output: Report folder (default: analysis-<checkpoint name> beside the checkpoint).
        batch_size: Sequences per forward pass.
        max_batches: Stop after this many batches of the held-out split.
    """

    ckpt_path: str
    data: Optional[str] = None
    output: Optional[str] = None
    batch_size: int = 8
    max_batches: Optional[int] = None


@dataclass
class PerplexityArgs:
    """Score a checkpoint on documents it never saw (other domains, other corpora): read as `lory
    prepare` reads them, tokenized with the checkpoint's own tokenizer, packed into the model's
    sequence length per domain, scored with segment routing as in training.

    Args:
        ckpt_path: A checkpoint written by `lory fit` (file or sharded folder), or a Hugging Face
            model folder (`lory export`'s, or a saved Llama's).
        inputs: .jsonl, .jsonl.gz, .txt files or folders of them (a .txt file's domain is its
            folder's name).
        text_field: The jsonl key of a document's text.
        domain_field: The jsonl key of its domain (absent: the file's name).
        batch_size: Sequences per forward pass.
        max_sequences: Score at most this many sequences per domain.
        output: Write the numbers (JSON) here.
    """

    ckpt_path: str
    inputs: list[str]
    text_field: str = "text"
    domain_field: str = "domain"
    batch_size: int = 8
    max_sequences: Optional[int] = None
    output: Optional[str] = None


@dataclass
class ReplicateArgs:
    """Train a study's runs at every seed (paired: one seed per pair) and keep each finished run as a
    result file (a run whose file is up to date is not trained again); write its report with 95% t
    intervals over seeds from the result files. The first study: dense and Lory 8E with similarity
    and random order, token- and segment-level Expert Choice and two probes at the first seed. The
    second: passages in sequences of 1,024 tokens (ordering with room to act), dense at equal
    compute, aux-loss-free top-k and ReMoE, Expert Choice scored with both rules.

    Args:
        study: Which study: ``first`` or ``second``.
        seeds: Seeds, one pair of runs each.
        steps: Training steps per run (400: about 17 CPU-minutes a run on one thread).
        output: Folder for the runs, their YAMLs and data (default: runs/replicate, runs/replicate-second).
        results: Folder of the result files, one per run (commit them: the report is built from them;
            default: replication-results, replication-results/second).
        report: Train nothing: rebuild the report and its figures from the result files alone.
        report_path: The report (figures go to <name>-figures/; default: REPLICATION.md,
            docs/replication-second.md).
        inputs: Documents (default: the sample corpus).
        heldout: Held-out domains scored after each run (default: the shipped quotes and dictionary).
        log: A markdown log of what was tried before, copied into the report (this repository's:
            docs/replication-log.md).
        allow_dirty: Train even though tracked source files (the package, configs/) differ from the
            commit; each result file then lists them under ``uncommitted``.
        only: Train only these settings (e.g. to split a study between two processes).
    """

    study: str = "first"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    steps: int = 400
    output: Optional[str] = None
    results: Optional[str] = None
    report: bool = False
    report_path: Optional[str] = None
    inputs: list[str] = field(default_factory=list)
    heldout: Optional[list[str]] = None
    log: Optional[str] = None
    allow_dirty: bool = False
    only: list[str] = field(default_factory=list)


def add_dataclass_arguments(parser, cls: type) -> None:  # noqa: ANN001 (jsonargparse parser)
    """One --key per field of ``cls``, typed and documented by the dataclass. A bool is a switch
    (``--quiet``, ``--quiet true``, ``--no_quiet``); a list of plain values takes them one after another
    (``--inputs a.jsonl b.jsonl``, ``--seeds 0 1 2``) on the command line, a YAML list in a file."""
    import docstring_parser
    from jsonargparse import ActionYesNo

    hints = typing.get_type_hints(cls)
    helps = {p.arg_name: p.description for p in docstring_parser.parse(cls.__doc__ or "").params}
    by_hand = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
            else [hint]
        if len(inner) == 1 and typing.get_origin(inner[0]) is list and typing.get_args(inner[0])[0] in (str, int, float):
            by_hand[f.name] = {"type": typing.get_args(inner[0])[0], "nargs": "*"}
        elif hint is bool:
            by_hand[f.name] = {"action": ActionYesNo, "nargs": "?"}
    parser.add_class_arguments(cls, skip=set(by_hand), as_group=False)
    for f in dataclasses.fields(cls):
        if f.name not in by_hand:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = {"required": True} if required else {"default": default}
        parser.add_argument(f"--{f.name}", help=helps.get(f.name, ""), **kwargs, **by_hand[f.name])


def _command_parser(description: str, classes: Sequence[type], epilog: str | None = None):  # noqa: ANN202
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=description, epilog=epilog, parser_mode="omegaconf")
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML file of these keys (without dashes); arguments are applied left to right, "
                             "so a flag after --config overrides the file and one before it is overridden")
    parser.add_argument("--base", type=Optional[str], default=None,
                        help="in a config file: the config it extends, relative to the file's folder")
    for cls in classes:
        add_dataclass_arguments(parser, cls)
    return parser


def _description(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split("Args:", 1)[0].split())


def build_parser():  # noqa: ANN201 (jsonargparse ArgumentParser)
    from jsonargparse import ArgumentParser

    from .data.prepare import PrepareConfig
    from .data.sources import __doc__ as policy_doc

    parser = ArgumentParser(prog="lory", parser_mode="omegaconf",
                            description="Pre-train Lory (fully differentiable Mixture-of-Experts) language models.",
                            epilog="`lory COMMAND --help` shows each command's options.")
    parser.add_argument("--version", action="version", version=f"lory-lightning {__version__}")
    commands = parser.add_subcommands(required=False, dest="command")
    commands.add_subcommand("prepare", _command_parser(
        "Turn raw documents into similarity-batched WebDataset shards (LORY.md section 4). With no inputs, "
        "the shipped sample corpus.", [PrepareConfig, PrepareCommand], epilog=policy_doc.split("\n", 2)[2]),
        help="documents -> tokenizer + similarity-ordered WebDataset shards + manifest")
    for name, text in LIGHTNING_COMMANDS.items():  # listed here, parsed by LightningCLI (lightning_cli.py)
        commands.add_subcommand(name, ArgumentParser(description=f"{text}: see `lory {name} --help`"), help=text)
    for name, cls, text in (
            ("generate", GenerateArgs, "continue a prompt with a trained checkpoint"),
            ("export", ExportArgs, "a checkpoint as a Hugging Face model folder (pip install -e \".[hf]\")"),
            ("finetune", FinetuneArgs, "LoRA fine-tuning of an exported model on chats (pip install -e \".[finetune]\")"),
            ("evaluate", EvaluateArgs, "downstream tasks through lm-evaluation-harness (pip install -e \".[eval]\")"),
            ("analyze", AnalyzeArgs, "per-domain specialization report of a checkpoint (tables + heatmaps)"),
            ("perplexity", PerplexityArgs, "per-domain perplexity of a checkpoint on any jsonl / .txt text"),
            ("replicate", ReplicateArgs, "the paper's claims at small scale over seeds, with intervals "
                                         "(REPLICATION.md)")):
        commands.add_subcommand(name, _command_parser(_description(cls), [cls]), help=text)
    return parser


def parsed(parser, argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:  # noqa: ANN001
    """(command, its arguments as plain values) of ``argv``."""
    cfg = parser.parse_args(list(argv))
    command = cfg.get("command")
    if command is None:
        return None, {}
    values = cfg[command].as_dict()
    for key in ("config", "base", "__path__"):
        values.pop(key, None)
    return command, values


def _fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _prepare(values: dict[str, Any]) -> int:
    from .data.prepare import PrepareConfig, prepare

    cfg, command = PrepareConfig(**_fields(PrepareConfig, values)), PrepareCommand(**_fields(PrepareCommand, values))
    manifest = prepare(cfg, quiet=command.quiet, overwrite=command.overwrite)
    if "submitted" in manifest:  # executor slurm: the jobs run on; the manifest comes last
        print(f"{cfg.output}: submitted Slurm jobs {', '.join(manifest['submitted'])}; finished when "
              f"{manifest['manifest']} appears")
        return 0
    splits = manifest["splits"]
    print(f"{cfg.output}: {splits['train']['sequences']} train / {splits['val']['sequences']} val sequences "
          f"of {manifest['seq_len']} tokens, {len(manifest['domains'])} domains "
          f"({', '.join(manifest['domains'])}), {manifest['skipped']['total']} documents skipped")
    return 0


def _generate(values: dict[str, Any]) -> int:
    import torch
    from tokenizers import Tokenizer

    from .checkpoint_io import end_of_text_id, load_model
    from .data.tokenizer import tokenizer_files
    from .model import generate
    from .model.generate import available_memory_bytes, kv_cache_bytes

    args = GenerateArgs(**values)
    model, ckpt = load_model(args.ckpt_path)
    if args.tokenizer:
        tok = Tokenizer.from_file(str(tokenizer_files(args.tokenizer)[0]))  # a missing path: one line naming it
    elif "tokenizer" in ckpt:
        tok = Tokenizer.from_str(ckpt["tokenizer"])
    else:
        raise ValueError(f"{args.ckpt_path} carries no tokenizer; pass --tokenizer DATA_DIR/tokenizer.json")
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise ValueError("--prompt is empty after tokenization")
    length, trained = len(ids) + args.max_new_tokens, model.config.seq_len
    need, free = kv_cache_bytes(model.config, 1, length, model.tok_emb.weight.dtype), available_memory_bytes()
    if free is not None and need > free // 2:
        raise ValueError(f"--max_new_tokens {args.max_new_tokens} needs a KV cache of {need / 2**30:.1f} GiB for "
                         f"{length} positions, more than half the {free / 2**30:.1f} GiB of memory available: ask "
                         f"for fewer tokens (the model was trained on {trained})")
    if length > trained:
        print(f"lory generate: warning: the prompt ({len(ids)} tokens) and --max_new_tokens reach position {length}, "
              f"past the {trained} positions the model was trained on: text past that is untested territory",
              file=sys.stderr)
    out = generate(model, torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, routing=args.routing,
                   eos_id=end_of_text_id(ckpt, tok),
                   generator=torch.Generator().manual_seed(args.seed))
    print(tok.decode(out[0].tolist()))
    return 0


def _export(values: dict[str, Any]) -> int:
    args = ExportArgs(**values)
    try:
        from .export import export
    except ImportError as err:
        raise ValueError(f"lory export needs transformers: pip install -e \".[hf]\" ({err})") from err
    template = None
    if args.chat_template is not None:
        try:
            template = Path(args.chat_template).read_text().removesuffix("\n")  # a file's last newline is not the template's
        except OSError as err:
            raise ValueError(f"--chat_template {args.chat_template}: {err.strerror or err}") from err
    out = export(args.ckpt_path, args.output, args.routing, template)
    print(f"{out}: {json.loads((out / 'lory_export.json').read_text())['architecture']} "
          "(AutoModelForCausalLM.from_pretrained)")
    return 0


def _finetune(values: dict[str, Any]) -> int:
    args = FinetuneArgs(**values)
    try:
        from .finetune import finetune
    except ImportError as err:
        raise ValueError(f"lory finetune needs peft and trl: pip install -e \".[finetune]\" ({err})") from err
    out = finetune(args.model, args.chats, args.output, args.max_steps, args.batch_size, args.lr, args.lora_r,
                   args.lora_alpha, args.targets, args.seed)
    losses = out["losses"]
    if losses:
        first, last = min(losses), max(losses)
        print(f"train loss {losses[first]:.3f} at step {first}, {losses[last]:.3f} at step {last}")
    print(f"{out['output']}: the merged model (AutoModelForCausalLM.from_pretrained, lory generate --ckpt_path)")
    return 0


def _evaluate(values: dict[str, Any]) -> int:
    args = EvaluateArgs(**{**values, "groups": [TaskGroup(**g) for g in values.get("groups") or []]})
    groups = args.task_groups()
    try:
        from lm_eval.utils import make_table

        from .evaluate import evaluate
    except ImportError as err:
        raise ValueError(f"lory evaluate needs lm-eval: pip install -e \".[eval]\" ({err})") from err
    everything = {}
    for group in groups:
        results = evaluate(args.ckpt_path, group.tasks, group.num_fewshot, args.routing, args.include_path,
                           args.limit, args.batch_size)
        print(f"{group.name} ({group.num_fewshot or 0}-shot, {args.routing} routing):\n{make_table(results)}")
        everything[group.name] = results["results"]
    if args.output:
        Path(args.output).write_text(json.dumps(everything, indent=2, default=str) + "\n")
    return 0


def _analyze(values: dict[str, Any]) -> int:
    from .analyze import analyze

    args = AnalyzeArgs(**values)
    analyze(args.ckpt_path, args.data, args.output, args.batch_size, args.max_batches)
    return 0


def _perplexity(values: dict[str, Any]) -> int:
    from .data.sources import ReadPolicy
    from .perplexity import perplexity

    args = PerplexityArgs(**values)
    report = perplexity(args.ckpt_path, args.inputs, args.batch_size, args.max_sequences,
                        ReadPolicy(text_field=args.text_field, domain_field=args.domain_field))
    print(report.table())
    if report.skipped.total:
        print(f"{report.skipped.total} documents skipped: {dict(report.skipped.by_reason)} "
              f"(first: {report.skipped.examples[0]})")
    for name, entry in report.domains.items():
        if not entry.scored:
            print(f"{name}: fewer than seq_len + 1 tokens, nothing scored")
    if args.output:
        Path(args.output).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


def _replicate(values: dict[str, Any]) -> int:
    from .replication import replicate

    args = ReplicateArgs(**values)
    out = replicate(args.output, args.results, args.report_path or "", args.seeds, args.steps, args.inputs,
                    args.heldout, log=args.log, train=not args.report, allow_dirty=args.allow_dirty,
                    study=args.study, only=args.only)
    trained = sum(v == "trained" for v in out["runs"].values())
    if not args.report:
        print(f"{trained} runs trained, {len(out['runs']) - trained} kept from {args.results}/")
    for line in out["report"]["claims"]:
        print(line)
    print(f"report: {out['report']['path']} ({out['report']['results']} result files)")
    return 0


COMMANDS = {"prepare": _prepare, "generate": _generate, "export": _export, "finetune": _finetune, "evaluate": _evaluate,
            "analyze": _analyze, "perplexity": _perplexity, "replicate": _replicate}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv else "lory"
    try:
        argv = argv[:1] + expand_bases(argv[1:])  # `base:` keys, for every command
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from .lightning_cli import run_lightning_cli

            return run_lightning_cli(argv)
        parser = build_parser()
        command, values = parsed(parser, argv)
        if command is None:
            parser.print_help()
            return 0
        return COMMANDS[command](values)
    except (ValueError, OSError) as err:  # bad input, paths, permissions, a full disk: one line
        print(f"lory {name}: error: {one_line(err)}", file=sys.stderr)
        return 1
