"""The table printed at the end of `lory fit` and `lory validate`: per-domain perplexity and where things are."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def perplexity_table(domains: Sequence[str], metrics: Mapping[str, float],
                     unigram: Mapping[str, float] | None = None) -> str:
    """Rows ``domain | val ppl | unigram ppl`` for every domain, then the overall ``val/ppl``.

    The unigram column comes from ``val/{domain}/unigram_ppl`` in ``metrics`` (scored on the same
    tokens as the model); ``unigram`` is the fallback for data prepared without unigram.npy.
    """
    unigram = {d: metrics[f"val/{d}/unigram_ppl"] for d in domains if f"val/{d}/unigram_ppl" in metrics} \
        or unigram or {}
    lines = [f"{'domain':<12}{'val ppl':>10}{'unigram ppl':>14}"]
    for name in domains:
        ppl = metrics.get(f"val/{name}/ppl", math.nan)
        base = unigram.get(name, math.nan)
        lines.append(f"{name:<12}{ppl:>10.2f}{base:>14.2f}")
    overall = f"{metrics['val/unigram_ppl']:>14.2f}" if "val/unigram_ppl" in metrics else ""
    total = "all" if "all" not in domains else "(all)"  # a corpus may name a domain "all": keep two rows apart
    lines.append(f"{total:<12}{metrics.get('val/ppl', math.nan):>10.2f}{overall}")
    return "\n".join(lines)
