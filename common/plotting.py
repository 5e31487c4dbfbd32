"""Figure style and saving (atomic, PNG by default) shared by every script."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # scripts run headless; never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from common.genuine_weights import stamp_figure  # noqa: E402
from common.outputs import atomic_path  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` atomically (format from the suffix) and close it. A figure saved beside a
    meta.json that records the weights' verdict (genuine gpt2-small or not) carries it as a footnote."""
    path = Path(path)
    stamp_figure(fig, path.parent)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def token_heatmap(ax, matrix: np.ndarray, labels: list[str] | bool, title: str = "", vmin=None, vmax=None,
                  cmap: str = "RdBu_r", center: float | None = 0.0, cbar: bool = True, groups: list[str] | None = None):
    """A query x key heatmap with token labels (rows: queries, columns: keys); ``labels=False``
    leaves the ticks to the caller.

    The labels are set after ``sns.heatmap``, not through it: seaborn draws the whole figure on
    every call to choose the labels' rotation, which costs most of a multi-panel figure's time.
    """
    sns.heatmap(matrix, ax=ax, xticklabels=False, yticklabels=False, cmap=cmap, center=center,
                vmin=vmin, vmax=vmax, square=True, cbar=cbar, linewidths=0)
    if labels is not False:
        ticks = np.arange(len(labels)) + 0.5
        ax.set_xticks(ticks, labels, rotation="vertical")
        ax.set_yticks(ticks, labels, rotation="horizontal", va="center")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title)
    ax.tick_params(labelsize=6)
    if groups:  # thin lines between groups of tokens
        edges = [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]]
        for e in edges:
            ax.axhline(e, color="k", lw=0.5)
            ax.axvline(e, color="k", lw=0.5)
    return ax
