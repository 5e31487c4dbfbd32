"""Figures shared by the QK-circuit scripts: group-token heatmap panels and long-format tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from common.plotting import plt, token_heatmap


def softmax_rows(scores) -> np.ndarray:
    """Row-wise softmax of a [query, key] score block (every key visible)."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    return torch.softmax(s, -1).numpy()


def group_panels(panels: dict[str, np.ndarray], labels: list[str], groups: list[str], suptitle: str = "",
                 shared: bool = True, cmap: str = "RdBu_r", center: float | None = 0.0,
                 vmin: float | None = None, vmax: float | None = None, ncols: int | None = None,
                 cbar_label: str = ""):
    """One token heatmap per panel; with ``shared`` every panel uses one colour scale
    (symmetric around ``center`` when it is given), so magnitudes are comparable across panels."""
    mats = {k: np.asarray(v, dtype=float) for k, v in panels.items()}
    if shared and vmin is None and vmax is None:
        if center is not None:
            m = max(float(np.nanmax(np.abs(v - center))) for v in mats.values()) or 1.0
            vmin, vmax = center - m, center + m
        else:
            vmin = min(float(np.nanmin(v)) for v in mats.values())
            vmax = max(float(np.nanmax(v)) for v in mats.values())
    n = len(mats)
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    size = 0.16 * len(labels) + 1.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 1.0, size * nrows), squeeze=False)
    for ax, (title, m) in zip(axes.flat, mats.items()):
        token_heatmap(ax, m, False, title=title, vmin=vmin, vmax=vmax, cmap=cmap, center=center,
                      cbar=True, groups=groups)
        if cbar_label and ax.collections:
            ax.collections[0].colorbar.set_label(cbar_label)
    # Every panel gets the token labels seaborn would choose for labels this dense: keys vertical,
    # queries horizontal.
    ticks = np.arange(len(labels)) + 0.5
    for ax in list(axes.flat)[:n]:
        ax.set_xticks(ticks, labels, rotation="vertical")
        ax.set_yticks(ticks, labels, rotation="horizontal", va="center")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def long_table(panels: dict[str, np.ndarray], labels: list[str], name: str = "panel", value: str = "value") -> pd.DataFrame:
    """Every cell of every panel as a row: (panel, query, key, value)."""
    rows = []
    for title, m in panels.items():
        m = np.asarray(m, dtype=float)
        for i, q in enumerate(labels):
            for j, k in enumerate(labels):
                rows.append({name: title, "query": q, "key": k, value: m[i, j]})
    return pd.DataFrame(rows)


def panels_from_long(table: pd.DataFrame, name: str = "panel", value: str = "value") -> dict[str, np.ndarray]:
    """The inverse of :func:`long_table`: panel title -> [query, key] matrix, in saved order. Cells
    are read by position (each panel is n*n rows, query-major), so token labels that a CSV reader
    turns into numbers ("1990") cannot mix cells up; the labels themselves are saved in summary.json."""
    panels = {}
    for title, rows in table.groupby(name, sort=False):
        n = round(np.sqrt(len(rows)))
        if n * n != len(rows):
            raise ValueError(f"panel {title!r} has {len(rows)} cells, not a square number")
        panels[str(title)] = np.array(rows[value], dtype=float).reshape(n, n)
    return panels
