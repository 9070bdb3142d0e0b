"""REPLICATION.md and its figures from the result files alone (`lory replicate --report`).

Nothing here reads a run folder, a clock or the machine: the same result files give the same bytes.
Every difference is in log perplexity (mean NLL per token) times 100, written as percent: -3.00%
means the first model's perplexity is about 3% lower. Each interval is the 95% Student t interval of
the mean of per-seed paired differences (stats.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .study import DEFAULT_SEEDS, PAIRED, SETTINGS, STEP_TIME, nll_per_token, plan, read_result

Result = dict[str, Any]
# "close": token-level Expert Choice better than Lory by less than this many seed-to-seed standard
# deviations of Lory's log perplexity (or Lory the better one).
CLOSE_SDS = 2.0


def load_results(folder: Path, settings: dict[str, Any] = SETTINGS) -> list[Result]:
    """Every result file in ``folder``, in the study's order (setting, then seed); ``settings``: the study's."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no result folder (run `lory replicate` first, or give --results)")
    results = [read_result(p) for p in sorted(folder.glob("*.json")) if p.name != STEP_TIME]
    for r in results:
        if r["setting"] not in settings:
            raise ValueError(f"{folder}/{r['key']}.json: unknown setting {r['setting']!r} "
                             f"(known: {', '.join(settings)})")
    if not results:
        raise ValueError(f"{folder}: no result files")
    names = list(settings)
    return sorted(results, key=lambda r: (names.index(r["setting"]), r["seed"]))


