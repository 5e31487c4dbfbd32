"""Which later heads read L1H5? Q-, K- and V-composition scores of its OV circuit with every later head.

Question. A head matters downstream only through the heads (and MLPs) that read what it writes.
Which heads of the later layers read L1H5's output, through their queries (Q-composition), keys
(K-composition) or values (V-composition), and does any of them stand out from the model's head
pairs in general?

Method. Composition scores (Elhage et al., 2021) from the weights alone: TransformerLens'
``composition_scores`` on the processed weights (``model.OV`` / ``model.QK``), ||A B||_F /
(||A||_F ||B||_F) with A the writer's OV circuit and B the reader's W_Q W_K^T (Q), its transpose
(K) or its OV circuit (V). Scored for every head pair of the model (writer layer < reader layer),
so each of L1H5's readers gets a z-score and a percentile against all pairs of the same mode, a
percentile against the pairs whose writer is in L1H5's layer, and its rank among L1H5's readers.
No text and no forward pass: it runs on any weights, e.g. the gpt2-small-shaped model of
``bench/build_model.py``, whose attention weights are gpt2-small's real ones.

Outputs (``figures/composition/``; ``figures/demo/composition/`` for planted):
  composition.csv        L1H5 -> every later head: Q/K/V score, z-score and percentile vs all pairs
  composition_pairs.csv  every head pair's Q/K/V score (the reference distribution)
  composition.png        all-pair distributions with L1H5's readers marked; L1H5's z-scores per head
  summary.json           the top readers per mode; meta.json

Run: python composition.py --model planted
     python composition.py --model gpt2-small
     python bench/build_model.py && python composition.py --model bench/model
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.claims import NEW, Claim, Evidence, number
from common.cli import base_parser, keeps_state, start
from common.genuine_weights import weights_verdict
from common.memory import release
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text

SCRIPT = "composition"
MODES = ("Q", "K", "V")
TOP_K = 5  # readers per mode listed in summary.json and the report


def parse_args(argv):
    return base_parser(__doc__).parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Composition scores of every head pair; the studied head's readers against them
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def composition_table(model, writers: list[tuple[int, int]] | None = None) -> pd.DataFrame:
    """Q-, K- and V-composition scores of every writer head's OV circuit with every head of a later
    layer: TransformerLens' ``composition_scores`` (what ``model.all_composition_scores`` computes),
    term by term: ||C_l(OV) C_r(R)||_F / ||C_r(R)||_F / ||C_l(OV)||_F with C_l, C_r its
    FactoredMatrix collapse_l / collapse_r (the factors' SVD cores, d_head x d_model and d_model x
    d_head) and R the reader's W_Q W_K^T (Q), its transpose (K) or W_V W_O (V). Memory stays small:
    each writer's C_l(OV) is made once, and the readers' SVDs one reader layer at a time (all pairs
    at once would hold ~9 GB for gpt2-small; TransformerLens per writer against all later layers
    holds several hundred MB). ``writers``: the (layer, head) writers to score (default all).
    Returns one row per (mode, writer, reader): modes, then writers in order, then readers by layer
    and head."""
    from transformer_lens import FactoredMatrix

    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    writers = writers if writers is not None else [(l, h) for l in range(n_l - 1) for h in range(n_h)]
    writers = [(l, h) for l, h in writers if l < n_l - 1]
    first = min((l for l, _ in writers), default=n_l - 1) + 1  # the earliest layer any writer can be read by
    attn = [b.attn for b in model.blocks]
    # composition_scores broadcasts the writer against the readers' leading (head) axis: unsqueeze(0)
    lefts = {}
    for l in sorted({l for l, _ in writers}):  # one batched SVD per writer layer, not one per head
        c = FactoredMatrix(attn[l].W_V, attn[l].W_O).collapse_l()  # [head, d_head, d_model]
        norms = c.norm(dim=[-2, -1])
        for h in (h for wl, h in writers if wl == l):
            lefts[(l, h)] = (c[h].unsqueeze(0), norms[h])
    # Scores go straight into numpy arrays: thousands of small result tensors kept alive would pin
    # the heap's freed pages (about 0.3 GB resident at gpt2-small size, measured).
    scores = {(mode, w): np.empty((n_l - 1 - w[0]) * n_h, dtype=np.float32) for mode in MODES for w in writers}
    for rl in range(first, n_l):
        qk = FactoredMatrix(attn[rl].W_Q, attn[rl].W_K.transpose(-2, -1))
        for mode, right in (("Q", qk), ("K", qk.T), ("V", FactoredMatrix(attn[rl].W_V, attn[rl].W_O))):
            c_r = right.collapse_r()
            r_norms = c_r.norm(dim=[-2, -1])
            for w in writers:
                if w[0] < rl:
                    c_l, l_norm = lefts[w]
                    at = (rl - w[0] - 1) * n_h
                    scores[(mode, w)][at : at + n_h] = (c_l @ c_r).norm(dim=[-2, -1]) / r_norms / l_norm
    frames = []
    for mode in MODES:
        for l, h in writers:
            rl = np.repeat(np.arange(l + 1, n_l), n_h)
            frames.append(pd.DataFrame({"mode": mode, "writer_layer": l, "writer_head": h, "reader_layer": rl,
                                        "reader_head": np.tile(np.arange(n_h), n_l - 1 - l),
                                        "score": scores[(mode, (l, h))]}))
    cols = ["mode", "writer_layer", "writer_head", "reader_layer", "reader_head", "score"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def readers_of(pairs: pd.DataFrame, layer: int, head: int) -> pd.DataFrame:
    """The writer's rows of ``pairs``, each with z-score and percentile against all pairs of the
    same mode, the percentile against the pairs whose writer is in the same layer (a layer-matched
    scale), and its rank among the writer's readers (1 = strongest)."""
    rows = []
    for mode in MODES:
        in_mode = pairs[pairs["mode"] == mode]
        all_s = in_mode.score.to_numpy()
        same_layer = in_mode.score[in_mode.writer_layer == layer].to_numpy()
        mine = in_mode[(in_mode.writer_layer == layer) & (in_mode.writer_head == head)]
        if not len(mine):
            continue
        mu, sd = all_s.mean(), all_s.std(ddof=1) if len(all_s) > 1 else 0.0
        s = mine.score.to_numpy()
        rows.append(pd.DataFrame({
            "mode": mode, "reader_layer": mine.reader_layer.to_numpy(), "reader_head": mine.reader_head.to_numpy(),
            "score": s, "z": (s - mu) / sd if sd > 0 else np.zeros_like(s),
            "percentile": (all_s[None, :] < s[:, None]).mean(1) * 100,
            "percentile_writer_layer": (same_layer[None, :] < s[:, None]).mean(1) * 100,
            "rank": pd.Series(-s).rank(method="min").astype(int).to_numpy(),
            "n_pairs": len(all_s), "all_pairs_mean": mu, "all_pairs_std": sd}).sort_values("rank", kind="stable"))
    cols = ["mode", "reader_layer", "reader_head", "score", "z", "percentile", "percentile_writer_layer", "rank",
            "n_pairs", "all_pairs_mean", "all_pairs_std"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.concat(rows, ignore_index=True)


def top_readers(readers: pd.DataFrame, k: int = 5) -> dict:
    return {mode: [{"layer": int(r.reader_layer), "head": int(r.reader_head), "score": float(r.score),
                    "z": float(r.z), "percentile": float(r.percentile),
                    "percentile_writer_layer": float(r.percentile_writer_layer)}
                   for r in readers[readers["mode"] == mode].head(k).itertuples()] for mode in MODES}


# ----------------------------------------------------------------------------------------------
# Compute
# ----------------------------------------------------------------------------------------------


def compute(model, args) -> Results:
    L, H = args.layer, args.head
    pairs = composition_table(model)
    release()
    readers = readers_of(pairs, L, H)
    summary = {"model": args.model, "layer": L, "head": H, "readers": top_readers(readers) if len(readers) else None}
    if not len(readers):
        summary["readers_note"] = f"the model has no layer after {L}: no head can read L{L}H{H}"
    return Results({"composition": readers, "composition_pairs": pairs}, summary)


# ----------------------------------------------------------------------------------------------
# Figure (from saved files only) and report
# ----------------------------------------------------------------------------------------------


def render(out_dir) -> list[Path]:
    out_dir = Path(out_dir)
    readers = load_table(out_dir, "composition")
    if not len(readers):
        return []
    return [plot_composition(readers, load_table(out_dir, "composition_pairs"), load_summary(out_dir),
                             load_meta(out_dir), out_dir / "composition.png")]


def plot_composition(readers: pd.DataFrame, pairs: pd.DataFrame, summary: dict, meta: dict, path: Path) -> Path:
    from common.plotting import heatmap, plt, save_figure

    L, H = summary["layer"], summary["head"]
    n_h = int(max(pairs.reader_head.max(), readers.reader_head.max())) + 1
    layers = sorted(readers.reader_layer.unique())
    fig, axes = plt.subplots(2, 3, figsize=(15, 4.5 + 0.35 * len(layers) + 1),
                             gridspec_kw={"height_ratios": [1, 0.25 + 0.1 * len(layers)], "hspace": 0.45})
    zmax = float(np.abs(readers.z).max()) or 1.0
    for j, mode in enumerate(MODES):
        ax = axes[0, j]
        all_s = pairs.score[pairs["mode"] == mode]
        mine = readers[readers["mode"] == mode]
        ax.hist(all_s, bins=60, color="#9bb7d4", label=f"all {len(all_s)} head pairs")
        ax.plot(mine.score, np.full(len(mine), 0.5), "|", color="#c0392b", ms=14, mew=1.2,
                label=f"L{L}H{H} -> its {len(mine)} readers")
        ax.set_yscale("log")
        ax.set_ylim(0.3, None)
        top = "\n".join(f"L{r.reader_layer}H{r.reader_head}: {r.score:.3f} (z {r.z:.1f}, {r.percentile:.0f}th pct)"
                        for r in mine.head(3).itertuples())
        ax.text(0.98, 0.62, "top readers\n" + top, transform=ax.transAxes, ha="right", va="top", fontsize=7,
                color="#c0392b", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
        ax.set_xlabel(f"{mode}-composition score")
        ax.set_ylabel("head pairs")
        ax.set_title(f"{mode}-composition: L{L}H{H}'s readers vs all pairs", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        grid = np.full((len(layers), n_h), np.nan)
        for r in mine.itertuples():
            grid[layers.index(r.reader_layer), r.reader_head] = r.z
        heatmap(grid, ax=axes[1, j], cmap="RdBu_r", center=0, vmin=-zmax, vmax=zmax, annot=n_h <= 12,
                    fmt=".1f", annot_kws={"fontsize": 6}, yticklabels=[str(l) for l in layers],
                    cbar=j == len(MODES) - 1, cbar_kws={"label": "z vs all pairs"})
        axes[1, j].set_xlabel("reader head")
        axes[1, j].set_ylabel("reader layer")
        axes[1, j].set_title(f"{mode}: z-score of L{L}H{H} -> each later head", fontsize=9)
    fig.suptitle(f"Which later heads read L{L}H{H}? ({meta['args']['model']}; weights only: TransformerLens "
                 "composition scores of the processed weights)", fontsize=10)
    return save_figure(fig, path, verdict_text(meta))  # the weights' verdict, under the figure


def report(results: Results, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    s = results.summary
    L, H = s["layer"], s["head"]
    if s.get("readers"):
        t = Table(title=f"heads reading L{L}H{H}: top composition scores (z and percentile vs all head pairs)")
        for c in ("mode", "rank", "reader", "score", "z (all pairs)", "percentile (all pairs)",
                  f"percentile (writers in layer {L})"):
            t.add_column(c)
        for mode, rows in s["readers"].items():
            for i, r in enumerate(rows, 1):
                t.add_row(mode, str(i), f"L{r['layer']}H{r['head']}", f"{r['score']:.4f}", f"{r['z']:.2f}",
                          f"{r['percentile']:.1f}", f"{r['percentile_writer_layer']:.1f}")
        con.print(t)
    else:
        con.print(s["readers_note"])
    con.print(f"outputs in {out_dir}")


@keeps_state
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, out_dir = start(args, SCRIPT)
    results = compute(model, args)
    save_results(out_dir, results, args, SCRIPT, weights=weights_verdict(args.model))
    release()
    render(out_dir)
    report(results, out_dir)
    return 0


# -- claims (common/claims.py): the saved composition.csv, a measurement ------------------------------

STANDOUT_Z = 3.0  # planted shape: a reader built on the head's output stands 3 sd above the model's head pairs


def check_reader(out_dir) -> Evidence:
    """The studied head's strongest V-composition reader, its score's z against every head pair
    of the model (no published number; on a planted model, whose reader head is built to read the
    head's output through its values: z above STANDOUT_Z)."""
    readers = load_table(out_dir, "composition")
    v = readers[readers["mode"] == "V"].sort_values("rank", kind="stable")
    if not len(v):
        return Evidence("no later layer: no head can read the studied head")
    top = v.iloc[0]
    reader = f"L{int(top.reader_layer)}H{int(top.reader_head)}"
    return Evidence(f"strongest V-composition reader {reader}: score {top.score:.4f}, z {top.z:.2f} against all "
                    f"{int(top.n_pairs)} head pairs ({top.percentile:.1f}th percentile)",
                    {"reader": [int(top.reader_layer), int(top.reader_head)], "score": number(top.score),
                     "z": number(top.z), "percentile": number(top.percentile)},
                    holds=bool(top.z > STANDOUT_Z))


CLAIMS = [Claim(
    "reader", SCRIPT, "Which later head reads L1H5's output through its values (V-composition), and whether it "
    "stands out from the model's head pairs", NEW, "none", "composition.png", "composition.csv",
    f"none on gpt2-small (a measurement: the top reader's score, z and percentile against all head pairs); planted: "
    f"the top V reader's z above {STANDOUT_Z:g} (a head built to read L1H5's values stands far outside the bulk of "
    "pairs, which no pair of unrelated heads does; fixed weights, no CI)", check_reader)]


if __name__ == "__main__":
    raise SystemExit(main())
