"""Which tokens does L1H5 group together? Leiden communities of the head's attention graph.

Question. If every frequent token attends (with L1H5's QK circuit alone) to its most-attended
other tokens, do the resulting communities look like semantic categories (colours, numbers,
weekdays, countries), as the head's "attend to the same category" rule predicts?

Method.
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
  probability, if that probability is at least ``--min-lift`` times uniform (1/N): a query that
  attends almost uniformly links nothing and stays a singleton (grey in the maps). The directed graph is symmetrised (w_ij + w_ji) because a community is a symmetric
  notion. Leiden (leidenalg, RBConfiguration i.e. modularity with ``--resolution``, seeded) finds
  communities, numbered by size (0 = largest).
* Quality: modularity of the partition (resolution 1), and agreement with the known categories
  (adjusted Rand index and NMI, scikit-learn) over the category words in the graph.

Outputs (``figures/clustering/`` by default):
  communities.csv       token, id, community, community_size, frequency rank, strength, self_prob,
                        known category, top attended tokens
  community_summary.csv size and most central members of each community
  examples.csv          the communities of the published examples and which expected companions
                        they contain
  edges.csv             the top-k graph (query, key, attention probability)
  community_map.png     static layout of the graph coloured by community
  community_heatmaps.png attention within a few communities (example communities first)
  community_map.html    interactive map (plotly, bundled inline: opens offline): pan, zoom, hover
                        labels, colour by community, search box (or open ``...html#q=Monday``),
                        click a node to list its community
  quality.json, meta.json

Published examples (the L1H5 post, gpt2-small): " red" falls with green/blue/yellow, " 69" with
other two-digit numbers, " Monday" with the other weekdays, " Italy" with other countries.
"""

from __future__ import annotations

import html as html_lib
import math
import random
import sys

import numpy as np
import pandas as pd
import torch

from common.cli import base_parser, script_name, start
from common.outputs import atomic_path, write_csv, write_json, write_meta
from common.plotting import plt, save_figure, token_heatmap

