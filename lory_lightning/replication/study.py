"""The replication study's runs: which runs, each one's YAML and fingerprint, and its result file.

A run is an ordinary `lory fit` of configs/lory-tiny.yaml with the study's FFN, data order, seed and
budget. After it trains, its result file (``replication-results/<key>.json``) keeps everything the
report needs and nothing machine-bound: per-domain NLL sums and token counts on the validation split
and on the held-out domains, the loss and utilization curves, the routing statistics of the last
validation, the wall time, the config, and a fingerprint of that config and of the input files'
contents. A run whose result file carries the fingerprint its config has now is not trained again,
so the study can be completed across sittings; a changed config or corpus changes the fingerprint
and the run is trained again. The fingerprint does not cover the code: each result file records the
commit it was made at and the sha256 of the package's source as it ran (``source_digest``), and the
report lists both. `lory replicate` refuses to train from a tree whose tracked source (the package,
configs/) differs from its commit unless told ``allow_dirty``, and a result file made so names the
changed files (``uncommitted``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ..atomic import atomic_file
from ..model import ModelConfig

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parents[1]  # lory_lightning/
BASE_CONFIG = REPO / "configs" / "lory-tiny.yaml"
HELDOUT = Path(__file__).resolve().parents[1] / "sample_data" / "heldout"
RESULT_VERSION = 1
DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # 5: a t interval over 3 seeds missed a 4% effect (issue 17)
DEFAULT_STEPS = 400
STEP_TIME = "step-time.json"  # the equal-compute ratio, kept beside a study's result files

class Setting(NamedTuple):
    """One arm of a study: its FFN kind and data order, what it changes, and where it trains."""

    ffn: str
    order: str  # the data order: "similarity" or "random"
    model: dict[str, Any] = {}  # model.arch overrides (never mutated: Run hands out copies)
    prepare: dict[str, Any] = {}  # data.prepare overrides
    seeds: int | None = None  # trains at the first this-many seeds of the study (None: at every seed)
    equal_compute: bool = False  # trains Lory's measured step-time ratio times the study's steps
    eval_routings: tuple[str, ...] = ()  # extra validations with these model.arch.eval_routing values


@dataclass(frozen=True)
class Design:
    """A study: its arms, the shape its runs share, and where its results and report go."""

    name: str
    settings: dict[str, Setting]
    seq_len: int
    batch_size: int | None  # None: lory-tiny's
    passage_chars: int | None  # cut documents into passages of at most this many characters (passages.py)
    results: str
    report: str

    @property
    def paired(self) -> dict[str, Setting]:
        """The arms trained at every seed."""
        return {k: v for k, v in self.settings.items() if v.seeds is None}


FIRST = Design("first", {
    # trained at every seed: the paired comparisons
    "dense-similarity": Setting("dense", "similarity"),
    "lory-similarity": Setting("lory", "similarity"),
    "dense-random": Setting("dense", "random"),
    "lory-random": Setting("lory", "random"),
    # trained at the first seed only (said so in the report)
    "expert-choice": Setting("expert_choice", "similarity", seeds=1),
    "segment-expert-choice": Setting("segment_expert_choice", "similarity", seeds=1),
    # probe: is the lowest-layer specialization peak a property of 4 layers? 8 layers, equal tokens
    "lory-similarity-8-layers": Setting("lory", "similarity", {"n_layer": 8}, seeds=1),
    # probe: do near-copies side by side hurt similarity order? drop pairs above cosine 0.9, not 0.99
    "dense-similarity-dedup-0.9": Setting("dense", "similarity", {}, {"dedup_threshold": 0.9}, seeds=1),
    "lory-similarity-dedup-0.9": Setting("lory", "similarity", {}, {"dedup_threshold": 0.9}, seeds=1),
}, seq_len=512, batch_size=None, passage_chars=None, results="replication-results", report="REPLICATION.md")

# The share of each domain's training documents the near-copy probe keeps at dedup 0.99, so that its
# training tokens per domain are those de-duplication at 0.9 leaves (the second study's corpus, seed 0):
# ``thinning_to_match`` of the two prepared folders' counts, checked against the result files in a test.
NEAR_COPY_KEEP: dict[str, float] = {"books": 0.8818, "code": 0.8789, "legal": 0.7754, "techdocs": 0.9263, "wiki": 0.9139}


def thinning_to_match(full: dict[str, int], target: dict[str, int]) -> dict[str, float]:
    """``keep_fraction`` (data/thinning.py) that thins a corpus of ``full`` training tokens per domain
    to ``target``'s, rounded to 4 digits; a domain the target does not shrink is left out (kept whole)."""
    missing = sorted(set(target) ^ set(full))
    if missing:
        raise ValueError(f"domains {missing} are in one corpus only: the two must share their domains")
    return {d: round(target[d] / full[d], 4) for d in sorted(full) if target[d] < full[d]}


