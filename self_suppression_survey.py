"""Which heads suppress their own token, and can a weights-only statistic tell?

Question. The L1H5 post reads "33 of the 64 largest eigenvalues of W_sym are negative" as the mark
of a self-suppressing head. But W_sym = [W_Q W_K] S [W_Q W_K]^T with S = [[0, I/2], [I/2, 0]], so
by Sylvester's law of inertia every head whose [W_Q W_K] has full column rank has exactly d_head
negative and d_head positive eigenvalues (on gpt2-small: all 144 heads, 64 and 64). Which
statistics single L1H5 out: (a) from the attention weights alone, over every head of the model,
and (b) in token space, where self-suppression lives?

Method.
  (a) Weights only: W_Q, W_K, b_Q of every head (TransformerLens-processed: LN1 folded, centred)
      and W_pos; never the token embedding, so this part is exact on any checkpoint whose attention
      weights are real (e.g. bench/build_model.py's model from ../shared). Per head:
      * rank of [W_Q W_K] and the inertia (negative, positive, zero counts) of W_sym
        (``common.factored``, eigenvalues below --rtol x the largest count as zero);
      * the post's count: negative eigenvalues among the --top (default d_head) largest |lambda|;
      * largest singular values of W_sym and W_skew and their ratio (weights only, unscaled);
      * trace(W_QK) = sum_i lambda_i(W_sym): the expected self-score x^T W_QK x of an isotropic
        input (E[x x^T] = I), weights only, before 1/sqrt(d_head);
      * positional sensitivity: how much the position-dependent part of the attention score
        varies over the keys a query can attend to. With p_i = W_pos[i] (TransformerLens'
        centred W_pos) as the input at position i, the score of query i on key j is
          s(i, j) = (p_i W_Q + b_Q)(p_j W_K + b_K)^T / sqrt(d_head)
                  = [p_i W_Q W_K^T p_j^T + b_Q W_K^T p_j^T + p_i W_Q b_K^T + b_Q b_K^T] / sqrt(d_head).
        The last two terms are the same for every key j of query i: a per-query constant, which
        the softmax over j ignores. Every term that varies across keys is kept:
          s'(i, j) = (p_i W_Q + b_Q)(p_j W_K)^T / sqrt(d_head)
        (position x position, and query bias x key position). ``positional_sensitivity`` is the
        mean over query positions i = 1 .. N - 1 of the standard deviation of s'(i, j) over keys
        j = 0 .. i (N = --positions, default n_ctx: every position the model has).
        ``positional_sensitivity_pos_pos`` is the statistic without the b_Q term (position x
        position only), kept under its own name: until issue 20 it was the only one, and it
        misses a term that varies across keys (on gpt2-small it changes the order of layer 1,
        below). LayerNorm's division by the residual's RMS is not applied (it depends on the
        token embedding and earlier layers): the value is for a residual stream of unit RMS per
        coordinate. That factor is shared by all heads of a layer, so the ordering within a layer
        is exact for the position x position part; the b_Q term scales with 1/RMS, not 1/RMS^2,
        so its weight against that part is the unit-RMS one. Across layers the residual grows,
        so later layers are overstated.
  (b) Token space (heads of --layer; every layer with --token-space all): effective embeddings E
      of the layer (``common.effective_embeddings``); queries: a seeded sample of --n-sample
      vocabulary tokens (BOS and category words excluded) and the category words of
      ``common/prompts.py``. Per head and token (``common.self_suppression``, full vocabulary,
      streamed): the rank of the token's own key among all keys (interaction: key main effect
      removed; and under the raw attention logits), as a percentile (0 = top, 1 = bottom), and
      the share of its self-score contributed by W_sym's negative eigen-directions.
  The checkpoint is checked against gpt2-small's published checksums
  (``common.genuine_weights``); the verdict is in meta.json and under every figure.

On gpt2-small's real attention weights (../shared through bench/build_model.py's model; its token
embedding is random, which (a) never reads): every one of the 144 heads has full-rank [W_Q W_K]
and inertia (64, 64, 640). L1H5 among all 144 heads (1 = highest): negatives among the top 64,
33: 75th (layer 1: 4 (H11) to 49); sv_max(W_sym) 1.86: 77th; sv_max(W_skew) 1.35: 116th; their
ratio 1.38: 18th (the highest of layer 1, others 0.63-1.22); trace(W_QK) -7.1: 100th (layer 1:
-32.5 (H0) to 48.0 (H11)); positional sensitivity (every term that varies across keys) 0.103:
55th (many heads of layers 3-11 are lower still; across layers the unit-RMS convention is only
rough, see above). Within layer 1 L1H5 has the lowest positional sensitivity (0.103 against
0.130 (H11) to 0.498 (H0); H0 and H1 highest), and L1H9 is 10th of 12 (0.432): without the b_Q
term (``positional_sensitivity_pos_pos``) L1H5 is 0.0386 and L1H9 0.0395, a near tie for the
lowest, which the query-bias x key-position term breaks. The ordering depends on the window
(--positions): over the first 512 or 768 positions L1H5 is lowest too (0.061 vs 0.072-0.333;
0.073 vs 0.098-0.396), over the first 256 L1H5 and L1H6 tie (0.05686 vs 0.05690), over the first
128 or 192 L1H6 is lower (e.g. 0.0567 vs L1H5's 0.0619 over 128) and over the first 64 L1H11 and
L1H6 are (0.035, 0.057 vs 0.072). Read "least position-dependent head of layer 1" as "among the
two or three least".

Outputs (figures/self_suppression_survey/ by default):
  weights_survey.csv            one row per head (every layer): (a)'s statistics
  weights_survey_heatmaps.png   layers x heads heatmaps of (a), the target head outlined, its rank
                                among all heads in each title
  token_self_scores.csv         per head and query token: self-ranks, percentiles, centred
                                self-score, negative-eigen share
  token_self_suppression.csv    per head and query subset (category words / sample): means
  in_context.csv                the category words' mean self-rank percentile (target, best other
                                head) on effective embeddings and on the words' true layer inputs
                                in --context-windows natural-text windows (common/context_inputs.py;
                                words that never occur are left out, n_tokens says how many remain)
  self_suppression.png          the target layer's heads on the token-space statistic, next to
                                the negative-eigenvalue count that cannot tell them apart
  self_suppression_all_heads.png  (--token-space all) the same for every head, as heatmaps
  summary.json, meta.json

Run: python self_suppression_survey.py --model planted
     python self_suppression_survey.py --model bench/model --token-space none --threads 1
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from common.claims import NEW, Claim, Evidence, target
from common.cli import base_parser, script_name, start, keeps_state
from common.context_inputs import (add_context_flags, comparison, comparison_table, context_inputs, context_text,
                                   with_context)
from common.errors import require_absolute_positions
from common.factored import DEFAULT_EIG_RTOL, inertia_note, spectrum_summary
from common.genuine_weights import weights_verdict
from common.head_qk import FactoredQK
from common.plotting import heatmap, plt, save_figure
from common.prompts import category_token_ids
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text
from common.self_suppression import summarise_tokens, token_self_stats

SCRIPT = "self_suppression_survey"
# The gpt2-small tensors part (a) reads (TransformerLens folds ln_1's weight into W_Q/W_K, its bias
# into b_Q, and centres W_pos): when all of them are verified, (a) is exact even if wte or the MLPs are not real.
WEIGHTS_ONLY_INPUTS = ["wpe.weight"] + [f"h.{i}.{n}" for i in range(12)
                                         for n in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias")]
# Weights-only statistics shown per head, with the direction that would mark L1H5 out
# ("low": its value is lowest; "high": highest).
WEIGHT_STATS = {
    "n_negative_top": "negatives among the top-|lambda| eigenvalues of W_sym",
    "sv_max_sym": "largest singular value of W_sym",
    "sv_max_skew": "largest singular value of W_skew",
    "sym_skew_ratio": "sv_max(W_sym) / sv_max(W_skew)",
    "trace_qk": "trace(W_QK) (isotropic self-score)",
    "positional_sensitivity": "positional sensitivity (logit std over earlier keys, b_Q term included)",
    "positional_sensitivity_pos_pos": "positional sensitivity, position x position only (no b_Q)",
}


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--top", type=int, default=None, help="count negatives among this many largest |lambda| (default d_head)")
    p.add_argument("--rtol", type=float, default=DEFAULT_EIG_RTOL, help="eigenvalues below rtol * max|lambda| count as zero")
    p.add_argument("--token-space", choices=["layer", "all", "none"], default="layer",
                   help="token-space statistics for the heads of --layer, of every layer, or not at all")
    p.add_argument("--n-sample", type=int, default=2000, help="seeded sample of vocabulary query tokens (besides the category words)")
    p.add_argument("--positions", type=int, default=None,
                   help="positional sensitivity over the first N positions (default: all n_ctx)")
    add_context_flags(p)
    args = p.parse_args(argv)
    if args.top is not None and args.top < 1:
        p.error("--top must be >= 1")
    if not 0 < args.rtol < 1:
        p.error("--rtol must be in (0, 1)")
    if args.n_sample < 0:
        p.error("--n-sample must be >= 0")
    if args.positions is not None and args.positions < 2:
        p.error("--positions must be >= 2")
    return args


# ----------------------------------------------------------------------------------------------
# (a) weights only
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def positional_sensitivity(W_pos: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, attn_scale: float,
                           b_Q: torch.Tensor | None = None) -> torch.Tensor:
    """[n_heads] mean over query positions i >= 1 of std_{j <= i} of (p_i W_Q + b_Q)(p_j W_K)^T / attn_scale:
    every term of the score that varies across keys (module docstring; b_K only adds per-query
    constants). ``b_Q`` None: the position x position part alone (``positional_sensitivity_pos_pos``).

    ``W_Q``, ``W_K``: [n_heads, d_model, d_head] of one layer; ``b_Q``: [n_heads, d_head];
    ``W_pos``: [n_pos, d_model]."""
    P = W_pos.float()
    n = P.shape[0]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    cnt = mask.sum(1).double()
    out = torch.empty(W_Q.shape[0], dtype=torch.float64)
    for h in range(W_Q.shape[0]):  # one [n_pos, n_pos] score matrix at a time
        q = P @ W_Q[h].float() if b_Q is None else P @ W_Q[h].float() + b_Q[h].float()
        S = (q @ (P @ W_K[h].float()).T).double().div_(attn_scale)  # [i, j]
        mean = S.tril().sum(-1) / cnt  # tril: the keys j <= i
        var = S.sub_(mean[:, None]).pow_(2).tril_().sum(-1) / cnt  # two passes: no cancellation
        out[h] = var[1:].sqrt().mean()
    return out


def layer_scale(model, layer: int) -> float:
    return FactoredQK.from_model(model, layer, 0).attn_scale


def layer_heads(model, layer: int) -> list[FactoredQK]:
    """``FactoredQK.from_model(model, layer, h)`` for every head h of ``layer``, the layer's weights
    read once (``model.W_Q`` and friends stack the weights of every layer on each access)."""
    attn = model.blocks[layer].attn
    W_Q, W_K, b_Q, b_K = (t.detach().cpu() for t in (attn.W_Q, attn.W_K, attn.b_Q, attn.b_K))
    scale = layer_scale(model, layer)
    return [FactoredQK(W_Q[h], W_K[h], b_Q[h], b_K[h], attn_scale=scale, layer=layer, head=h)
            for h in range(model.cfg.n_heads)]


@torch.no_grad()
def weights_only_survey(model, top: int, rtol: float, positions: int | None = None) -> pd.DataFrame:
    """One row per head of every layer; reads W_Q, W_K, b_Q and W_pos only (never the token embedding)."""
    rows = []
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    W_pos = model.W_pos.detach().cpu()[:positions]
    for layer in tqdm(range(n_layers), desc="weights-only survey", unit="layer"):
        heads = layer_heads(model, layer)
        attn = model.blocks[layer].attn
        W_Q, W_K = attn.W_Q.detach().cpu(), attn.W_K.detach().cpu()
        pos = positional_sensitivity(W_pos, W_Q, W_K, heads[0].attn_scale, b_Q=attn.b_Q.detach().cpu())
        pos_pos = positional_sensitivity(W_pos, W_Q, W_K, heads[0].attn_scale)
        for head in range(n_heads):
            qk = heads[head]
            s = spectrum_summary(qk.weights(), top=top, rtol=rtol)
            rows.append({
                "layer": layer, "head": head, "d_head": qk.d_head,
                "rank_factors": s["rank_factors"], "full_column_rank": s["full_column_rank"],
                "n_negative": s["n_negative"], "n_positive": s["n_positive"], "n_zero": s["n_zero"],
                "top_k": s["top_k"], "n_negative_top": s[f"n_negative_top{top}"],
                "sv_max_sym": s["sv_max_sym"], "sv_max_skew": s["sv_max_skew"],
                "sym_skew_ratio": s["sv_max_sym"] / max(s["sv_max_skew"], 1e-30),
                "trace_qk": float((qk.W_Q.double() * qk.W_K.double()).sum()),
                "positional_sensitivity": float(pos[head]),
                "positional_sensitivity_pos_pos": float(pos_pos[head]),
                "skew_share": s["skew_share"], "fro_full": s["fro_full"],
            })
    return pd.DataFrame(rows)


def target_ranks(df: pd.DataFrame, layer: int, head: int) -> dict:
    """Where the target head ranks among all heads (1 = highest) and among its layer, per statistic."""
    out = {}
    is_t = (df["layer"] == layer) & (df["head"] == head)
    lay = df[df["layer"] == layer]
    for col in WEIGHT_STATS:
        v = float(df.loc[is_t, col].iloc[0])
        others_layer = lay.loc[lay["head"] != head, col]
        out[col] = {
            "value": v,
            "rank_high_all": int((df[col] > v).sum()) + 1,  # 1 = highest of all heads
            "rank_low_all": int((df[col] < v).sum()) + 1,  # 1 = lowest of all heads
            "n_heads": int(len(df)),
            "rank_low_layer": int((lay[col] < v).sum()) + 1,
            "layer_others_min": float(others_layer.min()), "layer_others_max": float(others_layer.max()),
        }
    return out


# ----------------------------------------------------------------------------------------------
# (b) token space
# ----------------------------------------------------------------------------------------------


def query_tokens(tokenizer, vocab: int, n_sample: int, seed: int) -> pd.DataFrame:
    """token_id and subset ("category" words, or a seeded "sample" of the rest of the vocabulary)."""
    cat = sorted({t for ids in category_token_ids(tokenizer).values() for t in ids})
    excluded = set(cat) | {tokenizer.bos_token_id}
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab, generator=g).tolist()
    sample = [t for t in perm if t not in excluded][:n_sample]
    return pd.DataFrame({"token_id": cat + sample, "subset": ["category"] * len(cat) + ["sample"] * len(sample)})


@torch.no_grad()
def token_space_survey(model, layers: list[int], queries: pd.DataFrame) -> pd.DataFrame:
    from common.effective_embeddings import effective_embeddings

    parts = []
    ids = torch.tensor(queries.token_id.to_numpy())
    for layer in layers:
        E = effective_embeddings(model, layer)
        Ec = E - E.mean(0, keepdim=True)
        heads = layer_heads(model, layer)
        for head in tqdm(range(model.cfg.n_heads), desc=f"token space, layer {layer}", unit="head"):
            df = token_self_stats(heads[head], E, ids, E_centred=Ec)
            df.insert(0, "subset", queries.subset.to_numpy())
            df.insert(0, "head", head)
            df.insert(0, "layer", layer)
            parts.append(df)
    return pd.concat(parts, ignore_index=True)


@torch.no_grad()
def in_context_survey(model, layer: int, head: int, queries: pd.DataFrame, tok: pd.DataFrame, args) -> pd.DataFrame | None:
    """The category words' mean self-rank percentile for the target and the best other head of
    ``layer``, on effective embeddings (all words; the words that occur) and on their true layer
    inputs in natural text (common.context_inputs), as in_context.csv rows; None without windows."""
    from common.effective_embeddings import effective_embeddings

    cat = queries.token_id[queries.subset == "category"].to_numpy()
    ctx = context_inputs(model, args, cat, layer=layer)
    if ctx is None:
        return None
    covered = ctx.covered(cat)
    E = effective_embeddings(model, layer)
    lay = tok[(tok.layer == layer) & (tok.subset == "category")].set_index("head").mean_self_rank_pct
    per_head = {"effective": lay.to_dict(), "same": {}, "context": {}}
    if len(covered):
        Ex = ctx.substitute(E)
        Exc = Ex - Ex.mean(0, keepdim=True)
        Ec = E - E.mean(0, keepdim=True)
        for h, f in enumerate(layer_heads(model, layer)):
            per_head["context"][h] = float(token_self_stats(f, Ex, covered, E_centred=Exc).self_rank_pct.mean())
            per_head["same"][h] = float(token_self_stats(f, E, covered, E_centred=Ec).self_rank_pct.mean())
    rows = []
    for stat, pick in ((f"mean self-rank percentile L{layer}H{head} (category words)", lambda d: d.get(head)),
                       ("best other head of the layer", lambda d: max((v for h, v in d.items() if h != head),
                                                                       default=None))):
        rows += comparison(stat, pick(per_head["effective"]), len(cat), pick(per_head["context"]), len(covered),
                           pick(per_head["same"]), note=f"{ctx.n_windows} windows of {ctx.text}")
    return comparison_table(rows)


def token_summary(per_token: pd.DataFrame) -> pd.DataFrame:
    both = per_token.assign(subset="all")
    return summarise_tokens(pd.concat([per_token, both], ignore_index=True), ["layer", "head", "subset"])


def standout(summary: pd.DataFrame, weights: pd.DataFrame, layer: int, head: int) -> dict:
    """Per subset: the target's token statistic against the best other head of its layer, and the
    same for the negative-eigenvalue count."""
    out = {}
    for subset, s in summary[summary["layer"] == layer].groupby("subset"):
        t = s[s["head"] == head].iloc[0]
        o = s[s["head"] != head]
        out[subset] = {
            "target_mean_self_rank_pct": float(t.mean_self_rank_pct),
            "others_max_mean_self_rank_pct": float(o.mean_self_rank_pct.max()),
            "target_mean_neg_share": float(t.mean_neg_share),
            "others_max_mean_neg_share": float(o.mean_neg_share.max()),
            "target_highest_self_rank_pct": bool(t.mean_self_rank_pct > o.mean_self_rank_pct.max()),
        }
    w = weights[weights["layer"] == layer]
    tc = int(w.loc[w["head"] == head, "n_negative_top"].iloc[0])
    oc = w.loc[w["head"] != head, "n_negative_top"]
    # The post's reading: more negatives among the top -> more self-suppression. Does the count
    # rank the target first, as the token statistic does?
    out["n_negative_top"] = {"target": tc, "others_min": int(oc.min()), "others_max": int(oc.max()),
                             "target_highest_count": bool(tc > oc.max())}
    return out


# ----------------------------------------------------------------------------------------------


def compute(model, args) -> Results:
    top = args.top or model.cfg.d_head
    weights = weights_only_survey(model, top, args.rtol, args.positions)
    d_head, d_model = model.cfg.d_head, model.cfg.d_model
    sylvester = (weights.n_negative == d_head) & (weights.n_positive == d_head)
    summary = {
        "target": [args.layer, args.head], "top": top, "d_head": d_head, "d_model": d_model,
        "positions": min(args.positions or model.cfg.n_ctx, model.cfg.n_ctx),
        "n_heads_total": int(len(weights)),
        "n_heads_full_column_rank": int(weights.full_column_rank.sum()),
        "n_heads_inertia_dhead_dhead": int(sylvester.sum()),
        "full_rank_heads_obey_sylvester": bool(sylvester[weights.full_column_rank].all()),
        "inertia_note": inertia_note(d_head, top),
        "target_ranks": target_ranks(weights, args.layer, args.head),
    }
    tables = {"weights_survey": weights}
    if args.token_space != "none":
        layers = list(range(model.cfg.n_layers)) if args.token_space == "all" else [args.layer]
        queries = query_tokens(model.tokenizer, model.cfg.d_vocab, args.n_sample, args.seed)
        per_token = token_space_survey(model, layers, queries)
        tok = token_summary(per_token)
        tables |= {"token_self_scores": per_token, "token_self_suppression": tok}
        in_ctx = in_context_survey(model, args.layer, args.head, queries, tok, args)
        if in_ctx is not None:
            tables["in_context"] = in_ctx
            summary["in_context"] = in_ctx.to_dict("records")
        summary["token_space"] = {"layers": layers, "n_sample": int((queries.subset == "sample").sum()),
                                  "n_category": int((queries.subset == "category").sum()),
                                  "standout": standout(tok, weights, args.layer, args.head)}
    return Results(tables, summary)


# ----------------------------------------------------------------------------------------------
# Figures (from saved files only)
# ----------------------------------------------------------------------------------------------


def plot_weight_heatmaps(w: pd.DataFrame, layer: int, head: int, top: int, note: str):
    stats = {c: label for c, label in WEIGHT_STATS.items() if c in w.columns}  # results saved before a column existed
    fig, axes = plt.subplots(2, 4, figsize=(22, 10.5))
    for ax in axes.flat[len(stats):]:
        ax.axis("off")
    for ax, (col, label) in zip(axes.flat, stats.items()):
        grid = w.pivot(index="layer", columns="head", values=col)
        fmt = "d" if col == "n_negative_top" else ".2g"
        heatmap(grid, ax=ax, cmap="viridis", annot=grid.shape[0] * grid.shape[1] <= 160, fmt=fmt,
                    annot_kws={"fontsize": 6}, cbar=True, robust=True)  # robust: one outlier head cannot flatten the rest
        ax.add_patch(plt.Rectangle((head, layer), 1, 1, fill=False, ec="red", lw=2.5))
        v = float(w.loc[(w["layer"] == layer) & (w["head"] == head), col].iloc[0])
        hi, lo = int((w[col] > v).sum()) + 1, int((w[col] < v).sum()) + 1
        title = label.replace("top-|lambda|", f"top {top}")
        ax.set_title(f"{title}\nL{layer}H{head} = {v:.3g}: rank {hi} highest / {lo} lowest of {len(w)}", fontsize=9)
    fig.suptitle(f"Weights-only statistics of every head (red: L{layer}H{head}). {note}", fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


def plot_self_suppression(tok: pd.DataFrame, w: pd.DataFrame, layer: int, head: int, top: int, note: str):
    s = tok[tok["layer"] == layer]
    heads = sorted(s["head"].unique())
    x = np.arange(len(heads))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    colours = ["tab:red" if h == head else "tab:gray" for h in heads]
    for ax, (col, raw_col, label) in zip(axes[:2], [
        ("mean_self_rank_pct", "mean_self_rank_pct_raw",
         "own key's rank among all vocabulary keys (percentile, 1 = bottom; bars: key main effect removed)"),
        ("mean_neg_share", None, "share of the self-score from W_sym's negative eigen-directions"),
    ]):
        for i, (subset, hatch, alpha) in enumerate((("category", "", 1.0), ("sample", "//", 0.5))):
            v = s[s.subset == subset].set_index("head").loc[heads]
            ax.bar(x + (i - 0.5) * 0.4, v[col], width=0.4, color=colours, alpha=alpha, hatch=hatch,
                   edgecolor="k", lw=0.4, label=f"{subset} tokens (n={int(v.n_queries.iloc[0])})")
            if raw_col:
                ax.plot(x + (i - 0.5) * 0.4, v[raw_col], "k_", ms=10, mew=2,
                        label="raw attention logits (key main effect kept)" if i == 0 else None)
        ax.axhline(0.5, color="k", ls=":", lw=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_title(label, fontsize=9)
    wl = w[w["layer"] == layer].set_index("head").loc[heads]
    axes[2].bar(x, wl.n_negative_top, color=colours)
    axes[2].bar(x, wl.n_negative - wl.n_negative_top, bottom=wl.n_negative_top, color="none", edgecolor="k",
                lw=0.6, ls="--", label="all negative eigenvalues")
    axes[2].set_title(f"negative eigenvalues of W_sym among the top {top} (solid) and in all", fontsize=9)
    for ax in axes:
        ax.set_xticks(x, [f"H{h}" for h in heads])
        ax.legend(fontsize=7, loc="lower right")
    t = s[(s["head"] == head) & (s.subset == "category")]
    tv = float(t.mean_self_rank_pct.iloc[0]) if len(t) else float("nan")
    ov = float(s[(s["head"] != head) & (s.subset == "category")].mean_self_rank_pct.max())
    fig.suptitle(f"Layer {layer}: L{layer}H{head} (red) puts a category word's own key at percentile {tv:.3f} on average "
                 f"(other heads at most {ov:.3f}); the eigenvalue count does not tell the heads apart.\n{note}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_all_heads(tok: pd.DataFrame, w: pd.DataFrame, layer: int, head: int, top: int, note: str):
    """--token-space all: the token statistic and the count for every head, side by side."""
    cat = tok[tok.subset == "category"]
    panels = [(cat.pivot(index="layer", columns="head", values="mean_self_rank_pct"),
               "category words: own key's mean percentile among all keys (1 = bottom)", ".2f"),
              (cat.pivot(index="layer", columns="head", values="mean_neg_share"),
               "category words: share of the self-score from negative eigen-directions", ".2f"),
              (w.pivot(index="layer", columns="head", values="n_negative_top"),
               f"negatives among the top {top} eigenvalues of W_sym", "d")]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    for ax, (grid, title, fmt) in zip(axes, panels):
        heatmap(grid, ax=ax, cmap="viridis", annot=grid.size <= 160, fmt=fmt, annot_kws={"fontsize": 6})
        ax.add_patch(plt.Rectangle((head, layer), 1, 1, fill=False, ec="red", lw=2.5))
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Every head (red: L{layer}H{head}). {note}", fontsize=9)
    fig.tight_layout()
    return fig


def render(out_dir) -> list:
    meta, summary = load_meta(out_dir), load_summary(out_dir)
    layer, head = meta["args"]["layer"], meta["args"]["head"]
    top, note = summary["top"], summary["inertia_note"]
    w = load_table(out_dir, "weights_survey")
    paths = []
    weights = verdict_text(meta)
    fig = plot_weight_heatmaps(w, layer, head, top, note)
    if meta.get("weights_only_inputs_genuine"):
        fig.text(0.5, -0.03, "every tensor these statistics read (W_Q, W_K, b_Q, ln_1, W_pos of gpt2-small) is verified genuine",
                 ha="center", va="top", fontsize=8, color="0.35")
    paths.append(save_figure(fig, out_dir / "weights_survey_heatmaps.png", weights))
    if "token_space" in summary:
        tok = load_table(out_dir, "token_self_suppression")
        fig = plot_self_suppression(tok, w, layer, head, top, note)
        paths.append(save_figure(fig, out_dir / "self_suppression.png", weights))
        if tok["layer"].nunique() > 1:
            fig = plot_all_heads(tok, w, layer, head, top, note)
            paths.append(save_figure(fig, out_dir / "self_suppression_all_heads.png", weights))
    return paths


def report(results: Results, out_dir) -> None:
    console = Console()
    verdict = verdict_text(load_meta(out_dir))
    s = results.summary
    layer, head = s["target"]
    console.print(f"weights: {verdict}")
    console.print(f"inertia: {s['n_heads_inertia_dhead_dhead']}/{s['n_heads_total']} heads have "
                  f"{s['d_head']} negative and {s['d_head']} positive eigenvalues "
                  f"({s['n_heads_full_column_rank']} with full-rank [W_Q W_K])")
    table = Table(title=f"L{layer}H{head} among all {s['n_heads_total']} heads (weights only)")
    for c in ("statistic", "value", "rank (1 = highest)", "rank (1 = lowest)", f"layer {layer}: others"):
        table.add_column(c)
    for col, r in s["target_ranks"].items():
        table.add_row(col, f"{r['value']:.4g}", str(r["rank_high_all"]), str(r["rank_low_all"]),
                      f"{r['layer_others_min']:.4g} .. {r['layer_others_max']:.4g}")
    console.print(table)
    if "token_space" in s:
        tok = results.tables["token_self_suppression"]
        t2 = Table(title=f"token space, layer {layer}: own key's percentile among all keys (1 = bottom)")
        for c in ("head", "category", "sample", "category (raw logits)", "neg share (category)"):
            t2.add_column(c)
        lay = tok[tok["layer"] == layer]
        for h in sorted(lay["head"].unique()):
            r = lay[lay["head"] == h].set_index("subset")
            t2.add_row(f"H{h}" + (" *" if h == head else ""), f"{r.loc['category', 'mean_self_rank_pct']:.3f}",
                       f"{r.loc['sample', 'mean_self_rank_pct']:.3f}" if "sample" in r.index else "-",
                       f"{r.loc['category', 'mean_self_rank_pct_raw']:.3f}", f"{r.loc['category', 'mean_neg_share']:.3f}")
        console.print(t2)
    if line := context_text(out_dir):
        console.print(line)
    console.print(f"outputs: {out_dir}")


@keeps_state
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, out_dir = start(args, script_name(__file__))
    require_absolute_positions(model, "self_suppression_survey (positional sensitivity of W_pos, effective embeddings)")
    verdict = weights_verdict(args.model)  # is this checkpoint genuine gpt2-small? (cached by file identity)
    results = compute(model, args)
    save_results(out_dir, results, args, SCRIPT, weights=verdict, meta={
        "weights_only_inputs_genuine": verdict.verifies(WEIGHTS_ONLY_INPUTS),
    })
    render(out_dir)
    report(results, out_dir)
    return 0


# -- claims (common/claims.py): judged from the saved token_self_suppression.csv and weights_survey.csv -


def check_self_rank(out_dir) -> Evidence:
    """In token space the target ranks each category word's own key lower (percentile nearer 1)
    than every other head of its layer does; the negative-eigenvalue count beside it, which
    Sylvester's law makes uninformative for full-rank heads."""
    out_dir = Path(out_dir)
    layer, head = target(out_dir)
    t, w = load_table(out_dir, "token_self_suppression"), load_table(out_dir, "weights_survey")
    cat = t[(t.subset == "category") & (t.layer == layer)]
    me = cat[cat["head"] == head].iloc[0]
    best_other = float(cat[cat["head"] != head].mean_self_rank_pct.max())
    wt = w[(w.layer == layer) & (w["head"] == head)].iloc[0]
    rank = int((w.n_negative_top > wt.n_negative_top).sum()) + 1
    ev = Evidence(
        f"own key's mean percentile among all vocabulary keys (category words; 1 = last): L{layer}H{head} "
        f"{me.mean_self_rank_pct:.3f}, best other head of the layer {best_other:.3f}; negatives among the top "
        f"{int(wt.top_k)} eigenvalues: {int(wt.n_negative_top)} (rank {rank} of {len(w)} heads); "
        f"{int(w.full_column_rank.sum())} of {len(w)} heads full rank",
        {"self_rank_pct": float(me.mean_self_rank_pct), "best_other_head_pct": best_other,
         "n_negative_top": int(wt.n_negative_top), "n_negative_top_rank": rank, "n_heads": len(w)},
        holds=bool(me.mean_self_rank_pct > best_other))
    return with_context(ev, out_dir)


CLAIMS = [Claim(
    "self-rank", SCRIPT, "The negative-eigenvalue count does not single L1H5 out (every full-rank head has d_head "
    "negative eigenvalues); the rank of each token's own key in token space does", f"{NEW} (Sylvester's law of inertia)",
    "none (the post's 33 of 64 is not distinctive)", "self_suppression.png", "token_self_suppression.csv",
    "the studied head ranks each category word's own key lower than every other head of its layer (no published "
    "number: shown on gpt2-small)", check_self_rank, token_space=True)]


if __name__ == "__main__":
    raise SystemExit(main())
