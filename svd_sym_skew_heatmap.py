"""Does the symmetric part of W_QK alone reproduce the head's attention scores?

Question. W_QK = W_sym + W_skew. If L1H5 is a similarity-like head (with self-suppression coming
from negative eigenvalues of W_sym), its scores on tokens should be almost entirely those of
W_sym, and the skew part should be small.

Method. Scores of the 30 group tokens against each other (rows queries, columns keys; effective
embeddings E from ``common.effective_embeddings``; scaled by 1/sqrt(d_head)) under the full
W_QK ("Base"), W_sym and W_skew, so Base = Sym + Skew exactly. By default the scores use the
weights only; ``--with-biases`` adds the b_Q/b_K cross-terms to Base and Sym (Skew stays pure
weights), giving the model's real attention logits on position-free inputs. Numbers, on the group
tokens and on a seeded sample of --n-sample vocabulary tokens: Pearson correlation of Base with
Sym, the share of Base's variance that Sym explains (1 - Var(Base - Sym)/Var(Base)), the ratio
||Skew||_F/||Base||_F, the largest |Skew|, and the mean total-variation distance between the
softmax attention rows of Base and Sym (the sample always includes BOS, whose key is where
an asymmetric "attend to BOS" term shows up); plus the weight-level share ||W_skew||^2/||W_QK||^2.

Outputs (figures/svd_sym_skew_heatmap/ by default):
  scores_heatmaps.png    Base / Sym / Skew scores on the group tokens, one shared colour scale
  patterns_heatmaps.png  softmax attention over the group tokens, Base vs Sym
  scatter.png            Base against Sym for every (query, key) pair of both token sets
  scores.csv             every plotted score (panel, query, key, score)
  numbers.csv            the numbers above per token set; meta.json

Published context (the original repository): the Base/Symmetric/Skew group heatmaps, with the
symmetric part visually matching Base. Our numbers make that comparison quantitative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from common.cli import base_parser, script_name, start
from common.outputs import write_csv, write_meta
from common.plotting import plt, save_figure
from common.prompts import group_token_ids
from common.effective_embeddings import effective_embeddings
from common.head_qk import FactoredQK
from common.qk_plots import group_panels, long_table, softmax_rows


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--with-biases", action="store_true", help="include the b_Q/b_K cross-terms in Base and Sym")
    p.add_argument("--n-sample", type=int, default=2000, help="seeded sample of vocabulary tokens for the second set of numbers")
    args = p.parse_args(argv)
    if args.n_sample < 2:
        p.error("--n-sample must be >= 2")
    return args


def parts(f: FactoredQK, with_biases: bool):
    """(Base, Sym, Skew) as Factored forms on the scaled scale, Base = Sym + Skew exactly."""
    base = f.scorer(biases=with_biases, scaled=True)
    sym = f.steer(1.0, 0, keep_skew=False, biases=with_biases, scaled=True)
    skew = f.skew().scaled(1.0 / f.attn_scale)
    return {"Base": base, "Sym": sym, "Skew": skew}


def compare(base: np.ndarray, sym: np.ndarray, skew: np.ndarray) -> dict:
    b, s, k = base.ravel(), sym.ravel(), skew.ravel()
    tv = 0.5 * np.abs(softmax_rows(base) - softmax_rows(sym)).sum(1).mean()
    return {
        "pearson_base_sym": float(np.corrcoef(b, s)[0, 1]),
        "variance_share_sym": float(1 - np.var(b - s) / np.var(b)),
        "fro_ratio_skew_base": float(np.linalg.norm(k) / np.linalg.norm(b)),
        "max_abs_skew": float(np.abs(k).max()),
        "max_abs_base": float(np.abs(b).max()),
        "mean_tv_attention_base_sym": float(tv),
        "max_abs_reconstruction_error": float(np.abs(b - s - k).max()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, out_dir = start(args, script_name(__file__))
    layer, head = args.layer, args.head
    E = effective_embeddings(model, layer)
    f = FactoredQK.from_model(model, layer, head)
    forms = parts(f, args.with_biases)

    ids, labels, groups = group_token_ids(model.tokenizer)
    Eg = E[ids]
    group = {k: v.scores(Eg, Eg).numpy() for k, v in forms.items()}
    gen = torch.Generator().manual_seed(args.seed)
    bos = model.tokenizer.bos_token_id
    perm = torch.randperm(E.shape[0], generator=gen)
    perm = perm[perm != bos][: min(args.n_sample, E.shape[0]) - 1]
    sample = torch.cat([torch.tensor([bos]), perm])  # BOS always in: attention sink, asymmetric by nature
    Es = E[sample]
    samp = {k: v.scores(Es, Es).numpy() for k, v in forms.items()}

    w = f.weights().frobenius()
    numbers = pd.DataFrame([
        {"token_set": "30 group tokens", "n_tokens": len(ids), **compare(group["Base"], group["Sym"], group["Skew"])},
        {"token_set": f"BOS + {len(sample) - 1} sampled vocabulary tokens", "n_tokens": len(sample),
         **compare(samp["Base"], samp["Sym"], samp["Skew"])},
    ])
    numbers["weight_skew_share"] = w["skew"] ** 2 / w["full"] ** 2
    write_csv(out_dir / "numbers.csv", numbers)
    write_csv(out_dir / "scores.csv", long_table(group, labels, value="score"))

    g0 = numbers.iloc[0]
    kind = "weights + biases" if args.with_biases else "weights only"
    fig = group_panels(group, labels, groups, suptitle=(
        f"L{layer}H{head} scores on the group tokens ({kind}, / sqrt(d_head)); Base = Sym + Skew; "
        f"corr(Base, Sym) = {g0.pearson_base_sym:.3f}, Sym explains {100 * g0.variance_share_sym:.1f}% "
        f"of the variance, ||Skew||/||Base|| = {g0.fro_ratio_skew_base:.3f}"), cbar_label="score")
    save_figure(fig, out_dir / "scores_heatmaps.png")
    pats = {"Base attention": softmax_rows(group["Base"]), "Sym attention": softmax_rows(group["Sym"])}
    fig = group_panels(pats, labels, groups, cmap="viridis", center=None, vmin=0, vmax=1,
                       suptitle=f"softmax over the 30 group tokens; mean TV distance {g0.mean_tv_attention_base_sym:.3f}")
    save_figure(fig, out_dir / "patterns_heatmaps.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (name, d), row in zip(axes, (("group tokens", group), ("sampled tokens", samp)), numbers.itertuples()):
        b, s = d["Base"].ravel(), d["Sym"].ravel()
        if len(b) > 200_000:
            keep = np.random.default_rng(args.seed).choice(len(b), 200_000, replace=False)
            b, s = b[keep], s[keep]
        ax.scatter(b, s, s=3, alpha=0.3, lw=0)
        lim = [min(b.min(), s.min()), max(b.max(), s.max())]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("Base score")
        ax.set_ylabel("Sym score")
        ax.set_title(f"{name}: r = {row.pearson_base_sym:.3f}")
    fig.tight_layout()
    save_figure(fig, out_dir / "scatter.png")

    write_meta(out_dir, args, {"numbers": numbers.to_dict("records"), "score_kind": kind,
                               "sample_token_ids": sample.tolist()})
    console = Console()
    for r in numbers.itertuples():
        console.print(f"{r.token_set}: corr(Base, Sym) {r.pearson_base_sym:.4f}, variance share "
                      f"{r.variance_share_sym:.4f}, ||Skew||/||Base|| {r.fro_ratio_skew_base:.4f}, "
                      f"TV {r.mean_tv_attention_base_sym:.4f}")
    console.print(f"outputs: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
