"""The `lory` command line: a thin dispatcher to functions that tests call with a list of args."""

from __future__ import annotations

import argparse
import json
import dataclasses
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import one_line


def _field_help(cls: type) -> dict[str, str]:
    """Per-field help from the Google-style ``Args:`` section of a dataclass docstring."""
    doc = (cls.__doc__ or "").split("Args:", 1)[-1]
    helps: dict[str, str] = {}
    for names, text in re.findall(r"^\s{8}([\w, ]+):\s*(.+?)(?=^\s{8}[\w, ]+:|\Z)", doc, re.M | re.S):
        for name in names.split(","):
            helps[name.strip()] = " ".join(text.split())
    return helps


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field of ``cls`` (types, choices, defaults and help taken from the dataclass)."""
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        kwargs: dict = {"help": helps.get(f.name, ""), "dest": f.name}
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs.update(action="store_true")
        elif origin is list:
            kwargs.update(nargs="+", type=args[0], default=default, metavar="PATH")
        elif origin is typing.Literal:
            kwargs.update(choices=list(args), default=default)
        else:
            base = args[0] if args else hint
            kwargs.update(type=base, default=default, required=required)
        if default is not None and default is not False and default != []:  # 0 is a default worth showing
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(f"--{f.name}", **kwargs)


LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI: --config YAML, --print_config, --ckpt_path to resume)",
    "validate": "per-domain validation perplexity of a checkpoint (LightningCLI)",
    "test": "the same on the test split, here the held-out split (LightningCLI)",
    "predict": "per-sequence NLL and routing weights on the held-out split (LightningCLI)",
}


def build_parser() -> argparse.ArgumentParser:
    from .data.prepare import PrepareConfig
    from .data.sources import __doc__ as policy_doc

    parser = argparse.ArgumentParser(
        prog="lory",
        description="Pre-train Lory (fully differentiable Mixture-of-Experts) language models.",
        epilog="`lory COMMAND --help` shows each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"lory-lightning {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    prep = commands.add_parser(
        "prepare", help="documents -> tokenizer + similarity-ordered WebDataset shards + manifest",
        description="Turn raw documents into similarity-batched WebDataset shards (LORY.md section 4). "
                    "With no --inputs, the shipped sample corpus.",
        epilog=policy_doc.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("--config", metavar="YAML", help="settings from a YAML file of the keys below (without "
                      "dashes); flags given on the command line win")
    prep.add_argument("--print_config", action="store_true", help="print the resolved settings as YAML and exit")
    add_dataclass_arguments(prep, PrepareConfig)
    prep.add_argument("--overwrite", action="store_true",
                      help="rebuild: a folder prepared with another config, or one that is up to date")
    prep.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.set_defaults(prepare_parser=prep)
    for name, text in LIGHTNING_COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)  # listed here, parsed by LightningCLI
    gen = commands.add_parser("generate", help="continue a prompt with a trained checkpoint",
                              description="Sample text from a LoryLM checkpoint (prompt-only routing by default).")
    gen.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lory fit`")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max_new_tokens", type=int, default=100)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    gen.add_argument("--top_k", type=int, default=50)
    gen.add_argument("--routing", choices=["prompt", "segment"], default="prompt",
                     help="prompt: one merge per layer from the prompt (paper default); segment: as in training")
    gen.add_argument("--tokenizer", help="tokenizer.json, if the checkpoint carries none")
    gen.add_argument("--seed", type=int, default=0)
    exp = commands.add_parser(
        "export", help="a checkpoint as a Hugging Face model folder (pip install -e \".[hf]\")",
        description="Write a checkpoint as a folder that transformers' AutoModelForCausalLM loads: a routed model "
                    "as model_type lory with its modeling code in the folder (trust_remote_code=True, or "
                    "`import lory_lightning.hf`), a dense model as a plain Llama; tokenizer and generation "
                    "config included.")
    exp.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lory fit`")
    exp.add_argument("--output", required=True, help="a new (or empty) folder")
    exp.add_argument("--routing", choices=["prompt", "segment"], default="prompt",
                     help="how the exported model routes when it generates (config.routing, changeable later)")
    ev = commands.add_parser(
        "evaluate", help="downstream tasks through lm-evaluation-harness (pip install -e \".[eval]\")",
        description="Score a checkpoint on lm-eval tasks: names lm-eval knows (their datasets come from the "
                    "hub), or local ones such as configs/eval/tasks (lory_toy_mc, lory_toy_ppl).")
    ev.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lory fit`")
    ev.add_argument("--tasks", help="comma-separated task names, e.g. lory_toy_mc,lory_toy_ppl")
    ev.add_argument("--config", help="a YAML of task groups with their shot counts, e.g. "
                                     "configs/eval/paper-downstream.yaml (instead of --tasks)")
    ev.add_argument("--num_fewshot", type=int, help="in-context examples per question (with --tasks)")
    ev.add_argument("--routing", choices=["segment", "prompt"], default="segment",
                    help="segment: teacher-forced, as in training; prompt: one merge per layer from the context")
    ev.add_argument("--include_path", nargs="*", default=[], help="more folders of lm-eval task YAMLs")
    ev.add_argument("--limit", type=int, help="at most this many examples per task")
    ev.add_argument("--batch_size", type=int, default=8)
    ev.add_argument("--output", help="write lm-eval's results (JSON) here")
    ana = commands.add_parser(
        "analyze", help="per-domain specialization report of a checkpoint (tables + heatmaps)",
        description="The DomainSpecialization report for a trained checkpoint on any prepared data, "
                    "with no training: mean routing weight per (domain, layer, expert), mutual information "
                    "per layer, per-domain perplexity, heatmaps.")
    ana.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lory fit`")
    ana.add_argument("--data", help="a folder written by `lory prepare` (default: the run's data_dir)")
    ana.add_argument("--output", help="report folder (default: analysis-<checkpoint name> beside the checkpoint)")
    ana.add_argument("--batch_size", type=int, default=8)
    ana.add_argument("--max_batches", type=int, help="stop after this many batches of the held-out split")
    ppl = commands.add_parser(
        "perplexity", help="per-domain perplexity of a checkpoint on any jsonl / .txt text",
        description="Score a checkpoint on documents it never saw (other domains, other corpora): read as "
                    "`lory prepare` reads them, tokenized with the checkpoint's own tokenizer, packed into "
                    "the model's sequence length per domain, scored with segment routing as in training.")
    ppl.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lory fit` (file or sharded folder)")
    ppl.add_argument("--inputs", nargs="+", required=True, metavar="PATH",
                     help=".jsonl, .jsonl.gz, .txt files or folders of them (a .txt file's domain is its folder's name)")
    ppl.add_argument("--text_field", default="text", help="the jsonl key of a document's text")
    ppl.add_argument("--domain_field", default="domain",
                     help="the jsonl key of its domain (absent: the file's name)")
    ppl.add_argument("--batch_size", type=int, default=8)
    ppl.add_argument("--max_sequences", type=int, help="score at most this many sequences per domain")
    ppl.add_argument("--output", help="write the numbers (JSON) here")
    rep = commands.add_parser(
        "replicate", help="the paper's claims at small scale over seeds, with intervals (REPLICATION.md)",
        description="Train dense and Lory 8E with similarity and with random order at every seed (paired: one "
                    "seed per pair), token- and segment-level Expert Choice and two probes at the first seed; keep "
                    "each finished run as a result file (a run whose file is up to date is not trained again); "
                    "write REPLICATION.md with 95%% t intervals over seeds from the result files.")
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0 1 2 3 4)")
    rep.add_argument("--steps", type=int, default=400,
                     help="training steps per run (400: about 12 min a run on 2 cores, 25 runs)")
    rep.add_argument("--output", default="runs/replicate", help="folder for the runs, their YAMLs and data")
    rep.add_argument("--results", default="replication-results",
                     help="folder of the result files, one per run (commit them: the report is built from them)")
    rep.add_argument("--report", action="store_true",
                     help="train nothing: rebuild the report and its figures from the result files alone")
    rep.add_argument("--report_path", default="REPLICATION.md", help="the report (figures go to <name>-figures/)")
    rep.add_argument("--inputs", nargs="+", default=[], metavar="PATH", help="documents (default: the sample corpus)")
    rep.add_argument("--heldout", nargs="+", metavar="PATH",
                     help="held-out domains scored after each run (default: the shipped quotes and dictionary)")
    rep.add_argument("--log", metavar="MD", help="a markdown log of what was tried before, copied into the report "
                                                 "(this repository's: docs/replication-log.md)")
    return parser


def prepare_config_file(path: str) -> dict:
    """The settings of a `lory prepare --config` YAML: PrepareConfig's keys, plus overwrite and quiet."""
    from omegaconf import OmegaConf

    from .data.prepare import PrepareConfig

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a prepare config is a mapping of settings, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(PrepareConfig)] + ["overwrite", "quiet"]
    for key in values:
        if key not in known:
            raise ValueError(f"{path}: unknown key {key!r}; the keys are {', '.join(known)}")
    return values


