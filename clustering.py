"""Which tokens does L1H5 group together? Leiden communities of the head's attention graph.

Question. If every frequent token attends (with L1H5's QK circuit alone) to its most-attended
other tokens, do the resulting communities look like semantic categories (colours, numbers,
weekdays, countries), as the head's "attend to the same category" rule predicts?

Method (the pipeline and its conventions: ``common.attention_graph``).
* Nodes: the N most frequent GPT-2 tokens (``common.freq``: token_freq.py's table, or its
  documented fallback), plus every category word of ``common.prompts`` (``--no-category-tokens``
  to leave them out) so the agreement with known categories is measured on all of them.
* Scores: the head's real attention logits on effective embeddings, ``(E_q W_Q + b_Q)(E_k W_K +
  b_K)^T / sqrt(d_head)`` (``common.head_qk``), rows = queries, columns = keys.
* Normalisation: a softmax over the N node keys of each query row, computed exactly by a streamed
  log-sum-exp over query chunks (only chunk x N scores exist at a time, never vocab x vocab). The
  token's own key stays in the denominator (in a real context the head could attend to it; L1H5
  gives it little mass, reported as ``self_prob``) but is never an edge. The original's
  normalisation had an operator-precedence bug; here it is an explicit log-softmax over the key
  axis, tested against ``torch.softmax``.
* Graph: each query keeps its ``--top-k`` most attended other tokens, edge weight = attention
  probability, if that probability is above ``--min-lift`` times uniform (1/N): a query that
  attends almost uniformly links nothing and stays a singleton (grey in the maps). The directed
  graph is symmetrised (w_ij + w_ji) because a community is a symmetric notion. Leiden
  (leidenalg, RBConfiguration i.e. modularity with ``--resolution``, seeded) finds communities,
  numbered by size (0 = largest).
* Quality: modularity of the partition (resolution 1), and agreement with the known categories
  (adjusted Rand index and NMI, scikit-learn) over the category words in the graph.

Outputs (``figures/clustering/`` by default):
  communities.csv       token, id, community, community_size, frequency rank, strength, self_prob,
                        known category, top attended tokens
  community_summary.csv size and most central members of each community
  examples.csv          the communities of the published examples and which expected companions
                        they contain
  edges.csv             the top-k graph (query, key, attention probability)
  layout.csv            the seeded 2-D layout of the graph (id, x, y) that both maps draw
  community_<c>_attention.csv  attention within the communities of the heatmaps
  community_map.png     static layout of the graph coloured by community
  community_heatmaps.png attention within a few communities (example communities first)
  community_map.html    interactive map (plotly, bundled inline: opens offline): pan, zoom, hover
                        labels, colour by community, search box (or open ``...html#q=Monday``),
                        click a node to list its community
  in_context.csv        the examples' mean companion fraction and the ARI, on the full graph, and on
                        the graph of the nodes that occur in --context-windows natural-text windows
                        with their true layer inputs there and with effective embeddings
                        (common/context_inputs.py)
  quality.json (= summary.json), meta.json
Figures and the HTML map are drawn from these files only (``render``).

Run: python clustering.py --model planted     (offline demo; reads figures/demo/token_freq/token_freq.csv)
     python clustering.py                     (gpt2-small; reads figures/token_freq/token_freq.csv)

Published examples (the L1H5 post, gpt2-small): " red" falls with green/blue/yellow, " 69" with
other two-digit numbers, " Monday" with the other weekdays, " Italy" with other countries.
"""
from __future__ import annotations

import html as html_lib
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.claims import DIFFERS, INCONCLUSIVE, ORIGINAL, REPRODUCED, Claim, Evidence
from common.attention_graph import agreement, attention_topk, build_graph, choose_nodes, layout, leiden, strengths
from common.cli import base_parser, script_name, start_head, keeps_state
from common.context_inputs import add_context_flags, comparison, comparison_table, context_inputs, context_text, with_context
from common.genuine_weights import weights_verdict
from common.outputs import atomic_path, write_json
from common.plotting import plt, save_figure, token_heatmap
from common.prompts import CATEGORIES, token_category_map
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text