# The second study (issue 33): ordering with room to act (passages of at most 1,000 characters in
# sequences of 1,024 tokens: 5-8 documents per sequence in every domain, measured per run), dense at
# equal compute, the token-level baselines a reviewer asks for at Lory 8E's active parameters, and
# Expert Choice scored with both rules. Batches of 4 x 1,024 tokens: the first study's tokens per step.
SECOND = Design("second", {
    "dense-similarity": Setting("dense", "similarity"),
    "lory-similarity": Setting("lory", "similarity"),
    "dense-random": Setting("dense", "random"),
    "lory-random": Setting("lory", "random"),
    "dense-similarity-equal-compute": Setting("dense", "similarity", equal_compute=True),
    # the token-level baselines at 3 seeds: 5 for every arm is past the budget (report: "Seeds and power")
    "topk-aux-free-similarity": Setting("topk_aux_free", "similarity", {"num_experts": 16, "hidden_dim": 256, "top_k": 2},
                                        seeds=3),
    "remoe-similarity": Setting("remoe", "similarity", {"top_k": 1}, seeds=3),
    "expert-choice": Setting("expert_choice", "similarity", seeds=1, eval_routings=("capacity",)),
    "segment-expert-choice": Setting("segment_expert_choice", "similarity", seeds=1, eval_routings=("capacity",)),
    # probe: do near-copies side by side hurt similarity order? The corpus de-duplicated at cosine 0.9
    # against the 0.99 one thinned at random to the same training tokens per domain (NEAR_COPY_KEEP):
    # one corpus size and mixture, the same tokenizer; only which documents are gone differs.
    "dense-similarity-dedup-0.9": Setting("dense", "similarity", {}, {"dedup_threshold": 0.9}, seeds=1),
    "lory-similarity-dedup-0.9": Setting("lory", "similarity", {}, {"dedup_threshold": 0.9}, seeds=1),
    "dense-similarity-thinned": Setting("dense", "similarity", {}, {"keep_fraction": NEAR_COPY_KEEP}, seeds=1),
    "lory-similarity-thinned": Setting("lory", "similarity", {}, {"keep_fraction": NEAR_COPY_KEEP}, seeds=1),
}, seq_len=1024, batch_size=4, passage_chars=1000, results="replication-results/second",
    report="docs/replication-second.md")

DESIGNS = {d.name: d for d in (FIRST, SECOND)}
PAIRED = FIRST.paired  # the first study's, as its report reads them
FIRST_SEED = {k: v for k, v in FIRST.settings.items() if v.seeds is not None}
SETTINGS = FIRST.settings


