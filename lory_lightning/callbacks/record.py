"""ValidationRecord: each validation's per-domain NLL sums and token counts, written as JSON.

The logged perplexities are rounded summaries; a study that pools runs or domains (`lory replicate`)
needs the sums they come from: pooled perplexity is exp(sum of NLL / sum of tokens), not a mean of
perplexities.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class ValidationRecord(Callback):
    """Writes ``<log_dir>/validation/step{N}.json``: ``{"step", "domains", "nll_sum", "tokens"}``, per
    domain, over every process (the module's DomainPerplexity states, synced)."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Callbacks' epoch-end hooks run before the module's, which resets the metric.
        metric = getattr(pl_module, "val_ppl", None)
        if metric is None or trainer.sanity_checking:
            return
        out = metric.compute()  # synced across processes: per-domain NLL sums and token counts
        tokens = out["count"].reshape(-1).double().tolist()
        nll = out["nll_sum"].reshape(-1).double().tolist()
        if sum(tokens) == 0:
            raise RuntimeError("ValidationRecord: the validation scored no token (was the metric reset before "
                               "this callback ran?)")
        log_dir = trainer.log_dir
        if trainer.global_rank != 0 or log_dir is None:
            return
        record = {"step": trainer.global_step, "domains": list(pl_module.domains),
                  "nll_sum": nll,
                  "tokens": [int(n) for n in tokens]}
        path = Path(log_dir) / "validation" / f"step{trainer.global_step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
