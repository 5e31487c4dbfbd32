"""Scores of tokens against tokens, streamed over the full vocabulary, and self-rank.

* **Self-rank** of a query token t: the number of keys over the FULL vocabulary whose score is
  *strictly* higher than the score of t's own key (0 = self is the top key; the own key is
  excluded by index; a key that ties the own key within float32 rounding, |difference| <=
  1e-6 * |q| |k_self| in the projected space, does not count either: an exact duplicate token
  must not outrank itself because two matmul paths rounded differently). Computed streamed in key chunks (:func:`self_rank`); for a whole grid of
  steering edits at once, :func:`self_rank_grid`. Memory stays at query_chunk x key_chunk
  scores: a vocab x vocab matrix is never formed.

``E`` is a [vocab, d_model] matrix of token vectors (usually :mod:`common.effective_embeddings`)
and ``f`` a :class:`common.factored.Factored` scorer (usually ``FactoredQK.scorer()``).
"""

from __future__ import annotations

import numpy as np
import torch

from common.factored import Eigen, Factored, steer

TIE_RTOL = 1e-6  # scores within this fraction of |q||k_self| of the own key's score are ties


def _ids(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long).flatten()


@torch.no_grad()
def block_scores(f: Factored, E: torch.Tensor, query_ids, key_ids) -> torch.Tensor:
    """[len(query_ids), len(key_ids)] scores of tokens (rows of E) against tokens."""
    return f.scores(E[_ids(query_ids)], E[_ids(key_ids)])


@torch.no_grad()
def query_row(f: Factored, E: torch.Tensor, query_id: int, chunk: int = 16384) -> torch.Tensor:
    """Scores [vocab] of one query token against every key token (chunked over keys)."""
    qf, _ = f.project(E[_ids([query_id])])
    out = torch.empty(E.shape[0], dtype=qf.dtype)
    for s in range(0, E.shape[0], chunk):
        _, kf = f.project(E[:1], E[s : s + chunk])
        out[s : s + chunk] = (qf @ kf.T)[0]
    return out