# Published examples and the companions that, per the post, share their community.
EXAMPLES: dict[str, list[str]] = {
    " red": [" green", " blue", " yellow"],
    " 69": [f" {i}" for i in range(10, 100) if i != 69],
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
    p.add_argument("--top-k", type=int, default=10, help="attended keys kept per query (out-edges)")
    p.add_argument("--min-lift", type=float, default=2.0,
                   help="keep an edge only if its probability exceeds min-lift / N (uniform attention is 1/N)")
    p.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution (higher: more, smaller communities)")
    p.add_argument("--chunk", type=int, default=512, help="queries scored at a time")
    p.add_argument("--map-edges", type=int, default=2, help="strongest out-edges per node drawn in the maps")
    p.add_argument("--layout-iterations", type=int, default=300)
    p.add_argument("--n-heatmaps", type=int, default=4, help="communities shown as heatmaps")
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
# Nodes and the attention graph
# ------------------------------------------------------------------------------------------


def choose_nodes(tokenizer, model_name: str, n: int, vocab: int, freq_table=None,
                 add_categories: bool = True) -> tuple[list[int], dict[int, int], str]:
    """(node ids, frequency rank of each id, source description)."""
    from common.freq import resolve_top_tokens
    from common.prompts import category_token_ids

    ids, source = resolve_top_tokens(model_name, min(n, vocab - 1), freq_table, vocab_size=vocab)
    rank = {t: i for i, t in enumerate(ids)}
    if add_categories:
        extra = [t for c in category_token_ids(tokenizer).values() for t in c if t not in rank and t < vocab]
        if extra:
            source += f" + {len(extra)} category words not among them"
        ids = ids + extra
    return ids, rank, source


@torch.no_grad()
def attention_topk(scorer, E: torch.Tensor, node_ids, k: int, chunk: int = 512, progress: bool = True):
    """Per query node: its top-k other nodes by attention probability (softmax over all N nodes).

    Returns (idx [N, k] node indices, prob [N, k], lse [N] row log-sum-exp, self_prob [N]).
    Only ``chunk`` x N scores exist at a time.
    """
    X = E[torch.as_tensor(node_ids, dtype=torch.long)]
    n = X.shape[0]
    k = min(k, n - 1)
    _, keys = scorer.project(X[:1], X)
    idx = torch.empty(n, k, dtype=torch.long)
    prob = torch.empty(n, k)
    lse = torch.empty(n)
    self_prob = torch.empty(n)
    it = range(0, n, chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="attention graph", unit="chunk", file=sys.stderr)
    for s in it:
        q, _ = scorer.project(X[s : s + chunk])
        logits = (q @ keys.T).float()  # [c, N]
        row_lse = torch.logsumexp(logits, dim=-1)
        rows = torch.arange(len(q))
        self_prob[s : s + len(q)] = torch.exp(logits[rows, s + rows] - row_lse)
        logits[rows, s + rows] = -math.inf  # self is in the denominator, never an edge
        top, top_i = torch.topk(logits, k, dim=-1)
        idx[s : s + len(q)] = top_i
        prob[s : s + len(q)] = torch.exp(top - row_lse[:, None])
        lse[s : s + len(q)] = row_lse
    return idx, prob, lse, self_prob


def build_graph(idx: torch.Tensor, prob: torch.Tensor, min_prob: float = 0.0):
    """Undirected igraph with edge weight w_ij + w_ji from the directed top-k edges.

    Directed edges with probability <= ``min_prob`` are dropped first: a query whose attention is
    nearly uniform over the nodes says nothing about which tokens belong together.
    """
    import igraph as ig

    n, k = idx.shape
    src = np.repeat(np.arange(n), k)
    dst = idx.numpy().ravel()
    w = prob.numpy().ravel().astype(float)
    keep = w > min_prob
    src, dst, w = src[keep], dst[keep], w[keep]
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    key = a.astype(np.int64) * n + b
    uniq, inv = np.unique(key, return_inverse=True)
    weight = np.bincount(inv, weights=w)
    edges = np.stack([uniq // n, uniq % n], 1)
    g = ig.Graph(n=n, edges=edges.tolist(), directed=False)
    g.es["weight"] = weight.tolist()
    return g


def leiden(g, resolution: float, seed: int) -> tuple[np.ndarray, float]:
    """Leiden membership (relabelled by community size, 0 = largest) and the partition quality."""
    import leidenalg

    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights="weight",
                                    resolution_parameter=resolution, seed=seed, n_iterations=-1)
    raw = np.asarray(part.membership)
    sizes = np.bincount(raw)
    first = np.full(len(sizes), len(raw))
    np.minimum.at(first, raw, np.arange(len(raw)))
    order = sorted(range(len(sizes)), key=lambda c: (-sizes[c], first[c]))
    relabel = np.empty(len(sizes), dtype=int)
    relabel[order] = np.arange(len(sizes))
    return relabel[raw], float(part.quality())


def agreement(membership: np.ndarray, node_ids: list[int], cat_of: dict[int, int]) -> dict:
    """ARI and NMI of communities against known categories, over the category words in the graph."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    where = [i for i, t in enumerate(node_ids) if t in cat_of]
    if len(where) < 2:
        return {"n_category_tokens": len(where), "ari": float("nan"), "nmi": float("nan")}
    truth = [cat_of[node_ids[i]] for i in where]
    pred = membership[where]
    return {
        "n_category_tokens": len(where),
        "n_categories_present": len(set(truth)),
        "ari": float(adjusted_rand_score(truth, pred)),
        "nmi": float(normalized_mutual_info_score(truth, pred)),
    }


def layout(g, iterations: int, seed: int) -> np.ndarray:
    """Seeded force-directed layout (igraph draws its randomness from Python's ``random``)."""
    random.seed(seed)
    if g.vcount() > 20000:  # DrL scales to large graphs, Fruchterman-Reingold does not
        pos = g.layout_drl(weights="weight")
    else:
        pos = g.layout_fruchterman_reingold(weights="weight", niter=iterations)
    xy = np.asarray(pos.coords, dtype=float)
    xy -= xy.mean(0)
    return xy / (np.abs(xy).max() or 1.0)


def community_colours(membership: np.ndarray) -> list[str]:
    sizes = np.bincount(membership)
    return [PALETTE[c % len(PALETTE)] if sizes[c] >= SMALL_COMMUNITY else "#c8c8c8" for c in membership]


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def strengths(n: int, idx: torch.Tensor, prob: torch.Tensor) -> np.ndarray:
    """Attention a node receives from the other nodes' top-k (in-strength): its centrality."""
    return np.bincount(idx.numpy().ravel(), weights=prob.numpy().ravel(), minlength=n)


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


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------


def map_edges(idx: torch.Tensor, prob: torch.Tensor, per_node: int, min_prob: float = 0.0) -> np.ndarray:
    """The strongest ``per_node`` out-edges of each node (those in the graph) as [m, 2] pairs."""
    if per_node <= 0:
        return np.zeros((0, 2), dtype=int)
    k = min(per_node, idx.shape[1])
    src = np.repeat(np.arange(idx.shape[0]), k)
    keep = prob[:, :k].numpy().ravel() > min_prob
    return np.stack([src, idx[:, :k].numpy().ravel()], 1)[keep]


def static_map(xy, membership, labels, strength, edges, title):
    fig, (ax, axb) = plt.subplots(1, 2, figsize=(15, 8), gridspec_kw={"width_ratios": [3, 1]})
    if len(edges):
        seg = np.stack([xy[edges[:, 0]], xy[edges[:, 1]]], 1)
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(seg, colors="#999999", linewidths=0.2, alpha=0.35, zorder=1))
    ax.scatter(xy[:, 0], xy[:, 1], c=community_colours(membership), s=8, linewidths=0, zorder=2)
    sizes = np.bincount(membership)
    for c in range(min(15, len(sizes))):
        if sizes[c] < SMALL_COMMUNITY:
            break
        members = np.flatnonzero(membership == c)
        top = members[np.argsort(-strength[members])[:3]]
        centre = np.median(xy[members], 0)
        ax.annotate(f"{c}: " + ",".join(_hover_label(labels[i]).strip() for i in top), centre,
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


def _hover_label(s: str) -> str:
    return repr(s)[1:-1] if s.strip() else repr(s)


def write_html_map(path, xy, membership, labels, node_ids, strength, idx, prob, edges, title) -> int:
    """A self-contained interactive map: plotly.js inlined, graph data embedded as JSON.

    Returns the number of nodes embedded. Plain SVG scatter up to 5000 nodes (renders anywhere,
    including headless browsers without WebGL); WebGL beyond that for speed.
    """
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    n = len(node_ids)
    sizes = np.bincount(membership)
    top_txt = [", ".join(f"{_hover_label(labels[j])} {p:.2f}" for j, p in zip(idx[i, :3].tolist(), prob[i, :3].tolist()))
               for i in range(n)]
    custom = [[_hover_label(labels[i]), int(node_ids[i]), int(membership[i]), int(sizes[membership[i]]), top_txt[i]]
              for i in range(n)]
    Scatter = go.Scatter if n <= 5000 else go.Scattergl
    ex, ey = [], []
    for a, b in edges:
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
    return n


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


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from common.prompts import CATEGORIES, token_category_map
    from common.effective_embeddings import effective_embeddings
    from common.head_qk import FactoredQK

    args = parse_args(argv)
    model, out = start(args, script_name(__file__))
    tok = model.tokenizer
    L, H = args.layer, args.head
    vocab = model.cfg.d_vocab
    console = Console(stderr=True)

    node_ids, freq_rank, source = choose_nodes(tok, args.model, args.n_tokens, vocab, args.freq_table,
                                               not args.no_category_tokens)
    n = len(node_ids)
    console.print(f"{n} nodes: {source}")
    E = effective_embeddings(model, L)
    scorer = FactoredQK.from_model(model, L, H).scorer()
    idx, prob, lse, self_prob = attention_topk(scorer, E, node_ids, args.top_k, args.chunk)
    g = build_graph(idx, prob, args.min_lift / n)
    membership, quality = leiden(g, args.resolution, args.seed)
    modularity = float(g.modularity(membership.tolist(), weights="weight"))
    cat_of = token_category_map(tok)
    agree = agreement(membership, node_ids, cat_of)
    sizes = np.bincount(membership)
    strength = strengths(n, idx, prob)
    labels = [tok.decode([t]) for t in node_ids]
    cat_names = list(CATEGORIES)

    # Tables.
    top_txt = [" | ".join(f"{labels[j]}:{p:.3f}" for j, p in zip(idx[i, :5].tolist(), prob[i, :5].tolist()))
               for i in range(n)]
    table = pd.DataFrame({
        "token": labels, "id": node_ids, "community": membership, "community_size": sizes[membership],
        "freq_rank": [freq_rank.get(t, -1) for t in node_ids], "strength": strength.round(5),
        "self_prob": self_prob.numpy().round(6),
        "category": [cat_names[cat_of[t]] if t in cat_of else "" for t in node_ids], "top_keys": top_txt,
    })
    write_csv(out / "communities.csv", table)
    summary = []
    for c in range(len(sizes)):
        members = np.flatnonzero(membership == c)
        members = members[np.argsort(-strength[members])]
        cats = table["category"].iloc[members]
        cats = cats[cats != ""]
        summary.append({"community": c, "size": len(members),
                        "majority_category": cats.mode().iloc[0] if len(cats) else "",
                        "category_tokens": len(cats),
                        "central_members": " | ".join(labels[m] for m in members[:15])})
    write_csv(out / "community_summary.csv", pd.DataFrame(summary))
    src = np.repeat(np.arange(n), idx.shape[1])
    write_csv(out / "edges.csv", pd.DataFrame({
        "query": [labels[i] for i in src], "query_id": [node_ids[i] for i in src],
        "key": [labels[j] for j in idx.numpy().ravel()], "key_id": [node_ids[j] for j in idx.numpy().ravel()],
        "prob": prob.numpy().ravel().round(6), "in_graph": prob.numpy().ravel() > args.min_lift / n}))
    example_list = example_rows(EXAMPLES, tok, node_ids, membership, labels, strength)
    examples = pd.DataFrame(example_list)
    write_csv(out / "examples.csv", examples)

    # Figures.
    xy = layout(g, args.layout_iterations, args.seed)
    edges = map_edges(idx, prob, args.map_edges, args.min_lift / n)
    title = f"L{L}H{H} attention communities ({args.model}, {n} tokens, top-{idx.shape[1]})"
    save_figure(static_map(xy, membership, labels, strength, edges, title), out / "community_map.png")

    chosen: list[int] = []
    for r in example_list:
        if r["in_graph"] and r["community"] not in chosen and sizes[r["community"]] > 1:
            chosen.append(r["community"])
    chosen += [c for c in range(len(sizes)) if c not in chosen and sizes[c] >= SMALL_COMMUNITY]
    chosen = chosen[: args.n_heatmaps]
    panels = []
    for c in chosen:
        members = np.flatnonzero(membership == c)
        members = members[np.argsort(-strength[members])][:25]
        ids = torch.as_tensor([node_ids[m] for m in members])
        logits = scorer.scores(E[ids], E[ids]).float()
        mat = torch.exp(logits - lse[torch.as_tensor(members)][:, None]).numpy()
        panels.append((f"community {c} ({sizes[c]} tokens): P(key | query), softmax over {n} nodes",
                       mat, [_hover_label(labels[m]) for m in members]))
        write_csv(out / f"community_{c}_attention.csv",
                  pd.DataFrame(mat, index=[labels[m] for m in members], columns=[labels[m] for m in members])
                  .reset_index(names="query"))
    if panels:
        save_figure(heatmap_figure(panels), out / "community_heatmaps.png")

    n_embedded = write_html_map(out / "community_map.html", xy, membership, labels, node_ids, strength,
                                idx, prob, edges, title)
    quality_out = {
        "n_nodes": n, "n_edges": g.ecount(), "n_communities": int(len(sizes)),
        "n_communities_ge3": int((sizes >= SMALL_COMMUNITY).sum()), "largest_community": int(sizes.max()),
        "modularity": modularity, "leiden_quality": quality, "resolution": args.resolution,
        **agree, "node_source": source, "mean_self_prob": float(self_prob.mean()),
        "html_nodes": n_embedded,
    }
    write_json(out / "quality.json", quality_out)
    write_meta(out, args, {"quality": quality_out})

    t = Table(title=f"Published examples ({args.model})")
    for col in ("example", "community", "size", "companions together", "members"):
        t.add_column(col)
    for r in example_list:
        if not r["in_graph"]:
            t.add_row(repr(r["example"]), "-", "-", "not in graph", "")
            continue
        t.add_row(repr(r["example"]), str(r["community"]), str(r["community_size"]),
                  f"{r['companions_same_community']}/{r['companions_in_graph']}", r["members"][:90])
    Console().print(t)
    print(f"modularity {modularity:.3f}, {len(sizes)} communities; ARI {agree['ari']:.3f}, NMI {agree['nmi']:.3f} "
          f"over {agree['n_category_tokens']} category tokens; outputs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
