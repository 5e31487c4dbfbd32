"""Token-space self-suppression of one head: where does each token's own key rank among all keys?

Self-suppression is a property of the score a head gives a token against *itself*, so it is
measured in token space (the effective basis, :mod:`common.effective_embeddings`), over the FULL
vocabulary of keys (streamed, :func:`common.token_scores.self_rank`), for a set of query tokens:

* ``self_rank`` (interaction; the headline): the number of vocabulary keys k that out-score the
  token's own key under s~(q, k) = s(q, k) - mean_{q'} s(q', k), the head's score minus each
  key's average score over all vocabulary queries. Removing that key main effect leaves the
  query-key interaction: with E~ = E - mean(E), s~ ranks keys exactly as the weights-only form
  (x_q - e_bar) W_QK (x_k - e_bar)^T does (b_Q only adds a key main effect, b_K and 1/sqrt(d_head)
  a query-only term and a scale; none changes a query's key ranking). Without it, a head that
  scores some keys low for *every* query (a key main effect, e.g. through LayerNorm's per-token
  scale) would make those tokens look self-suppressing.
* ``self_rank_raw``: the same rank under the head's actual attention logits
  (``FactoredQK.scorer()``: biases and 1/sqrt(d_head) included), i.e. what the softmax sees.
* ``neg_share``: the share of the token's (centred) self-score x~ W_sym x~^T = sum_m lambda_m
  (x~.u_m)^2 contributed by the negative eigen-directions of W_sym:
  sum_{lambda<0} |lambda| (x~.u)^2 / sum_m |lambda_m| (x~.u_m)^2. Above 0.5 exactly when the
  centred self-score is negative. (x^T W_QK x = x^T W_sym x: the skew part never reaches it.)

Percentiles divide a rank by n_vocab - 1 (0 = own key on top, 1 = own key at the bottom); a head
that ignores token identity puts the own key at about 0.5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from common.factored import Factored
from common.token_scores import project_keys, self_rank


@torch.no_grad()
def token_self_stats(qk, E: torch.Tensor, query_ids, E_centred: torch.Tensor | None = None,
                     key_chunk: int = 8192, query_chunk: int = 1024) -> pd.DataFrame:
    """Per query token: self-rank (interaction and raw logits), percentiles, centred self-score and
    negative-eigen share for one head (``qk``: :class:`common.head_qk.FactoredQK`) on token vectors
    ``E`` [vocab, d_model]. ``E_centred`` (= E - E.mean(0)) may be passed to share it across heads."""
    ids = torch.as_tensor(query_ids, dtype=torch.long).flatten()
    Ec = E - E.mean(0, keepdim=True) if E_centred is None else E_centred
    n_keys = E.shape[0] - 1
    weights = Factored(qk.W_Q, qk.W_K)
    rank, self_c = self_rank(weights, Ec, ids, key_chunk=key_chunk, query_chunk=query_chunk,
                             keys=project_keys(weights, Ec), return_self_scores=True)
    scorer = qk.scorer()
    rank_raw = self_rank(scorer, E, ids, key_chunk=key_chunk, query_chunk=query_chunk,
                         keys=project_keys(scorer, E))
    eig = qk.sym_eig()
    contrib = (Ec[ids].double() @ eig.vectors.double()) ** 2 * eig.values.double()  # [n, m]
    neg = -(contrib * (eig.values < 0).double()).sum(1)
    total = contrib.abs().sum(1)
    share = torch.where(total > 0, neg / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    return pd.DataFrame({
        "token_id": ids.numpy(),
        "self_rank": rank.numpy(),
        "self_rank_pct": rank.double().numpy() / n_keys,
        "self_rank_raw": rank_raw.numpy(),
        "self_rank_pct_raw": rank_raw.double().numpy() / n_keys,
        "self_score_centred": self_c.double().numpy(),
        "neg_share": share.numpy(),
    })


def summarise_tokens(per_token: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group (e.g. layer, head, subset): means and medians of the per-token statistics."""
    g = per_token.groupby(by, sort=True)
    out = g.agg(
        n_queries=("token_id", "size"),
        mean_self_rank_pct=("self_rank_pct", "mean"),
        median_self_rank_pct=("self_rank_pct", "median"),
        frac_self_in_bottom_decile=("self_rank_pct", lambda v: float((np.asarray(v) >= 0.9).mean())),
        frac_self_on_top=("self_rank", lambda v: float((np.asarray(v) == 0).mean())),
        mean_self_rank_pct_raw=("self_rank_pct_raw", "mean"),
        median_self_rank_pct_raw=("self_rank_pct_raw", "median"),
        mean_neg_share=("neg_share", "mean"),
        frac_negative_self_score=("self_score_centred", lambda v: float((np.asarray(v) < 0).mean())),
    )
    return out.reset_index()
