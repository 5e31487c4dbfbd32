"""How many negative eigenvalues, scaled by how much, does it take to turn self-attention on?

Question. Scaling the k most negative eigenvalues of W_sym by a factor (1 = unmodified, 0 =
removed, < 0 = sign flipped) moves each token's own key up its attention ranking. Over the whole
vocabulary, how does the self-rank depend on k and on the scale?

Method (``common.token_scores.self_rank_grid``). For every k in --ks and scale in --scales, the edited head
(``common.factored.steer``: the k most negative eigenvalues multiplied by the scale, W_skew kept unless
--no-skew; attention logits with b_Q/b_K unless --no-biases; effective embeddings as inputs) scores
each query token against the FULL vocabulary of keys; the self-rank is the number of keys scoring
strictly higher than the token's own key (0 = self on top). The vocabulary projections E @ factors
are computed once; each query chunk then needs one pass over the keys per k, after which every
scale is a binned threshold (no vocab x vocab matrix, no per-cell pass). Queries: a seeded sample
of --n-queries tokens (means with 95% CIs), --all-queries (exact, about 12x the time at
gpt2-small size), or --query-set category (the category words of ``common/prompts.py``). Per cell: mean and median rank, MRR = mean 1/(rank+1), accuracy@{1,128,256,1024}
(rank < k), and two Spearman correlations with the unmodified head: of the self-ranks across
queries, and (mean over --spearman-queries queries) of the full key ordering on a seeded sample
of --spearman-keys keys.

Outputs (figures/svd_rank_ablation/ by default; the figure is drawn from the saved files):
  grid.csv            every (k, scale) cell: all metrics with 95% CIs, k_effective (k is
                      capped at the number of negative eigenvalues: d_head for a head whose
                      [W_Q, W_K] has full column rank)
  grid_heatmaps.png   mean rank (log), MRR, acc@1, acc@1024, both Spearman correlations
  ranks.npz           the self-rank of every query in every cell, with the query ids
  in_context.csv      unedited mean self-rank and best acc@1 over the queries that occur in
                      --context-windows natural-text windows, on their true layer inputs there, beside
                      the effective-embedding numbers (common/context_inputs.py)
  summary.json        negative eigenvalues, query set, the unmodified head's numbers, grid time
  meta.json           arguments, versions, total wall time and peak memory

Run: python svd_rank_ablation.py --model planted   (gpt2-small: --model gpt2-small)

Reference (the original repository): the same grid (k = 1..32, scale -5..1.25) computed with dense
50257 x 50257 matrices, which needs about 40 GB of RAM; it is computed here exactly in minutes.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from scipy.stats import spearmanr

from common.claims import ORIGINAL, Claim, Evidence
from common.cli import add_biases_flag, base_parser, script_name, start_head, keeps_state
from common.context_inputs import (add_context_flags, comparison, comparison_table, context_inputs, context_text,
                                   with_context)
from common.factored import steer
from common.genuine_weights import weights_verdict
from common.head_qk import FactoredQK
from common.stats import fisher_ci, mean_ci
from common.outputs import atomic_path
from common.plotting import heatmap, plt, save_figure
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text
from common.token_scores import self_rank_grid

SCRIPT = script_name(__file__)

ACC_KS = (1, 128, 256, 1024)


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16, 24, 32],
                   help="numbers of most-negative eigenvalues to scale")
    p.add_argument("--scales", type=float, nargs="+", default=list(np.round(np.arange(-5, 1.2501, 0.25), 4)),
                   help="factors applied to the selected eigenvalues (1 = unmodified)")
    p.add_argument("--n-queries", type=int, default=4096, help="seeded sample of query tokens")
    p.add_argument("--all-queries", action="store_true", help="every vocabulary token as a query (exact)")
    p.add_argument("--query-set", choices=["vocab", "category"], default="vocab",
                   help="sample queries from the whole vocabulary, or use the category words of common/prompts.py")
    p.add_argument("--no-skew", action="store_true", help="drop W_skew as well")
    add_biases_flag(p, default=True)
    p.add_argument("--spearman-queries", type=int, default=256)
    p.add_argument("--spearman-keys", type=int, default=2048)
    p.add_argument("--query-chunk", type=int, default=512)
    p.add_argument("--key-chunk", type=int, default=8192)
    add_context_flags(p)
    args = p.parse_args(argv)
    if any(k < 1 for k in args.ks):
        p.error("--ks must be positive integers")
    if not all(math.isfinite(s) for s in args.scales):
        p.error("--scales must be finite numbers")
    if args.n_queries < 2:
        p.error("--n-queries must be >= 2")
    if args.spearman_queries < 1 or args.spearman_keys < 3:
        p.error("--spearman-queries must be >= 1 and --spearman-keys >= 3")
    if args.query_chunk < 1 or args.key_chunk < 1:
        p.error("--query-chunk and --key-chunk must be positive")
    args.ks = sorted(set(args.ks))
    args.scales = sorted(set(args.scales))
    return args


def argsort_rows(x: torch.Tensor) -> torch.Tensor:
    """``torch.argsort(x, -1)`` of a 2-d tensor, exactly, about twice as fast: a row without ties
    has one sorting permutation, so numpy's (SIMD) sort gives it; rows with a tie (or a NaN) keep
    torch's own order, whose tie-breaking is implementation-defined."""
    order = torch.from_numpy(np.argsort(x.numpy(), axis=-1))
    srt = torch.gather(x, -1, order)
    tied = (srt[:, 1:] == srt[:, :-1]).any(-1) | srt[:, -1].isnan()  # NaNs sort last
    if tied.any():
        order[tied] = torch.argsort(x[tied], -1)
    return order


