"""What is L1H5 for? Its effect on succession (Monday -> Tuesday).

Question. L1H5 attends to earlier tokens of the same category (the L1H5 post explains how); an
earlier survey of gpt2-small's heads described it only as "succession or pairs related behaviour",
and the original repository's ``skew_ablation.py`` tested succession by ablation but never
reported the result. Does the model use L1H5 to predict the next element of a sequence, and how
strongly compared with other heads of its layer? (Which later heads read what it writes is
``composition.py``'s question.)

Method.
* Cases. Curated successor prompts in six categories (days, months, numbers as words, ordinals,
  letters, numerals): the original repository's cases of those categories plus "a, b," -> " c"
  for every three consecutive elements of each standard sequence (``common/successions.py``,
  with the citation); ``--cases FILE`` replaces them by a CSV (category, prompt, answer). Mined
  cases: every place in a text where an element is followed, directly or after a separator
  (",", " and", " to", "-", ...), by its successor (token level); a seeded sample of
  ``--n-mined`` of them, each cut to the ``--context`` tokens before the answer. Text: WikiText-103
  (test split, through ``datasets``), ``--text PATH``, or the generated demo text (``--text demo``,
  the default for ``--model planted``). A case survives only if its answer is one GPT-2 token;
  dropped cases are listed.
* Effect of a head on a case. The head's ``hook_z`` is mean-ablated (one mean over every non-BOS
  position of ``--n-reference`` separate windows of the same text that overlap no mined case; the
  original averaged over the scored prompt's own positions) and, as a second method, resample-ablated (each position gets the z of a random reference
  position); BOS is left alone (``common/ablation.py``). At the last prompt position: the logit
  difference between the correct successor and the top wrong answer of the clean run (held fixed
  under ablation, as the original did); effect = clean difference - ablated difference (positive:
  the head helps the successor); the change of the successor's rank and probability when the
  head is ablated. Means with 95% percentile-bootstrap CIs (``--n-boot`` resamples of cases,
  the same resamples for every head) per category, per source (curated, mined) and overall.
* Scale. The same for ``--n-controls`` other heads of the same layer (a seeded choice, or the
  fixed list ``--control-heads``).
* Verdict, with the original's thresholds on the mean effect of the curated cases under mean
  ablation: STRONG > 0.5, Moderate > 0.1, else Weak; the CI says whether the verdict is firm
  (the whole CI in one band) or not.

Outputs (``figures/succession_ablation/``; ``figures/demo/succession_ablation/`` for planted):
  cases.csv              every case: source, category, prompt, answer, clean logit difference,
                         top wrong answer, clean rank and probability of the successor (a mined
                         prompt is decoded text; its tokens are the --context tokens before
                         text_offset in the tokenised text)
  dropped_cases.csv      cases whose answer is not one token, and why
  effects.csv            per case, head and method: ablated logit difference, effect, rank and
                         probability change
  effect_summary.csv     per head, method, source and category: mean effect [95% CI], mean rank
                         and probability change, clean and ablated top-1 accuracy
  effects.png            mean effect per category, target vs control heads, both methods
  summary.json, meta.json

Run: python succession_ablation.py --model planted
     python succession_ablation.py --model gpt2-small --text wikitext.txt
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.claims import ORIGINAL, Claim, Evidence, number
from common.cli import add_text_flag, base_parser, start, keeps_state
from common.genuine_weights import weights_verdict
from common.hook_names import act_name
from common.memory import release
from common.outputs import prepare_out_dir
from common.results import Results, load_meta, load_summary, load_table, save_results, verdict_text
from common.stats import bootstrap_ci, bootstrap_indices
from common.successions import (CATEGORY_NAMES, MAX_GAP, ORIGINAL_SOURCE, SEPARATORS, curated_cases,
                                successor_index)

SCRIPT = "succession_ablation"
METHODS = ("mean", "resample")
# The original's verdict thresholds on the mean logit-difference effect (skew_ablation.py).
BANDS = (("STRONG", 0.5), ("Moderate", 0.1))
WEAK = "Weak"


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--categories", default=",".join(CATEGORY_NAMES),
                   help=f"comma list of successor categories (of: {', '.join(CATEGORY_NAMES)})")
    p.add_argument("--cases", default=None, help="CSV with columns category, prompt, answer: replaces the built-in curated cases")
    add_text_flag(p, "mine cases and reference windows from", "WikiText-103 test via datasets; 'demo' for --model planted")
    p.add_argument("--n-mined", type=int, default=200, help="mined cases to keep (seeded sample); 0: curated cases only")
    p.add_argument("--min-mined", type=int, default=10, help="fewer mined successions than this in the text is an error")
    p.add_argument("--context", type=int, default=24, help="tokens of text before a mined answer (BOS not counted)")
    p.add_argument("--n-reference", type=int, default=32, help="text windows the ablation values come from")
    p.add_argument("--reference-len", type=int, default=64, help="tokens per reference window, BOS included")
    p.add_argument("--n-controls", type=int, default=3, help="control heads of the same layer (seeded choice)")
    p.add_argument("--control-heads", default=None, help="comma list of control heads instead of a seeded choice")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of cases")
    # moved: a clear error for the old spelling, hidden from --help
    p.add_argument("--composition-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.composition_only:
        raise SystemExit("error: --composition-only is gone: the composition scores are their own script now, "
                         f"python composition.py --model {args.model}")
    for name, low in (("n_mined", 0), ("min_mined", 1), ("context", 1), ("n_reference", 1), ("reference_len", 2),
                      ("n_controls", 0), ("batch_size", 1), ("n_boot", 100)):
        if getattr(args, name) < low:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least {low}")
    args.categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = [c for c in args.categories if c not in CATEGORY_NAMES]
    if unknown or not args.categories:
        raise SystemExit(f"error: unknown category {unknown[0] if unknown else '(none)'!r} in --categories: "
                         f"choose from {', '.join(CATEGORY_NAMES)}")
    if args.cases is not None and not Path(args.cases).is_file():
        raise SystemExit(f"error: --cases {args.cases}: no such file")
    return args


# ----------------------------------------------------------------------------------------------
# Cases: curated and mined, tokenised; reference windows
# ----------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Everything the ablation needs that does not depend on the model."""

    cases: pd.DataFrame  # one row per surviving case (case_id, source, category, origin, prompt, answer, ...)
    tokens: list[list[int]]  # BOS + prompt ids, per case
    dropped: pd.DataFrame
    reference: torch.Tensor  # [n_reference, reference_len]
    reference_offsets: list[int]  # where each reference window's tokens start in the tokenised text
    text: str
    n_text_tokens: int
    n_mined_found: int