SCRIPT = script_name(__file__)
# Published examples and the companions that, per the post, share their community.
EXAMPLES: dict[str, list[str]] = {
    " red": [" green", " blue", " yellow"],
    # the other numbers of the original's own numbers category (its src/constants.py KEYWORDS), which
    # is also what the planted model plants beside " 69"; every two-digit number would ask the planted
    # model for a category it does not have
    " 69": [" 24", " 42", " 22", " 32", " 50"],
    " Monday": [" Tuesday", " Wednesday", " Friday"],
    " Italy": [" France", " Germany", " Spain", " China", " Japan", " Russia", " India", " Canada", " Brazil"],
}
SMALL_COMMUNITY = 3  # communities smaller than this are drawn grey
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#3182bd",
    "#fd8d3c", "#74c476", "#ad494a", "#a55194", "#6baed6", "#fdae6b", "#a1d99b", "#e7969c",
]


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--n-tokens", type=int, default=3000, help="number of most frequent tokens (nodes)")
    p.add_argument("--freq-table", default=None, help="token_freq.csv to read (default: token_freq.py's output, else fallback)")
    p.add_argument("--no-category-tokens", action="store_true", help="do not add the known category words to the nodes")
    p.add_argument("--top-k", type=int, default=10, help="keys kept per query, self excluded (here: out-edges per token)")
    p.add_argument("--min-lift", type=float, default=2.0,
                   help="keep an edge only if its probability exceeds min-lift / N (uniform attention is 1/N)")
    p.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution (higher: more, smaller communities)")
    p.add_argument("--chunk", type=int, default=512, help="queries scored at a time (here: query tokens)")
    p.add_argument("--map-edges", type=int, default=2, help="strongest out-edges per node drawn in the maps")
    p.add_argument("--layout-iterations", type=int, default=300)
    p.add_argument("--n-heatmaps", type=int, default=4, help="communities shown as heatmaps")
    add_context_flags(p)
    args = p.parse_args(argv)
    if args.n_tokens < 10:
        p.error("--n-tokens must be at least 10")
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    if args.min_lift < 0:
        p.error("--min-lift must be non-negative")
    if not args.resolution > 0:
        p.error("--resolution must be positive")
    if args.chunk < 1 or args.map_edges < 0 or args.n_heatmaps < 0:
        p.error("--chunk must be positive, --map-edges and --n-heatmaps non-negative")
    return args


# ------------------------------------------------------------------------------------------
# Compute: the graph, its communities and the tables behind every figure
# ------------------------------------------------------------------------------------------


