"""True layer-L inputs of tokens in real context, beside the effective embeddings.

Token-space analyses score tokens with their *effective embeddings*
(:mod:`common.effective_embeddings`: the token embedding plus mean position and mean earlier-layer
attention, through MLP0 and LNPre), an approximation of what the head really reads. This module
measures the real thing, so every token-space claim can show its statistic on both:

* **Text**: the script's natural text (:func:`common.natural_text.script_text_ids`: ``--text
  PATH``, the demo corpus for the planted model, else WikiText-103's test split), cut into a
  seeded sample of ``--context-windows`` non-overlapping windows of BOS + 48 tokens
  (:data:`WINDOW_LEN`: positions 1..48, the positions the effective embeddings average over).
* **Inputs** (:func:`layer_inputs`): the model run on the windows only up to layer L's input
  (``stop_at_layer=L``: the residual stream ``blocks.L.hook_resid_pre``), then layer L's LNPre
  (``model.blocks[L].ln1``, the model being loaded with fold_ln): the same vector as the model's
  ``blocks.L.ln1.hook_normalized``, the attention input of every head of layer L, in the space
  of the effective embeddings.
* **Per token** (:func:`collect`): for each wanted token id, the mean of its inputs over every
  non-BOS occurrence in the windows (float64 sums) and the number of occurrences. A token that
  never occurs gets no row: :attr:`ContextInputs.missing` lists it and every output says how many
  tokens were covered. Every occurrence counts, also a token that is a piece of a longer word
  (the head reads the token, whatever word it is part of).
* **In place of the effective embeddings** (:meth:`ContextInputs.substitute`): E with the row
  of every covered token replaced by its in-context mean ("E in context"); uncovered tokens keep
  their effective rows, so a self-rank over the full vocabulary of keys keeps the same key set.
  A script computes its claim's key statistic on the covered query tokens with these inputs, and
  records it beside the effective-embedding number in ``in_context.csv`` (:func:`comparison`):
  one row per (statistic, inputs) with ``inputs`` one of :data:`EFFECTIVE` (as the claim is
  judged), :data:`EFFECTIVE_SAME` (effective embeddings, the covered tokens only) and
  :data:`IN_CONTEXT`, and the number of tokens behind it. The verdicts stay on the effective
  numbers; :func:`context_text` words the in-context ones for a claim's evidence.

Cost: one pass of the layers below L over ``n_windows x 49`` tokens (256 windows: 12,544 tokens;
a second or two at gpt2-small size), so nothing is cached on disk.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.effective_embeddings import PROMPT_LEN
from common.hook_names import act_name

WINDOW_LEN = 1 + PROMPT_LEN  # BOS + 48 tokens: positions 1..48, as the effective embeddings' means
DEFAULT_WINDOWS = 256
TABLE = "in_context"  # <out>/in_context.csv
EFFECTIVE, EFFECTIVE_SAME, IN_CONTEXT = "effective", "effective, same tokens", "in context"
COLUMNS = ["statistic", "inputs", "value", "n_tokens", "note"]


def add_context_flags(p: argparse.ArgumentParser) -> None:
    """``--text PATH`` and ``--context-windows N`` (0: no in-context measurement)."""
    from common.cli import add_text_flag

    add_text_flag(p, "take the tokens' in-context layer inputs from",
                  "the demo corpus for the planted model, else WikiText-103's test split")
    p.add_argument("--context-windows", type=int, default=DEFAULT_WINDOWS, metavar="N",
                   help=f"natural-text windows (BOS + {PROMPT_LEN} tokens) whose true layer inputs the token-space "
                        "statistic is measured on beside the effective embeddings (0: effective embeddings only)")


@dataclass
class ContextInputs:
    """Mean in-context layer-L inputs of the wanted tokens that occur in the windows."""

    token_ids: torch.Tensor  # [n] long, ascending: the covered tokens
    mean: torch.Tensor  # [n, d_model] float32: mean input over the token's occurrences
    count: torch.Tensor  # [n] long: occurrences
    missing: list[int]  # wanted token ids that never occur
    layer: int
    n_windows: int = 0
    window_len: int = WINDOW_LEN
    text: str = ""

    def covered(self, ids) -> torch.Tensor:
        """The ids of ``ids`` that occur (in the order given)."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        return ids[torch.isin(ids, self.token_ids)]

    def substitute(self, E: torch.Tensor) -> torch.Tensor:
        """A copy of ``E`` [vocab, d] with every covered token's row replaced by its in-context mean."""
        out = E.clone()
        out[self.token_ids] = self.mean.to(E.dtype)
        return out

    def record(self) -> dict:
        """How the inputs were taken (summary.json)."""
        c = self.count.double()
        return {"layer": self.layer, "text": self.text, "n_windows": self.n_windows, "window_len": self.window_len,
                "input": f"{act_name('normalized', self.layer)} (LNPre of {act_name('resid_pre', self.layer)}), non-BOS positions",
                "n_covered": int(len(self.token_ids)), "n_missing": len(self.missing),
                "occurrences_median": float(c.median()) if len(c) else 0.0,
                "occurrences_min": int(self.count.min()) if len(c) else 0}