@dataclass(frozen=True)
class Run:
    setting: str
    seed: int
    design: str = "first"

    @property
    def key(self) -> str:
        return f"{self.setting}-seed{self.seed}"

    @property
    def spec(self) -> Setting:
        return DESIGNS[self.design].settings[self.setting]

    @property
    def ffn(self) -> str:
        return self.spec.ffn

    @property
    def order(self) -> str:
        return self.spec.order

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.spec.model)

    @property
    def prepare(self) -> dict[str, Any]:
        return dict(self.spec.prepare)

    @property
    def data_name(self) -> str:
        """The prepared-data folder: one per order, prepare override and seed (the seed moves the
        embedding's SVD, the Annoy index and the random order), shared by the runs of a pair."""
        show = lambda v: "-".join(f"{k}{x:g}" for k, x in sorted(v.items())) if isinstance(v, dict) else v  # noqa: E731
        extra = "".join(f"-{k.replace('_', '-')}-{show(v)}" for k, v in sorted(self.prepare.items()))
        return f"data-{self.order}{extra}-seed{self.seed}"


def plan(seeds: Sequence[int], design: Design = FIRST, only: Sequence[str] = ()) -> list[Run]:
    """Every run, seed by seed (a partial study has whole pairs), then the arms trained at fewer seeds;
    ``only``: just these settings."""
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {list(seeds)} repeats a seed")
    unknown = sorted(set(only) - set(design.settings))
    if unknown:
        raise ValueError(f"--only: {unknown} are not settings of the {design.name} study ({', '.join(design.settings)})")
    runs = [Run(s, seed, design.name) for seed in seeds for s in design.paired]
    runs += [Run(s, seed, design.name) for i, seed in enumerate(seeds) for s, spec in design.settings.items()
             if spec.seeds is not None and i < spec.seeds]
    return [r for r in runs if not only or r.setting in only]