def compute(model, args, qk, E: torch.Tensor) -> Results:
    """Nodes, attention graph, Leiden communities, agreement with the categories, layout."""
    tok = model.tokenizer
    node_ids, freq_rank, source = choose_nodes(tok, args.model, args.n_tokens, model.cfg.d_vocab, args.freq_table,
                                               not args.no_category_tokens)
    n = len(node_ids)
    print(f"{n} nodes: {source}", file=sys.stderr)
    scorer = qk.scorer()
    idx, prob, lse, self_prob = attention_topk(scorer, E, node_ids, args.top_k, args.chunk)
    min_prob = args.min_lift / n
    g = build_graph(idx, prob, min_prob)
    membership, leiden_quality = leiden(g, args.resolution, args.seed)
    cat_of = token_category_map(tok)
    sizes = np.bincount(membership)
    strength = strengths(n, idx, prob)
    labels = [tok.decode([t]) for t in node_ids]

    communities = community_table(labels, node_ids, membership, freq_rank, strength, self_prob, cat_of, idx, prob)
    example_list = example_rows(EXAMPLES, tok, node_ids, membership, labels, strength)
    chosen = heatmap_communities(example_list, sizes, args.n_heatmaps)
    xy = layout(g, args.layout_iterations, args.seed)
    tables = {
        "communities": communities,
        "community_summary": community_summary(communities, membership, strength, labels),
        "edges": edge_table(labels, node_ids, idx, prob, min_prob),
        "examples": pd.DataFrame(example_list),
        **{f"community_{c}_attention": community_attention(scorer, E, node_ids, labels, membership, strength, lse, c)
           for c in chosen},
        "layout": pd.DataFrame({"id": node_ids, "x": xy[:, 0], "y": xy[:, 1]}),
    }
    quality = {
        "n_nodes": n, "n_edges": g.ecount(), "n_communities": int(len(sizes)),
        "n_communities_ge3": int((sizes >= SMALL_COMMUNITY).sum()), "largest_community": int(sizes.max()),
        "modularity": float(g.modularity(membership.tolist(), weights="weight")), "leiden_quality": leiden_quality,
        "resolution": args.resolution, **agreement(membership, node_ids, cat_of), "node_source": source,
        "mean_self_prob": float(self_prob.mean()),
        "html_nodes": n,  # the HTML map embeds every node
        "heatmap_communities": chosen,
    }
    ctx = context_inputs(model, args, node_ids)
    if ctx is not None:
        tables["in_context"] = in_context_clusters(model, args, scorer, E, node_ids, ctx, example_list, quality)
    return Results(tables=tables, summary=quality)


def graph_stats(tok, args, scorer, E, node_ids) -> tuple[float | None, float]:
    """(mean companion fraction of the published examples in the graph, ARI against the categories)
    of the Leiden communities of ``node_ids``'s top-k attention graph on token vectors ``E``."""
    idx, prob, _, _ = attention_topk(scorer, E, node_ids, min(args.top_k, len(node_ids) - 1), args.chunk,
                                     progress=False)
    membership, _ = leiden(build_graph(idx, prob, args.min_lift / len(node_ids)), args.resolution, args.seed)
    ex = example_rows(EXAMPLES, tok, node_ids, membership, [tok.decode([t]) for t in node_ids],
                      strengths(len(node_ids), idx, prob))
    return companion_mean(ex), agreement(membership, node_ids, token_category_map(tok))["ari"]


def companion_mean(example_list: list[dict]) -> float | None:
    f = [r["companion_fraction"] for r in example_list if r["in_graph"] and not math.isnan(r["companion_fraction"])]
    return float(np.mean(f)) if f else None


def in_context_clusters(model, args, scorer, E, node_ids, ctx, example_list, quality) -> pd.DataFrame:
    """The graph rebuilt on the nodes that occur in the text windows, with their true layer inputs
    there (common.context_inputs) and, for the same nodes, with effective embeddings: the published
    examples' mean companion fraction and the ARI, beside the full graph's (in_context.csv rows)."""
    tok = model.tokenizer
    covered = ctx.covered(node_ids).tolist()
    same = inctx = (None, None)
    if len(covered) >= 2:
        same = graph_stats(tok, args, scorer, E, covered)
        inctx = graph_stats(tok, args, scorer, ctx.substitute(E), covered)
    note = f"{ctx.n_windows} windows of {ctx.text}; the graph rebuilt on the nodes that occur"
    eff = companion_mean(example_list)
    return comparison_table(
        (comparison("mean companion fraction of the published examples", eff, len(node_ids), inctx[0], len(covered),
                    same[0], note) if eff is not None else [])
        + comparison("ARI of the communities against the categories", quality["ari"], len(node_ids), inctx[1],
                     len(covered), same[1], note))


