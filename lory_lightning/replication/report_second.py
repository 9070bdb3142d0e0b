"""The second study's report (`lory replicate --study second --report`) from its result files alone.

As report.py, nothing here reads a run folder, a clock or the machine. Differences are given two
ways, each named: **log points**, 100 x the difference of mean NLL per token (-3.00 means the first
model's log perplexity is 0.03 lower), and the **perplexity ratio** exp(difference of mean NLL)
(0.970: the first model's perplexity is 3.0% lower). The two agree for small differences only.
Each interval is the 95% Student t interval of the mean of per-seed paired differences; each claim
also states the smallest true difference its seeds detect with 80% power (stats.minimal_detectable_effect,
from the spread of the differences observed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import stats
from .report import Study, figures, load_results, mi_table, perplexity_table, source_cell
from .study import DEFAULT_SEEDS, SECOND, STEP_TIME, nll_per_token, plan

Result = dict[str, Any]


def ratio(log_points: float) -> float:
    """The perplexity ratio of a difference in log points."""
    return math.exp(log_points / 100)


def _fmt(iv: stats.Interval) -> str:
    if iv.n < 2:
        return f"{iv.mean:+.2f} (ratio {ratio(iv.mean):.3f}; one seed)"
    return (f"{iv.mean:+.2f} [{iv.lo:+.2f}, {iv.hi:+.2f}] (ratio {ratio(iv.mean):.3f} "
            f"[{ratio(iv.lo):.3f}, {ratio(iv.hi):.3f}])")


def claim_rows(st: Study) -> list[tuple[str, str, str, str]]:
    """(claim, verdict, difference, detectable at 80% power) for every paired claim of the study."""
    rows: list[tuple[str, str, str, str]] = []

    def paired(claim: str, values: list[float], direction: int = -1) -> None:
        if not values:
            rows.append((claim, "no result", "the runs it needs have no result file yet", "-"))
            return
        iv = stats.interval(values)
        mde = stats.minimal_detectable_effect(iv.sd, iv.n)
        rows.append((claim, iv.verdict(direction), f"{_fmt(iv)}, {iv.n} seeds",
                     "-" if math.isnan(mde) else f"{mde:.2f} log points"))

    d = st.diffs
    paired("Lory 8E has lower perplexity than dense at equal tokens (similarity order)",
           d("lory-similarity", "dense-similarity", "all"))
    paired("Lory 8E has lower perplexity than dense at equal compute (dense trained Lory's step-time ratio "
           "more steps; similarity order)", d("lory-similarity", "dense-similarity-equal-compute", "all"))
    paired("Lory 8E has lower perplexity than dense at equal tokens (random order)",
           d("lory-random", "dense-random", "all"))
    paired("The gain over dense is larger with similarity order than with random order", st.gain_gap("all"))
    paired("Similarity order gives lower perplexity than random order: dense", d("dense-similarity", "dense-random", "all"))
    paired("Similarity order gives lower perplexity than random order: Lory", d("lory-similarity", "lory-random", "all"))
    for name, setting in (("top-k (aux-loss-free, 2 of 16 half-width experts)", "topk-aux-free-similarity"),
                          ("ReMoE (ReLU routing, target 1 of 8 experts)", "remoe-similarity")):
        paired(f"Lory 8E has lower perplexity than {name}", d("lory-similarity", setting, "all"))
        paired(f"{name[0].upper() + name[1:]} has lower perplexity than dense at equal tokens",
               d(setting, "dense-similarity", "all"))
    if st.heldout:
        paired(f"Lory has lower perplexity than dense on domains neither trained on ({', '.join(st.heldout)})",
               d("lory-similarity", "dense-similarity", "held-out"))
    return rows


def expert_choice_lines(st: Study) -> list[str]:
    """Expert Choice scored with the decoder's causal rule and with the rule it trained with (one seed)."""
    lines = ["| Expert Choice run (one seed) | scored with | perplexity (all) | Lory - EC, log points | perplexity ratio |",
             "|---|---|---:|---:|---:|"]
    found = False
    for setting, name in (("expert-choice", "token-level"), ("segment-expert-choice", "segment-level")):
        for seed, r in sorted(st.by.get(setting, {}).items()):
            lory = st.by.get("lory-similarity", {}).get(seed)
            for rule, sums in (("causal top-k (a decoder's rule)", r["validation"]),
                               ("capacity (the training rule, looks ahead)", r.get("validation_capacity"))):
                if not sums:
                    continue
                found = True
                nll = nll_per_token(sums)
                diff = f"{100 * (st.logppl(lory, 'all') - nll):+.2f}" if lory else "-"
                rat = f"{math.exp(st.logppl(lory, 'all') - nll):.3f}" if lory else "-"
                lines.append(f"| {name}, seed {seed} | {rule} | {math.exp(nll):.2f} | {diff} | {rat} |")
    if not found:
        return ["The Expert Choice runs have no result file yet."]
    return lines + ["", "A decoder can only run the causal rule; the capacity rule is how the model was trained. "
                    "The gap between the two rows of a run is the train/inference mismatch of Expert Choice. "
                    "Which rule the paper's Expert Choice numbers used is not stated in the method notes this "
                    "project works from (LORY.md), so neither row is claimed to be the paper's."]


