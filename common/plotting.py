"""Figure style, heatmaps and saving (atomic, PNG by default) shared by every script.

Drawing costs CPU time in every run (``render`` redraws every figure from the saved files), so
this module avoids three costs that do not change a figure: importing seaborn (about 1.5 s of CPU
per process, for scipy.stats), seaborn's heatmap (which draws the whole figure once per heatmap to
choose its labels' rotation: a figure of n heatmaps is drawn n + 2 times) and the second full
draw that ``savefig(bbox_inches="tight")`` makes to measure the figure (see :func:`tight_bbox`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # scripts run headless; never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.layout_engine import PlaceHolderLayoutEngine  # noqa: E402

from common.outputs import atomic_path  # noqa: E402

# What seaborn.set_theme(context="paper", style="whitegrid", font_scale=1.1) sets, frozen here so
# that drawing needs no seaborn import (tests/test_plotting.py checks it against seaborn itself).
# Left out: "image.cmap": "rocket", a seaborn colormap that no figure uses (every heatmap names its cmap).
_DEEP = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
THEME = {
    "axes.axisbelow": True, "axes.edgecolor": ".8", "axes.grid": True, "axes.labelcolor": ".15",
    "axes.labelsize": 10.560000000000002, "axes.linewidth": 1.0, "axes.prop_cycle": cycler("color", _DEEP),
    "axes.titlesize": 10.560000000000002,
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "font.size": 10.560000000000002, "grid.color": ".8", "legend.fontsize": 9.680000000000001,
    "legend.title_fontsize": 10.560000000000002, "lines.linewidth": 1.2000000000000002,
    "lines.markersize": 4.800000000000001, "lines.solid_capstyle": "round", "patch.edgecolor": "w",
    "patch.force_edgecolor": True, "patch.linewidth": 0.8, "text.color": ".15",
    "xtick.bottom": False, "xtick.color": ".15", "xtick.labelsize": 9.680000000000001,
    "xtick.major.size": 4.800000000000001, "xtick.major.width": 1.0, "xtick.minor.size": 3.2,
    "xtick.minor.width": 0.8, "ytick.color": ".15", "ytick.labelsize": 9.680000000000001, "ytick.left": False,
    "ytick.major.size": 4.800000000000001, "ytick.major.width": 1.0, "ytick.minor.size": 3.2,
    "ytick.minor.width": 0.8,
}
# and its colour codes: "b", "g", "r", "m", "y", "c" are its deep palette, "k" is 0.1 grey
COLOUR_CODES = dict(zip("bgrmyck", ["#4C72B0", "#55A868", "#C44E52", "#8172B3", "#CCB974", "#64B5CD", (.1, .1, .1)]))
plt.rcParams.update(THEME)
for _code, _colour in COLOUR_CODES.items():
    matplotlib.colors.colorConverter.colors[_code] = matplotlib.colors.to_rgb(_colour)
plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def save_figure(fig, path: str | Path, weights: str | None) -> Path:
    """Save ``fig`` atomically (format from the suffix) and close it. ``weights``: the verdict on the
    run's weights (genuine gpt2-small or not; ``common.results.verdict_text`` of the meta.json the
    render read), written under the figure (:func:`stamp_weights`); None when none was recorded."""
    path = Path(path)
    stamp_weights(fig, weights)
    if isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        fig.set_layout_engine(None)  # what fig.tight_layout() leaves: lays nothing out, but makes savefig draw twice
    bbox = tight_bbox(fig) if plt.rcParams["savefig.bbox"] == "tight" and fig.get_layout_engine() is None else None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches=bbox)
    plt.close(fig)
    return path


def stamp_weights(fig, text: str | None) -> None:
    """Write "weights: <text>" under a figure, once (a second call adds nothing); nothing for None."""
    if text and not getattr(fig, "_l1h5_weights_stamp", False):
        fig.text(0.5, -0.01, f"weights: {text}", ha="center", va="top", fontsize=8, color="0.35")
        fig._l1h5_weights_stamp = True


def tight_bbox(fig):
    """The area that ``savefig(bbox_inches="tight")`` saves (inches, padded by savefig.pad_inches),
    measured without drawing the figure. ``savefig`` draws the whole figure once (without painting)
    before measuring it, which costs about as much as the real draw; but measuring alone lays
    out everything a draw would (axes aspect, ticks and their labels, axis labels, titles), so the
    saved image is the same (tests/test_plotting.py compares the two)."""
    dpi, original = plt.rcParams["savefig.dpi"], fig.dpi
    dpi = original if dpi == "figure" else dpi
    fig.dpi = dpi  # text is measured at the resolution it is saved at
    try:
        bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    finally:
        fig.dpi = original
    return bbox.padded(plt.rcParams["savefig.pad_inches"])


def heatmap(data, *, ax, cmap, center: float | None = None, vmin=None, vmax=None, robust: bool = False,
            annot=None, fmt: str = ".2g", annot_kws: dict | None = None, cbar: bool = True,
            cbar_kws: dict | None = None, square: bool = False, xticklabels="auto", yticklabels="auto",
            linewidths: float = 0, linecolor="white"):
    """``seaborn.heatmap`` (0.13.2: same arguments, artists, colours, labels and label rotation)
    without drawing the whole figure: seaborn draws it on every call to find out whether
    neighbouring tick labels overlap (and then rotates them); here only the two axes' tick labels
    are measured, in the same layout. ``data``: a 2-D array or a DataFrame (whose index and
    columns name the ticks and the axes, as in seaborn); NaN cells are left empty. ``annot``: True
    (the values, formatted with ``fmt``) or an array of the same shape."""
    import pandas as pd
    from matplotlib.colors import ListedColormap, Normalize

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(np.asarray(data))
    values = np.asarray(frame.values)
    plot_data = np.ma.masked_where(np.asarray(pd.isnull(frame)), values)

    # colour range and a divergent colormap recentred on ``center`` (seaborn's _determine_cmap_params)
    calc = plot_data.astype(float).filled(np.nan)
    if vmin is None:
        vmin = np.nanpercentile(calc, 2) if robust else np.nanmin(calc)
    if vmax is None:
        vmax = np.nanpercentile(calc, 98) if robust else np.nanmax(calc)
    cmap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    if center is not None:
        bad = cmap(np.ma.masked_invalid([np.nan]))[0]
        under, over = cmap(-np.inf), cmap(np.inf)
        under_set, over_set = under != cmap(0), over != cmap(cmap.N - 1)
        vrange = max(vmax - center, center - vmin)
        cmin, cmax = Normalize(center - vrange, center + vrange)([vmin, vmax])
        extremes = {"bad": bad, **({"under": under} if under_set else {}), **({"over": over} if over_set else {})}
        cmap = ListedColormap(cmap(np.linspace(cmin, cmax, 256))).with_extremes(**extremes)

    if square:
        ax.set_aspect("equal")
    # The title stays where it is put, at the top of the axes: matplotlib would otherwise measure
    # every tick label of both axes on each draw to check that none reaches above the axes, which
    # a heatmap's labels (below and left of it) never do.
    ax.set_title("", y=1.0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    mesh = ax.pcolormesh(plot_data, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=linewidths, edgecolor=linecolor)
    ax.set(xlim=(0, values.shape[1]), ylim=(0, values.shape[0]))
    ax.invert_yaxis()
    if cbar:
        cb = ax.get_figure().colorbar(mesh, None, ax, **(cbar_kws or {}))
        cb.outline.set_linewidth(0)

    xticks, xlabels = _heatmap_ticks(ax, xticklabels, frame.columns, 0)
    yticks, ylabels = _heatmap_ticks(ax, yticklabels, frame.index, 1)
    ax.set(xticks=xticks, yticks=yticks)
    xtl = ax.set_xticklabels(xlabels)
    ytl = ax.set_yticklabels(ylabels, rotation="vertical")
    plt.setp(ytl, va="center")
    renderer = ax.get_figure(root=True).canvas.get_renderer()
    ax.apply_aspect()  # the axes where a draw puts them (square cells), then its tick labels there
    if _labels_overlap(ax.xaxis, xtl, renderer):
        plt.setp(xtl, rotation="vertical")
    if _labels_overlap(ax.yaxis, ytl, renderer):
        plt.setp(ytl, rotation="horizontal")
    ax.set(xlabel=frame.columns.name or "", ylabel=frame.index.name or "")

    if annot is not None and annot is not False:
        shown = plot_data if annot is True else np.asarray(annot)
        mesh.update_scalarmappable()
        kws = {} if annot_kws is None else annot_kws
        ypos, xpos = np.mgrid[:values.shape[0], :values.shape[1]] + 0.5
        for x, y, m, face, val in zip(xpos.flat, ypos.flat, mesh.get_array().flat, mesh.get_facecolors(), shown.flat):
            if m is not np.ma.masked:
                text_colour = ".15" if _relative_luminance(face) > .408 else "w"
                ax.text(x, y, ("{:" + fmt + "}").format(val), **{"color": text_colour, "ha": "center", "va": "center",
                                                                 **kws})
    return ax


def _heatmap_ticks(ax, labels, names, axis: int):
    """One axis' tick positions and labels as seaborn's heatmap chooses them from ``labels``:
    True (every row/column name), False (none), a list, or "auto" (every k-th name, k as small as
    lets one label's font size per name fit along the axis)."""
    if labels is False:
        return [], []
    auto = isinstance(labels, str) and labels == "auto"
    if labels is True or auto:
        labels = names.values
    if not len(labels):
        return [], []
    every = 1
    if auto:
        size = ax.get_window_extent().transformed(ax.get_figure().dpi_scale_trans.inverted())
        size = [size.width, size.height][axis]
        tick, = [ax.xaxis, ax.yaxis][axis].set_ticks([0])
        max_ticks = int(size // (tick.label1.get_size() / 72))
        if max_ticks < 1:
            return [], []
        every = len(labels) // max_ticks + 1
    return np.arange(0, len(labels), every) + 0.5, labels[::every]


def _labels_overlap(axis, labels, renderer) -> bool:
    """Do any two of ``labels`` (an axis' tick labels) overlap where a draw would put them?"""
    if not len(labels):
        return False
    axis.get_tightbbox(renderer)  # places the tick labels, as a draw does
    boxes = [label.get_window_extent(renderer) for label in labels]
    return max(b.count_overlaps(boxes) for b in boxes) > 1


def _relative_luminance(colour) -> float:
    """W3C relative luminance of an RGB(A) colour (seaborn.utils.relative_luminance)."""
    rgb = matplotlib.colors.to_rgba_array(colour)[:, :3]
    rgb = np.where(rgb <= .03928, rgb / 12.92, ((rgb + .055) / 1.055) ** 2.4)
    return rgb.dot([.2126, .7152, .0722]).item()


def token_heatmap(ax, matrix: np.ndarray, labels: list[str] | bool, title: str = "", vmin=None, vmax=None,
                  cmap: str = "RdBu_r", center: float | None = 0.0, cbar: bool = True, groups: list[str] | None = None):
    """A query x key heatmap with token labels (rows: queries, columns: keys); ``labels=False``
    leaves the ticks to the caller."""
    heatmap(matrix, ax=ax, xticklabels=False, yticklabels=False, cmap=cmap, center=center,
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
