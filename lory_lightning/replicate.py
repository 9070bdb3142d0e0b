"""`lory replicate`: the paper's claims at a small scale (LORY.md section 5), as one command and one report.

Trains, at one token budget and seed on the same corpus: dense and Lory 8E with similarity order,
the same two with random order, and token- and segment-level Expert Choice; then writes a markdown
report with per-domain perplexity, loss curves, utilization, specialization, the exact commands, the
wall time, and which claims held. Every run is an ordinary `lory fit` whose YAML is written next to
the report, so each can be rerun or inspected alone. ``log`` names a markdown file of what was tried
before this run (each probe with its change and numbers); it goes into the report verbatim, so the
report carries its own investigation history.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from .model import ModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = {  # name: (ffn, data order)
    "dense-similarity": ("dense", "similarity"),
    "lory-similarity": ("lory", "similarity"),
    "dense-random": ("dense", "random"),
    "lory-random": ("lory", "random"),
    "expert-choice": ("expert_choice", "similarity"),
    "segment-expert-choice": ("segment_expert_choice", "similarity"),
}


def run_config(base: dict[str, Any], name: str, ffn: str, order: str, out: Path, steps: int,
               data: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The YAML of one run: lory-tiny with the ffn, order, budget and folders of this study."""
    cfg = json.loads(json.dumps(base))  # deep copy
    # The whole held-out split at every validation (lory-tiny reads 10 batches): the claims compare
    # runs a few percent apart, so the table should not rest on a fifth of the split.
    cfg["trainer"].update(max_steps=steps, val_check_interval=max(1, steps // 4), enable_progress_bar=False,
                          log_every_n_steps=max(1, min(10, steps // 4)), limit_val_batches=1.0)
    for logger in cfg["trainer"]["logger"]:
        logger["init_args"].update(save_dir=str(out / "runs"), name=name, version=0)
    cfg["trainer"]["callbacks"] = [
        {"class_path": "lory_lightning.callbacks.RoutingMonitor", "init_args": {"every_n_steps": 10}},
        {"class_path": "lory_lightning.callbacks.DomainSpecialization"}]
    cfg["model"]["model"].update(ffn=ffn, **model)
    cfg["model"]["training"]["dense_warmup"] = cfg["model"]["training"]["dense_warmup"] if ffn == "lory" else 0.0
    cfg["data"].update(order=order, data_dir=str(out / f"data-{order}"), **data)
    return cfg


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def collect(run: Path, domains: list[str]) -> dict[str, Any]:
    rows = _metrics(run)
    val = [r for r in rows if r.get("val/ppl")]
    last = val[-1] if val else {}
    spec = sorted((run / "specialization").glob("step*.json"), key=lambda p: int(p.stem[4:])) \
        if (run / "specialization").exists() else []
    return {
        "ppl": {d: float(last.get(f"val/{d}/ppl") or math.nan) for d in domains} | {"all": float(last.get("val/ppl") or math.nan)},
        "loss": [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")],
        "utilization": [(int(r["step"]), float(r["routing/utilization"])) for r in rows if r.get("routing/utilization")],
        "mi": json.loads(spec[-1].read_text())["mutual_information"] if spec else None,
        "heatmap": str(spec[-1].with_name(spec[-1].stem + "-all-layers.png")) if spec else None,
    }


def claims(res: dict[str, dict[str, Any]], domains: list[str]) -> list[tuple[str, bool, str]]:
    """(claim, held, evidence) for the paper's four claims (LORY.md section 5)."""
    def gain(lory: str, dense: str) -> float:
        return sum(res[dense]["ppl"][d] / res[lory]["ppl"][d] - 1 for d in domains) / len(domains)

    out = []
    worse = [d for d in domains if not res["lory-similarity"]["ppl"][d] < res["dense-similarity"]["ppl"][d]]
    out.append(("Lory beats the parameter-matched dense model in perplexity on every domain", not worse,
                "better on every domain" if not worse else f"not better on: {', '.join(worse)}"))
    g_sim, g_rnd = gain("lory-similarity", "dense-similarity"), gain("lory-random", "dense-random")
    out.append(("The gain over dense is larger with similarity batching than with random batching",
                g_sim > max(g_rnd, 0.0),
                f"mean per-domain gain {g_sim:+.1%} (similarity) against {g_rnd:+.1%} (random)"))
    mi = res["lory-similarity"]["mi"] or []
    if len(mi) >= 3:
        low, upper = mi[0], sum(mi[len(mi) // 2:]) / len(mi[len(mi) // 2:])
        out.append(("Experts specialize by domain, more in middle and upper layers than in the lowest", upper > low,
                    f"I(domain; expert) per layer {' / '.join(f'{v:.3f}' for v in mi)} nats: layer 0 {low:.3f}, "
                    f"upper half mean {upper:.3f}"))
    seg = [d for d in domains if not res["lory-similarity"]["ppl"][d] < res["segment-expert-choice"]["ppl"][d]]
    ec, lory = res["expert-choice"]["ppl"]["all"], res["lory-similarity"]["ppl"]["all"]
    tok = ec / lory - 1
    # "close" is read as: token-level EC is at most 5% better than Lory overall (or Lory is the better one)
    out.append(("Lory beats segment-level Expert Choice clearly and is close to token-level Expert Choice",
                not seg and tok > -0.05,
                f"segment EC worse on {len(domains) - len(seg)}/{len(domains)} domains; token EC overall ppl "
                f"{ec:.2f} against Lory {lory:.2f} ({tok:+.1%}, {'Lory' if tok > 0 else 'token EC'} better)"))
    return out


def plot_curves(res: dict[str, dict[str, Any]], path: Path, key: str, ylabel: str) -> Path | None:
    from .routing.plots import pyplot

    series = {n: r[key] for n, r in res.items() if r[key]}
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        ax.plot([s for s, _ in points], [v for _, v in points], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def replicate(out: str, steps: int, report: str, inputs: list[str] | None = None, seq_len: int = 512,
              model: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
              log: str | None = None) -> dict[str, Any]:
    from .lightning_cli import run_lightning_cli as lory  # the Lightning entry, not the CLI dispatcher

    if log and not Path(log).is_file():  # fail before an hour of training, not after
        raise FileNotFoundError(f"--log {log}: no such file (a markdown log of what was tried, put in the report)")
    out_dir = Path(out)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((CONFIGS / "lory-tiny.yaml").read_text())
    model = {"seq_len": seq_len, **(model or {})}
    data = {"inputs": list(inputs or []), **(data or {})}
    results: dict[str, dict[str, Any]] = {}
    commands, walls = [], {}
    t_all = time.perf_counter()
    for name, (ffn, order) in RUNS.items():
        cfg = run_config(base, name, ffn, order, out_dir, steps, data, model)
        path = out_dir / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        commands.append(f"lory fit --config {path}")
        t0 = time.perf_counter()
        if lory(["fit", "--config", str(path)]) != 0:
            raise RuntimeError(f"run {name} failed: see the message above; config {path}")
        walls[name] = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    domains = json.loads((out_dir / "data-similarity" / "manifest.json").read_text())["domains"]
    for name in RUNS:
        results[name] = collect(out_dir / "runs" / name / "version_0", domains)
    held = claims(results, domains)
    setup = describe(yaml.safe_load((out_dir / "configs" / "lory-similarity.yaml").read_text()), out_dir)
    write_report(Path(report), out_dir, results, domains, held, commands, walls, total, steps, setup,
                 Path(log).read_text() if log else None)
    return {"results": results, "claims": held, "wall_s": total}


def describe(cfg: dict[str, Any], out_dir: Path) -> str:
    """One paragraph of what every run shares: model, budget, schedule, data, seed."""
    # the run YAMLs name only what differs from ModelConfig's defaults (the tiny shape)
    m = dataclasses.asdict(ModelConfig(**cfg["model"]["model"]))
    t, d, o = cfg["trainer"], cfg["data"], cfg["model"]["optim"]
    manifest = json.loads((out_dir / "data-similarity" / "manifest.json").read_text())
    steps, batch, seq = t["max_steps"], d["batch_size"], m["seq_len"]
    train_tokens = manifest["splits"]["train"]["sequences"] * seq
    val = manifest["splits"]["val"]
    return (f"Every run: {m['n_layer']} layers, d {m['dim']}, FFN {m['hidden_dim']}, Lory with {m['num_experts']} "
            f"experts and segments of {m['segment_len']} in sequences of {seq}; {steps} steps of {batch} sequences "
            f"= {steps * batch * seq / 1e6:.2f}M tokens ({steps * batch * seq / train_tokens:.2f} passes over "
            f"{train_tokens / 1e6:.2f}M training tokens); AdamW lr {o['lr']}, cosine with {o['warmup_fraction']:.0%} "
            f"warmup; Lory: {cfg['model']['training']['dense_warmup']:.0%} dense warmup, then upcycling; seed "
            f"{cfg['seed_everything']}. Validation: all {val['sequences']} held-out sequences "
            f"({val['sequences'] * seq / 1e3:.0f}k tokens), the same for every run.")


def write_report(path: Path, out_dir: Path, res: dict[str, dict[str, Any]], domains: list[str],
                 held: list[tuple[str, bool, str]], commands: list[str], walls: dict[str, float], total: float,
                 steps: int, setup: str = "", log: str | None = None) -> None:
    figs = path.parent / (path.stem.lower() + "-figures")
    figs.mkdir(parents=True, exist_ok=True)
    loss = plot_curves(res, figs / "loss.png", "loss", "train loss")
    util = plot_curves({k: v for k, v in res.items() if v["utilization"]}, figs / "utilization.png", "utilization",
                       "experts activated per 10 steps (summed over layers)")
    lines = [f"# Replication at small scale ({steps} steps per run, {total / 60:.1f} min wall on this machine)", "",
             "Generated by `lory replicate`; every number below comes from the runs it made.", "",
             setup, "", "## Claims", ""]
    lines += [f"- **{'held' if ok else 'did not hold'}**: {claim} ({evidence})" for claim, ok, evidence in held]
    lines += ["", "Each run is one seed: a difference between two runs is evidence only where it is larger than "
              "the seed-to-seed spread of the same setting (measured in the investigation log, where there is one)."]
    lines += ["", "## Validation perplexity per domain", "",
              "| run | " + " | ".join(domains) + " | all | wall |", "|---|" + "---:|" * (len(domains) + 2)]
    for name, r in res.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['ppl'][d]:.2f}" for d in domains) +
                     f" | {r['ppl']['all']:.2f} | {walls[name] / 60:.1f} min |")
    lines += [""]
    for fig, title in ((loss, "Training loss"), (util, "Expert utilization")):
        if fig:
            lines += [f"## {title}", "", f"![{title}]({fig.relative_to(path.parent)})", ""]
    heat = res["lory-similarity"]["heatmap"]
    if heat:
        target = figs / "specialization-lory-similarity.png"
        target.write_bytes(Path(heat).read_bytes())
        lines += ["## Specialization (Lory, similarity order, last validation)", "",
                  f"![specialization]({target.relative_to(path.parent)})", ""]
    lines += ["## Commands", "", "```"] + commands + ["```", ""]
    if log:
        lines += ["## Investigation log", "", log.strip(), ""]
    path.write_text("\n".join(lines))