def _prepare(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from .data.prepare import PrepareConfig, prepare

    fields = {f.name for f in dataclasses.fields(PrepareConfig)}
    cfg = PrepareConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.print_config:
        print(OmegaConf.to_yaml({**dataclasses.asdict(cfg), "overwrite": args.overwrite}), end="")
        return 0
    manifest = prepare(cfg, quiet=args.quiet, overwrite=args.overwrite)
    if "submitted" in manifest:  # --executor slurm: the jobs run on; the manifest comes last
        print(f"{cfg.output}: submitted Slurm jobs {', '.join(manifest['submitted'])}; finished when "
              f"{manifest['manifest']} appears")
        return 0
    splits = manifest["splits"]
    print(f"{cfg.output}: {splits['train']['sequences']} train / {splits['val']['sequences']} val sequences "
          f"of {manifest['seq_len']} tokens, {len(manifest['domains'])} domains "
          f"({', '.join(manifest['domains'])}), {manifest['skipped']['total']} documents skipped")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch
    from tokenizers import Tokenizer

    from .checkpoint_io import end_of_text_id, load_model
    from .data.tokenizer import tokenizer_files
    from .model import generate
    from .model.generate import available_memory_bytes, kv_cache_bytes

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


def _export(args: argparse.Namespace) -> int:
    try:
        from .export import export
    except ImportError as err:
        raise ValueError(f"lory export needs transformers: pip install -e \".[hf]\" ({err})") from err
    out = export(args.ckpt_path, args.output, args.routing)
    print(f"{out}: {json.loads((out / 'lory_export.json').read_text())['architecture']} "
          "(AutoModelForCausalLM.from_pretrained)")
    return 0


def evaluation_groups(args: argparse.Namespace) -> list[tuple[str, list[str], int | None]]:
    """(name, tasks, shots) groups from --tasks/--num_fewshot or a --config YAML of groups."""
    if bool(args.tasks) == bool(args.config):
        raise ValueError("give --tasks or --config (one of them)")
    if args.tasks:
        return [("tasks", [t for t in args.tasks.split(",") if t], args.num_fewshot)]
    import yaml

    groups = (yaml.safe_load(Path(args.config).read_text()) or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"{args.config}: needs a `groups:` list of {{name, tasks, num_fewshot}}")
    out = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("tasks"), list):
            raise ValueError(f"{args.config}: groups[{i}] needs a `tasks:` list")
        out.append((str(group.get("name", i)), [str(t) for t in group["tasks"]], group.get("num_fewshot")))
    return out