def read_case_file(path: str) -> list[tuple[str, str, str, str]]:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: --cases {path}: cannot read ({exc})") from None
    missing = {"category", "prompt", "answer"} - set(df.columns)
    if missing:
        raise SystemExit(f"error: --cases {path}: missing column(s) {', '.join(sorted(missing))} "
                         "(need category, prompt, answer)")
    return [(r.category, r.prompt, r.answer, "file") for r in df.itertuples()]


def tokenize_curated(tokenizer, cases) -> tuple[list[dict], list[list[int]], list[dict]]:
    """(kept rows, BOS + prompt ids, dropped rows): a case is kept iff its answer is one token."""
    kept, tokens, dropped = [], [], []
    bos = tokenizer.bos_token_id
    for cat, prompt, answer, origin in cases:
        ans = tokenizer.encode(answer, add_special_tokens=False)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        if len(ans) != 1 or not ids:
            why = (f"answer is {len(ans)} tokens {[tokenizer.decode([t]) for t in ans]}" if len(ans) != 1
                   else "empty prompt")
            dropped.append({"source": "curated", "category": cat, "origin": origin, "prompt": prompt,
                            "answer": answer, "reason": why})
            continue
        kept.append({"source": "curated", "category": cat, "origin": origin, "prompt": prompt, "answer": answer,
                     "answer_id": ans[0], "text_offset": -1})
        tokens.append([bos] + ids)
    return kept, tokens, dropped