@torch.no_grad()
def top_keys(f: Factored, E: torch.Tensor, query_id: int, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, token ids) of the k highest-scoring keys for one query, over the full vocabulary."""
    row = query_row(f, E, query_id)
    vals, ids = torch.topk(row, min(k, row.numel()))
    return vals, ids


@torch.no_grad()
def project_keys(f: Factored, E: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """E @ right + right_bias for all tokens [vocab, r], computed once and reused across queries."""
    parts = []
    for s in range(0, E.shape[0], chunk):
        _, kf = f.project(E[:1], E[s : s + chunk])
        parts.append(kf)
    return torch.cat(parts)


@torch.no_grad()
def self_rank(f: Factored, E: torch.Tensor, query_ids, key_chunk: int = 8192,
              query_chunk: int = 1024, keys: torch.Tensor | None = None,
              return_self_scores: bool = False, progress: bool = False):
    """Self-rank of every query token over the FULL vocabulary of keys, streamed.

    rank[i] = #{keys j : score(q_i, j) > score(q_i, q_i)} (strict), so 0 means the token's own
    key is the top key. Memory: query_chunk x key_chunk scores at a time. ``keys`` may pass a
    precomputed :func:`project_keys` result.
    """
    q_ids = _ids(query_ids)
    kf_all = project_keys(f, E) if keys is None else keys
    ranks = torch.empty(len(q_ids), dtype=torch.long)
    selfs = torch.empty(len(q_ids), dtype=kf_all.dtype)
    s_buf = torch.empty(min(query_chunk, len(q_ids)) * min(key_chunk, kf_all.shape[0]), dtype=kf_all.dtype)
    it = range(0, len(q_ids), query_chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="self-rank", unit="chunk")
    for qs in it:
        qi = q_ids[qs : qs + query_chunk]
        qf, _ = f.project(E[qi])
        s_self = (qf * kf_all[qi]).sum(-1)
        tie = TIE_RTOL * qf.norm(dim=-1) * kf_all[qi].norm(dim=-1)
        thr = (s_self + tie)[:, None]
        count = torch.zeros(len(qi), dtype=torch.long)
        for ks in range(0, kf_all.shape[0], key_chunk):
            kc = kf_all[ks : ks + key_chunk]
            s = torch.matmul(qf, kc.T, out=s_buf[: len(qi) * kc.shape[0]].view(len(qi), kc.shape[0]))
            # The own key is excluded by index: the matmul may round it a hair above s_self.
            rows = torch.nonzero((qi >= ks) & (qi < ks + s.shape[1])).flatten()
            s[rows, qi[rows] - ks] = -torch.inf
            for r0 in range(0, len(qi), ROW_BLOCK):  # compare and count in cache-sized row blocks
                blk = s[r0 : r0 + ROW_BLOCK]
                hits = torch.gt(blk, thr[r0 : r0 + ROW_BLOCK], out=blk)  # 1.0 / 0.0 in place of the scores
                count[r0 : r0 + ROW_BLOCK] += hits.sum(-1).long()  # a float32/64 sum of <= key_chunk ones: exact
        ranks[qs : qs + len(qi)] = count
        selfs[qs : qs + len(qi)] = s_self
    return (ranks, selfs) if return_self_scores else ranks


def rank_metrics(ranks, ks=(1, 128, 256, 1024)) -> dict[str, float]:
    """Mean rank, MRR (1/(rank+1)) and accuracy@k (rank < k) of 0-based self-ranks."""
    r = np.asarray(ranks, dtype=float)
    out = {"mean_rank": float(r.mean()), "median_rank": float(np.median(r)), "mrr": float((1 / (r + 1)).mean())}
    for k in ks:
        out[f"acc@{k}"] = float((r < k).mean())
    return out


@torch.no_grad()
def self_rank_grid(base: Factored, eig: Eigen, E: torch.Tensor, query_ids, ks, scales,
                   eig_scale: float = 1.0, keep_skew: bool = True, key_chunk: int = 8192,
                   query_chunk: int = 512, progress: bool = False) -> torch.Tensor:
    """Self-ranks [len(ks), len(scales), n_queries] over the FULL vocabulary for every edit
    "the k most negative eigenvalues of W_sym multiplied by scale" (see :func:`steer`).

    Why it is cheap: for a fixed k the edited score is s_base + (scale - 1) * D_k with
    D_k = sum_{m<=k} lambda_m (x_q.u_m)(x_k.u_m), so key j out-scores the query's own key iff
    b_j + t d_j > 0 with b_j, d_j the differences to the own key and t = scale - 1. That is a
    threshold on t: key j counts for every t above (d_j > 0) or below (d_j < 0) -b_j/d_j, so one
    pass per (k, chunk) bins each key's threshold against the sorted scale grid and a cumulative
    sum gives the counts for every scale at once (:class:`_ThresholdBins`). E @ factors is computed
    once; ks with the same effective k (capped at the number of negative eigenvalues) share one
    pass. The element-wise passes run on ``ROW_BLOCK`` query rows at a time (cache-sized); the
    matmuls keep the shapes [query_chunk, key_chunk], so the ranks do not depend on ROW_BLOCK.
    ``keep_skew=False`` subtracts W_skew from ``base`` first.
    """
    q_ids = _ids(query_ids)
    ks = [int(k) for k in ks]
    scales_t = torch.as_tensor(list(scales), dtype=torch.float64)
    order = torch.argsort(scales_t)
    t_sorted = (scales_t[order] - 1.0).to(torch.float32)
    n_t = len(t_sorted)
    if not keep_skew:
        base = steer(base, 1.0, 0, keep_skew=False, eig=eig, eig_scale=eig_scale)
    neg = eig.select("negative")
    k_max = min(max(ks) if ks else 0, len(neg))
    k_effs = sorted({min(k, k_max) for k in ks})  # one pass per distinct effective k
    dt = base.left.dtype
    U = eig.vectors[:, neg[:k_max]].to(dt)
    lam = (eig.values[neg[:k_max]] * eig_scale).to(dt)
    kf_all = project_keys(base, E)
    ku_all = E.to(dt) @ U  # [vocab, k_max]
    bins = _ThresholdBins(t_sorted)
    out = torch.empty(len(ks), n_t, len(q_ids), dtype=torch.long)
    n_buf = min(query_chunk, len(q_ids)) * min(key_chunk, kf_all.shape[0])
    b_buf, d_buf, inc_buf = (torch.empty(n_buf, dtype=dt) for _ in range(3))
    it = range(0, len(q_ids), query_chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="self-rank grid", unit="query chunk")
    for qs in it:
        qi = q_ids[qs : qs + query_chunk]
        nq = len(qi)
        qf, _ = base.project(E[qi])
        qu = E[qi].to(dt) @ U * lam  # [nq, k_max], eigenvalue folded into the query side
        b_self = (qf * kf_all[qi]).sum(-1)
        d_self_all = qu * ku_all[qi]  # per-eigenvector self contributions
        hist = torch.zeros(len(k_effs), nq, bins.n_bins, dtype=torch.long)
        for ks0 in range(0, kf_all.shape[0], key_chunk):
            kf = kf_all[ks0 : ks0 + key_chunk]
            nk = kf.shape[0]
            b = torch.matmul(qf, kf.T, out=b_buf[: nq * nk].view(nq, nk))
            b.sub_(b_self[:, None])
            rows = torch.nonzero((qi >= ks0) & (qi < ks0 + nk)).flatten()
            cols = qi[rows] - ks0
            b[rows, cols] = -1.0  # the own key never counts (d is zeroed there too)
            d = d_buf[: nq * nk].view(nq, nk).zero_()
            own = [(r0, rows[(rows >= r0) & (rows < r0 + ROW_BLOCK)] - r0, cols[(rows >= r0) & (rows < r0 + ROW_BLOCK)])
                   for r0 in range(0, nq, ROW_BLOCK)]
            done = 0
            for ik, k_eff in enumerate(k_effs):
                inc = dsub = None
                if k_eff > done:
                    inc = torch.matmul(qu[:, done:k_eff], ku_all[ks0 : ks0 + nk, done:k_eff].T,
                                       out=inc_buf[: nq * nk].view(nq, nk))
                    dsub = d_self_all[:, done:k_eff].sum(-1, keepdim=True)
                    done = k_eff
                for r0, own_r, own_c in own:
                    r1 = r0 + ROW_BLOCK
                    db = d[r0:r1]
                    if inc is not None:
                        db.add_(inc[r0:r1]).sub_(dsub[r0:r1])
                        db[own_r, own_c] = 0.0
                    hist[ik, r0:r1] += bins.histogram(b[r0:r1], db)
        ranks = bins.ranks(hist)  # [len(k_effs), nq, n_t]
        for ik, k in enumerate(ks):
            out[ik, :, qs : qs + nq] = ranks[k_effs.index(min(k, k_max))].T
    inv = torch.empty_like(order)
    inv[order] = torch.arange(len(order))
    return out[:, inv]


ROW_BLOCK = 32  # query rows per element-wise pass in self_rank_grid (32 x 8192 float32 = 1 MB)


def _uniform_step(t_sorted: torch.Tensor) -> float | None:
    """The grid step when ``t_sorted`` is evenly spaced (then bins are computed arithmetically)."""
    if len(t_sorted) < 2:
        return None
    steps = torch.diff(t_sorted.double())
    h = float(steps.mean())
    return h if h > 0 and float((steps - h).abs().max()) <= 1e-6 * h else None


class _ThresholdBins:
    """Per row, histograms over the sorted t grid whose cumulative sums are #{j : b_j + t d_j > 0}.

    With r = -b/d: a key with d > 0 counts for t > r, one with d < 0 for t < r. So
    count(t) = #{d>=0, r<t} - #{d<0, r<=t} + #{d<0}: one bin index per key (the first grid index
    with t > r, 0..n_t) serves both signs. :meth:`histogram` counts keys per (sign, bin) in one
    integer bincount: bin v of a key with d >= 0 goes to slot n_t + 2 + v, of a key with d < 0 to
    slot n_t - v (the sign enters through copysign, exact on these small integers). d = 0 needs no
    case: r = -inf (b > 0, always counts) or +inf (b < 0, never), and b = d = 0 (an exact tie, never
    counts) is sent to the unused bin n_t. (d is never -0.0: it starts at +0 and only ever gets
    sums added, so copysign sees the same sign as d < 0.) A key that ties the own key exactly at a
    grid value of t (float rounding) may be counted either way.
    """

    def __init__(self, t_sorted: torch.Tensor):
        self.t_sorted = t_sorted
        self.n_t = len(t_sorted)
        self.n_bins = 2 * self.n_t + 3
        self.h = _uniform_step(t_sorted)
        self._x = torch.empty(0)
        self._idx = torch.empty(0, dtype=torch.int32)

    def histogram(self, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """[rows, n_bins] key counts per (sign of d, bin) for b, d [rows, keys]."""
        n_t, n = self.n_t, b.numel()
        if self._x.numel() < n:
            self._x = torch.empty(n, dtype=b.dtype)
            self._idx = torch.empty(n, dtype=torch.int32)
        x = torch.div(b, d, out=self._x[:n].view(b.shape))  # = -r
        h = self.h
        if h is not None:  # evenly spaced grid: floor arithmetic, several times faster than bucketize
            t0 = float(self.t_sorted[0])
            x.mul_(-1.0 / h).add_(1.0 - t0 / h).floor_().clamp_(0, n_t).nan_to_num_(nan=float(n_t))
        else:  # bin = #{grid values <= r}, r = -b/d (b = d = 0: r = inf)
            r = x.neg_().nan_to_num_(nan=float("inf"))
            if n_t == 1:  # one grid value (e.g. the unmodified head alone): a comparison
                torch.ge(r, float(self.t_sorted[0]), out=x)
            else:
                x.copy_(torch.bucketize(r, self.t_sorted, right=True))
        # bin v -> slot n_t + 2 + v (d >= 0) or n_t - v (d < 0), plus the row's offset (integers far
        # below 2^24: exact in float32)
        offset = (torch.arange(b.shape[0], dtype=b.dtype) * self.n_bins + (n_t + 1))[:, None]
        x.add_(1.0).copysign_(d).add_(offset)
        idx = self._idx[:n].view(b.shape)
        idx.copy_(x)
        return torch.bincount(idx.view(-1), minlength=b.shape[0] * self.n_bins).view(b.shape[0], self.n_bins)

    def ranks(self, hist: torch.Tensor) -> torch.Tensor:
        """[..., n_t] counts #{j : b_j + t d_j > 0} per grid value from summed histograms [..., n_bins]."""
        n_t = self.n_t
        pos = hist[..., n_t + 2 :]
        neg = hist[..., : n_t + 1].flip(-1)
        c = pos - neg
        c[..., 0] += neg.sum(-1)
        return c.cumsum(-1)[..., :n_t]
