"""A head's attention graph over a token set, and its Leiden communities (clustering.py's pipeline).

Conventions, stated once:

* **Nodes**: token ids (:func:`choose_nodes`: the N most frequent tokens of ``common.freq``, plus
  the category words of ``common.prompts`` so that agreement with known categories is measured
  on all of them).
* **Edges** (:func:`attention_topk`): rows are queries, columns keys. Each query's attention is a
  softmax over all N node keys of the scorer's logits, computed exactly by a streamed log-sum-exp
  over query chunks (``chunk`` x N scores at a time, never vocab x vocab). The token's own key stays
  in the denominator (in a real context the head could attend to it; reported as ``self_prob``)
  but is never an edge. Each query keeps its top-k other keys, weight = attention probability.
* **Graph** (:func:`build_graph`): directed edges with probability at or below ``min_prob`` are
  dropped (a query attending almost uniformly says nothing about which tokens belong together),
  then the graph is symmetrised, w_ij + w_ji, because a community is a symmetric notion.
* **Communities** (:func:`leiden`): leidenalg's RBConfiguration partition (modularity with a
  resolution parameter), seeded, numbered by size (0 = largest, ties by first member).
* **Quality**: :func:`agreement` (adjusted Rand index and NMI against known categories,
  scikit-learn); igraph's modularity is computed by the caller.
"""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import torch

from common.freq import resolve_top_tokens
from common.prompts import category_token_ids


def choose_nodes(tokenizer, model_name: str, n: int, vocab: int, freq_table=None,
                 add_categories: bool = True) -> tuple[list[int], dict[int, int], str]:
    """(node ids, frequency rank of each id, source description)."""
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

    ``scorer`` is a :class:`common.factored.Factored` (``project``), ``E`` the token vectors it
    reads. Returns (idx [N, k] node indices, prob [N, k], lse [N] row log-sum-exp, self_prob [N]).
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


def strengths(n: int, idx: torch.Tensor, prob: torch.Tensor) -> np.ndarray:
    """Attention a node receives from the other nodes' top-k (in-strength): its centrality."""
    return np.bincount(idx.numpy().ravel(), weights=prob.numpy().ravel(), minlength=n)


def layout(g, iterations: int, seed: int) -> np.ndarray:
    """Seeded force-directed 2-D layout in [-1, 1] (igraph draws its randomness from Python's
    ``random``, which is seeded for the layout and then given back as it was)."""
    saved = random.getstate()
    try:
        random.seed(seed)
        if g.vcount() > 20000:  # DrL scales to large graphs, Fruchterman-Reingold does not
            pos = g.layout_drl(weights="weight")
        else:
            pos = g.layout_fruchterman_reingold(weights="weight", niter=iterations)
    finally:
        random.setstate(saved)
    xy = np.asarray(pos.coords, dtype=float)
    xy -= xy.mean(0)
    return xy / (np.abs(xy).max() or 1.0)