def find_successions(ids: np.ndarray, index: dict, separator: np.ndarray,
                     block: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Every answer position j whose token succeeds the token at j - g (g = 1 .. MAX_GAP, every
    token between being a separator: ``separator`` [vocab] is True for those), the smallest g when
    several fit. Returns (j, g), sorted by j.

    ``ids`` (1-D, any integer dtype, e.g. a memory-mapped text) is read ``block`` answer positions
    at a time (plus the MAX_GAP tokens before them): each j depends only on ids[j - MAX_GAP .. j],
    so the result is the same for any block, and memory stays a few times ``block``."""
    # Vectorised: per-token lookup tables of (sequence, position, length, cyclic).
    vocab = len(separator)
    seq = np.full(vocab, -1)
    pos = np.zeros(vocab, dtype=np.int64)
    length = np.ones(vocab, dtype=np.int64)
    cyc = np.zeros(vocab, dtype=bool)
    for t, e in index.items():
        seq[t], pos[t], length[t], cyc[t] = e.sequence, e.position, e.length, e.cyclic
    found_j, found_g = [], []
    for lo in range(0, len(ids), block):
        s = max(0, lo - MAX_GAP)
        j, g = _successions_in(np.asarray(ids[s : lo + block]), seq, pos, length, cyc, separator)
        keep = j + s >= lo  # answers before lo belong to the previous block
        found_j.append(j[keep] + s)
        found_g.append(g[keep])
    if not found_j:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found_j), np.concatenate(found_g)


def _successions_in(ids: np.ndarray, seq, pos, length, cyc, separator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`find_successions` on one stretch of text (positions relative to it)."""
    return_j, return_g = [], []
    taken = np.zeros(len(ids), dtype=bool)
    for g in range(1, MAX_GAP + 1):
        if len(ids) <= g:
            break
        a, b = ids[:-g], ids[g:]
        ok = (seq[a] >= 0) & (seq[a] == seq[b])
        nxt = pos[a] + 1
        nxt = np.where(cyc[a], nxt % length[a], nxt)
        ok &= pos[b] == nxt
        for k in range(1, g):  # every token in between is a separator
            ok &= separator[ids[k : len(ids) - g + k]]
        j = np.nonzero(ok)[0] + g
        j = j[~taken[j]]
        taken[j] = True
        return_j.append(j)
        return_g.append(np.full(len(j), g))
    j = np.concatenate(return_j) if return_j else np.zeros(0, dtype=np.int64)
    g = np.concatenate(return_g) if return_g else np.zeros(0, dtype=np.int64)
    order = np.argsort(j, kind="stable")
    return j[order], g[order]


def separator_lookup(tokenizer, vocab: int) -> np.ndarray:
    """Boolean [vocab]: the token is one of :data:`common.successions.SEPARATORS`."""
    lut = np.zeros(vocab, dtype=bool)
    for s in SEPARATORS:
        ids = tokenizer.encode(s, add_special_tokens=False)
        if len(ids) == 1 and ids[0] < vocab:
            lut[ids[0]] = True
    return lut


def mine_cases(tokenizer, ids, categories: list[str], n_mined: int, context: int, seed: int):
    """(rows, BOS + context ids, number of successions found) for a seeded sample of the text's
    successions of ``categories``. ``ids``: a 1-D array (e.g. memory-mapped) or list of token ids."""
    index = successor_index(tokenizer, categories)
    arr = ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int64)
    vocab = int(max(arr.max(initial=0), max(index, default=0), tokenizer.vocab_size)) + 1
    j, g = find_successions(arr, index, separator_lookup(tokenizer, vocab))
    found = len(j)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(found, size=min(n_mined, found), replace=False)) if found else np.zeros(0, int)
    rows, tokens = [], []
    bos = tokenizer.bos_token_id
    for i in pick:
        jj = int(j[i])
        ctx = arr[max(0, jj - context) : jj].tolist()
        answer = int(arr[jj])
        rows.append({"source": "mined", "category": index[answer].category, "origin": f"text gap {int(g[i])}",
                     "prompt": tokenizer.decode(ctx), "answer": tokenizer.decode([answer]), "answer_id": answer,
                     "text_offset": jj})
        tokens.append([bos] + ctx)
    return rows, tokens, found