@torch.no_grad()
def layer_inputs(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """[batch, pos, d_model]: the attention input of layer ``layer`` (LNPre of its residual input)
    at every position of ``tokens``, running only the layers below it."""
    tokens = tokens.to(model.cfg.device)
    resid = model(tokens, stop_at_layer=layer)  # layer 0: the embeddings only
    return model.blocks[layer].ln1(resid).float().cpu()


@torch.no_grad()
def collect(model, tokens: torch.Tensor, layer: int, token_ids=None, batch_size: int = 32) -> ContextInputs:
    """Mean layer-``layer`` input and occurrence count of each of ``token_ids`` (default: every
    token that occurs) over the non-BOS positions of ``tokens`` [n, pos]."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    body = tokens[:, 1:]
    wanted = (torch.unique(body) if token_ids is None
              else torch.unique(torch.as_tensor(token_ids, dtype=torch.long).flatten()))
    row = torch.full((model.cfg.d_vocab,), -1, dtype=torch.long)
    row[wanted] = torch.arange(len(wanted))
    sums = torch.zeros(len(wanted), model.cfg.d_model, dtype=torch.float64)
    counts = torch.zeros(len(wanted), dtype=torch.long)
    for s in range(0, len(tokens), batch_size):
        x = layer_inputs(model, tokens[s : s + batch_size], layer)[:, 1:]
        r = row[body[s : s + batch_size]]
        keep = r >= 0
        sums.index_add_(0, r[keep], x[keep].double())
        counts.index_add_(0, r[keep], torch.ones(int(keep.sum()), dtype=torch.long))
    seen = counts > 0
    mean = (sums[seen] / counts[seen, None]).float()
    return ContextInputs(wanted[seen], mean, counts[seen], wanted[~seen].tolist(), layer)


def context_inputs(model, args, token_ids=None, layer: int | None = None) -> ContextInputs | None:
    """:func:`collect` over the script's natural text (``args.text``, ``args.model``), a seeded
    (``args.seed``) sample of ``args.context_windows`` windows; None when that is 0."""
    from common.natural_text import DEMO, TextUnavailable, sample_windows
    from common.text_ids_cache import text_ids
    from common.planted_names import is_planted

    n = int(getattr(args, "context_windows", DEFAULT_WINDOWS))
    if n <= 0:
        return None
    layer = args.layer if layer is None else layer
    text = getattr(args, "text", None)
    try:  # script_text_ids' choice of text, but a missing default text only skips this measurement
        ids, description = text_ids(text if text is not None else (DEMO if is_planted(args.model) else None),
                                    model.tokenizer)
    except TextUnavailable as exc:
        if text is not None:
            raise SystemExit(f"error: {exc}") from None
        print(f"in context: not measured ({str(exc).splitlines()[0]}); give --text PATH")
        return None
    tokens, _ = sample_windows(ids, min(WINDOW_LEN, model.cfg.n_ctx), n, model.tokenizer.bos_token_id, args.seed)
    ctx = collect(model, tokens, layer, token_ids)
    ctx.n_windows, ctx.window_len, ctx.text = len(tokens), tokens.shape[1], description
    asked = "every token that occurs" if token_ids is None else f"{len(ctx.token_ids) + len(ctx.missing)} wanted tokens"
    print(f"in context: {len(ctx.token_ids)} of {asked} occur in {len(tokens)} windows of {description}"
          + (f" ({len(ctx.missing)} never occur: no in-context row)" if ctx.missing else ""))
    return ctx


# -- the saved comparison ---------------------------------------------------------------------------


def comparison(statistic: str, effective: float, n_effective: int, in_context: float | None = None,
               n_context: int = 0, effective_same: float | None = None, note: str = "") -> list[dict]:
    """The rows of ``in_context.csv`` for one statistic (``in_context`` None: no token covered)."""
    rows = [{"statistic": statistic, "inputs": EFFECTIVE, "value": float(effective), "n_tokens": int(n_effective),
             "note": note}]
    if effective_same is not None:
        rows.append({"statistic": statistic, "inputs": EFFECTIVE_SAME, "value": float(effective_same),
                     "n_tokens": int(n_context), "note": note})
    rows.append({"statistic": statistic, "inputs": IN_CONTEXT,
                 "value": float("nan") if in_context is None else float(in_context), "n_tokens": int(n_context),
                 "note": note if n_context else "no token of the set occurs in the text windows"})
    return rows


def comparison_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def read_comparison(out_dir) -> pd.DataFrame | None:
    """``in_context.csv`` of a run, or None when the run has none (older run, --context-windows 0)."""
    from common.results import read_table

    path = Path(out_dir) / f"{TABLE}.csv"
    return read_table(path) if path.exists() else None


def context_numbers(out_dir) -> dict:
    """{statistic: {inputs: value, "n_tokens <inputs>": n}} from ``in_context.csv`` ({} without one)."""
    t = read_comparison(out_dir)
    out: dict = {}
    if t is None:
        return out
    for r in t.itertuples():
        v = None if pd.isna(r.value) else float(r.value)
        out.setdefault(r.statistic, {})[r.inputs] = v
        out[r.statistic][f"n_tokens {r.inputs}"] = int(r.n_tokens)
    return out


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def context_text(out_dir) -> str:
    """One line: every statistic's in-context value beside the effective one (empty without a table)."""
    parts = []
    for stat, d in context_numbers(out_dir).items():
        v = d.get(IN_CONTEXT)
        if v is None:
            n = d[f"n_tokens {IN_CONTEXT}"]
            parts.append(f"{stat}: " + (f"not measurable in context over {n} tokens" if n
                                        else "no token occurs in the text windows"))
            continue
        same = d.get(EFFECTIVE_SAME)
        parts.append(f"{stat} {_fmt(v)} in context over {d[f'n_tokens {IN_CONTEXT}']} tokens "
                     f"(effective {_fmt(d[EFFECTIVE])} over {d[f'n_tokens {EFFECTIVE}']}"
                     + (f"; {_fmt(same)} on the same tokens" if same is not None else "") + ")")
    return ("true layer inputs in natural text: " + "; ".join(parts)) if parts else ""


def with_context(evidence, out_dir):
    """``evidence`` (a :class:`common.claims.Evidence`) with the in-context numbers of ``out_dir``
    added to its numbers (``in_context``) and its note; the judgement is left as it was."""
    nums = context_numbers(out_dir)
    if nums:
        evidence.numbers = {**evidence.numbers, "in_context": nums}
        line = context_text(out_dir)
        evidence.note = f"{evidence.note}; {line}" if evidence.note else line
    return evidence


def counts_table(ctx: ContextInputs, tokenizer) -> pd.DataFrame:
    """token_id, token, occurrences of every covered token (the set the in-context numbers use)."""
    ids = ctx.token_ids.tolist()
    return pd.DataFrame({"token_id": ids, "token": [tokenizer.decode([t]) for t in ids],
                         "occurrences": ctx.count.numpy()})


def mean_or_none(values) -> float | None:
    v = np.asarray(values, dtype=float)
    return float(v.mean()) if v.size else None