def run_config(base: dict[str, Any], run: Run, out: Path, steps: int, data: dict[str, Any],
               model: dict[str, Any]) -> dict[str, Any]:
    """The YAML of one run: lory-tiny with the run's FFN, order, seed, budget and folders."""
    cfg = json.loads(json.dumps(base))  # deep copy
    cfg["seed_everything"] = run.seed  # the initialization (model/init.py: shared parts equal in a pair)
    # The whole held-out split at each of the two validations (lory-tiny reads 10 batches): the
    # claims compare runs a few percent apart, so they should not rest on a fifth of the split.
    cfg["trainer"].update(max_steps=steps, val_check_interval=max(1, steps // 2), enable_progress_bar=False,
                          log_every_n_steps=max(1, min(10, steps // 4)), limit_val_batches=1.0)
    for logger in cfg["trainer"]["logger"]:
        logger["init_args"].update(save_dir=str(out / "runs"), name=run.key, version=0)
    cfg["trainer"]["callbacks"] = [
        {"class_path": "lory_lightning.callbacks.RoutingMonitor", "init_args": {"every_n_steps": 10}},
        {"class_path": "lory_lightning.callbacks.DomainSpecialization"},
        {"class_path": "lory_lightning.callbacks.ValidationRecord"}]
    cfg["model"]["arch"].update({"ffn": run.ffn, **model, **run.model})
    cfg["model"]["training"]["dense_warmup"] = cfg["model"]["training"]["dense_warmup"] if run.ffn == "lory" else 0.0
    data = json.loads(json.dumps(data))
    prepare = {**data.pop("prepare", {}), **run.prepare}
    cfg["data"].update(order=run.order, data_dir=str(out / run.data_name), seed=run.seed, **data)
    if prepare:
        cfg["data"]["prepare"] = prepare
    return cfg


def file_digests(paths: Sequence[str]) -> dict[str, str]:
    """{"<default domain>/<file name>": sha256 of its content} of every file the inputs expand to
    (URLs by content too): where the files lie does not count, what they hold does."""
    from ..data.location import sha256_of
    from ..data.sources import input_files

    return {f"{f.default_domain}/{Path(f.location).name}": sha256_of(f.location) for f in input_files(paths)}


def training_inputs(inputs: Sequence[str]) -> list[str]:
    from ..data.prepare import sample_inputs

    return list(inputs) or sample_inputs("train") + sample_inputs("val")


def fingerprint(cfg: dict[str, Any], inputs: dict[str, str], heldout: dict[str, str]) -> str:
    """sha256 of what decides a run's numbers: its config without the machine's folders, and the
    contents of its training and held-out files."""
    cfg = json.loads(json.dumps(cfg))
    # Renamed keys do not change a run's numbers: the hash is over the names result files were
    # first written with (model.model, data.prepare_args), so committed results stay valid.
    cfg["model"] = {("model" if k == "arch" else k): v for k, v in cfg["model"].items()}
    cfg["data"] = {("prepare_args" if k == "prepare" else k): v for k, v in cfg["data"].items()}
    for logger in cfg["trainer"]["logger"]:
        logger["init_args"].pop("save_dir", None)
    cfg["data"].pop("data_dir", None)
    cfg["data"].pop("inputs", None)  # by content below, not by where the files lie
    cfg["data"].pop("val_inputs", None)  # likewise (in ``inputs``' digests)
    blob = json.dumps({"config": cfg, "inputs": inputs, "heldout": heldout}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def source_digest(root: Path = PACKAGE) -> str:
    """sha256 of the package's Python source as it runs: every ``*.py`` under ``root``, by its path
    there and its bytes, so a result file names the code that made it even from an uncommitted tree."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def uncommitted_source() -> list[str]:
    """Tracked files of the package and configs/ that differ from the commit ([] outside a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", PACKAGE.name, "configs"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def refuse_uncommitted(allow_dirty: bool) -> list[str]:
    """The uncommitted source files, after refusing them unless ``allow_dirty`` (before any training)."""
    changed = uncommitted_source()
    if changed and not allow_dirty:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise RuntimeError(f"lory replicate: tracked source differs from commit {git_commit()}: {shown}. Commit it "
                           "so each result file names the code that made it, or pass --allow_dirty (recorded in "
                           "every result file as `uncommitted`)")
    return changed


def git_commit() -> str | None:
    """The repository's commit (with "+changes" when the work tree differs from it), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha[:12] + ("+changes" if dirty else "")


def read_result(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a result file ({e}); delete it to train the run again") from e
    missing = {"key", "setting", "seed", "fingerprint", "validation"} - set(result)
    if missing:
        raise ValueError(f"{path}: result file lacks {sorted(missing)}; delete it to train the run again")
    return result


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write((json.dumps(result, indent=1, sort_keys=True) + "\n").encode())


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _last_json(folder: Path) -> dict[str, Any] | None:
    files = sorted(folder.glob("step*.json"), key=lambda p: int(p.stem[4:])) if folder.is_dir() else []
    return json.loads(files[-1].read_text()) if files else None


def collect(run: Run, run_dir: Path, cfg: dict[str, Any], heldout_inputs: Sequence[str]) -> dict[str, Any]:
    """The result of a finished run, from its folder: the last validation's sums, the curves, the
    routing statistics, and the held-out domains scored with the final checkpoint."""
    from ..perplexity import perplexity

    val = _last_json(run_dir / "validation")
    if val is None:
        raise RuntimeError(f"{run_dir}: no validation record (ValidationRecord callback missing?)")
    rows = _rows(run_dir)
    spec = _last_json(run_dir / "specialization")
    heldout: dict[str, dict[str, float]] = {}
    if heldout_inputs:
        scored = perplexity(str(run_dir / "checkpoints" / "last.ckpt"), heldout_inputs)
        heldout = {d: {"nll_sum": s.nll, "tokens": s.scored} for d, s in scored.domains.items()}
    from .passages import prepared_documents_per_sequence

    data_dir = Path(cfg["data"]["data_dir"])
    manifest = json.loads((data_dir / "manifest.json").read_text())
    seq, steps = cfg["model"]["arch"]["seq_len"], cfg["trainer"]["max_steps"]
    return {
        "key": run.key, "setting": run.setting, "seed": run.seed, "ffn": run.ffn, "order": run.order,
        "validation": {d: {"nll_sum": n, "tokens": t} for d, n, t in zip(val["domains"], val["nll_sum"], val["tokens"])},
        "validation_step": val["step"],
        "heldout": heldout,
        "loss": [[int(r["step"]), float(r["train/loss"])] for r in rows if r.get("train/loss")],
        "utilization": [[int(r["step"]), float(r["routing/utilization"])] for r in rows if r.get("routing/utilization")],
        "mutual_information": spec["mutual_information"] if spec else None,
        "mean_weight": spec["mean_weight"] if spec else None,
        "near_duplicates_dropped": manifest.get("ordering", {}).get("near_duplicates_dropped"),
        "setup": describe(cfg, manifest),
        "steps": steps,
        "tokens_seen": steps * cfg["data"]["batch_size"] * seq,
        "train_tokens": manifest["splits"]["train"]["sequences"] * seq,
        "train_tokens_by_domain": {d: c["train_tokens"] for d, c in manifest.get("counts_by_domain", {}).items()},
        "documents_per_sequence": prepared_documents_per_sequence(data_dir),
    }


def describe(cfg: dict[str, Any], manifest: dict[str, Any]) -> str:
    """One paragraph of what a run is: model, budget, schedule, data."""
    m = dataclasses.asdict(ModelConfig(**cfg["model"]["arch"]))  # the YAML names only non-defaults
    t, d, o = cfg["trainer"], cfg["data"], cfg["model"]["optim"]
    steps, batch, seq = t["max_steps"], d["batch_size"], m["seq_len"]
    train_tokens = manifest["splits"]["train"]["sequences"] * seq
    val = manifest["splits"]["val"]
    return (f"{m['n_layer']} layers, d {m['dim']}, FFN {m['hidden_dim']}, Lory with {m['num_experts']} "
            f"experts and segments of {m['segment_len']} in sequences of {seq}; {steps} steps of {batch} sequences "
            f"= {steps * batch * seq / 1e6:.2f}M tokens ({steps * batch * seq / train_tokens:.2f} passes over "
            f"{train_tokens / 1e6:.2f}M training tokens); AdamW lr {o['lr']}, cosine with {o['warmup_fraction']:.0%} "
            f"warmup; Lory: {cfg['model']['training']['dense_warmup']:.0%} dense warmup, then upcycling. "
            f"Validation: all {val['sequences']} held-out sequences ({val['sequences'] * seq / 1e3:.0f}k tokens).")


def nll_per_token(sums: dict[str, dict[str, float]], domains: Sequence[str] | None = None) -> float:
    """Pooled mean NLL (log perplexity) over ``domains`` (default: all) of a result's sums."""
    keys = list(sums) if domains is None else list(domains)
    tokens = sum(sums[d]["tokens"] for d in keys)
    return math.fsum(sums[d]["nll_sum"] for d in keys) / tokens if tokens else math.nan


def train_runs(runs: Sequence[Run], out: Path, results: Path, steps: int, inputs: Sequence[str],
               heldout: Sequence[str], data: dict[str, Any], model: dict[str, Any], print_fn=print,
               allow_dirty: bool = False, step_ratio: float | None = None) -> dict[str, str]:
    """Train every run whose result file is missing or has another fingerprint; return {key: what happened}.
    Refuses an uncommitted source tree unless ``allow_dirty`` (``refuse_uncommitted``). An equal-compute
    arm trains ``round(steps * step_ratio)`` steps; an arm with ``eval_routings`` is validated again
    with each (``validation_<routing>`` in its result file)."""
    from ..lightning_cli import run_lightning_cli as lory  # the Lightning entry, not the CLI dispatcher

    uncommitted = refuse_uncommitted(allow_dirty)
    source = source_digest()

    base = yaml.safe_load(BASE_CONFIG.read_text())
    data = {"inputs": list(inputs), **data}
    input_digests = file_digests(training_inputs(inputs) + list(data.get("val_inputs", [])))
    heldout_digests = file_digests(heldout) if heldout else {}
    (out / "configs").mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    for i, run in enumerate(runs, 1):
        if run.spec.equal_compute and step_ratio is None:
            raise ValueError(f"run {run.key} trains at equal compute: it needs the measured step-time ratio")
        run_steps = round(steps * step_ratio) if run.spec.equal_compute else steps
        cfg = run_config(base, run, out, run_steps, data, model)
        fp = fingerprint(cfg, input_digests, heldout_digests)
        path = results / f"{run.key}.json"
        if path.exists():
            old = read_result(path)
            if old["fingerprint"] == fp:
                done[run.key] = "kept"
                print_fn(f"[{i}/{len(runs)}] {run.key}: result file up to date, not trained again")
                continue
            print_fn(f"[{i}/{len(runs)}] {run.key}: config or inputs changed since {path} was written; training again")
        cfg_path = out / "configs" / f"{run.key}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run_dir = out / "runs" / run.key / "version_0"
        shutil.rmtree(run_dir.parent, ignore_errors=True)  # a killed attempt's records must not mix in
        print_fn(f"[{i}/{len(runs)}] {run.key}: lory fit --config {cfg_path}")
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        if lory(["fit", "--config", str(cfg_path)]) != 0:
            raise RuntimeError(f"run {run.key} failed: see the message above; config {cfg_path}")
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        result = collect(run, run_dir, cfg, heldout)
        for routing in run.spec.eval_routings:
            result[f"validation_{routing}"] = validate_again(cfg, cfg_path, run, run_dir, routing)
        if run.spec.equal_compute:
            result["step_ratio"] = step_ratio
        result |= {"fingerprint": fp, "config": cfg_without_paths(cfg), "wall_s": round(wall, 1),
                   "cpu_s": round(cpu, 1), "threads": torch_threads(), "commit": git_commit(),
                   "source_sha256": source, "version": RESULT_VERSION}
        if uncommitted:
            result["uncommitted"] = uncommitted
        write_result(path, result)
        done[run.key] = "trained"
    return done


def validate_again(cfg: dict[str, Any], cfg_path: Path, run: Run, run_dir: Path, routing: str) -> dict[str, Any]:
    """The run's last checkpoint validated with ``model.arch.eval_routing`` ``routing``, logged beside
    the run as version ``eval-<routing>``: {domain: {"nll_sum", "tokens"}} as ``collect`` keeps them."""
    from ..lightning_cli import run_lightning_cli as lory

    cfg = json.loads(json.dumps(cfg))
    for logger in cfg["trainer"]["logger"]:
        logger["init_args"]["version"] = f"eval-{routing}"
    path = cfg_path.with_name(f"{cfg_path.stem}-eval-{routing}.yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if lory(["validate", "--config", str(path), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
             "--model.arch.eval_routing", routing]) != 0:
        raise RuntimeError(f"validating {run.key} with eval_routing {routing} failed: see the message above; config {path}")
    val = _last_json(run_dir.parent / f"eval-{routing}" / "validation")
    if val is None:
        raise RuntimeError(f"{run_dir.parent}/eval-{routing}: no validation record")
    return {d: {"nll_sum": n, "tokens": t} for d, n, t in zip(val["domains"], val["nll_sum"], val["tokens"])}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children, all threads: a run's cost that neither
    other jobs on a shared machine nor a pause inflate, unlike its wall time."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def cfg_without_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as a result file keeps it: folders shown as where `lory replicate` puts them."""
    cfg = json.loads(json.dumps(cfg))
    for logger in cfg["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = "runs/replicate/runs"
    cfg["data"]["data_dir"] = "runs/replicate/" + Path(cfg["data"]["data_dir"]).name
    cfg["data"]["inputs"] = [Path(p).name for p in cfg["data"].get("inputs", [])]
    if "val_inputs" in cfg["data"]:
        cfg["data"]["val_inputs"] = [Path(p).name for p in cfg["data"]["val_inputs"]]
    return cfg
