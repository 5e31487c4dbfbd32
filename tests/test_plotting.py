"""common.plotting draws what seaborn and matplotlib would, without their costs: the frozen theme is
seaborn's, ``heatmap`` draws seaborn's heatmap pixel for pixel, and ``save_figure`` (tight bbox
measured without a draw) writes the image ``savefig(bbox_inches="tight")`` writes."""

import io

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib import colors
from PIL import Image

from common import plotting
from common.plotting import plt

sns = pytest.importorskip("seaborn")


def pixels(fig) -> np.ndarray:
    """The figure as saved with the module's settings (bbox "tight", 150 dpi), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return np.asarray(Image.open(buf))


def test_theme_is_seaborns():
    mine = dict(matplotlib.rcParams)
    codes = {c: colors.colorConverter.colors[c] for c in "bgrmyck"}
    with matplotlib.rc_context():
        sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
        theirs = dict(matplotlib.rcParams)
        their_codes = {c: colors.colorConverter.colors[c] for c in "bgrmyck"}
    colors.colorConverter.colors.update(codes)
    assert their_codes == codes
    for key, value in theirs.items():
        if key == "image.cmap":  # seaborn's "rocket"; every heatmap here names its colormap
            continue
        if key == "axes.prop_cycle":
            assert [colors.to_rgba(c["color"]) for c in mine[key]] == [colors.to_rgba(c["color"]) for c in value]
        elif key not in ("figure.dpi", "savefig.dpi", "savefig.bbox"):
            assert mine[key] == value, key


LABELS = ["Monday", "Tuesday", " red", " blue", "1990", " he", " she", "France", "Germany", " Italy"]
CASES = {
    "annotated, centred, NaN cells": (
        np.array([[1.5, -2.0, np.nan, 0.25], [3.0, 0.0, -1.0, 2.0], [np.nan, 1.0, 0.5, -0.5]]),
        dict(cmap="RdBu_r", center=0, annot=True, fmt=".1f", annot_kws={"fontsize": 6},
             cbar_kws={"label": "z vs all pairs"}, yticklabels=["1", "2", "3"])),
    "data frame, robust, integer annotations, auto labels": (
        pd.DataFrame(np.arange(48).reshape(4, 12) % 7, index=pd.Index(range(4), name="layer"),
                     columns=pd.Index(range(12), name="head")),
        dict(cmap="viridis", annot=True, fmt="d", robust=True)),
    "token labels that overlap, square, no colour bar": (
        np.random.default_rng(0).random((10, 10)),
        dict(cmap="viridis", vmin=0, vmax=1, square=True, cbar=False, xticklabels=LABELS, yticklabels=LABELS)),
    "annotation array, many auto rows": (
        pd.DataFrame(np.random.default_rng(1).normal(size=(60, 5)), index=pd.Index(range(60), name="k")),
        dict(cmap="RdBu_r", vmin=-1, vmax=1, xticklabels=["0", "0.5", "1", "2", "-1"])),
}


@pytest.mark.parametrize("case", CASES)
def test_heatmap_draws_seaborns_heatmap(case):
    data, kws = CASES[case]
    images = []
    for draw in (sns.heatmap, plotting.heatmap):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        axes[1].plot([0, 1], [1, 0])  # another panel, drawn by seaborn's full draw
        draw(data, ax=axes[0], **kws)
        axes[0].set_title("a heatmap")
        images.append(pixels(fig))
    assert images[0].shape == images[1].shape
    assert np.array_equal(images[0], images[1])


def figure_with_overhangs():
    """Everything that can reach beyond the figure: tight_layout, suptitle, a legend below the axes,
    long rotated tick labels, a colour bar, text under the figure, a wrapped suptitle."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    axes[0].plot(np.arange(5), np.arange(5) ** 2, label="squares")
    axes[0].set_xticks(range(5), ["a long label"] * 5, rotation=45, ha="right")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.6))
    plotting.token_heatmap(axes[1], np.eye(4), ["x", "y", "z", "w"], title="panel")
    fig.suptitle("a title " * 30, wrap=True)
    fig.tight_layout()
    fig.text(0.5, -0.01, "under the figure", ha="center", va="top")
    return fig


def test_save_figure_writes_what_savefig_tight_writes(tmp_path):
    reference = pixels(figure_with_overhangs())
    path = plotting.save_figure(figure_with_overhangs(), tmp_path / "f.png", None)
    assert np.array_equal(np.asarray(Image.open(path)), reference)


def test_weights_footnote_is_the_text_the_caller_passes(tmp_path):
    """save_figure writes "weights: <text>" under the figure from its argument alone (no meta.json
    is read: the folder holds one that says otherwise), once however often it is stamped."""
    import json

    from common.genuine_weights import Verdict
    from common.results import verdict_text

    meta = {"weights": Verdict("planted", "planted").to_meta()}
    assert verdict_text(meta) == "planted" and verdict_text({}) is None and verdict_text({"weights": "x"}) is None
    (tmp_path / "meta.json").write_text(json.dumps({"weights": {"verdict": "not gpt2-small: from disk"}}))
    fig = plt.figure()
    plotting.stamp_weights(fig, verdict_text(meta))
    plotting.save_figure(fig, tmp_path / "f.png", verdict_text(meta))  # stamps again: adds nothing
    assert [t.get_text() for t in fig.texts] == ["weights: planted"] and (tmp_path / "f.png").stat().st_size
    fig = plt.figure()
    plotting.save_figure(fig, tmp_path / "g.png", None)  # no verdict recorded: no footnote
    assert fig.texts == []
