"""A head on your own text: its observed pattern beside the ideal mask of the three rules.

Question. On a prompt a researcher types, where does the head attend, where should it attend by
the three rules (earlier same-category tokens, never itself nor earlier copies, BOS otherwise),
and which queries does it get wrong?

Method. The text is tokenised with BOS first (a leading ``<bos>`` or ``<|endoftext|>`` in the text
stands for it), and every token is given its category from ``common.prompts.CATEGORIES`` in all
its single-token spellings (``category_variant_ids``: " Monday", "Monday", " Red" ...); tokens
outside every category are marked "none" (rule 1 gives them no keys, so they belong on BOS).
One forward pass stores the layer's patterns (every head: for the circuitsvis page). The ideal
mask is ``common.prompts.mask_from_categories``; each query's cost is the post's
``-log(sum_k M[q,k] A[q,k])`` (``common.metrics.EPS`` floor), whose mean over queries 1.. is the
semantic category score of ``common.metrics.semantic_score``. Each query's mass on self and
earlier copies (rule 2's support) is kept beside it.

Outputs (:func:`save_prompt_view`, then :func:`render_prompt_view` from the saved files only):
  prompt_pattern.csv   one row per (query, key <= query): tokens, categories, attention, ideal,
                       the query's cost and self+copies mass
  prompt_summary.json  the text, the score, the uncategorised tokens
  prompt_pattern.png   observed pattern | ideal mask | cost per query (uncategorised in grey)
  prompt_heads_L<layer>.html  circuitsvis page of every head of the layer on the text (offline)

Conventions: rows are queries, columns keys; position 0 is BOS; costs exclude query 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.metrics import EPS, all_head_patterns
from common.prompts import CATEGORIES, category_variant_ids, mask_from_categories, self_and_copies_mask

BOS_MARKERS = ("<bos>", "<|endoftext|>")
NONE = "none"  # the category of a token outside every category


@dataclass
class PromptView:
    """One prompt through one layer: every head's pattern, the studied head's ideal mask and cost."""

    text: str
    layer: int
    head: int
    tokens: list[int]
    labels: list[str]
    categories: list[str]  # per position; NONE outside the categories, "BOS" at 0
    patterns: torch.Tensor  # [n_heads, pos, pos] of the layer
    ideal: torch.Tensor  # [pos, pos] bool
    cost: np.ndarray  # [pos]; NaN at 0
    self_mass: np.ndarray  # [pos]; mass on self and earlier copies

    @property
    def pattern(self) -> torch.Tensor:
        return self.patterns[self.head]

    @property
    def score(self) -> float:
        return float(np.nanmean(self.cost))

    @property
    def uncategorised(self) -> list[str]:
        return [lab for lab, c in zip(self.labels[1:], self.categories[1:]) if c == NONE]


def prompt_tokens(tokenizer, text: str) -> list[int]:
    """BOS, then the text's tokens (a leading BOS marker in ``text`` is that BOS, not text)."""
    body = text
    for marker in BOS_MARKERS:
        if body.startswith(marker):
            body = body[len(marker):]
            break
    if not body.strip():
        raise ValueError("the prompt has no text after BOS")
    return [tokenizer.bos_token_id, *tokenizer.encode(body, add_special_tokens=False)]


def category_names(tokenizer, tokens: list[int], categories: dict[str, list[str]] = CATEGORIES) -> list[str]:
    """The category of every token (every single-token spelling of a listed word), NONE outside."""
    of = {t: name for name, ids in category_variant_ids(tokenizer, categories).items() for t in ids}
    return ["BOS", *[of.get(t, NONE) for t in tokens[1:]]]


def prompt_view(model, text: str, layer: int, head: int, categories: dict[str, list[str]] = CATEGORIES) -> PromptView:
    """The head's observed pattern, the ideal mask and each query's cost on ``text``."""
    tokens = prompt_tokens(model.tokenizer, text)
    if len(tokens) > model.cfg.n_ctx:
        raise ValueError(f"the prompt is {len(tokens)} tokens with BOS; the model's context is {model.cfg.n_ctx}")
    cats = category_names(model.tokenizer, tokens, categories)
    index = {name: i for i, name in enumerate(categories)}
    t = torch.tensor([tokens])
    cat_ids = torch.tensor([[-1] + [index.get(c, -1) for c in cats[1:]]])
    ideal = mask_from_categories(t, cat_ids)[0]
    patterns = all_head_patterns(model, t, layers=[layer])[0, :, 0].float()  # [head, q, k]
    pat = patterns[head]
    cost = -torch.log((pat * ideal).sum(-1).clamp_min(EPS)).numpy().astype(float)
    cost[0] = np.nan
    self_mass = (pat * self_and_copies_mask(t)[0]).sum(-1).numpy().astype(float)
    labels = [model.tokenizer.decode([i]) for i in tokens]
    return PromptView(text, layer, head, tokens, labels, cats, patterns, ideal, cost, self_mass)