def key_order_spearman(base, eig, E, q_ids, k_ids, ks, scales, eig_scale, keep_skew) -> np.ndarray:
    """Per-query Spearman correlation [len(ks), len(scales), n_queries] between the key scores of
    the unmodified head (always with W_skew) and of each edit."""
    qf, kf = base.project(E[q_ids], E[k_ids])
    s0 = qf @ kf.T
    edited0 = s0
    if not keep_skew:
        qf, kf = steer(base, 1.0, 0, keep_skew=False, eig=eig, eig_scale=eig_scale).project(E[q_ids], E[k_ids])
        edited0 = qf @ kf.T
    neg = eig.select("negative")
    U = eig.vectors[:, neg].to(s0.dtype)
    lam = eig.values[neg].to(s0.dtype) * eig_scale
    qu, ku = E[q_ids] @ U * lam, E[k_ids] @ U

    # Ranks are the inverse permutation of the argsort, so with o = argsort of an edited row and
    # r0 the reference's centred ranks: sum_i (r_i - mean) r0_i = sum_j (j - mean) r0[o_j], and the
    # norm of r - mean is the same for every row. Every term is a multiple of 1/4 far below 2^53,
    # so these sums are exact in any order (the same numbers as the ranks written out).
    n = len(k_ids)
    order0 = argsort_rows(s0)
    r0 = torch.empty_like(order0).scatter_(-1, order0, torch.arange(n).expand_as(order0)).double()
    r0 = r0 - r0.mean(-1, keepdim=True)
    centred = torch.arange(n).double()
    centred = centred - centred.mean()
    denom = (centred[None].norm(dim=-1) * r0.norm(dim=-1)).clamp_min(1e-30)
    out = np.zeros((len(ks), len(scales), len(q_ids)))
    for ik, k in enumerate(ks):
        k = min(k, len(neg))
        d = qu[:, :k] @ ku[:, :k].T
        for js, s in enumerate(scales):
            order = argsort_rows(edited0 + (s - 1.0) * d)
            out[ik, js] = ((torch.gather(r0, -1, order) * centred).sum(-1) / denom).numpy()
    return out


def cell_metrics(r: np.ndarray, r0: np.ndarray) -> dict:
    out = {}
    m, h = mean_ci(r)
    out["mean_rank"], out["mean_rank_ci95"] = float(m), float(h)
    out["median_rank"] = float(np.median(r))
    m, h = mean_ci(1.0 / (r + 1.0))
    out["mrr"], out["mrr_ci95"] = float(m), float(h)
    for k in ACC_KS:
        m, h = mean_ci((r < k).astype(float))
        out[f"acc@{k}"], out[f"acc@{k}_ci95"] = float(m), float(h)
    if np.ptp(r) == 0 or np.ptp(r0) == 0:
        rho = 1.0 if np.array_equal(r, r0) else float("nan")
    else:
        rho = float(spearmanr(r, r0).statistic)
    out["spearman_selfrank"], out["spearman_selfrank_ci95"] = rho, fisher_ci(rho, len(r))
    return out


def query_tokens(model, args, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, str]:
    """The query token ids (sorted) and how they were chosen (--query-set, --all-queries, --n-queries)."""
    if args.query_set == "category":
        from common.prompts import category_token_ids

        q = torch.tensor(sorted(t for ids in category_token_ids(model.tokenizer).values() for t in ids))
        return q, f"{len(q)} category-word queries"
    if args.all_queries or args.n_queries >= vocab:
        return torch.arange(vocab), "exact, all queries"
    return torch.randperm(vocab, generator=gen)[: args.n_queries].sort().values, f"{args.n_queries} sampled queries"


@dataclass
class RankResults(Results):
    """Results plus the self-rank of every query in every cell (saved as ranks.npz)."""

    ranks: dict[str, np.ndarray] = field(default_factory=dict)