NEAR_COPY = (("dense", "dense-similarity-dedup-0.9", "dense-similarity-thinned"),
             ("Lory 8E", "lory-similarity-dedup-0.9", "lory-similarity-thinned"))


def near_copy_lines(st: Study) -> list[str]:
    """The near-copy probe (one seed): each model on the corpus de-duplicated at cosine 0.9 and on the
    0.99 corpus thinned at random to the same training tokens per domain; the corpora's tokens and
    shares per domain, and a plain verdict against this study's seed spread of a paired difference."""
    runs = {k: st.by[k][min(st.by[k])] for _, *keys in NEAR_COPY for k in keys if st.by.get(k)}
    full = st.by.get("dense-similarity", {}).get(0)
    corpora = [("de-duplicated at 0.99 (every other run)", full),
               ("de-duplicated at 0.9", runs.get("dense-similarity-dedup-0.9") or runs.get("lory-similarity-dedup-0.9")),
               ("0.99, thinned at random", runs.get("dense-similarity-thinned") or runs.get("lory-similarity-thinned"))]
    corpora = [(name, r) for name, r in corpora if r and r.get("train_tokens_by_domain")]
    if len(corpora) < 2:
        return ["The near-copy probe's runs have no result files yet."]
    lines = ["Training tokens per domain of each corpus (seed 0), and each domain's share of the corpus:", "",
             "| corpus | " + " | ".join(st.domains) + " | all |", "|---|" + "---:|" * (len(st.domains) + 1)]
    for name, r in corpora:
        tokens = r["train_tokens_by_domain"]
        total = sum(tokens.values())
        lines.append(f"| {name} | " + " | ".join(f"{tokens[d] / 1e3:.0f}k ({tokens[d] / total:.1%})" for d in st.domains)
                     + f" | {total / 1e3:.0f}k |")
    spread = st.diffs("dense-similarity", "dense-random", "all")  # a change of data at one seed, paired
    sd = stats.mean_sd(spread)[1] if len(spread) >= 2 else math.nan
    lines += [""]
    for model, dedup, thinned in NEAR_COPY:
        if dedup not in runs or thinned not in runs:
            lines.append(f"- {model}: the runs it needs have no result file yet.")
            continue
        diff = 100 * (st.logppl(runs[dedup], "all") - st.logppl(runs[thinned], "all"))
        seen = "" if math.isnan(sd) else (
            f" Against the spread of a paired change of data in this study (similarity - random order, dense: "
            f"sd {sd:.2f} log points over {len(spread)} seeds) a one-seed difference beyond {2 * sd:.2f} is "
            f"unlikely from seed noise alone, so this one {'is' if abs(diff) > 2 * sd else 'is not'} a finding.")
        lines.append(f"- {model}: with near-copies removed instead of as many random documents, perplexity is "
                     f"{abs(diff):.2f} log points {'lower' if diff < 0 else 'higher'} (ratio {ratio(diff):.3f}; "
                     f"one seed).{seen}")
    return lines


def seeds_sentence(seeds: Sequence[int] = DEFAULT_SEEDS) -> str:
    """Which arms train at how many seeds, from the design."""
    by: dict[int, list[str]] = {}
    for name, spec in SECOND.settings.items():
        by.setdefault(min(spec.seeds or len(seeds), len(seeds)), []).append(f"`{name}`")
    parts = [f"{', '.join(names)} at {n} seed{'s' if n > 1 else ''}" for n, names in sorted(by.items(), reverse=True)]
    return "Arms and seeds: " + "; ".join(parts) + "."


