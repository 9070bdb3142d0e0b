"""Domain specialization: mean routing weight of every (domain, layer, expert), its report and heatmaps.

Used by the DomainSpecialization callback at every validation and by `lory analyze` on a checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..model.moe import Routing
from .stats import domain_expert_sums, expert_domain_entropy, mutual_information, segment_domain_counts


def default_layers(n_layers: int) -> list[int]:
    """First, middle and last layer: the paper finds lower layers flat, middle and upper specialized."""
    return sorted({0, n_layers // 2, n_layers - 1})


class SpecializationAccumulator:
    """Token-weighted sums of routing weights per (layer, domain, expert), exact under any batching.

    Args:
        n_layers: Lory layers of the model.
        num_domains: Domains of the data (ids 0..D-1).
        num_experts: E.
        segment_len: Tokens per routing row (T for segment routing, 1 for token routing), to attribute
            each row's routing to the tokens it was applied to.
    """

    def __init__(self, n_layers: int, num_domains: int, num_experts: int, segment_len: int,
                 device: torch.device | str = "cpu") -> None:
        self.segment_len, self.num_domains = segment_len, num_domains
        self.sums = torch.zeros(n_layers, num_domains, num_experts, dtype=torch.float64, device=device)
        self.tokens = torch.zeros(num_domains, dtype=torch.float64, device=device)

    def update(self, routing: Sequence[Routing | None], domains: Tensor) -> None:
        """routing: one Routing (weights (B, N, E)) per Lory layer; domains (B, L) per target token."""
        layers = [r for r in routing if r is not None]
        counts = segment_domain_counts(domains, self.segment_len, self.num_domains)  # (B, N, D)
        for i, r in enumerate(layers):
            self.sums[i] += domain_expert_sums(r.weights.detach(), counts)
        self.tokens += counts.sum(dim=(0, 1))

    def reduce(self, all_reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Sum the accumulators of all processes (sums of sums: exact)."""
        self.sums = all_reduce_sum(self.sums)
        self.tokens = all_reduce_sum(self.tokens)

    def mean_weight(self) -> Tensor:
        """(layers, D, E): the mean routing weight of each domain's tokens (NaN for a domain with none)."""
        return self.sums / self.tokens[None, :, None]

    def mutual_information(self) -> list[float]:
        """Per layer, I(domain; expert) in nats (see stats.mutual_information)."""
        mean = self.mean_weight()
        return [float(mutual_information(mean[i].nan_to_num(0.0), self.tokens)) for i in range(mean.shape[0])]


    def expert_domain_entropy(self) -> list[list[float]]:
        """Per layer and expert, the normalized entropy of the expert's routing over domains
        (0: serves one domain, 1: all alike; see stats.expert_domain_entropy)."""
        mean = self.mean_weight()
        return [expert_domain_entropy(mean[i]).tolist() for i in range(mean.shape[0])]


def write_report(acc: SpecializationAccumulator, domains: Sequence[str], out_dir: Path, tag: str,
                 figure_layers: Sequence[int] | None = None) -> dict:
    """Write ``{tag}.json``, ``{tag}.csv`` and two PNGs (chosen layers, all layers); return what was written."""
    from .plots import save_figure, specialization_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    mean = acc.mean_weight().cpu()
    n_layers, _, E = mean.shape
    mi = acc.mutual_information()
    bound = math.log(min(len([t for t in acc.tokens if t > 0]), E)) if E > 1 else 1.0
    report = {
        "domains": list(domains), "experts": E, "layers": n_layers,
        "tokens_per_domain": [int(t) for t in acc.tokens.tolist()],
        "mean_weight": mean.tolist(),
        "mutual_information": mi,
        "mutual_information_normalized": [m / bound if bound > 0 else 0.0 for m in mi],
        "expert_domain_entropy": acc.expert_domain_entropy(),
    }
    json_path = out_dir / f"{tag}.json"
    json_path.write_text(json.dumps(report, indent=1))
    csv_path = out_dir / f"{tag}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "domain", "expert", "mean_weight", "expert_domain_entropy"])
        for layer in range(n_layers):
            for d, name in enumerate(domains):
                for e in range(E):
                    writer.writerow([layer, name, e, f"{float(mean[layer, d, e]):.6f}",
                                     f"{report['expert_domain_entropy'][layer][e]:.6f}"])
    chosen = list(figure_layers) if figure_layers is not None else default_layers(n_layers)
    figs = {
        "layers": save_figure(specialization_figure(mean.numpy(), domains, chosen, f"routing by domain ({tag})"),
                              out_dir / f"{tag}-layers.png"),
        "all_layers": save_figure(specialization_figure(mean.numpy(), domains, list(range(n_layers)),
                                                        f"all layers ({tag})"), out_dir / f"{tag}-all-layers.png"),
    }
    return {"json": json_path, "csv": csv_path, **figs, "mutual_information": mi,
            "expert_domain_entropy": report["expert_domain_entropy"]}