def compute(model, args, qk: FactoredQK, E: torch.Tensor) -> RankResults:
    """The (k, scale) grid of self-rank metrics over the full vocabulary of keys."""
    eig = qk.sym_eig()
    n_neg = eig.n_negative
    if n_neg == 0:
        raise SystemExit(f"error: W_sym of L{args.layer}H{args.head} has no negative eigenvalue to scale")
    keep_skew = not args.no_skew
    base = qk.scorer(biases=args.biases, scaled=True)
    eig_scale = 1.0 / qk.attn_scale
    vocab = E.shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    queries, what = query_tokens(model, args, vocab, gen)
    scales = sorted(set(args.scales) | {1.0})  # 1.0 is the unmodified reference
    chunks = {"key_chunk": args.key_chunk, "query_chunk": args.query_chunk}
    t1 = time.time()
    grid = self_rank_grid(base, eig, E, queries, args.ks, scales, eig_scale=eig_scale, keep_skew=keep_skew,
                          progress=True, **chunks).numpy()
    t_grid = time.time() - t1
    r0 = self_rank_grid(base, eig, E, queries, [args.ks[0]], [1.0], eig_scale=eig_scale, keep_skew=True,
                        **chunks)[0, 0].numpy()  # the real head

    sq = queries[torch.randperm(len(queries), generator=gen)[: args.spearman_queries]]
    sk = torch.randperm(vocab, generator=gen)[: args.spearman_keys]
    # reference = the real head (with skew), so --no-skew shows what dropping W_skew does by itself
    sp = key_order_spearman(base, eig, E, sq, sk, args.ks, scales, eig_scale, keep_skew)

    rows = []
    for ik, k in enumerate(args.ks):
        for js, s in enumerate(scales):
            if s not in args.scales:
                continue
            m = cell_metrics(grid[ik, js], r0)
            msp, hsp = mean_ci(sp[ik, js])
            rows.append({"k": k, "k_effective": min(k, n_neg), "scale": s, "n_queries": len(queries), **m,
                         "spearman_keys": float(msp), "spearman_keys_ci95": float(hsp)})
    summary = {
        "n_vocab": vocab, "n_negative_eigenvalues": n_neg, "keep_skew": keep_skew,
        "negative_eigenvalues": eig.values[eig.select("negative")].tolist(), "queries": what,
        "grid_seconds": round(t_grid, 2),
        "unmodified": {"mean_rank": float(r0.mean()), "acc@1": float((r0 == 0).mean())},
        "scores": "attention logits" + (" with b_Q/b_K" if args.biases else ", weights only") + ", / sqrt(d_head)",
    }
    ranks = {"ranks": grid.astype(np.int32), "ks": np.array(args.ks), "scales": np.array(scales),
             "queries": queries.numpy(), "unmodified": r0.astype(np.int32)}
    tables = {"grid": pd.DataFrame(rows)}
    ctx = context_inputs(model, args, queries)
    if ctx is not None:
        tables["in_context"] = in_context_grid(base, eig, E, queries, grid, r0, ctx, args, scales, eig_scale, keep_skew)
    return RankResults(tables=tables, summary=summary, ranks=ranks)


def grid_stats(grid: np.ndarray, r0: np.ndarray, ks, scales, shown) -> tuple[float, float]:
    """(unedited mean self-rank, best acc@1 over the (k, scale) cells of ``shown`` scales)."""
    acc = [(grid[ik, js] == 0).mean() for ik in range(len(ks)) for js, s in enumerate(scales) if s in shown]
    return float(r0.mean()), float(max(acc))


def in_context_grid(base, eig, E, queries, grid, r0, ctx, args, scales, eig_scale, keep_skew) -> pd.DataFrame:
    """The unedited mean self-rank and the best acc@1 of the grid over the queries that occur in
    the text windows, on their true layer inputs there (common.context_inputs; every other key keeps
    its effective row) and, for the same queries, on effective embeddings; beside them the
    effective numbers over every query."""
    covered = ctx.covered(queries)
    eff = grid_stats(grid, r0, args.ks, scales, args.scales)
    same = inctx = (None, None)
    if len(covered):
        pick = torch.isin(queries, covered).numpy()
        same = grid_stats(grid[:, :, pick], r0[pick], args.ks, scales, args.scales)
        Ex = ctx.substitute(E)
        g = self_rank_grid(base, eig, Ex, covered, args.ks, scales, eig_scale=eig_scale, keep_skew=keep_skew).numpy()
        u = self_rank_grid(base, eig, Ex, covered, [args.ks[0]], [1.0], eig_scale=eig_scale, keep_skew=True)[0, 0]
        inctx = grid_stats(g, u.numpy(), args.ks, scales, args.scales)
    note = f"{ctx.n_windows} windows of {ctx.text}"
    return comparison_table(
        comparison("unedited mean self-rank", eff[0], len(queries), inctx[0], len(covered), same[0], note)
        + comparison("best acc@1 over the grid", eff[1], len(queries), inctx[1], len(covered), same[1], note))