def _evaluate(args: argparse.Namespace) -> int:
    groups = evaluation_groups(args)
    try:
        from lm_eval.utils import make_table

        from .evaluate import evaluate
    except ImportError as err:
        raise ValueError(f"lory evaluate needs lm-eval: pip install -e \".[eval]\" ({err})") from err
    everything = {}
    for name, tasks, shots in groups:
        results = evaluate(args.ckpt_path, tasks, shots, args.routing, args.include_path, args.limit,
                           args.batch_size)
        print(f"{name} ({shots or 0}-shot, {args.routing} routing):\n{make_table(results)}")
        everything[name] = results["results"]
    if args.output:
        Path(args.output).write_text(json.dumps(everything, indent=2, default=str) + "\n")
    return 0


def _lightning(argv: list[str]) -> int:
    from .lightning_cli import run_lightning_cli

    return run_lightning_cli(argv)


def _analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze

    analyze(args.ckpt_path, args.data, args.output, args.batch_size, args.max_batches)
    return 0


def _perplexity(args: argparse.Namespace) -> int:
    from .data.sources import ReadPolicy
    from .perplexity import perplexity

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


def _replicate(args: argparse.Namespace) -> int:
    from .replication import replicate

    out = replicate(args.output, args.results, args.report_path, args.seeds, args.steps, args.inputs,
                    args.heldout, log=args.log, train=not args.report)
    trained = sum(v == "trained" for v in out["runs"].values())
    if not args.report:
        print(f"{trained} runs trained, {len(out['runs']) - trained} kept from {args.results}/")
    for line in out["report"]["claims"]:
        print(line)
    print(f"report: {args.report_path} ({out['report']['results']} result files)")
    return 0


COMMANDS = {"prepare": _prepare, "generate": _generate, "export": _export, "evaluate": _evaluate,
            "analyze": _analyze, "perplexity": _perplexity, "replicate": _replicate}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return _lightning(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "prepare" and args.config:
            # settings from the file become defaults, so flags given on the command line win
            args.prepare_parser.set_defaults(**prepare_config_file(args.config))
            args = parser.parse_args(argv)
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as err:  # bad input, paths, permissions, a full disk: one line
        print(f"lory {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1
