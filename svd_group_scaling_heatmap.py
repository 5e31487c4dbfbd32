"""Do the negative eigenvalues of W_sym cause the self-suppression? Scale them and watch.

Question. L1H5 never attends to its own token. If that comes from the negative eigenvalues of
W_sym (x^T W_QK x = x^T W_sym x is the self score), multiplying them by alpha < 1 should turn
self-attention back on, and alpha <= 0 should make each token its own favourite key.

Method (``common.factored.steer``). W' = W_sym with the selected eigenvalues (default: all negative
ones, as the published method scales "the negative eigenvalues"; ``--which k`` for the k most
negative) multiplied by alpha, plus W_skew (unless ``--no-skew``). A head whose [W_Q, W_K] has full
column rank has exactly d_head negative eigenvalues (Sylvester; ``common/factored.py``): all 64 for
gpt2-small's L1H5, 40 on the planted model, of which 12 are the planted identity codes and the rest
small generic ones (summary.json lists the selected values). Scores are the model's attention logits on effective embeddings (b_Q/b_K kept,
divided by sqrt(d_head); ``--no-biases`` for weights only). For each alpha in --alphas (the
published figure: 0.5, 0 and -1) next to the unmodified head (alpha = 1), heatmaps of the scores
and of the softmax attention over the 30 group tokens. For every alpha of --curve-alphas, per
group token: the self score, the self-rank among the 30 group tokens and over the FULL vocabulary
of keys (number of keys scoring strictly higher; streamed, ``common.token_scores.self_rank_grid``), and the
attention it pays itself in the group softmax.

Outputs (figures/svd_group_scaling_heatmap/ by default; every figure is drawn from the saved files):
  scaling_scores.png    score heatmaps, unmodified and each alpha, one shared colour scale
  scaling_patterns.png  softmax attention over the group tokens, same panels
  self_vs_alpha.png     self score, self-rank (vocabulary and group) and self-attention vs alpha
  scores.csv            every heatmap cell; curves.csv: every point of the curves
  in_context.csv        the claim's numbers (self top at alpha 0, median rank at alpha 1) on the
                        group tokens' true layer inputs in --context-windows natural-text windows
                        beside the effective-embedding ones (common/context_inputs.py)
  summary.json          selected eigenvalues, score kind, group tokens, per-alpha means; meta.json

Run: python svd_group_scaling_heatmap.py --model planted   (gpt2-small: --model gpt2-small)

Published reference (the original repository's group-scaling figure, gpt2-small L1H5): with the
negative eigenvalues scaled to 0 or -1 the diagonal (self-attention) lights up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from common.claims import DIFFERS, INCONCLUSIVE, POST, REPRODUCED, Claim, Evidence
from common.cli import add_biases_flag, base_parser, script_name, start_head, keeps_state
from common.context_inputs import (add_context_flags, comparison, comparison_table, context_inputs, context_text,
                                   with_context)
from common.genuine_weights import weights_verdict
from common.head_qk import FactoredQK
from common.plotting import plt, save_figure
from common.prompts import group_token_ids
from common.qk_plots import group_panels, long_table, panels_from_long, softmax_rows
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text
from common.token_scores import self_rank_grid

SCRIPT = script_name(__file__)


def parse_which(value: str):
    if value in ("negative", "all"):
        return "negative"
    try:
        k = int(value)
    except ValueError:
        raise SystemExit(f"error: --which must be 'negative' or a positive integer k, got {value!r}") from None
    if k < 1:
        raise SystemExit(f"error: --which k must be >= 1, got {k}")
    return k


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.0, -1.0], help="heatmap alphas")
    p.add_argument("--curve-alphas", type=float, nargs="+", default=list(np.round(np.arange(-2, 1.5001, 0.25), 4)),
                   help="alphas of the self-score/self-rank curves")
    p.add_argument("--which", default="negative", help="'negative' (all negative eigenvalues) or k (the k most negative)")
    p.add_argument("--no-skew", action="store_true", help="also drop W_skew")
    add_biases_flag(p, default=True)
    add_context_flags(p)
    args = p.parse_args(argv)
    args.which = parse_which(args.which)
    if not args.alphas or not args.curve_alphas:
        p.error("--alphas and --curve-alphas need at least one value")
    if not all(np.isfinite(args.alphas + args.curve_alphas)):
        p.error("alphas must be finite numbers")
    return args


def compute(model, args, qk: FactoredQK, E: torch.Tensor) -> Results:
    """Heatmap panels for --alphas and the self-score/self-rank curves over --curve-alphas."""
    eig = qk.sym_eig()
    keep_skew = not args.no_skew
    n_sel = len(eig.select(args.which))
    if n_sel == 0:
        raise SystemExit(f"error: W_sym of L{args.layer}H{args.head} has no negative eigenvalue to scale")
    ids, labels, groups = group_token_ids(model.tokenizer)
    Eg = E[ids]

    def form(alpha):
        return qk.steer(alpha, args.which, keep_skew=keep_skew, biases=args.biases, scaled=True)

    panels = {"unmodified (alpha = 1)": form(1.0).scores(Eg, Eg).numpy()}
    if not keep_skew:
        panels = {"unmodified (alpha = 1, with skew)": qk.scorer(biases=args.biases).scores(Eg, Eg).numpy()}
    for a in args.alphas:
        panels[f"alpha = {a:g}"] = form(a).scores(Eg, Eg).numpy()

    # Curves: the vocabulary self-rank for every alpha in one streamed pass.
    curve = sorted(set(args.curve_alphas) | {1.0})
    base = qk.scorer(biases=args.biases, scaled=True)
    k = n_sel if args.which == "negative" else args.which
    vocab_rank = self_rank_grid(base, eig, E, ids, [k], curve, eig_scale=1.0 / qk.attn_scale,
                                keep_skew=keep_skew)[0]  # [alpha, token]
    rows = []
    for ia, a in enumerate(curve):
        s = form(a).scores(Eg, Eg).numpy()
        att = softmax_rows(s)
        for i, (lab, grp) in enumerate(zip(labels, groups)):
            rows.append({"alpha": a, "token": lab, "group": grp, "token_id": ids[i],
                         "self_score": float(s[i, i]),
                         "self_rank_group": int((s[i] > s[i, i]).sum()),
                         "self_rank_vocab": int(vocab_rank[ia, i]),
                         "self_attention_group": float(att[i, i])})
    curves = pd.DataFrame(rows)
    per_alpha = curves.groupby("alpha").agg(
        mean_self_score=("self_score", "mean"), top1_vocab=("self_rank_vocab", lambda r: float((r == 0).mean())),
        median_rank_vocab=("self_rank_vocab", "median"), mean_self_attention_group=("self_attention_group", "mean"),
    ).reset_index()
    tables = {"scores": long_table(panels, labels, value="score"), "curves": curves}
    ctx = context_inputs(model, args, ids)
    if ctx is not None:
        tables["in_context"] = in_context_steering(base, eig, E, ids, ctx, k, keep_skew, qk.attn_scale)
    return Results(tables=tables, summary={
        "which": args.which, "n_selected": n_sel, "keep_skew": keep_skew,
        "selected_eigenvalues": eig.values[eig.select(args.which)].tolist(),
        "scores": "attention logits" + (" with b_Q/b_K" if args.biases else ", weights only") + ", / sqrt(d_head)",
        "group_tokens": labels, "groups": groups, "per_alpha": per_alpha.to_dict("records")})


def steering_stats(ranks) -> tuple[float, float]:
    """(share of tokens whose own key is the top key at alpha 0, median self-rank at alpha 1) from
    vocabulary self-ranks [alpha (0, 1), token]."""
    ranks = np.asarray(ranks)
    return float((ranks[0] == 0).mean()), float(np.median(ranks[1]))


def in_context_steering(base, eig, E, ids, ctx, k, keep_skew, attn_scale) -> pd.DataFrame:
    """The claim's two numbers over the group tokens that occur in the text windows, on their true
    layer inputs there (common.context_inputs; every other key keeps its effective row) and, for the
    same tokens, on effective embeddings; beside them the effective numbers over all group tokens."""
    covered = ctx.covered(ids)

    def stats(E_, q):
        return steering_stats(self_rank_grid(base, eig, E_, q, [k], [0.0, 1.0], eig_scale=1.0 / attn_scale,
                                             keep_skew=keep_skew)[0].numpy())

    eff = stats(E, torch.as_tensor(ids))
    same = stats(E, covered) if len(covered) else (None, None)
    inctx = stats(ctx.substitute(E), covered) if len(covered) else (None, None)
    note = f"{ctx.n_windows} windows of {ctx.text}"
    return comparison_table(
        comparison("share of group tokens whose own key is the top key at alpha 0", eff[0], len(ids), inctx[0],
                   len(covered), same[0], note)
        + comparison("median self-rank over the vocabulary at alpha 1", eff[1], len(ids), inctx[1], len(covered),
                     same[1], note))


def title(out_dir: Path) -> str:
    args, summary = load_meta(out_dir)["args"], load_summary(out_dir)
    what = ("all negative eigenvalues" if summary["which"] == "negative"
            else f"the {summary['n_selected']} most negative eigenvalues")
    return (f"L{args['layer']}H{args['head']}: {what} of W_sym scaled by alpha"
            + ("" if summary["keep_skew"] else ", W_skew dropped"))


def render(out_dir) -> list[Path]:
    """scaling_scores.png, scaling_patterns.png (scores.csv) and self_vs_alpha.png (curves.csv)."""
    out_dir = Path(out_dir)
    meta = load_meta(out_dir)
    weights = verdict_text(meta)  # the weights' verdict, under every figure
    summary, head_title = load_summary(out_dir), title(out_dir)
    labels, groups = summary["group_tokens"], summary["groups"]
    panels = panels_from_long(load_table(out_dir, "scores"), value="score")
    paths = [save_figure(group_panels(panels, labels, groups, suptitle=head_title + " (attention logits)",
                                      ncols=min(4, len(panels)), cbar_label="score"), out_dir / "scaling_scores.png", weights)]
    pats = {k: softmax_rows(v) for k, v in panels.items()}
    paths.append(save_figure(group_panels(pats, labels, groups, suptitle=head_title + " (softmax over the group tokens)",
                                          cmap="viridis", center=None, vmin=0, vmax=1, ncols=min(4, len(pats))),
                             out_dir / "scaling_patterns.png", weights))

    curves = load_table(out_dir, "curves")
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    palette = dict(zip(dict.fromkeys(groups), plt.cm.tab10.colors))
    for ax, col, ylab in zip(axes, ("self_score", "self_rank_vocab", "self_rank_group", "self_attention_group"),
                             ("self score (logit)", "self-rank over the vocabulary (log)", "self-rank among group tokens",
                              "self-attention (group softmax)")):
        shift = 1 if col == "self_rank_vocab" else 0
        for _, g in curves.groupby("token_id", sort=False):
            ax.plot(g.alpha, g[col] + shift, color=palette[g.group.iloc[0]], lw=0.8, alpha=0.6)
        m = curves.groupby("alpha")[col].mean()
        ax.plot(m.index, m.values + shift, "k-", lw=2.2, label="mean")
        if col == "self_rank_vocab":
            ax.set_yscale("log")
            ylab += " + 1"
        ax.axvline(1.0, color="gray", ls=":", lw=1)
        ax.set_xlabel("alpha")
        ax.set_ylabel(ylab)
    for grp, c in palette.items():
        axes[0].plot([], [], color=c, label=grp)
    axes[0].legend(fontsize=7)
    fig.suptitle(head_title)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / "self_vs_alpha.png", weights))
    return paths


def report(results: Results, out_dir: Path) -> None:
    table = Table(title=title(out_dir))
    for c in ("alpha", "mean self score", "self top-1 (vocab)", "median vocab rank", "self-attention (group)"):
        table.add_column(c)
    for r in results.summary["per_alpha"]:
        table.add_row(f"{r['alpha']:g}", f"{r['mean_self_score']:.2f}", f"{r['top1_vocab']:.2f}",
                      f"{r['median_rank_vocab']:.0f}", f"{r['mean_self_attention_group']:.3f}")
    console = Console()
    console.print(table)
    if line := context_text(out_dir):
        console.print(line)
    console.print(f"outputs: {out_dir}")


@keeps_state
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    head = start_head(args, SCRIPT)
    results = compute(head.model, args, head.qk, head.E)
    save_results(head.out_dir, results, args, SCRIPT, weights=weights_verdict(args.model))
    render(head.out_dir)
    report(results, head.out_dir)
    return 0


# -- claims (common/claims.py): judged from the saved curves.csv -----------------------------------

STEER_TOP_GOOD, STEER_TOP_BAD = 0.9, 0.5  # share of group tokens whose own key is top at alpha = 0
UNSTEERED_RANK = 100  # unmodified, a token's own key is far from the top (median rank >= 100)


def check_eigen_steering(out_dir) -> Evidence:
    """At alpha = 0 (negative eigenvalues removed) each group token's own key is the top key over
    the vocabulary; unmodified (alpha = 1) it is not."""
    c = load_table(out_dir, "curves")
    top = lambda a: float((c[c.alpha == a].self_rank_vocab == 0).mean())  # noqa: E731
    alphas = [a for a in (0.5, 0.0, -1.0) if (c.alpha == a).any()]
    if 0.0 not in alphas or not (c.alpha == 1.0).any():
        raise KeyError("curves.csv needs alpha 0 and alpha 1 (run with the default --alphas)")
    med1, top0 = float(c[c.alpha == 1.0].self_rank_vocab.median()), top(0.0)
    text = "; ".join(f"alpha {a:g}: self is the top key for {100 * top(a):.0f}%" for a in alphas)
    good = top0 >= STEER_TOP_GOOD and med1 >= UNSTEERED_RANK
    bad = top0 < STEER_TOP_BAD or med1 < UNSTEERED_RANK / 10
    return with_context(Evidence(text + f"; unmodified (alpha 1): median self-rank {med1:.0f}",
                    {"self_top_share_alpha0": top0, "median_self_rank_alpha1": med1},
                    published=REPRODUCED if good else DIFFERS if bad else INCONCLUSIVE, holds=bool(good)), out_dir)


CLAIMS = [Claim(
    "eigen-steering", SCRIPT, "Scaling the negative eigenvalues of W_sym to 0.5 / 0 / -1 turns self-attention back on",
    POST, "qualitative", "scaling_patterns.png", "curves.csv",
    f"at alpha = 0 self is the top key over the vocabulary for >= {STEER_TOP_GOOD:.0%} of the group tokens and "
    f"unmodified its median rank is >= {UNSTEERED_RANK}; differs below {STEER_TOP_BAD:.0%} or a median rank under "
    f"{UNSTEERED_RANK // 10} (fixed weights, no CI)", check_eigen_steering, token_space=True)]


if __name__ == "__main__":
    raise SystemExit(main())