def community_table(labels, node_ids, membership, freq_rank, strength, self_prob, cat_of, idx, prob) -> pd.DataFrame:
    cat_names = list(CATEGORIES)
    top_txt = [" | ".join(f"{labels[j]}:{p:.3f}" for j, p in zip(idx[i, :5].tolist(), prob[i, :5].tolist()))
               for i in range(len(node_ids))]
    return pd.DataFrame({
        "token": labels, "id": node_ids, "community": membership, "community_size": np.bincount(membership)[membership],
        "freq_rank": [freq_rank.get(t, -1) for t in node_ids], "strength": strength.round(5),
        "self_prob": self_prob.numpy().round(6),
        "category": [cat_names[cat_of[t]] if t in cat_of else "" for t in node_ids], "top_keys": top_txt,
    })


def community_summary(communities: pd.DataFrame, membership, strength, labels) -> pd.DataFrame:
    rows = []
    for c in range(membership.max() + 1):
        members = np.flatnonzero(membership == c)
        members = members[np.argsort(-strength[members])]
        cats = communities["category"].iloc[members]
        cats = cats[cats != ""]
        rows.append({"community": c, "size": len(members),
                     "majority_category": cats.mode().iloc[0] if len(cats) else "",
                     "category_tokens": len(cats),
                     "central_members": " | ".join(labels[m] for m in members[:15])})
    return pd.DataFrame(rows)


def edge_table(labels, node_ids, idx, prob, min_prob: float) -> pd.DataFrame:
    """Every query's top-k keys in rank order; ``in_graph``: above the --min-lift threshold."""
    src = np.repeat(np.arange(len(node_ids)), idx.shape[1])
    dst = idx.numpy().ravel()
    return pd.DataFrame({
        "query": [labels[i] for i in src], "query_id": [node_ids[i] for i in src],
        "key": [labels[j] for j in dst], "key_id": [node_ids[j] for j in dst],
        "prob": prob.numpy().ravel().round(6), "in_graph": prob.numpy().ravel() > min_prob})


def example_rows(examples, tokenizer, node_ids, membership, labels, strength) -> list[dict]:
    pos = {t: i for i, t in enumerate(node_ids)}
    rows = []
    for word, companions in examples.items():
        ids = tokenizer.encode(word, add_special_tokens=False)
        row = {"example": word, "token_id": ids[0] if len(ids) == 1 else None, "in_graph": False}
        if len(ids) == 1 and ids[0] in pos:
            i = pos[ids[0]]
            c = int(membership[i])
            members = np.flatnonzero(membership == c)
            members = members[np.argsort(-strength[members])]
            comp_ids = [tokenizer.encode(w, add_special_tokens=False) for w in companions]
            present = [w for w, ci in zip(companions, comp_ids) if len(ci) == 1 and ci[0] in pos]
            same = [w for w in present if membership[pos[tokenizer.encode(w, add_special_tokens=False)[0]]] == c]
            row |= {
                "in_graph": True, "community": c, "community_size": len(members),
                "companions_in_graph": len(present), "companions_same_community": len(same),
                "companion_fraction": len(same) / len(present) if present else float("nan"),
                "companions_found": " | ".join(same[:20]),
                "members": " | ".join(labels[m] for m in members[:25] if m != i),
            }
        rows.append(row)
    return rows


def heatmap_communities(example_list: list[dict], sizes: np.ndarray, n_heatmaps: int) -> list[int]:
    """The communities drawn as heatmaps: those of the published examples first, then by size."""
    chosen: list[int] = []
    for r in example_list:
        if r["in_graph"] and r["community"] not in chosen and sizes[r["community"]] > 1:
            chosen.append(r["community"])
    chosen += [c for c in range(len(sizes)) if c not in chosen and sizes[c] >= SMALL_COMMUNITY]
    return chosen[:n_heatmaps]


def community_attention(scorer, E, node_ids, labels, membership, strength, lse, c: int) -> pd.DataFrame:
    """P(key | query) among the 25 most central members of community ``c`` (softmax over all nodes)."""
    members = np.flatnonzero(membership == c)
    members = members[np.argsort(-strength[members])][:25]
    ids = torch.as_tensor([node_ids[m] for m in members])
    logits = scorer.scores(E[ids], E[ids]).float()
    mat = torch.exp(logits - lse[torch.as_tensor(members)][:, None]).numpy()
    names = [labels[m] for m in members]
    return pd.DataFrame(mat, index=names, columns=names).reset_index(names="query")


