"""Per-domain validation perplexity, exact under multi-process (OLMo-core style `{domain}/ppl`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class DomainPerplexity(Metric):
    """Sums of token NLL and token counts per domain; perplexity = exp(sum / count).

    Sums (not means of per-batch means) are reduced across processes, so the result is exactly
    the perplexity of all tokens, however the batches were split.
    """

    full_state_update = False

    def __init__(self, num_domains: int) -> None:
        super().__init__()
        self.num_domains = num_domains
        self.add_state("nll_sum", torch.zeros(num_domains, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_domains, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: Tensor, domains: Tensor) -> None:
        """nll (B, L) per-token NLL; domains (B, L) the domain id of each target token."""
        d = domains.reshape(-1)
        self.nll_sum.index_add_(0, d, nll.reshape(-1).to(torch.float64))
        self.count.index_add_(0, d, torch.ones_like(d, dtype=torch.float64))

    def compute(self) -> dict[str, Tensor]:
        """{"per_domain": (D,) perplexity (nan where a domain had no token), "all": overall, "count": (D,),
        "nll_sum": (D,)}.

        torchmetrics squeezes one-element results to 0-d: with one domain, reshape(-1) before iterating.
        """
        per_domain = torch.exp(self.nll_sum / self.count)
        overall = torch.exp(self.nll_sum.sum() / self.count.sum().clamp(min=1))
        return {"per_domain": per_domain, "all": overall, "count": self.count, "nll_sum": self.nll_sum}


def perplexity_metrics(metric: DomainPerplexity, domains: list[str], name: str = "ppl") -> dict[str, Tensor]:
    """``{"val/<domain>/<name>": ..., "val/<name>": ...}`` from a DomainPerplexity (domains without a
    token left out). One place for the names that logs, tables and reports share."""
    result = metric.compute()
    # reshape: torchmetrics returns a one-domain result as a 0-d tensor
    per_domain, count = result["per_domain"].reshape(-1), result["count"].reshape(-1)
    out = {f"val/{d}/{name}": p.float() for d, p, n in zip(domains, per_domain, count) if n > 0}
    out[f"val/{name}"] = result["all"].float()
    return out