def save_ranks(out_dir: Path, ranks: dict[str, np.ndarray]) -> None:
    with atomic_path(out_dir / "ranks.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **ranks)


def render(out_dir) -> list[Path]:
    """grid_heatmaps.png from grid.csv; the title from summary.json."""
    out_dir = Path(out_dir)
    meta = load_meta(out_dir)
    weights = verdict_text(meta)  # the weights' verdict, under every figure
    df, summary, args = load_table(out_dir, "grid"), load_summary(out_dir), meta["args"]
    title = (f"L{args['layer']}H{args['head']}: self-rank over {summary['n_vocab']} keys ({summary['queries']}); "
             f"k most negative of {summary['n_negative_eigenvalues']} negative eigenvalues scaled"
             + ("" if summary["keep_skew"] else ", W_skew dropped"))
    panels = [("mean_rank", "mean self-rank (log10)", "viridis_r", True), ("mrr", "MRR", "viridis", False),
              ("acc@1", "acc@1 (self on top)", "viridis", False), ("acc@1024", "acc@1024", "viridis", False),
              ("spearman_selfrank", "Spearman of self-ranks vs unmodified", "RdBu_r", False),
              ("spearman_keys", "Spearman of key order vs unmodified", "RdBu_r", False)]
    fig, axes = plt.subplots(2, 3, figsize=(19, 8))
    for ax, (col, name, cmap, log) in zip(axes.flat, panels):
        piv = df.pivot(index="k", columns="scale", values=col)
        data = np.log10(piv + 1) if log else piv
        kw = {"vmin": -1, "vmax": 1} if cmap == "RdBu_r" else {}
        heatmap(data, ax=ax, cmap=cmap, cbar=True, xticklabels=[f"{c:g}" for c in piv.columns], **kw)
        ax.set_title(name)
        ax.set_xlabel("scale of the k most negative eigenvalues")
        ax.set_ylabel("k")
        ax.tick_params(axis="x", labelsize=7, rotation=90)
    fig.suptitle(title)
    fig.tight_layout()
    return [save_figure(fig, out_dir / "grid_heatmaps.png", weights)]


def report(results: RankResults, out_dir: Path) -> None:
    df, u = results.tables["grid"], results.summary["unmodified"]
    best = df.loc[df["acc@1"].idxmax()]
    console = Console()
    console.print(f"unmodified: mean self-rank {u['mean_rank']:.1f}, acc@1 {u['acc@1']:.3f}")
    console.print(f"best acc@1 {best['acc@1']:.3f} at k = {int(best.k)}, scale = {best.scale:g} "
                  f"(mean rank {best.mean_rank:.1f})")
    if line := context_text(out_dir):
        console.print(line)
    peak_mb = load_meta(out_dir)["peak_rss_mb"]
    console.print(f"grid {results.summary['grid_seconds']:.1f} s, peak RSS {peak_mb:.0f} MB; outputs: {out_dir}")


@keeps_state
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    head = start_head(args, SCRIPT)
    results = compute(head.model, args, head.qk, head.E)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save_results(head.out_dir, results, args, SCRIPT, weights=weights_verdict(args.model), meta={
        "total_seconds": round(time.time() - t0, 2), "peak_rss_mb": round(peak_mb, 1)})
    save_ranks(head.out_dir, results.ranks)
    render(head.out_dir)
    report(results, head.out_dir)
    return 0


# -- claims (common/claims.py): the saved grid.csv, a measurement -----------------------------------


def check_rank_grid(out_dir) -> Evidence:
    """The unedited mean self-rank and the best (k, scale) edit: a measurement, no criterion."""
    g = load_table(out_dir, "grid")
    base, best = g[g.scale == 1.0], g.loc[g["acc@1"].idxmax()]
    text = (f"best edit k = {int(best.k)}, scale {best.scale:g}: self top-1 for {100 * best['acc@1']:.1f}% of "
            f"{int(best.n_queries)} queries")
    if not base.empty:
        text = f"unedited mean self-rank {base.mean_rank.iloc[0]:.0f}; " + text
    return with_context(Evidence(text, {"best_k": int(best.k), "best_scale": float(best.scale),
                                        "best_acc@1": float(best["acc@1"])}), out_dir)


CLAIMS = [Claim(
    "rank-grid", SCRIPT, "Self-rank over the vocabulary as a function of how many negative eigenvalues are scaled, and "
    "by how much (the original needed ~40 GB of RAM)", ORIGINAL, "a grid (no single number)", "grid_heatmaps.png",
    "grid.csv", "none (a measurement)", check_rank_grid, token_space=True)]


if __name__ == "__main__":
    raise SystemExit(main())