# ------------------------------------------------------------------------------------------
# Render: every figure and the HTML map from the saved tables
# ------------------------------------------------------------------------------------------


def render(out_dir) -> list[Path]:
    """community_map.png, community_heatmaps.png and community_map.html from the saved files only."""
    out_dir = Path(out_dir)
    meta = load_meta(out_dir)
    weights = verdict_text(meta)  # the weights' verdict, under every figure
    args, quality = meta["args"], load_summary(out_dir)
    nodes = load_table(out_dir, "communities")
    edges = load_table(out_dir, "edges")
    xy = load_table(out_dir, "layout").set_index("id").loc[nodes["id"], ["x", "y"]].to_numpy()
    n, k = len(nodes), len(edges) // len(nodes)
    title = f"L{args['layer']}H{args['head']} attention communities ({args['model']}, {n} tokens, top-{k})"
    shown = map_edges(edges, nodes["id"], args["map_edges"])
    paths = [save_figure(static_map(xy, nodes, shown, title), out_dir / "community_map.png", weights)]
    panels = []
    for c in quality["heatmap_communities"]:
        att = load_table(out_dir, f"community_{c}_attention")
        size = int((nodes["community"] == c).sum())
        panels.append((f"community {c} ({size} tokens): P(key | query), softmax over {n} nodes",
                       att.iloc[:, 1:].to_numpy(dtype=float), [_hover_label(str(s)) for s in att["query"]]))
    if panels:
        paths.append(save_figure(heatmap_figure(panels), out_dir / "community_heatmaps.png", weights))
    paths.append(write_html_map(out_dir / "community_map.html", xy, nodes, edges, shown, title))
    return paths


def map_edges(edges: pd.DataFrame, node_ids, per_node: int) -> np.ndarray:
    """The strongest ``per_node`` out-edges of each node that are in the graph, as [m, 2] node indices."""
    pos = pd.Series(np.arange(len(node_ids)), index=np.asarray(node_ids))
    rank = edges.groupby("query_id", sort=False).cumcount()
    keep = edges[(rank < per_node) & edges["in_graph"].astype(bool)]
    return np.stack([pos.loc[keep["query_id"]].to_numpy(), pos.loc[keep["key_id"]].to_numpy()], 1).reshape(-1, 2)


def community_colours(membership: np.ndarray) -> list[str]:
    sizes = np.bincount(membership)
    return [PALETTE[c % len(PALETTE)] if sizes[c] >= SMALL_COMMUNITY else "#c8c8c8" for c in membership]


def _hover_label(s: str) -> str:
    return repr(s)[1:-1] if s.strip() else repr(s)


def static_map(xy, nodes: pd.DataFrame, edges: np.ndarray, title: str):
    membership, strength = nodes["community"].to_numpy(), nodes["strength"].to_numpy()
    labels = nodes["token"].astype(str).tolist()
    fig, (ax, axb) = plt.subplots(1, 2, figsize=(15, 8), gridspec_kw={"width_ratios": [3, 1]})
    if len(edges):
        from matplotlib.collections import LineCollection

        seg = np.stack([xy[edges[:, 0]], xy[edges[:, 1]]], 1)
        ax.add_collection(LineCollection(seg, colors="#999999", linewidths=0.2, alpha=0.35, zorder=1))
    ax.scatter(xy[:, 0], xy[:, 1], c=community_colours(membership), s=8, linewidths=0, zorder=2)
    sizes = np.bincount(membership)
    for c in range(min(15, len(sizes))):
        if sizes[c] < SMALL_COMMUNITY:
            break
        members = np.flatnonzero(membership == c)
        top = members[np.argsort(-strength[members], kind="stable")[:3]]
        ax.annotate(f"{c}: " + ",".join(_hover_label(labels[i]).strip() for i in top), np.median(xy[members], 0),
                    fontsize=7, ha="center", bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.75, lw=0))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    shown = sizes[: min(30, len(sizes))]
    axb.barh(np.arange(len(shown)), shown, color=[PALETTE[c % len(PALETTE)] if s >= SMALL_COMMUNITY else "#c8c8c8"
                                                   for c, s in enumerate(shown)])
    axb.invert_yaxis()
    axb.set_xlabel("tokens")
    axb.set_ylabel("community")
    axb.set_title(f"{len(sizes)} communities (largest 30)")
    return fig