def documents_table(st: Study) -> list[str]:
    """Documents per sequence per domain (token-weighted), by data order, over the runs that recorded it."""
    lines = ["| data | " + " | ".join(st.domains) + " |", "|---|" + "---:|" * len(st.domains)]
    for order in ("similarity", "random"):
        folders = {r["config"]["data"]["data_dir"]: r["documents_per_sequence"] for r in st.results
                   if r.get("order") == order and r.get("documents_per_sequence")}  # the runs of a folder agree
        rows = list(folders.values())
        if not rows:
            continue
        cells = []
        for dom in st.domains:
            mean, sd = stats.mean_sd([row[dom] for row in rows])
            cells.append(f"{mean:.2f}" + (f" ± {sd:.2f}" if len(rows) > 1 else ""))
        lines.append(f"| {order} order ({len(rows)} prepared folders) | " + " | ".join(cells) + " |")
    return lines


def power_lines(first_dir: Path) -> list[str]:
    """How many seeds: the first study's spread of each paired difference, and what 3, 5 and 8 seeds
    would detect at it (80% power), from the first study's result files beside this study's folder."""
    try:
        first = Study(load_results(first_dir))
    except (FileNotFoundError, ValueError):
        return ["The first study's result files are not beside this study's, so its spread is not shown."]
    lines = ["| paired difference (first study) | seeds | sd, log points | detectable with 3 / 5 / 8 seeds |",
             "|---|---:|---:|---|"]
    for name, values in (("Lory - dense, similarity order", first.diffs("lory-similarity", "dense-similarity", "all")),
                         ("Lory - dense, random order", first.diffs("lory-random", "dense-random", "all")),
                         ("gain with similarity - gain with random", first.gain_gap("all")),
                         ("similarity - random, dense", first.diffs("dense-similarity", "dense-random", "all")),
                         ("similarity - random, Lory", first.diffs("lory-similarity", "lory-random", "all"))):
        if len(values) < 2:
            continue
        sd = stats.mean_sd(values)[1]
        mde = " / ".join(f"{stats.minimal_detectable_effect(sd, n):.1f}" for n in (3, 5, 8))
        lines.append(f"| {name} | {len(values)} | {sd:.2f} | {mde} |")
    return lines