def prompt_table(view: PromptView) -> pd.DataFrame:
    """prompt_pattern.csv: one row per query and key at or before it."""
    rows = []
    pat, ideal = view.pattern.numpy(), view.ideal.numpy()
    for q in range(len(view.tokens)):
        for k in range(q + 1):
            rows.append({"query": q, "key": k, "query_token": view.labels[q], "key_token": view.labels[k],
                         "query_category": view.categories[q], "key_category": view.categories[k],
                         "attention": float(pat[q, k]), "ideal": bool(ideal[q, k]),
                         "query_cost": float(view.cost[q]), "query_self_and_copies": float(view.self_mass[q])})
    return pd.DataFrame(rows)


def heads_page(view: PromptView) -> str:
    """Self-contained circuitsvis page of every head of the layer (``local_src`` inlines the JS)."""
    import circuitsvis as cv

    return cv.attention.attention_patterns(tokens=view.labels, attention=view.patterns).local_src


def save_prompt_view(out_dir, view: PromptView, model_name: str = "") -> list[Path]:
    """prompt_pattern.csv, prompt_summary.json and the circuitsvis page of the layer."""
    from common.outputs import write_csv, write_json, write_text

    out_dir = Path(out_dir)
    summary = {"text": view.text, "model": model_name, "layer": view.layer, "head": view.head,
               "n_tokens": len(view.tokens), "score": view.score,
               "uncategorised": view.uncategorised,
               "worst_query": int(np.nanargmax(view.cost)), "worst_cost": float(np.nanmax(view.cost))}
    return [write_csv(out_dir / "prompt_pattern.csv", prompt_table(view)),
            write_json(out_dir / "prompt_summary.json", summary),
            write_text(out_dir / f"prompt_heads_L{view.layer}.html", heads_page(view))]


def load_prompt_table(out_dir) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    """(table, observed [q, k], ideal [q, k], one row per query) from prompt_pattern.csv."""
    table = pd.read_csv(Path(out_dir) / "prompt_pattern.csv", keep_default_na=False, na_values=[""])
    n = int(table["query"].max()) + 1
    obs, ideal = np.zeros((n, n)), np.zeros((n, n))
    obs[table["query"], table["key"]] = table["attention"]
    ideal[table["query"], table["key"]] = table["ideal"].astype(str).str.lower().eq("true")
    queries = table[table["key"] == 0].sort_values("query").reset_index(drop=True)
    return table, obs, ideal, queries


def render_prompt_view(out_dir, weights: str | None) -> list[Path]:
    """prompt_pattern.png from prompt_pattern.csv and prompt_summary.json only; ``weights``: the
    verdict on the run's weights, under the figure (``common.plotting.save_figure``)."""
    from common.plotting import plt, save_figure

    out_dir = Path(out_dir)
    _, obs, ideal, queries = load_prompt_table(out_dir)
    summary = json.loads((out_dir / "prompt_summary.json").read_text())
    n = len(queries)
    labels = [f"{t!r}"[1:-1] + ("" if c != NONE else " ·none") for t, c in zip(queries.query_token, queries.query_category)]
    size = max(4.0, 0.32 * n + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(2 * size + 3.5, size), gridspec_kw={"width_ratios": [size, size, 3.5]})
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    for ax, m, title in ((axes[0], obs, f"observed L{summary['layer']}H{summary['head']}"),
                         (axes[1], ideal, "ideal mask (the three rules)")):
        ax.imshow(np.ma.masked_array(m, upper), cmap="Blues", vmin=0, vmax=1, aspect="equal")
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.set_xlabel("key")
        ax.set_title(title)
        for tick_x, tick_y, c in zip(ax.get_xticklabels(), ax.get_yticklabels(), queries.query_category):
            if c == NONE:
                tick_x.set_color("grey")
                tick_y.set_color("grey")
    axes[0].set_ylabel("query")
    cost = queries.query_cost.to_numpy(dtype=float)
    colours = ["lightgrey" if c == NONE else "tab:red" for c in queries.query_category]
    axes[2].barh(range(n), np.nan_to_num(cost), color=colours)
    axes[2].set_ylim(n - 0.5, -0.5)
    axes[2].set_yticks(range(n), [""] * n)
    axes[2].set_xlabel("cost -log(mass on ideal keys)")
    axes[2].set_title(f"score {summary['score']:.3f}")
    fig.suptitle(f"{summary['model']}: {summary['text'][:90]}" + (" ..." if len(summary["text"]) > 90 else "")
                 + ("\nuncategorised (grey, ideal: BOS): " + ", ".join(map(repr, summary["uncategorised"]))[:120]
                    if summary["uncategorised"] else ""), fontsize=9)
    return [save_figure(fig, out_dir / "prompt_pattern.png", weights)]
