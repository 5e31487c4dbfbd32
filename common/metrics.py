"""Attention metrics for L1H5's three rules, for every layer and head at once.

Semantic category score (the post's): L = mean over queries q >= 1 of -log(sum_k M[q,k] A[q,k]),
with the attended mass clamped at ``EPS`` so one fully missed query costs -log(EPS) instead of
infinity. Lower is better; 0 means every query puts all its mass where the ideal mask allows.
The post's own experiment (:mod:`common.protocol`, ``post``) clamps at 1e-12 and averages over
every row, BOS's included (which costs 0): ``semantic_score(..., eps=1e-12, bos_row=True)``.

Attention mass split per query into four parts that sum to 1:
self and earlier copies of the same token, other in-category tokens, BOS, and everything else.
"""

from __future__ import annotations

import torch

from common.activations import capture
from common.hook_names import act_name
from common.prompts import self_and_copies_mask

EPS = 1e-6
MASS_PARTS = ("self_and_copies", "in_category", "bos", "other")


def semantic_score(pattern: torch.Tensor, mask: torch.Tensor, eps: float = EPS, bos_row: bool = False) -> torch.Tensor:
    """Per-prompt score [..., batch] for patterns [..., batch, q, k] and mask [batch, q, k].

    Query 0 (BOS, which can only attend to itself) is left out unless ``bos_row`` (the post's
    mean over all rows); ``eps`` clamps the attended mass.
    """
    return query_costs(pattern, mask, eps)[..., 0 if bos_row else 1 :].mean(-1)


def query_costs(pattern: torch.Tensor, mask: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Each query's cost -log(max(eps, mass on its allowed keys)), [..., batch, q]."""
    return -torch.log((pattern * mask).sum(-1).clamp_min(eps))


def bos_only_rows(mask: torch.Tensor) -> torch.Tensor:
    """[batch, q]: the query's only allowed key is BOS (rule 3's queries; BOS's own row included)."""
    return mask[..., 0] & (mask.sum(-1) == 1)


def bos_only_share(mask: torch.Tensor) -> torch.Tensor:
    """Share of the scored queries (q >= 1) whose only allowed key is BOS: rule 3's queries. It
    decides how much of the score is the BOS fallback (4% under the post's prompts, a third or more
    under ours), so it is reported beside every category score."""
    return bos_only_rows(mask)[:, 1:].float().mean()


def mass_split(pattern: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean attention mass per part, [...] per head, over all queries q >= 1 of all prompts."""
    same_tok = self_and_copies_mask(tokens)  # BOS is counted as BOS, never as a copy
    bos = torch.zeros_like(mask)
    bos[:, :, 0] = True
    in_cat = mask & ~bos
    parts = {
        "self_and_copies": same_tok,
        "in_category": in_cat,
        "bos": bos,
    }
    out = {name: (pattern * m).sum(-1)[..., 1:].mean((-1, -2)) for name, m in parts.items()}
    out["other"] = 1 - sum(out.values())
    return out


@torch.no_grad()
def all_head_patterns(model, tokens: torch.Tensor, layers: list[int] | None = None, hooks=()) -> torch.Tensor:
    """Attention patterns [layer, head, batch, q, k] of the chosen layers from one forward pass.

    The pass ends as soon as the last pattern needed is stored (:func:`common.activations.capture`):
    the rest of that block (value mixing, output projection, MLP) and every later layer never run.
    ``hooks`` are extra forward hooks (for ablations); hooks on points after the last pattern do not
    fire.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    names = [act_name("pattern", l) for l in layers]
    store = capture(model, tokens, names, hooks=hooks)
    return torch.stack([store[n].transpose(0, 1) for n in names]).cpu()


@torch.no_grad()
def head_survey(model, tokens: torch.Tensor, mask: torch.Tensor, batch_size: int = 32, hooks=(),
                layers: list[int] | None = None, eps: float = EPS, bos_row: bool = False,
                extra_masks: dict[str, torch.Tensor] | None = None) -> dict:
    """Score per (layer, head, prompt) and mean mass split per (layer, head), batched over prompts.

    ``layers`` defaults to every layer; the forward pass stops after the last one listed.
    ``eps``, ``bos_row``: the score's clamp and rows (:func:`semantic_score`). ``extra_masks``
    (name -> [batch, q, k]): the same patterns also scored against other masks
    (``extra_scores``, name -> [layer, head, prompt]), with no second forward pass.
    """
    extra_masks = extra_masks or {}
    extra = {name: [] for name in extra_masks}
    scores, others, parts = [], [], {p: [] for p in MASS_PARTS}
    weights = []
    for i in range(0, len(tokens), batch_size):
        tb, mb = tokens[i : i + batch_size], mask[i : i + batch_size]
        pat = all_head_patterns(model, tb, layers=layers, hooks=hooks)
        costs = query_costs(pat, mb, eps)
        scores.append(costs[..., 0 if bos_row else 1 :].mean(-1))
        for name, m in extra_masks.items():
            extra[name].append(semantic_score(pat, m[i : i + batch_size], eps, bos_row))
        other = ~bos_only_rows(mb)[:, 1:]  # [batch, q - 1]: queries with an in-category key
        others.append((costs[..., 1:] * other).sum(-1) / other.sum(-1).clamp_min(1))
        split = mass_split(pat, tb, mb)
        for p in MASS_PARTS:
            parts[p].append(split[p])
        weights.append(len(tb))
    w = torch.tensor(weights, dtype=torch.float32)
    return {
        "score": torch.cat(scores, dim=-1),  # [layer, head, prompt]
        "score_in_category_queries": torch.cat(others, dim=-1),  # the same over queries that are not BOS-only
        "bos_only": float(bos_only_share(mask)),
        "mass": {p: (torch.stack(v, -1) * w).sum(-1) / w.sum() for p, v in parts.items()},
        "extra_scores": {name: torch.cat(v, dim=-1) for name, v in extra.items()},
    }