def runs_table(st: Study) -> list[str]:
    lines = ["| run | seed | steps | tokens seen | passes | training tokens | CPU | commit | source |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in st.results:
        lines.append(f"| {r['setting']} | {r['seed']} | {r['steps']} | {r['tokens_seen'] / 1e6:.2f}M | "
                     f"{r['tokens_seen'] / r['train_tokens']:.2f} | {r['train_tokens'] / 1e6:.2f}M | "
                     f"{r['cpu_s'] / 60:.1f} min | {r['commit']} | {source_cell(r)} |")
    return lines


def status(st: Study, seeds: Sequence[int] = DEFAULT_SEEDS) -> str:
    runs = plan(seeds, SECOND)
    have = {r["key"] for r in st.results}
    missing = [r.key for r in runs if r.key not in have]
    if not missing:
        return f"All {len(runs)} runs of the study (seeds {' '.join(map(str, seeds))}) are in."
    return (f"**In progress**: {len(runs) - len(missing)} of the {len(runs)} runs have result files; missing: "
            f"{', '.join(missing)}. `lory replicate --study second` trains only what is missing.")


def write_second_report(results_dir: Path, path: Path, log: str | None = None) -> dict[str, Any]:
    """The second study's report (``path``) and its figures (``<stem>-figures/``) from the result files."""
    st = Study(load_results(results_dir, SECOND.settings))
    figs = figures(st, path.parent / (path.stem.lower() + "-figures"))
    rel = lambda name: figs[name].relative_to(path.parent).as_posix()  # noqa: E731
    rows = claim_rows(st)
    step = results_dir / STEP_TIME
    measured = json.loads(step.read_text()) if step.is_file() else None
    cpu = sum(r.get("cpu_s", 0.0) for r in st.results) / 3600
    setup = next((r for r in st.results if r.get("ffn") == "lory"), st.results[0])["setup"]
    lines = ["# The second study: ordering with room to act, equal compute, token-level baselines", "",
             f"Generated by `lory replicate --study second --report` from the {len(st.results)} result files in "
             f"`{results_dir.as_posix()}/`; every number below comes from them. {status(st)}", "",
             f"A Lory run: {setup} Documents are the sample corpus's cut into passages of at most "
             f"{SECOND.passage_chars:,} characters on paragraph boundaries (replication/passages.py), so that a "
             "sequence holds several of them and the order of documents has room to act (documents per sequence "
             "below). Each seed seeds the initialization and the data; the runs of a pair share their seed.", "",
             "How to read: **log points** are 100 x the difference of mean NLL per token (first minus second); the "
             "**perplexity ratio** is exp of that difference (0.970: the first model's perplexity is 3.0% lower). "
             "Intervals are 95% Student t intervals over the per-seed paired differences. A claim **holds** when "
             "its interval excludes zero in the claimed direction, is **not shown** when it contains zero, and is "
             "**reversed** when it excludes zero in the other direction. *Detectable* is the smallest true "
             "difference the claim's seeds detect with 80% power at the spread observed: a claim not shown with "
             "a large detectable difference says little.", "",
             "## Claims", "",
             "| claim | verdict | difference, log points [95% interval] (perplexity ratio) | detectable (80% power) |",
             "|---|---|---|---|"]
    lines += [f"| {c} | **{v}** | {e} | {m} |" for c, v, e, m in rows]
    lines += ["", "## Seeds and power", "",
              f"{seeds_sentence()} The seeds were chosen from the first study's spread of the same differences: "
              "the table gives, for each, the smallest true difference 3, 5 and 8 seeds detect with 80% power at "
              "that spread (log points). The claims above give the same number from this study's own spread. "
              "The budget (about 12 CPU-hours on 2 cores) did not cover 5 seeds of every arm: they go to the "
              "questions the study was built for (equal tokens, equal compute, ordering with room to act), and "
              "the token-level baselines get 3, which detect differences of about 4 log points at the first "
              "study's spread.", ""] + power_lines(results_dir.parent)
    lines += ["", "## Equal compute", ""]
    if measured:
        lines += [f"Lory's training step took {measured['ratio']:.4f} times dense's on the machine of the study "
                  f"(median of {measured['rounds']} interleaved steps each, {measured['ms']:.0f} ms and "
                  f"{measured['reference_ms']:.0f} ms, {measured['threads']} thread(s), batches of "
                  f"{measured['batch_size']}; `{STEP_TIME}`), so the equal-compute dense model trains that many "
                  "times the steps, on the same schedule shape (cosine over its own steps).", ""]
    else:
        lines += ["No step-time measurement yet.", ""]
    lines += ["## Expert Choice, both ways", ""] + expert_choice_lines(st)
    lines += ["", "## Near-copies, at equal training tokens", "",
              "Does removing near-copies (cosine above 0.9 rather than 0.99) help or hurt similarity order, with "
              "the corpus's size and mixture held fixed? The comparison corpus is the 0.99 one thinned at random "
              "(`data.prepare.keep_fraction`, applied after the tokenizer is fit, so both corpora share it) to the "
              "training tokens that de-duplication at 0.9 leaves in each domain.", ""] + near_copy_lines(st)
    lines += ["", "## Documents per sequence", "",
              "Per domain, the mean number of documents in the training sequence around a token of that domain "
              "(mean ± sd over the prepared folders, one per seed and order):", ""] + documents_table(st)
    lines += ["", "## Perplexity (mean ± sd over seeds)", ""] + perplexity_table(st)
    lines += ["", "## Mutual information between domain and expert, per layer", ""] + mi_table(st)
    for name, title in (("loss.png", "Training loss"), ("utilization.png", "Expert utilization")):
        if name in figs:
            lines += ["", f"## {title}", "", f"![{title}]({rel(name)})"]
    lines += ["", "## Runs and budget", "",
              f"{len(st.results)} runs, {cpu:.1f} CPU-hours in all (CPU time of all threads, data preparation "
              "included). Every run's steps, tokens and passes over its training tokens:", ""] + runs_table(st)
    lines += ["", "## Commands", "", "```",
              "lory replicate --study second           # trains what is missing (seeds 0-4), then this report",
              "lory replicate --study second --report  # this report, from the result files alone",
              "```", ""]
    if log:
        lines += ["## Investigation log", "", log.strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return {"claims": [f"{v}: {c} ({e})" for c, v, e, _ in rows], "results": len(st.results),
            "figures": sorted(figs), "path": str(path)}