class Study:
    """The result files, indexed: ``by[setting][seed]``, the domains, and log perplexities."""

    def __init__(self, results: list[Result]) -> None:
        self.results = results
        self.by: dict[str, dict[int, Result]] = {}
        for r in results:
            self.by.setdefault(r["setting"], {})[r["seed"]] = r
        self.domains = list(results[0]["validation"])
        self.heldout = list(results[0]["heldout"])
        for r in results:
            if list(r["validation"]) != self.domains or list(r["heldout"]) != self.heldout:
                raise ValueError(f"result {r['key']}: domains {list(r['validation'])} + {list(r['heldout'])} differ "
                                 f"from {results[0]['key']}'s {self.domains} + {self.heldout}: results of "
                                 "different corpora can't be compared; move one set away")
        self.columns = [*self.domains, "all", *self.heldout] + (["held-out"] if self.heldout else [])

    def seeds(self, *settings: str) -> list[int]:
        """The seeds every one of ``settings`` has a result for, ascending."""
        common = set.intersection(*(set(self.by.get(s, {})) for s in settings))
        return sorted(common)

    def logppl(self, r: Result, column: str) -> float:
        """Log perplexity of one result on a domain, "all" (pooled validation) or "held-out" (pooled)."""
        if column == "all":
            return nll_per_token(r["validation"])
        if column == "held-out":
            return nll_per_token(r["heldout"])
        part = r["validation"] if column in r["validation"] else r["heldout"]
        return nll_per_token(part, [column])

    def diffs(self, a: str, b: str, column: str) -> list[float]:
        """Per seed, 100 x (log ppl of ``a`` - log ppl of ``b``), over the seeds both have."""
        return [100 * (self.logppl(self.by[a][s], column) - self.logppl(self.by[b][s], column))
                for s in self.seeds(a, b)]

    def gain_gap(self, column: str) -> list[float]:
        """Per seed, (Lory - dense) with similarity order minus (Lory - dense) with random order."""
        seeds = self.seeds("lory-similarity", "dense-similarity", "lory-random", "dense-random")
        lp = lambda s, k: self.logppl(self.by[k][s], column)  # noqa: E731
        return [100 * ((lp(s, "lory-similarity") - lp(s, "dense-similarity"))
                       - (lp(s, "lory-random") - lp(s, "dense-random"))) for s in seeds]

    def specialization_gap(self, setting: str) -> list[float]:
        """Per seed, mean mutual information of the upper half of the layers minus the lowest layer's."""
        out = []
        for s in sorted(self.by.get(setting, {})):
            mi = self.by[setting][s]["mutual_information"]
            if mi and len(mi) >= 3:
                upper = mi[len(mi) // 2:]
                out.append(sum(upper) / len(upper) - mi[0])
        return out


def _iv(iv: stats.Interval, unit: str = "%", digits: int = 2) -> str:
    if iv.n < 2:
        return f"{iv.mean:+.{digits}f}{unit} (one seed)"
    return f"{iv.mean:+.{digits}f}{unit} [{iv.lo:+.{digits}f}, {iv.hi:+.{digits}f}]"


def _cell(values: Sequence[float], direction: int) -> str:
    if not values:
        return "-"
    iv = stats.interval(values)
    return f"{_iv(iv)} {iv.verdict(direction)}" if iv.n >= 2 else _iv(iv)


COMPARISONS: list[tuple[str, str, Callable[[Study, str], list[float]]]] = [
    ("Lory - dense, similarity order", "Lory lower", lambda st, c: st.diffs("lory-similarity", "dense-similarity", c)),
    ("Lory - dense, random order", "Lory lower", lambda st, c: st.diffs("lory-random", "dense-random", c)),
    ("gain with similarity - gain with random", "larger with similarity", lambda st, c: st.gain_gap(c)),
    ("similarity - random, dense", "similarity lower", lambda st, c: st.diffs("dense-similarity", "dense-random", c)),
    ("similarity - random, Lory", "similarity lower", lambda st, c: st.diffs("lory-similarity", "lory-random", c)),
]


def claims(st: Study) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the paper's claims (LORY.md section 5), from intervals over seeds."""
    out: list[tuple[str, str, str]] = []

    def paired(claim: str, values: list[float], direction: int, unit: str = "%", digits: int = 2) -> None:
        if not values:
            out.append((claim, "no result", "the runs it needs have no result file yet"))
            return
        iv = stats.interval(values)
        out.append((claim, iv.verdict(direction), f"{_iv(iv, unit, digits)}, {iv.n} seeds"))

    paired("Lory 8E has lower perplexity than the parameter-matched dense model (similarity order, all "
           "validation tokens)", st.diffs("lory-similarity", "dense-similarity", "all"), -1)
    per_domain = [stats.interval(v) for v in (st.diffs("lory-similarity", "dense-similarity", d) for d in st.domains) if v]
    if per_domain:
        verdicts = [iv.verdict(-1) for iv in per_domain]
        verdict = ("holds" if all(v == "holds" for v in verdicts) else "reversed" if "reversed" in verdicts
                   else "no interval" if per_domain[0].n < 2 else "not shown")
        counts = ", ".join(f"{name}: {sum(v == name for v in verdicts)}" for name in ("holds", "not shown", "reversed")
                           if name in verdicts)
        out.append(("... on every training domain", verdict, f"per domain ({counts}; table below)"))
    paired("The gain over dense is larger with similarity order than with random order (all validation tokens)",
           st.gain_gap("all"), -1)
    if st.heldout:
        paired(f"Lory has lower perplexity than dense on domains neither trained on ({', '.join(st.heldout)}; "
               "similarity order, pooled)", st.diffs("lory-similarity", "dense-similarity", "held-out"), -1)
    paired("Similarity order gives lower perplexity than random order: dense",
           st.diffs("dense-similarity", "dense-random", "all"), -1)
    paired("Similarity order gives lower perplexity than random order: Lory",
           st.diffs("lory-similarity", "lory-random", "all"), -1)
    paired("Experts specialize more in the upper half of the layers than in the lowest (mutual information "
           "between domain and expert, upper-half mean minus layer 0; Lory, similarity order)",
           st.specialization_gap("lory-similarity"), +1, " nats", 3)
    out += expert_choice_claims(st)
    return out


def expert_choice_claims(st: Study) -> list[tuple[str, str, str]]:
    """The Expert Choice comparisons, from one seed: judged against the seed-to-seed spread of Lory."""
    seeds = st.seeds("lory-similarity", "expert-choice", "segment-expert-choice")
    if not seeds:
        return [("Lory beats segment-level Expert Choice and is close to token-level Expert Choice", "no result",
                 "the Expert Choice runs have no result file yet")]
    s = seeds[0]
    lory = st.by["lory-similarity"]
    sd = stats.mean_sd([100 * st.logppl(r, "all") for r in lory.values()])[1]
    yard = f"the seed-to-seed sd of Lory's log perplexity is {sd:.2f}%" if not math.isnan(sd) else "no seed spread yet"
    seg = st.diffs("lory-similarity", "segment-expert-choice", "all")[seeds.index(s)]
    seg_domains = sum(st.diffs("lory-similarity", "segment-expert-choice", d)[seeds.index(s)] < 0 for d in st.domains)
    tok = st.diffs("lory-similarity", "expert-choice", "all")[seeds.index(s)]
    close = tok < 0 or (not math.isnan(sd) and tok < CLOSE_SDS * sd)
    return [
        (f"Lory beats segment-level Expert Choice (one seed, {s})", "seen at one seed" if seg < 0 and
         seg_domains == len(st.domains) else "not seen at one seed",
         f"Lory - segment EC {seg:+.2f}% overall, Lory lower on {seg_domains}/{len(st.domains)} domains; {yard}"),
        (f"Lory is close to token-level Expert Choice (one seed, {s}; close: token EC better by under "
         f"{CLOSE_SDS:g} seed sds, or Lory better)", "seen at one seed" if close else "not seen at one seed",
         f"Lory - token EC {tok:+.2f}% overall; {yard}"),
    ]


def perplexity_table(st: Study) -> list[str]:
    lines = ["| run | seeds | " + " | ".join(st.columns) + " |", "|---|---|" + "---:|" * len(st.columns)]
    for setting, by_seed in st.by.items():
        cells = []
        for column in st.columns:
            ppl = [math.exp(st.logppl(r, column)) for r in by_seed.values()]
            mean, sd = stats.mean_sd(ppl)
            cells.append(f"{mean:.2f}" + (f" ± {sd:.2f}" if len(ppl) > 1 else ""))
        lines.append(f"| {setting} | {_seed_list(sorted(by_seed))} | " + " | ".join(cells) + " |")
    return lines


def _seed_list(seeds: Sequence[int]) -> str:
    return " ".join(str(s) for s in seeds)


def difference_table(st: Study) -> list[str]:
    head = [f"{name} ({claim})" for name, claim, _ in COMPARISONS]
    lines = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for column in st.columns:
        lines.append(f"| {column} | " + " | ".join(_cell(fn(st, column), -1) for _, _, fn in COMPARISONS) + " |")
    return lines


def mi_table(st: Study) -> list[str]:
    cols = [s for s in ("lory-similarity", "lory-random", "lory-similarity-8-layers") if st.by.get(s)]
    layers = max((len(r["mutual_information"] or []) for c in cols for r in st.by[c].values()), default=0)
    lines = ["| layer | " + " | ".join(f"{c} (seeds {_seed_list(sorted(st.by[c]))})" for c in cols) + " |",
             "|---:|" + "---:|" * len(cols)]
    for layer in range(layers):
        cells = []
        for c in cols:
            vals = [r["mutual_information"][layer] for r in st.by[c].values()
                    if r["mutual_information"] and layer < len(r["mutual_information"])]
            if not vals:
                cells.append("")
                continue
            mean, sd = stats.mean_sd(vals)
            cells.append(f"{mean:.3f}" + (f" ± {sd:.3f}" if len(vals) > 1 else ""))
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return lines


def layer_probe(st: Study) -> list[str]:
    probe = st.by.get("lory-similarity-8-layers")
    if not probe:
        return ["The 8-layer probe has no result file yet."]
    s = min(probe)
    mi = probe[s]["mutual_information"]
    peak = int(np.argmax(mi))
    upper = sum(mi[len(mi) // 2:]) / len(mi[len(mi) // 2:])
    base = st.by.get("lory-similarity", {}).get(s)
    four = f" (the 4-layer run at that seed: layer 0 {base['mutual_information'][0]:.3f}, upper-half mean " \
           f"{sum(base['mutual_information'][2:]) / len(base['mutual_information'][2:]):.3f})" \
        if base and base["mutual_information"] and len(base["mutual_information"]) >= 3 else ""
    verdict = ("the lowest layer specializes most at 8 layers too: at this budget the peak is not an artefact "
               "of 4 layers" if peak == 0 else f"at 8 layers the peak moves to layer {peak}: the lowest-layer "
               "peak is a property of the 4-layer model")
    return [f"Probe (one seed, {s}): Lory with 8 layers, the same width, tokens and schedule. Mutual information "
            f"per layer {' / '.join(f'{v:.3f}' for v in mi)} nats: layer 0 {mi[0]:.3f}, upper-half mean "
            f"{upper:.3f}{four}. Result: {verdict}."]


def dedup_probe(st: Study) -> list[str]:
    lines, moves = [], {}  # model -> (how far the probe moved similarity order, the seed-to-seed sd)
    for model in ("dense", "lory"):
        probe = st.by.get(f"{model}-similarity-dedup-0.9")
        if not probe:
            lines.append(f"- {model}: the probe has no result file yet.")
            continue
        s = min(probe)
        sim, rnd = st.by.get(f"{model}-similarity", {}).get(s), st.by.get(f"{model}-random", {}).get(s)
        if sim is None or rnd is None:
            lines.append(f"- {model}: the seed-{s} similarity and random runs have no result files yet.")
            continue
        lp = lambda r: 100 * st.logppl(r, "all")  # noqa: E731
        gap, moved = lp(sim) - lp(rnd), lp(probe[s]) - lp(sim)
        spread = stats.mean_sd(st.diffs(f"{model}-similarity", f"{model}-random", "all"))[1]
        closed = "" if gap <= 0 else (f"; it closes {-moved / gap:.0%} of the gap to random order" if moved < 0 else
                                      f"; it widens the gap to random order by {moved / gap:.0%}")
        lines.append(f"- {model} (seed {s}): similarity order at cosine 0.99 {math.exp(lp(sim) / 100):.2f}, at 0.9 "
                     f"{math.exp(lp(probe[s]) / 100):.2f}, random order {math.exp(lp(rnd) / 100):.2f}; the stricter "
                     f"threshold moves similarity order by {moved:+.2f}% (similarity - random at this seed "
                     f"{gap:+.2f}%, seed-to-seed sd of that difference {spread:.2f}%){closed}. Near-duplicates "
                     f"dropped: {sim['near_duplicates_dropped']} at 0.99, {probe[s]['near_duplicates_dropped']} at 0.9.")
        moves[model] = (moved, spread)
    if len(moves) == 2:
        lines += ["", "Result: " + dedup_verdict(moves)]
    return lines


def dedup_verdict(moves: dict[str, tuple[float, float]]) -> str:
    """What the near-copies probe says, from each model's move (percent; negative: lower perplexity)
    against the seed-to-seed sd of similarity - random: a move within one sd is not read as an effect."""
    closer = [m for m, (moved, sd) in moves.items() if moved < -sd]
    further = [m for m, (moved, sd) in moves.items() if moved > sd]
    within = [m for m in moves if m not in closer and m not in further]
    parts = [f"{', '.join(ms)}: {what}" for ms, what in ((closer, "lower perplexity by more than one sd"),
                                                         (further, "higher perplexity by more than one sd"),
                                                         (within, "a change within one sd")) if ms]
    if closer and not further:
        reading = "this supports, at one seed, near-copies side by side as a cost of similarity order"
    elif closer:
        reading = "the two models disagree, at one seed"
    else:
        reading = ("no support, at one seed, for near-copies side by side as the reason similarity order does "
                   "not help here")
    return f"dropping more near-duplicates gives {'; '.join(parts)}: {reading}."


def figures(st: Study, folder: Path) -> dict[str, Path]:
    """loss.png, utilization.png, mutual-information.png, specialization.png (the ones there is data for)."""
    from ..routing.plots import pyplot, specialization_figure

    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(fig, name: str) -> None:
        path = folder / name
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})  # same bytes on every run
        plt.close(fig)
        out[name] = path

    def curve(key: str, settings: Sequence[str], ylabel: str, name: str) -> None:
        series = {s: [r[key] for r in st.by[s].values() if r[key]] for s in settings if st.by.get(s)}
        series = {s: v for s, v in series.items() if v}
        if not series:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        for s, runs in series.items():
            steps = [p[0] for p in runs[0]]
            same = [r for r in runs if [p[0] for p in r] == steps]
            ax.plot(steps, np.mean([[p[1] for p in r] for r in same], axis=0), label=f"{s} (mean of {len(same)})")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        save(fig, name)

    curve("loss", list(PAIRED), "train loss", "loss.png")
    curve("utilization", ["lory-similarity", "lory-random"], "experts activated per 10 steps (summed over layers)",
          "utilization.png")
    mi = {s: [r["mutual_information"] for r in st.by[s].values() if r["mutual_information"]]
          for s in ("lory-similarity", "lory-random", "lory-similarity-8-layers") if st.by.get(s)}
    mi = {s: v for s, v in mi.items() if v}
    if mi:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for s, runs in mi.items():
            arr = np.array(runs)  # (seeds, layers)
            err = arr.std(axis=0, ddof=1) if len(arr) > 1 else None
            ax.errorbar(np.arange(arr.shape[1]), arr.mean(axis=0), yerr=err, marker="o", capsize=3,
                        label=f"{s} ({len(arr)} seeds)")
        ax.set_xticks(range(max(len(r[0]) for r in mi.values())))  # layers are whole numbers
        ax.set_xlabel("layer")
        ax.set_ylabel("I(domain; expert), nats")
        ax.legend(fontsize=8)
        save(fig, "mutual-information.png")
    weights = [np.array(r["mean_weight"]) for r in st.by.get("lory-similarity", {}).values() if r["mean_weight"]]
    if weights:
        mean = np.mean(weights, axis=0)  # (layers, D, E)
        save(specialization_figure(mean, st.domains, list(range(mean.shape[0])),
                                   f"Lory, similarity order: mean routing weight, last validation, mean of "
                                   f"{len(weights)} seeds"), "specialization.png")
    return out


def source_cell(r: Result) -> str:
    """The run's source digest (12 digits) for a runs table, marked where files were uncommitted."""
    return r.get("source_sha256", "not recorded")[:12] + (" (uncommitted files)" if r.get("uncommitted") else "")


def status(st: Study, seeds: Sequence[int] = DEFAULT_SEEDS) -> str:
    have = {r["key"] for r in st.results}
    missing = [r.key for r in plan(seeds) if r.key not in have]
    if not missing:
        return f"All {len(have)} runs of the study (seeds {_seed_list(seeds)}) are in."
    return (f"**In progress**: {len(plan(seeds)) - len(missing)} of the {len(plan(seeds))} runs of the study "
            f"(seeds {_seed_list(seeds)}) have result files; missing: {', '.join(missing)}. Claims with fewer than "
            "5 seeds have wide intervals; `lory replicate` trains only what is missing.")


def write_report(results_dir: Path, path: Path, log: str | None = None) -> dict[str, Any]:
    """REPLICATION.md (``path``) and its figures (``<stem>-figures/``) from the first study's result files."""
    st = Study(load_results(results_dir))
    figs = figures(st, path.parent / (path.stem.lower() + "-figures"))
    rel = lambda name: figs[name].relative_to(path.parent).as_posix()  # noqa: E731
    held = claims(st)
    # the setup sentence names Lory's dense warmup, so it comes from a Lory run where there is one
    setup = next((r for r in st.results if r.get("ffn") == "lory"), st.results[0])["setup"]
    n = max(len(v) for k, v in st.by.items() if k in PAIRED) if any(k in PAIRED for k in st.by) else 0
    cpu = sum(r.get("cpu_s", 0.0) for r in st.results) / 3600
    lines = [f"# Replication at small scale, over seeds ({n} seeds per paired run)", "",
             f"Generated by `lory replicate --report` from the {len(st.results)} result files in "
             f"`{results_dir.name}/`; every number below comes from them. {status(st)}", "",
             f"Every run: {setup} Each seed seeds the model's initialization and the data (the prepared data: "
             "embedding, neighbours, random order; and the training stream). The two runs of a pair share their "
             "seed: dense and Lory at one seed start from the same embeddings and attention, and Lory's expert 0 "
             "is the dense model's FFN (model/init.py), so through Lory's dense warmup the two are the same "
             "model; similarity and random order at one seed share the initialization. Token- and segment-level "
             "Expert Choice and the two probes ran at the first seed only.", "",
             "How to read: differences are in log perplexity (mean NLL per token) x 100, written as percent: "
             "-3.00% means the first model's perplexity is about 3% lower. Each interval is the 95% Student t "
             "interval of the mean of the per-seed paired differences (n seeds, n - 1 degrees of freedom). A "
             "claim **holds** when its interval excludes zero in the claimed direction, is **not shown** when "
             "the interval contains zero, and is **reversed** when it excludes zero in the other direction.", "",
             "## Claims", "", "| claim | verdict | difference [95% interval], seeds |", "|---|---|---|"]
    lines += [f"| {claim} | **{verdict}** | {evidence} |" for claim, verdict, evidence in held]
    lines += ["", "## Perplexity (mean ± sd over seeds)", "",
              f"Validation split (the training domains), pooled (`all`), and the held-out domains "
              f"({', '.join(st.heldout) or 'none'}) no run trained on, scored with the final checkpoint "
              "(`lory perplexity`).", ""]
    lines += perplexity_table(st)
    lines += ["", "## Paired differences per domain", "",
              "Each cell: mean over seeds [95% interval] and the verdict for the claim in the column's heading.", ""]
    lines += difference_table(st)
    lines += ["", "## Specialization", "",
              "Mutual information between a token's domain and the expert its segment is routed to, per layer, "
              "at the last validation (nats; mean ± sd over seeds).", ""]
    lines += mi_table(st)
    lines += [""] + layer_probe(st) + [""]
    for name, title in (("mutual-information.png", "Mutual information per layer"),
                        ("specialization.png", "Mean routing weight per domain and expert")):
        if name in figs:
            lines += [f"![{title}]({rel(name)})", ""]
    lines += ["## Order and near-copies", "",
              "The absolute effect of similarity against random order is in the claims and the last two columns "
              "above. Probe of the hypothesis that near-copies placed side by side are why similarity order does "
              "not help here: the similarity-order runs again with near-duplicates dropped above cosine 0.9 "
              "instead of 0.99 (`data.prepare.dedup_threshold`; random order keeps 0.99), one seed.", ""]
    lines += dedup_probe(st) + [""]
    for name, title in (("loss.png", "Training loss"), ("utilization.png", "Expert utilization")):
        if name in figs:
            lines += [f"## {title}", "", f"![{title}]({rel(name)})", ""]
    lines += ["## Runs", "",
              f"{len(st.results)} runs, {cpu:.1f} CPU-hours in all. Wall time is as measured where the run "
              "trained (other jobs on the machine lengthen it); CPU time (all threads, data preparation "
              "included) is the run's cost; threads: torch's intra-op threads; commit: the commit it trained at "
              "(+changes: with uncommitted changes); source: the sha256 of the package's source as it ran "
              "(12 digits; not recorded in result files older than that field).", "",
              "| run | seed | wall | CPU | threads | validated at step | commit | source | fingerprint |",
              "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in st.results:
        lines.append(f"| {r['setting']} | {r['seed']} | {r['wall_s'] / 60:.1f} min | {r.get('cpu_s', math.nan) / 60:.1f} min "
                     f"| {r.get('threads', '')} | {r['validation_step']} | {r['commit']} | {source_cell(r)} "
                     f"| {r['fingerprint'][:12]} |")
    lines += ["", "## Commands", "", "```",
              "lory replicate --log docs/replication-log.md           # trains what is missing (seeds 0-4), then this report",
              "lory replicate --report --log docs/replication-log.md  # this report, from replication-results/ alone",
              "```", "",
              "Each result file keeps its run's config under `config`; `lory replicate` writes it to "
              "`runs/replicate/configs/<run>-seed<seed>.yaml` and trains it with `lory fit --config`. A result "
              "file whose fingerprint (config and input files' contents) matches is not trained again.", ""]
    if log:
        lines += ["## Investigation log", "", log.strip(), ""]
    path.write_text("\n".join(lines))
    return {"claims": [f"{verdict}: {claim} ({evidence})" for claim, verdict, evidence in held],
            "results": len(st.results), "figures": sorted(figs), "path": str(path)}