def heatmap_figure(panels):
    n = len(panels)
    cols = min(2, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 6.8 * rows), squeeze=False)
    for ax, (title, mat, labels) in zip(axes.ravel(), panels):
        token_heatmap(ax, mat, labels, title=title, cmap="viridis", center=None, vmin=0)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig


def write_html_map(path, xy, nodes: pd.DataFrame, edges: pd.DataFrame, shown: np.ndarray, title: str) -> Path:
    """A self-contained interactive map: plotly.js inlined, graph data embedded as JSON.

    Plain SVG scatter up to 5000 nodes (renders anywhere, including headless browsers without
    WebGL); WebGL beyond that for speed. Hover text: each token's three most attended keys.
    """
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    n = len(nodes)
    membership = nodes["community"].to_numpy()
    sizes = np.bincount(membership)
    top3 = edges[edges.groupby("query_id", sort=False).cumcount() < 3]
    hover = pd.Series([f"{_hover_label(str(key))} {p:.2f}" for key, p in zip(top3["key"], top3["prob"])],
                      index=top3["query_id"].to_numpy())
    attends = hover.groupby(level=0, sort=False).agg(", ".join).to_dict()
    custom = [[_hover_label(str(tok)), int(t), int(c), int(sizes[c]), attends.get(t, "")]
              for tok, t, c in zip(nodes["token"], nodes["id"], membership)]
    Scatter = go.Scatter if n <= 5000 else go.Scattergl
    ex, ey = [], []
    for a, b in shown:
        ex += [float(xy[a, 0]), float(xy[b, 0]), None]
        ey += [float(xy[a, 1]), float(xy[b, 1]), None]
    fig = go.Figure()
    fig.add_trace(Scatter(x=ex, y=ey, mode="lines", name="edges", hoverinfo="skip",
                          line=dict(color="rgba(120,120,120,0.25)", width=0.6)))
    fig.add_trace(Scatter(
        x=xy[:, 0].round(5).tolist(), y=xy[:, 1].round(5).tolist(), mode="markers", name="tokens",
        marker=dict(color=community_colours(membership), size=7, line=dict(width=0)),
        customdata=custom,
        hovertemplate="<b>%{customdata[0]}</b> (id %{customdata[1]})<br>community %{customdata[2]}"
                      " (%{customdata[3]} tokens)<br>attends to: %{customdata[4]}<extra></extra>",
    ))
    fig.add_trace(Scatter(x=[], y=[], mode="markers+text", name="selected", hoverinfo="skip",
                          textposition="top center", textfont=dict(size=12, color="black"),
                          marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(width=2.5, color="black"))))
    fig.update_layout(template="plotly_white", showlegend=False, dragmode="pan", hovermode="closest",
                      margin=dict(l=10, r=10, t=10, b=10),
                      xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"))
    fig_json = fig.to_json().replace("</", "<\\/")  # a JSON string may not close the script tag
    page = HTML_TEMPLATE.format(
        title=html_lib.escape(title), n=n, n_comm=len(sizes), plotlyjs=get_plotlyjs(), fig_json=fig_json,
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


def report(results: Results, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Published examples ({load_meta(out_dir)['args']['model']})")
    for col in ("example", "community", "size", "companions together", "members"):
        t.add_column(col)
    for r in results.tables["examples"].to_dict("records"):
        if not r["in_graph"]:
            t.add_row(repr(r["example"]), "-", "-", "not in graph", "")
            continue
        t.add_row(repr(r["example"]), str(int(r["community"])), str(int(r["community_size"])),
                  f"{int(r['companions_same_community'])}/{int(r['companions_in_graph'])}", r["members"][:90])
    Console().print(t)
    q = results.summary
    print(f"modularity {q['modularity']:.3f}, {q['n_communities']} communities; ARI {q['ari']:.3f}, NMI {q['nmi']:.3f} "
          f"over {q['n_category_tokens']} category tokens; outputs in {out_dir}")
    if line := context_text(out_dir):
        print(line)


@keeps_state
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    head_start = start_head(args, SCRIPT)
    results = compute(head_start.model, args, head_start.qk, head_start.E)
    out_dir = head_start.out_dir
    save_results(out_dir, results, args, SCRIPT, weights=weights_verdict(args.model), meta={"quality": results.summary})
    write_json(out_dir / "quality.json", results.summary)  # the summary, under the name it has always had
    render(out_dir)
    report(results, out_dir)
    return 0


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
 html, body {{ height: 100%; }}
 body {{ margin: 0; font-family: sans-serif; display: flex; flex-direction: column; }}
 #bar {{ padding: 6px 10px; background: #f4f4f4; border-bottom: 1px solid #ddd; font-size: 14px; }}
 #bar input {{ font-size: 14px; width: 14em; }}
 #status {{ margin-left: 1em; color: #333; }}
 #map {{ flex: 1 1 auto; min-height: 300px; }}
</style></head>
<body data-nodes="{n}" data-communities="{n_comm}">
<div id="bar"><b>{title}</b> &nbsp; <label>token: <input id="q" list="tokens" placeholder="e.g. Monday" autocomplete="off"></label>
<button id="go">find</button><button id="clear">clear</button><span id="status">{n} tokens, {n_comm} communities.
Drag to pan, scroll to zoom, hover for labels, click a token to list its community.</span></div>
<datalist id="tokens"></datalist>
<div id="map"></div>
<script>{plotlyjs}</script>
<script type="application/json" id="graph-data">{fig_json}</script>
<script>
(function () {{
  var fig = JSON.parse(document.getElementById("graph-data").textContent);
  var div = document.getElementById("map");
  var nodes = fig.data[1].customdata, X = fig.data[1].x, Y = fig.data[1].y;
  var status = document.getElementById("status"), list = document.getElementById("tokens");
  var seen = {{}};
  nodes.forEach(function (d) {{ var s = d[0].trim(); if (s && !seen[s]) {{ seen[s] = 1; var o = document.createElement("option"); o.value = s; list.appendChild(o); }} }});
  function show(ix, msg, zoom) {{
    // ix: tokens to ring and label; zoom: tokens to frame (default ix)
    Plotly.restyle(div, {{x: [ix.map(function (i) {{ return X[i]; }})], y: [ix.map(function (i) {{ return Y[i]; }})],
                          text: [ix.map(function (i) {{ return nodes[i][0]; }})]}}, [2]);
    zoom = zoom || ix;
    if (zoom.length) {{
      var xs = zoom.map(function (i) {{ return X[i]; }}), ys = zoom.map(function (i) {{ return Y[i]; }});
      var pad = 0.15, x0 = Math.min.apply(null, xs) - pad, x1 = Math.max.apply(null, xs) + pad;
      var y0 = Math.min.apply(null, ys) - pad, y1 = Math.max.apply(null, ys) + pad;
      Plotly.relayout(div, {{"xaxis.range": [x0, x1], "yaxis.range": [y0, y1]}});
    }}
    status.textContent = msg;
  }}
  function community(c) {{
    var ix = []; nodes.forEach(function (d, i) {{ if (d[2] === c) ix.push(i); }}); return ix;
  }}
  function find() {{
    var q = document.getElementById("q").value;
    if (!q) return;
    var t = q.trim().toLowerCase(), ix = [];
    nodes.forEach(function (d, i) {{ if (d[0].trim().toLowerCase() === t) ix.push(i); }});
    if (!ix.length) nodes.forEach(function (d, i) {{ if (d[0].toLowerCase().indexOf(t) >= 0) ix.push(i); }});
    if (!ix.length) {{ show([], "no token matches '" + q + "'"); return; }}
    var c = nodes[ix[0]][2], mem = community(c);
    show(ix.slice(0, 200), ix.length + " match(es); '" + nodes[ix[0]][0] + "' is in community " + c + " (" + mem.length +
         " tokens): " + mem.slice(0, 30).map(function (i) {{ return nodes[i][0]; }}).join(", ") + (mem.length > 30 ? ", ..." : ""), ix.slice(0, 200).concat(mem.slice(0, 200)));
  }}
  Plotly.newPlot(div, fig.data, fig.layout, {{responsive: true, scrollZoom: true, displaylogo: false}}).then(function () {{
    // a link such as community_map.html#q=Monday opens with that token found
    var m = /^#q=(.+)$/.exec(location.hash);
    if (m) {{ document.getElementById("q").value = decodeURIComponent(m[1]); find(); }}
    document.body.setAttribute("data-rendered", "1");
  }});
  div.on("plotly_click", function (ev) {{
    var p = ev.points[0]; if (!p || p.curveNumber !== 1) return;
    var c = nodes[p.pointIndex][2], mem = community(c);
    show(mem, "community " + c + " (" + mem.length + " tokens): " + mem.slice(0, 40).map(function (i) {{ return nodes[i][0]; }}).join(", ") + (mem.length > 40 ? ", ..." : ""));
  }});
  document.getElementById("go").onclick = find;
  document.getElementById("q").addEventListener("keydown", function (e) {{ if (e.key === "Enter") find(); }});
  document.getElementById("clear").onclick = function () {{
    document.getElementById("q").value = ""; show([], "{n} tokens, {n_comm} communities.");
    Plotly.relayout(div, {{"xaxis.autorange": true, "yaxis.autorange": true}});
  }};
}})();
</script></body></html>
"""



# -- claims (common/claims.py): judged from the saved examples.csv ---------------------------------

COMPANION_SHARE = 0.5  # an example clusters when >= half its companions in the graph share its community


def check_clustering(out_dir) -> Evidence:
    """The original's examples (" red", " 69", "Monday", " Italy"): each present in the graph shares
    its community with at least half of its companions."""
    ex = load_table(out_dir, "examples")
    found = ex[ex.in_graph.astype(bool)]
    parts = [f"{e.example.strip()}: {e.companion_fraction:.0%}" if e.in_graph else f"{e.example.strip()}: not in graph"
             for e in ex.itertuples()]
    share = found.companion_fraction >= COMPANION_SHARE
    ok = bool(len(found)) and bool(share.all())
    return with_context(Evidence("companions in the same community: " + ", ".join(parts),
                    {e.example.strip(): (float(e.companion_fraction) if e.in_graph else None) for e in ex.itertuples()},
                    published=REPRODUCED if ok else DIFFERS if len(found) and not share.any() else INCONCLUSIVE,
                    holds=ok), out_dir)


CLAIMS = [Claim(
    "clustering", SCRIPT, "' red' clusters with colours, ' 69' with the other numbers, 'Monday' with weekdays, ' Italy' "
    "with countries (Leiden communities of the head's attention graph)", ORIGINAL, "qualitative", "community_map.png",
    "examples.csv", f"every example present in the graph shares its community with >= {COMPANION_SHARE:.0%} of its "
    "companions; differs when none does (one graph, no CI)", check_clustering, token_space=True)]


if __name__ == "__main__":
    raise SystemExit(main())