def reference_windows(ids, avoid: list[tuple[int, int]], n: int, length: int, bos: int, seed: int):
    """A seeded sample of non-overlapping windows (BOS + ``length - 1`` tokens) that overlap no
    span in ``avoid`` (the mined cases' contexts and answers, [a, b) with a < b), so no scored
    prompt is its own reference. ``ids``: a 1-D array or list; only the sampled windows are read.
    Returns (tokens [n, length], start offset of each window's tokens in ``ids``)."""
    from common.natural_text import windows_at

    body = length - 1
    n_avail = len(ids) // body
    # Window k holds ids[k * body : (k + 1) * body]; a span [a, b) touches windows a // body .. (b - 1) // body.
    touched = np.zeros(n_avail + 1, dtype=np.int64)
    for a, b in avoid:
        first, last = a // body, min((b - 1) // body, n_avail - 1)
        if a < b and first <= last:
            touched[first] += 1
            touched[last + 1] -= 1
    starts = np.arange(n_avail) * body
    free = starts[np.cumsum(touched[:n_avail]) == 0]
    if len(free) == 0:
        raise SystemExit(f"error: text too short: no window of {body} tokens is left for the ablation reference "
                         f"(the text has {len(ids)} tokens); give more text or a smaller --reference-len")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(free, size=min(n, len(free)), replace=False))
    return windows_at(ids, [int(s) for s in pick], body, bos), [int(s) for s in pick]


def load_inputs(args, tokenizer) -> Inputs:
    """Cases and reference windows, from the tokenizer and the text alone (checked before the model
    loads, so bad input stops the run before any work)."""
    from common.text_ids_cache import script_text_ids

    base = read_case_file(args.cases) if args.cases else curated_cases(args.categories)
    rows, tokens, dropped = tokenize_curated(tokenizer, base)
    if not rows:
        first = dropped[0] if dropped else {"answer": "", "reason": "no cases"}
        raise SystemExit(f"error: no curated case survives tokenization: all {len(base)} answers are not one GPT-2 "
                         f"token (e.g. {first['answer']!r}: {first['reason']})")
    ids, description = script_text_ids(args.text, args.model, tokenizer)
    found = 0
    if args.n_mined:
        mined, mined_tokens, found = mine_cases(tokenizer, ids, args.categories, args.n_mined, args.context, args.seed)
        if found < args.min_mined:
            raise SystemExit(
                f"error: text too short: {description} ({len(ids)} tokens) holds {found} successions of "
                f"{', '.join(args.categories)}, fewer than --min-mined {args.min_mined}; give more text (--text PATH) "
                "or use the curated cases only (--n-mined 0)")
        rows, tokens = rows + mined, tokens + mined_tokens
    avoid = [(max(0, r["text_offset"] - args.context), r["text_offset"] + 1) for r in rows if r["text_offset"] >= 0]
    reference, offsets = reference_windows(ids, avoid, args.n_reference, args.reference_len, tokenizer.bos_token_id,
                                           args.seed + 1)
    cases = pd.DataFrame(rows)
    cases.insert(0, "case_id", np.arange(len(cases)))
    cases["n_tokens"] = [len(t) for t in tokens]
    dropped = pd.DataFrame(dropped, columns=["source", "category", "origin", "prompt", "answer", "reason"])
    return Inputs(cases, tokens, dropped, reference, offsets, description, len(ids), found)


# ----------------------------------------------------------------------------------------------
# Effects of ablating a head
# ----------------------------------------------------------------------------------------------


def control_heads(args, n_heads: int) -> list[int]:
    """The control heads of layer ``args.layer``: ``--control-heads`` or a seeded choice."""
    others = [h for h in range(n_heads) if h != args.head]
    if args.control_heads:
        try:
            heads = [int(h) for h in args.control_heads.split(",") if h.strip()]
        except ValueError:
            raise SystemExit(f"error: --control-heads {args.control_heads!r}: expected a comma list of head indices") from None
        bad = [h for h in heads if h not in others]
        if bad:
            raise SystemExit(f"error: --control-heads: head {bad[0]} is not another head of layer {args.layer} "
                             f"(0..{n_heads - 1}, not {args.head})")
        return heads
    rng = np.random.default_rng(args.seed)
    return sorted(int(h) for h in rng.choice(others, size=min(args.n_controls, len(others)), replace=False))


