"""Heatmaps of the mean routing weight per (domain, expert), one panel per layer (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    return plt


def specialization_figure(mean_weight: np.ndarray, domains: Sequence[str], layers: Sequence[int],
                          title: str):
    """A figure with one experts x domains heatmap per chosen layer. mean_weight: (layers, D, E)."""
    plt = pyplot()
    n = len(layers)
    cols = min(n, 4)
    rows = -(-n // cols)
    E = mean_weight.shape[2]
    # Room per panel for E columns plus the domain labels on its left.
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (0.4 * E + 1.8) + 1.0, rows * (0.45 * len(domains) + 1.2)),
                             squeeze=False)
    vmax = float(mean_weight[list(layers)].max()) if n else 1.0
    for ax, layer in zip(axes.flat, layers):
        image = ax.imshow(mean_weight[layer], vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xticks(range(E), [str(e) for e in range(E)], fontsize=7)
        ax.set_yticks(range(len(domains)), list(domains), fontsize=8)
        ax.set_xlabel("expert", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="mean routing weight")
    fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: Path) -> Path:
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