def ablation_conditions(model, reference: torch.Tensor, layer: int, heads: list[int], seed: int) -> dict:
    """(head, method) -> forward hooks replacing that head's z (common.ablation conventions)."""
    from common.ablation import collect_activations, mean_ablation_hooks, resample_ablation_hooks
    from common.head_replacement import z_hooks

    name = act_name("z", layer)
    z = collect_activations(model, reference, [name])[name]  # [n, pos, head, d_head]
    conds = {}
    for h in heads:
        ref = {"z": z[:, :, h]}
        conds[(h, "mean")] = z_hooks(layer, h, mean_ablation_hooks(ref)["z"][0][1])
        conds[(h, "resample")] = z_hooks(layer, h, resample_ablation_hooks(ref, seed=seed)["z"][0][1])
    return conds


def prompt_batches(tokens: list[list[int]], batch_size: int, pad: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(tokens [b, n], last position [b]) per batch of ``batch_size`` prompts in order, right-padded
    with ``pad`` (causal attention: padding after a prompt's last position changes nothing before it)."""
    out = []
    for s in range(0, len(tokens), batch_size):
        chunk = tokens[s : s + batch_size]
        n = max(len(t) for t in chunk)
        out.append((torch.tensor([t + [pad] * (n - len(t)) for t in chunk], device=device),
                    torch.tensor([len(t) - 1 for t in chunk], device=device)))
    return out


@torch.no_grad()
def last_logits(model, batches: list, hooks: list, layer: int = 0, resid: list | None = None,
                record: list | None = None):
    """Logits [b, vocab] at each prompt's last position, batch by batch (``batches`` from
    :func:`prompt_batches`); yields (index of the batch's first case, logits). With ``resid`` (per
    batch, ``blocks.{layer}.hook_resid_pre`` of that batch, which no hook of layer ``layer`` or
    later changes) only layers ``layer``..end run, from that residual: the same numbers as the whole
    model. ``record``: a list that receives that residual of every batch of a whole-model run."""
    name = "ln_final.hook_normalized"
    s = 0
    for i, (batch, last) in enumerate(batches):
        release(collect_garbage=False)  # the last batch's freed temporaries (common.memory)
        seen = {}

        def save(t, hook):
            seen["x"] = t[torch.arange(len(last), device=t.device), last]

        fwd = [*hooks, (name, save)]
        if resid is not None:
            model.run_with_hooks(resid[i], start_at_layer=layer, return_type=None, fwd_hooks=fwd)
        else:
            if record is not None:
                fwd.append((act_name("resid_pre", layer), lambda t, hook: record.append(t)))
            model.run_with_hooks(batch, return_type=None, fwd_hooks=fwd)
        yield s, (seen["x"] @ model.W_U + model.b_U).float()
        s += len(last)


def answer_metrics(logits: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor | None = None) -> dict:
    """Logit difference correct - wrong (wrong: the top non-correct token when not given), the
    correct token's rank (1 = top) and probability."""
    ar = torch.arange(len(correct), device=logits.device)
    if wrong is None:
        masked = logits.clone()
        masked[ar, correct] = -torch.inf
        wrong = masked.argmax(-1)
    lc = logits[ar, correct]
    return {"logit_diff": (lc - logits[ar, wrong]).cpu(), "rank": ((logits > lc[:, None]).sum(-1) + 1).cpu(),
            "prob": torch.softmax(logits, -1)[ar, correct].cpu(), "wrong": wrong.cpu()}


def case_effects(model, inputs: Inputs, layer: int, heads: list[int], seed: int, batch_size: int):
    """(clean metrics per case [dict of tensors], effects DataFrame over heads x methods)."""
    from tqdm import tqdm

    batches = prompt_batches(inputs.tokens, batch_size, model.tokenizer.bos_token_id, model.cfg.device)
    correct = torch.tensor(inputs.cases.answer_id.to_numpy(), device=model.cfg.device)
    n = len(correct)
    clean = {k: [] for k in ("logit_diff", "rank", "prob", "wrong")}
    resid = []  # layers 0..L-1 run once: every ablation starts from the clean run's input of layer L
    for s, logits in last_logits(model, batches, [], layer, record=resid):
        for k, v in answer_metrics(logits, correct[s : s + len(logits)]).items():
            clean[k].append(v)
    clean = {k: torch.cat(v) for k, v in clean.items()}
    release()  # between phases, the heap's freed pages go back to the OS (common.memory)
    wrong = clean["wrong"].to(model.cfg.device)
    conds = ablation_conditions(model, inputs.reference, layer, heads, seed)
    release()
    frames = []
    for (h, method), hooks in tqdm(conds.items(), desc="ablated heads", leave=False):
        parts = {k: [] for k in ("logit_diff", "rank", "prob")}
        for s, logits in last_logits(model, batches, hooks, layer, resid=resid):
            m = answer_metrics(logits, correct[s : s + len(logits)], wrong[s : s + len(logits)])
            for k in parts:
                parts[k].append(m[k])
        abl = {k: torch.cat(v) for k, v in parts.items()}
        frames.append(pd.DataFrame({
            "case_id": np.arange(n), "head": h, "role": "target" if h == heads[0] else "control", "method": method,
            "ablated_logit_diff": abl["logit_diff"].numpy(),
            "effect": (clean["logit_diff"] - abl["logit_diff"]).numpy(),
            "ablated_rank": abl["rank"].numpy(), "rank_change": (abl["rank"] - clean["rank"]).numpy(),
            "ablated_prob": abl["prob"].numpy(), "prob_change": (abl["prob"] - clean["prob"]).numpy(),
        }))
    return clean, pd.concat(frames, ignore_index=True)


def summarise(cases: pd.DataFrame, effects: pd.DataFrame, clean_rank: np.ndarray, n_boot: int, seed: int) -> pd.DataFrame:
    """Per head, method and group (source x category, each source, everything): mean effect with a
    bootstrap CI (the same resamples of a group's cases for every head and method)."""
    groups = []
    for src in ("curated", "mined"):
        sub = cases[cases.source == src]
        for cat in dict.fromkeys(sub.category):
            groups.append((src, cat, sub.case_id[sub.category == cat].to_numpy()))
        if len(sub):
            groups.append((src, "all", sub.case_id.to_numpy()))
    groups.append(("all", "all", cases.case_id.to_numpy()))
    rng = np.random.default_rng(seed)
    rows = []
    by = {k: g.set_index("case_id") for k, g in effects.groupby(["head", "role", "method"], sort=False)}
    for src, cat, ids in groups:
        idx = bootstrap_indices(len(ids), n_boot, rng=rng)
        for (h, role, method), g in by.items():
            e = g.effect.to_numpy()[ids]
            lo, hi = bootstrap_ci(e, idx)
            rows.append({"head": h, "role": role, "method": method, "source": src, "category": cat, "n": len(ids),
                         "mean_effect": float(e.mean()), "ci_lo": lo, "ci_hi": hi,
                         "median_effect": float(np.median(e)),
                         "mean_rank_change": float(g.rank_change.to_numpy()[ids].mean()),
                         "mean_prob_change": float(g.prob_change.to_numpy()[ids].mean()),
                         "clean_top1": float((clean_rank[ids] == 1).mean()),
                         "ablated_top1": float((g.ablated_rank.to_numpy()[ids] == 1).mean())})
    return pd.DataFrame(rows)


def band(x: float) -> str:
    return next((name for name, t in BANDS if x > t), WEAK)


def verdict(mean: float, lo: float, hi: float) -> dict:
    """The original's verdict on a mean effect, and whether its 95% CI stays in one band."""
    label, lo_band, hi_band = band(mean), band(lo), band(hi)
    firm = lo_band == hi_band
    ci = f"95% CI [{lo:.3f}, {hi:.3f}]"
    text = (f"{label}: mean effect {mean:.3f}, " +
            (f"the whole {ci} lies in the {label} band" if firm else f"{ci} spans {lo_band} to {hi_band}"))
    if hi < 0:
        text += "; the head works against the successor"
    return {"label": label, "mean": mean, "ci_lo": lo, "ci_hi": hi, "firm": firm, "text": text}


# ----------------------------------------------------------------------------------------------
# Compute
# ----------------------------------------------------------------------------------------------


def compute(model, args, inputs: Inputs) -> Results:
    L, H = args.layer, args.head
    summary = {"model": args.model, "layer": L, "head": H}
    longest = max(max(len(t) for t in inputs.tokens), args.reference_len)
    if longest > model.cfg.n_ctx:
        raise SystemExit(f"error: a prompt or reference window of {longest} tokens exceeds the model's context of "
                         f"{model.cfg.n_ctx} (lower --context or --reference-len)")
    controls = control_heads(args, model.cfg.n_heads)
    heads = [H, *controls]
    clean, effects = case_effects(model, inputs, L, heads, args.seed, args.batch_size)
    tok = model.tokenizer
    cases = inputs.cases.assign(clean_logit_diff=clean["logit_diff"].numpy(),
                                top_wrong=[tok.decode([int(t)]) for t in clean["wrong"]],
                                top_wrong_id=clean["wrong"].numpy(), clean_rank=clean["rank"].numpy(),
                                clean_prob=clean["prob"].numpy())
    stats = summarise(cases, effects, cases.clean_rank.to_numpy(), args.n_boot, args.seed)
    tables = {"cases": cases, "dropped_cases": inputs.dropped, "effects": effects, "effect_summary": stats}

    def get(src, method, head=H):
        r = stats[(stats["head"] == head) & (stats.method == method) & (stats.source == src) & (stats.category == "all")]
        return r.iloc[0] if len(r) else None

    verdicts = {}
    for src in ("curated", "mined", "all"):
        for method in METHODS:
            r = get(src, method)
            if r is not None:
                verdicts[f"{src}/{method}"] = verdict(r.mean_effect, r.ci_lo, r.ci_hi) | {"n": int(r.n)}
    summary |= {
        "verdict": verdicts["curated/mean"] | {"scope": "curated cases, mean ablation (the original's setting)"},
        "verdicts": verdicts,
        "thresholds": {name: t for name, t in BANDS} | {WEAK: "otherwise"},
        "controls": controls,
        "control_choice": ("fixed list (--control-heads)" if args.control_heads else
                           f"seeded choice of {len(controls)} other heads of layer {L} (seed {args.seed})"),
        "control_effects": {f"L{L}H{h}": {m: {k: float(get("curated", m, h)[k]) for k in ("mean_effect", "ci_lo", "ci_hi")}
                                           for m in METHODS} for h in controls},
        "n_cases": {"curated": int((cases.source == "curated").sum()), "mined": int((cases.source == "mined").sum())},
        "n_dropped": len(inputs.dropped), "n_mined_found": inputs.n_mined_found,
        "text": inputs.text, "n_text_tokens": inputs.n_text_tokens,
        "reference_offsets": inputs.reference_offsets,
        "reference": f"{len(inputs.reference)} windows of {args.reference_len} tokens of the same text (seed "
                     f"{args.seed + 1}) overlapping no mined case; mean over all non-BOS positions; BOS never ablated",
        "clean_top1_curated": float(get("curated", "mean").clean_top1),
        "curated_source": ORIGINAL_SOURCE if not args.cases else f"--cases {args.cases}",
    }
    return Results(tables, summary)


# ----------------------------------------------------------------------------------------------
# Figures (from saved files only) and report
# ----------------------------------------------------------------------------------------------


def render(out_dir) -> list[Path]:
    out_dir = Path(out_dir)
    summary, meta = load_summary(out_dir), load_meta(out_dir)
    return [plot_effects(load_table(out_dir, "effect_summary"), summary, meta, out_dir / "effects.png")]


def plot_effects(stats: pd.DataFrame, summary: dict, meta: dict, path: Path) -> Path:
    from common.plotting import plt, save_figure

    L, H = summary["layer"], summary["head"]
    heads = [H, *summary["controls"]]
    groups = [(s, c) for s, c in dict.fromkeys(zip(stats.source, stats.category))]
    labels = [f"{c}\n({s})" if c != "all" else ("ALL cases" if s == "all" else f"ALL {s}") for s, c in groups]
    fig, axes = plt.subplots(len(METHODS), 1, figsize=(max(8, 0.75 * len(groups) + 2), 3.4 * len(METHODS)), sharex=True)
    width = 0.8 / len(heads)
    colours = ["#c0392b"] + [plt.cm.Greys(0.35 + 0.5 * i / max(1, len(heads) - 1)) for i in range(1, len(heads))]
    x = np.arange(len(groups))
    for ax, method in zip(np.atleast_1d(axes), METHODS):
        for i, h in enumerate(heads):
            sub = stats[(stats["head"] == h) & (stats.method == method)].set_index(["source", "category"]).loc[groups]
            off = (i - (len(heads) - 1) / 2) * width
            ax.bar(x + off, sub.mean_effect, width=width, color=colours[i],
                   label=f"L{L}H{h}" + (" (target)" if h == H else " (control)"))
            ax.errorbar(x + off, sub.mean_effect, yerr=[sub.mean_effect - sub.ci_lo, sub.ci_hi - sub.mean_effect],
                        fmt="none", ecolor="k", lw=0.8, capsize=1.5)
        for name, t in BANDS:
            ax.axhline(t, color="grey", ls=":", lw=1)
            ax.text(len(groups) - 0.5, t, f" {name} > {t}", va="bottom", ha="right", fontsize=7, color="grey")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(f"effect ({method} ablation)\nclean - ablated logit diff")
        ax.legend(fontsize=7, ncol=len(heads), loc="upper left")
    np.atleast_1d(axes)[-1].set_xticks(x, labels, fontsize=7, rotation=45, ha="right")
    v = summary["verdict"]
    fig.suptitle(f"L{L}H{H} on {meta['args']['model']}: succession effect (95% bootstrap CIs)\n"
                 f"verdict on {v['scope']}:\n{v['text']}", fontsize=9)
    return save_figure(fig, path, verdict_text(meta))  # the weights' verdict, under the figure


def report(results: Results, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    s = results.summary
    L, H = s["layer"], s["head"]
    st = results.tables["effect_summary"]
    t = Table(title=f"effect of ablating L{L}H{H} vs control heads on succession (clean - ablated logit diff, "
                    "mean ablation) [95% CI]")
    heads = [H, *s["controls"]]
    for c in ("source", "category", "n", *[f"L{L}H{h}" for h in heads], "clean top-1", "rank change (target)"):
        t.add_column(c)
    for (src, cat), g in st[st.method == "mean"].groupby(["source", "category"], sort=False):
        g = g.set_index("head")
        cells = [f"{g.loc[h].mean_effect:.3f} [{g.loc[h].ci_lo:.3f}, {g.loc[h].ci_hi:.3f}]" for h in heads]
        t.add_row(src, cat, str(int(g.loc[H].n)), *cells, f"{g.loc[H].clean_top1:.2f}", f"{g.loc[H].mean_rank_change:+.1f}")
    con.print(t)
    con.print(f"text: {s['text']} ({s['n_text_tokens']} tokens); {s['n_cases']['curated']} curated + "
              f"{s['n_cases']['mined']} mined cases ({s['n_mined_found']} successions found, {s['n_dropped']} "
              f"curated cases dropped); controls: {s['control_choice']}")
    for key, v in s["verdicts"].items():
        con.print(f"  {key:18s} {v['text']}")
    con.print(f"[bold]verdict ({s['verdict']['scope']}): {s['verdict']['text']}[/bold]")
    con.print(f"outputs in {out_dir}")


@keeps_state
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Every input is checked before the model loads: output folder, then cases, text and windows.
    prepare_out_dir(args.out, SCRIPT, args.model)
    from common.gpt2_tokenizer import load_tokenizer

    inputs = load_inputs(args, load_tokenizer())
    model, out_dir = start(args, SCRIPT)
    results = compute(model, args, inputs)
    save_results(out_dir, results, args, SCRIPT, weights=weights_verdict(args.model))
    release()
    render(out_dir)
    report(results, out_dir)
    return 0


# -- claims (common/claims.py): the saved summary.json verdict, a measurement ------------------------


def check_succession(out_dir) -> Evidence:
    """The original's STRONG / Moderate / Weak verdict on the mean effect, with its 95% CI."""
    v = load_summary(out_dir)["verdict"]
    return Evidence(f"{v['text']} ({v['scope']})", {"effect": number(v["mean"], (v["ci_lo"], v["ci_hi"])),
                                                    "label": v["label"]})


CLAIMS = [Claim(
    "succession", SCRIPT, "L1H5 serves succession (Monday -> Tuesday); the original printed STRONG > 0.5 / Moderate > "
    "0.1 / Weak but never reported the result", ORIGINAL, "never reported", "effects.png", "effect_summary.csv",
    "none (the verdict and its 95% CI are the measurement)", check_succession)]


if __name__ == "__main__":
    raise SystemExit(main())
