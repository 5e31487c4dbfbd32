"""Can L1H5's self-suppression be steered by gradient descent on its W_Q/W_K, and what does it cost?

Question. L1H5 never attends to itself or to copies of itself. If its query/key weights are
optimised to attend to self (promote), or to avoid self even more (suppress), how far does
self-attention move, how much in-category attention survives, and how does that compare with
editing the spectrum of W_QK (eigenvalue steering) for the same gain, and with the original
repository's one-step trace-loss edit?

Method. Seeded category prompts with many repeated words (train and a held-out set). The head's
W_Q and W_K get an update dW_Q, dW_K, either full ([d_model, d_head] each) or low rank
(A B^T with rank --rank, LoRA-style: A random, B zero). The head's input, its LN-normalised
residual x = ``blocks.L.ln1.hook_normalized``, does not depend on the optimised weights, so it is
computed once (layers 0..L, ``common.head_replacement.layer_input``); each step recomputes the
head's attention scores (x (W_Q + dW_Q) + b_Q)(x (W_K + dW_K) + b_K)^T / sqrt(d_head) from it with
autograd (``common.head_replacement.qk_scores``), so the model's parameters are never modified.
Loss (Adam, --lr, --steps; after each step dW_Q,
dW_K are shrunk back into the trust region ||dW||_F <= --max-edit * ||W||_F) over queries q >= 1:
  promote:   -mean_q log m_q                                   + keep * KL
  suppress:  mean_q softplus(log m_q - (log m_q^orig - margin))  + keep * KL
where m_q is the attention mass on the query itself and on earlier copies of the same token
(computed as a log-sum-exp of log-probabilities, so tiny masses have exact gradients). A
self-suppressing head starts with m ~ 0, so "suppress" asks each query to lower its log m by
--margin nats (softplus: no reward beyond that; plain +log m is unbounded and log(1 - m) has
nothing left to push). KL = mean_q KL(original || edited) of the attention renormalised over the
keys that are NOT the query or its copies (--keep-weight): without it, the cheapest way to change
self-attention is to move everything to or away from BOS.

Baselines:
  * eigenvalue steering (``common.factored.steer``): the negative eigenvalues of W_sym are multiplied by
    alpha, alpha chosen by bisection so that the held-out mean log self-mass equals the gradient
    result's (matched self-attention gain; alpha searched within 1 -+ 2^11). A target no alpha
    reaches is not hidden: the row keeps the furthest edit tried, alpha_matched is False, and the
    report and figures say so with the value reached and the target;
  * the original repository's one-step trace loss: the loss -trace(W_Q W_K^T) has gradient -W_Q
    for W_K, so one step of size 1 is W_K <- W_K + W_Q (here on the fold_ln-processed weights).

Devices: the prompts, the head's input, the update and its optimiser live on the model's device
(--device); the spectra and the vocabulary views use the CPU tensors common.factored and the
cached effective embeddings provide, and scorers are moved to the activations where they meet.

Evaluated for every variant: held-out attention mass split (self+copies, other in-category, BOS,
other) and semantic score; the share of non-self attention that stays in-category; self-rank of
query tokens over the FULL vocabulary of keys (``common.token_scores.self_rank`` on effective embeddings);
30 x 30 group-token attention (``common.prompts.group_token_ids``); the 10 keys over the
vocabulary that " Monday" attends to most.

Outputs (``figures/gradient_steering/`` by default):
  loss_curve.csv / .png        train and held-out loss per step, per direction
  variants.csv                 every variant: mass split, semantic score, self-rank metrics, edit size;
                               eigen rows: alpha, alpha_matched, match_target, match_achieved
  group_attention.csv / group_heatmaps.png   softmax over the 30 group tokens, per variant
  self_ranks.csv / self_rank.png             self-rank per query token, per variant (CDF)
  in_context.csv               the category words' median self-rank (original, promoted) on effective
                               embeddings and on their true layer inputs in --context-windows
                               natural-text windows (common/context_inputs.py)
  monday_top10.csv             the 10 most attended vocabulary tokens for " Monday" per variant
  summary.json, meta.json

Published reference (the original repository): the trace-loss step makes tokens attend to
themselves; no numbers to compare against are published for gradient steering.

Run: python gradient_steering.py --model planted   (real gpt2-small: --model gpt2-small)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from textwrap import fill

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from common.claims import DIFFERS, INCONCLUSIVE, ORIGINAL, REPRODUCED, Claim, Evidence
from common.cli import base_parser, start, keeps_state
from common.context_inputs import add_context_flags, comparison, comparison_table, context_inputs, context_text, with_context
from common.effective_embeddings import effective_embeddings, effective_record
from common.factored import Factored, steer
from common.genuine_weights import weights_verdict
from common.head_qk import FactoredQK
from common.head_replacement import head_scores, layer_input, qk_scores
from common.metrics import mass_split, semantic_score
from common.prompts import (GROUP_TOKENS, TokenizationError, category_prompts, category_token_ids, group_token_ids,
                            self_and_copies_mask, single_token_id)
from common.outputs import write_json
from common.results import Results, load_meta, load_table, save_results, verdict_text
from common.token_scores import query_row, rank_metrics, self_rank

SCRIPT = "gradient_steering"
DIRECTIONS = {"promote": ["promote"], "suppress": ["suppress"], "both": ["promote", "suppress"]}
SUMMARY_KEYS = ("mass_self_and_copies", "mean_log_self_mass", "mass_in_category", "in_category_share_of_nonself",
                "semantic_score", "category_median_rank", "median_rank", "edit_fro_rel", "alpha")


def parse_args(argv):
    p = base_parser(__doc__)
    p.add_argument("--direction", choices=list(DIRECTIONS), default="both",
                   help="promote self-attention, suppress it, or run both")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--steps", type=int, default=150, help="optimisation steps")
    p.add_argument("--rank", type=int, default=0, help="rank of the update of W_Q and of W_K (0 = full update)")
    p.add_argument("--keep-weight", type=float, default=1.0,
                   help="weight of the KL term that keeps the non-self attention pattern (0 = task loss only)")
    p.add_argument("--margin", type=float, default=10.0,
                   help="suppress: nats by which each query's log self-mass should drop")
    p.add_argument("--max-edit", type=float, default=1.0,
                   help="trust region: ||dW_Q||_F <= max_edit * ||W_Q||_F (same for W_K); 0 = unbounded")
    p.add_argument("--n-prompts", type=int, default=128, help="training prompts")
    p.add_argument("--n-heldout", type=int, default=64, help="held-out prompts (evaluation, alpha matching)")
    p.add_argument("--seq-len", type=int, default=16, help="category words per prompt (BOS not counted)")
    p.add_argument("--repeat-prob", type=float, default=0.3, help="chance a word repeats an earlier one")
    p.add_argument("--eval-every", type=int, default=10, help="held-out loss every N steps")
    p.add_argument("--n-rank-queries", type=int, default=1000,
                   help="random vocabulary tokens whose self-rank is measured (category and group tokens always are)")
    p.add_argument("--query-word", default="Monday", help="the word whose 10 most attended tokens are listed")
    add_context_flags(p)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if not args.lr > 0 or not math.isfinite(args.lr):
        p.error("--lr must be a positive number")
    if args.rank < 0:
        p.error("--rank must be >= 0 (0 = full update)")
    if args.max_edit < 0 or args.keep_weight < 0 or not args.margin > 0:
        p.error("--max-edit and --keep-weight must be >= 0, --margin > 0")
    if args.n_prompts < 1 or args.n_heldout < 2 or args.seq_len < 2:
        p.error("--n-prompts must be >= 1, --n-heldout >= 2 and --seq-len >= 2")
    if not 0 <= args.repeat_prob < 1:
        p.error("--repeat-prob must be in [0, 1)")
    if args.eval_every < 1 or args.n_rank_queries < 0:
        p.error("--eval-every must be >= 1 and --n-rank-queries >= 0")
    return args


def check_args(model, args) -> int:
    """Checks that need the model; returns the id of --query-word."""
    if args.seq_len + 1 > model.cfg.n_ctx:
        raise SystemExit(f"error: --seq-len {args.seq_len} + BOS exceeds the model's context of {model.cfg.n_ctx}")
    if args.rank > model.cfg.d_head:
        raise SystemExit(f"error: --rank {args.rank} exceeds d_head {model.cfg.d_head} (use 0 for a full update)")
    try:
        return single_token_id(model.tokenizer, args.query_word)
    except TokenizationError as exc:
        raise SystemExit(f"error: --query-word: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Losses on the head's attention scores
# ----------------------------------------------------------------------------------------------


def log_self_mass(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log m_q [batch, q-1] for queries q >= 1, exact for tiny masses."""
    logp = torch.log_softmax(scores, -1)
    logp = logp.masked_fill(~self_and_copies_mask(tokens).to(scores.device), -torch.inf)
    return torch.logsumexp(logp, -1)[:, 1:]


def nonself_kl(scores, ref_scores, tokens) -> torch.Tensor:
    """mean_q KL(p_ref || p) of the attention renormalised over the keys that are NOT the query
    or its copies: how much the rest of the pattern (in-category, BOS, other) changed shape."""
    drop = self_and_copies_mask(tokens).to(scores.device)
    lp = torch.log_softmax(scores.masked_fill(drop, -torch.inf), -1)
    lr = torch.log_softmax(ref_scores.masked_fill(drop, -torch.inf), -1)
    valid = torch.isfinite(lr)
    kl = torch.where(valid, lr.exp() * (lr - lp.masked_fill(~valid, 0.0)), torch.zeros_like(lr)).sum(-1)
    return kl[:, 1:].mean()


def loss_fn(scores, ref_scores, tokens, direction: str, margin: float) -> torch.Tensor:
    """promote: -mean_q log m_q; suppress: mean_q softplus(log m_q - (log m_q^orig - margin))."""
    ls = log_self_mass(scores, tokens)
    if direction == "promote":
        return -ls.mean()
    target = log_self_mass(ref_scores, tokens) - margin
    return torch.nn.functional.softplus(ls - target).mean()


# ----------------------------------------------------------------------------------------------
# The edits: a W_Q/W_K update, or any factored scorer
# ----------------------------------------------------------------------------------------------


class Update(torch.nn.Module):
    """dW_Q, dW_K for one head on ``device``: full, or rank-r A B^T (A random, B zero, so the start
    is exact; A is drawn on the CPU from ``seed``, so every device starts from the same numbers)."""

    def __init__(self, d_model: int, d_head: int, rank: int, seed: int, device="cpu"):
        super().__init__()
        self.rank = rank
        zeros = lambda *shape: torch.nn.Parameter(torch.zeros(*shape, device=device))
        if rank == 0:
            self.dQ, self.dK = zeros(d_model, d_head), zeros(d_model, d_head)
        else:
            g = torch.Generator().manual_seed(seed)
            a = [torch.randn(d_model, rank, generator=g).to(device) / math.sqrt(d_model) for _ in range(2)]
            self.aQ, self.aK = (torch.nn.Parameter(t) for t in a)
            self.bQ, self.bK = zeros(d_head, rank), zeros(d_head, rank)

    def deltas(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rank == 0:
            return self.dQ, self.dK
        return self.aQ @ self.bQ.T, self.aK @ self.bK.T

    @torch.no_grad()
    def project(self, max_q: float, max_k: float) -> None:
        """Shrink dW_Q / dW_K back onto the trust region ||d||_F <= max (the B factor for low rank):
        multiply by min(1, max / ||d||), computed on the device (no host round trip per step)."""
        dQ, dK = self.deltas()
        for d, cap, param in ((dQ, max_q, self.dQ if self.rank == 0 else self.bQ),
                              (dK, max_k, self.dK if self.rank == 0 else self.bK)):
            n = d.norm()
            n = n if n.device.type == "mps" else n.double()  # float64 as a host float would be (MPS has none)
            param.mul_((cap / n).clamp(max=1.0))


def qk_on(qk: FactoredQK, device) -> FactoredQK:
    """The head's weights on ``device`` (for the optimisation; spectra and scorers stay on the CPU,
    where common.factored computes them, and are moved to the activations where they are used)."""
    mv = lambda t: None if t is None else t.to(device)
    return FactoredQK(mv(qk.W_Q), mv(qk.W_K), mv(qk.b_Q), mv(qk.b_K), attn_scale=qk.attn_scale,
                      layer=qk.layer, head=qk.head)


def edited_scores(qk: FactoredQK, x: torch.Tensor, dQ=None, dK=None) -> torch.Tensor:
    """The head's attention scores on its input ``x`` with W_Q + dQ and W_K + dK (differentiable)."""
    W_Q = qk.W_Q if dQ is None else qk.W_Q + dQ
    W_K = qk.W_K if dK is None else qk.W_K + dK
    return qk_scores(x, W_Q, W_K, qk.b_Q, qk.b_K, qk.attn_scale)


@dataclass
class Variant:
    """One edit of the head: its factored scorer (vocabulary views) and how its held-out scores
    are computed (``weights`` = edited (W_Q, W_K) when the edit is a weight update, else the scorer)."""

    scorer: Factored
    weights: tuple[torch.Tensor, torch.Tensor] | None = None
    alpha: float = float("nan")
    match: Match | None = None  # eigen variants: how well alpha met its target

    def scores(self, qk: FactoredQK, x: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return head_scores(self.scorer, x)
        return qk_scores(x, *self.weights, qk.b_Q, qk.b_K, qk.attn_scale)


def weight_variant(qk: FactoredQK, W_Q: torch.Tensor, W_K: torch.Tensor) -> Variant:
    edited = FactoredQK(W_Q, W_K, qk.b_Q, qk.b_K, attn_scale=qk.attn_scale)
    return Variant(edited.scorer(), (W_Q, W_K))


def eigen_scorer(qk: FactoredQK, alpha: float) -> Factored:
    """The head with W_sym's negative eigenvalues multiplied by ``alpha`` (biases kept)."""
    return steer(qk.scorer(), alpha, "negative", eig=qk.sym_eig(), eig_scale=1.0 / qk.attn_scale)


# ----------------------------------------------------------------------------------------------
# Optimisation and matching
# ----------------------------------------------------------------------------------------------


class Steering:
    """One direction's optimisation, on the device of the activations ``train``/``held`` = (x,
    tokens): the head's weights, the update and Adam's state all live there."""

    def __init__(self, qk: FactoredQK, train, held, direction: str, args):
        dev = train[0].device
        self.qk, self.direction, self.args = qk_on(qk, dev), direction, args
        self.data = {"train": train, "held": held}
        self.upd = Update(qk.d_model, qk.d_head, args.rank, args.seed, device=dev)
        self.opt = torch.optim.Adam(self.upd.parameters(), lr=args.lr)
        self.caps = (args.max_edit * float(qk.W_Q.norm()), args.max_edit * float(qk.W_K.norm()))
        with torch.no_grad():
            self.ref = {k: edited_scores(self.qk, x) for k, (x, _) in self.data.items()}

    def losses(self, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, task, keep) on the ``"train"`` or ``"held"`` prompts with the current update."""
        (x, tokens), ref = self.data[which], self.ref[which]
        s = edited_scores(self.qk, x, *self.upd.deltas())
        task = loss_fn(s, ref, tokens, self.direction, self.args.margin)
        keep = nonself_kl(s, ref, tokens) if self.args.keep_weight > 0 else torch.zeros((), device=s.device)
        return task + self.args.keep_weight * keep, task, keep

    def step(self, loss: torch.Tensor) -> None:
        """One Adam step on ``loss``, then back into the trust region (--max-edit)."""
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.args.max_edit > 0:
            self.upd.project(*self.caps)


def optimise(qk: FactoredQK, train, held, direction: str, args):
    """Adam on dW_Q, dW_K for one direction. ``train``/``held`` = (x, tokens) on one device.
    Returns (Update, loss rows)."""
    run = Steering(qk, train, held, direction, args)
    rows = []
    with torch.enable_grad():  # common.cli.start disables grad globally
        for step in tqdm(range(args.steps + 1), desc=f"{direction}", leave=False):
            held_loss = None
            if step % args.eval_every == 0 or step == args.steps:
                with torch.no_grad():
                    held_loss = float(run.losses("held")[0])
            loss, task, keep = run.losses("train")
            rows.append({"direction": direction, "step": step, "train_loss": loss.item(),
                         "train_task_loss": task.item(), "train_keep_kl": keep.item(), "heldout_loss": held_loss})
            if step == args.steps:
                break
            if not torch.isfinite(loss):
                raise SystemExit(f"error: the {direction} loss diverged at step {step}; lower --lr (now {args.lr})")
            run.step(loss)
    return run.upd, rows


@torch.no_grad()
def evaluation_tensors(scores: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Held-out numbers of the head from its attention scores, as 0-dim tensors on the scores'
    device (``tokens`` and ``mask`` are moved there)."""
    tokens, mask = tokens.to(scores.device), mask.to(scores.device)
    pat = torch.softmax(scores, -1)
    split = mass_split(pat[None], tokens, mask)
    out = {f"mass_{k}": v[0] for k, v in split.items()}
    out["mean_log_self_mass"] = log_self_mass(scores, tokens).mean()
    out["semantic_score"] = semantic_score(pat, mask).mean()
    return out


def evaluate(scores: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> dict:
    """:func:`evaluation_tensors` as numbers, with the share of non-self attention in-category."""
    out = {k: float(v) for k, v in evaluation_tensors(scores, tokens, mask).items()}
    out["in_category_share_of_nonself"] = out["mass_in_category"] / max(1 - out["mass_self_and_copies"], 1e-12)
    return out


@dataclass
class Match:
    """Eigenvalue steering matched to a target held-out mean log self-mass."""

    alpha: float
    achieved: float  # held-out mean log self-mass at alpha
    target: float
    matched: bool  # False: the target is out of reach (alpha is the furthest edit tried) or missed

    def row(self) -> dict:
        return {"alpha_matched": self.matched, "match_target": self.target, "match_achieved": self.achieved}


MATCH_TOL = 0.01  # |achieved - target| <= MATCH_TOL * max(1, |target|) counts as matched
BRACKET_DOUBLINGS = 12  # alpha is searched up to 1 +- 2^11


@torch.no_grad()
def match_alpha(qk: FactoredQK, held, target: float, iters: int = 30) -> Match:
    """alpha such that scaling W_sym's negative eigenvalues by alpha gives held-out mean log
    self-mass ``target``. Bisection, bracket grown geometrically (alpha = 1 -+ 1, 2, 4, ...,
    2^11). When no alpha tried reaches the target (e.g. a self-mass above what any eigenvalue edit
    gives), the furthest edit tried is returned with ``matched`` False; so is a bisection that
    ends further than :data:`MATCH_TOL` from the target."""
    if qk.sym_eig().n_negative == 0:
        raise SystemExit("error: W_sym of this head has no negative eigenvalues: "
                         "nothing for eigenvalue steering to edit")

    def value(alpha):
        return float(log_self_mass(head_scores(eigen_scorer(qk, alpha), held[0]), held[1]).mean())

    def result(a, v, bracketed):
        return Match(a, v, target, bracketed and abs(v - target) <= MATCH_TOL * max(1.0, abs(target)))

    v1 = value(1.0)
    up = target > v1  # promoting self needs alpha < 1 (weaker or flipped negative eigenvalues)
    step, far = 1.0, None
    for _ in range(BRACKET_DOUBLINGS):
        a = 1.0 - step if up else 1.0 + step
        v = value(a)
        if (v >= target) == up:
            far = a
            break
        step *= 2
    if far is None:
        return result(a, v, False)  # target out of reach: the furthest edit tried, flagged
    lo, hi = (far, 1.0) if up else (1.0, far)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if (value(mid) >= target) == up:
            lo, hi = (mid, hi) if up else (lo, mid)
        else:
            lo, hi = (lo, mid) if up else (mid, hi)
    a = lo if up else hi
    return result(a, value(a), True)


# ----------------------------------------------------------------------------------------------
# Vocabulary-level views of each variant
# ----------------------------------------------------------------------------------------------


def edit_size(base: FactoredQK, f: Factored) -> float:
    """||W'_QK - W_QK||_F / ||W_QK||_F on the weights (logit units), computed factored."""
    b = base.scorer(biases=False)
    diff = Factored(torch.cat([f.left.float(), b.left], 1), torch.cat([f.right.float(), -b.right], 1))
    return diff.frobenius()["full"] / max(b.frobenius()["full"], 1e-30)


def group_attention(f: Factored, E, ids) -> np.ndarray:
    s = f.scores(E[ids], E[ids])
    return torch.softmax(s.float(), -1).numpy()


def top_attended(f: Factored, E, query_id: int, k: int = 10):
    """(ids, scores, probabilities over the full vocabulary as keys, rank of the query's own key)."""
    row = query_row(f, E, query_id).float()
    logz = torch.logsumexp(row, 0)
    vals, ids = torch.topk(row, k)
    self_rank_ = int((row > row[query_id]).sum())
    return ids.tolist(), vals.tolist(), torch.exp(vals - logz).tolist(), self_rank_


def rank_queries(tokenizer, vocab: int, n_random: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(token ids, kind of each: "category" for category and group words, "random" otherwise)."""
    cat = set(t for ids in category_token_ids(tokenizer).values() for t in ids) | set(group_token_ids(tokenizer)[0])
    rng = np.random.default_rng(seed)
    rand = set(rng.choice(vocab - 1, size=min(n_random, vocab - 1), replace=False).tolist()) - cat
    ids = sorted(cat) + sorted(rand)
    return torch.tensor(ids), np.array(["category"] * len(cat) + ["random"] * len(rand))


def vocabulary_views(model, args, qk: FactoredQK, variants: dict[str, Variant], word_id: int) -> dict[str, pd.DataFrame]:
    """Per variant over the vocabulary (effective embeddings of the head's layer): self-ranks,
    group-token attention, the query word's top keys and the rank metrics."""
    tok = model.tokenizer
    E = effective_embeddings(model, args.layer)
    q_ids, q_kind = rank_queries(tok, model.cfg.d_vocab, args.n_rank_queries, args.seed)
    g_ids, g_labels, _ = group_token_ids(tok)
    rank_rows, group_rows, top_rows, metric_rows = [], [], [], []
    for name, v in tqdm(variants.items(), desc="vocabulary views", leave=False):
        f = v.scorer
        ranks = self_rank(f, E, q_ids)
        rank_rows.append(pd.DataFrame({"variant": name, "token_id": q_ids.numpy(), "kind": q_kind,
                                       "rank": ranks.numpy()}))
        m = group_attention(f, E, g_ids)
        for i, qi in enumerate(g_labels):
            for j, kj in enumerate(g_labels):
                group_rows.append({"variant": name, "query": qi, "key": kj, "attention": float(m[i, j])})
        ids, vals, probs, own = top_attended(f, E, word_id)
        for r, (t, s, p) in enumerate(zip(ids, vals, probs), start=1):
            top_rows.append({"variant": name, "rank": r, "token": tok.decode([t]), "token_id": t, "score": s,
                             "prob_over_vocab": p, "is_query": t == word_id, "query_self_rank": own})
        cat_ranks = ranks.numpy()[q_kind == "category"]
        metric_rows.append({**{f"category_{k}": x for k, x in rank_metrics(cat_ranks).items()},
                            **rank_metrics(ranks.numpy()), "edit_fro_rel": edit_size(qk, f)})
    ranks_df = pd.concat(rank_rows, ignore_index=True)
    ranks_df["token"] = [tok.decode([int(t)]) for t in ranks_df.token_id]
    return {"self_ranks": ranks_df, "group_attention": pd.DataFrame(group_rows),
            "monday_top10": pd.DataFrame(top_rows), "metrics": pd.DataFrame(metric_rows)}


# ----------------------------------------------------------------------------------------------
# compute -> Results
# ----------------------------------------------------------------------------------------------


def compute(model, args, word_id: int) -> Results:
    layer, head, tok, dev = args.layer, args.head, model.tokenizer, model.cfg.device
    W_before = (model.W_Q[layer, head].detach().clone(), model.W_K[layer, head].detach().clone())
    train_b = category_prompts(tok, args.n_prompts, args.seq_len, args.seed, repeat_prob=args.repeat_prob)
    held_b = category_prompts(tok, args.n_heldout, args.seq_len, args.seed + 1000, repeat_prob=args.repeat_prob)
    # Prompts and the head's input on the model's device: the optimisation and every held-out
    # evaluation run there. Spectra, scorers and vocabulary views are built on the CPU (where
    # common.factored and the cached effective embeddings live) and moved where they meet activations.
    train = (layer_input(model, train_b.tokens, layer, head, len(train_b.tokens)), train_b.tokens.to(dev))
    held = (layer_input(model, held_b.tokens, layer, head, len(held_b.tokens)), held_b.tokens.to(dev))
    held_mask = held_b.mask.to(dev)
    qk = FactoredQK.from_model(model, layer, head)

    variants = {"original": weight_variant(qk, qk.W_Q, qk.W_K)}
    curves = []
    for d in DIRECTIONS[args.direction]:
        upd, rows = optimise(qk, train, held, d, args)
        curves += rows
        dQ, dK = (t.detach().cpu() for t in upd.deltas())
        variants[f"gradient {d}"] = weight_variant(qk, qk.W_Q + dQ, qk.W_K + dK)
    variants["trace step (W_K += W_Q)"] = weight_variant(qk, qk.W_Q, qk.W_K + qk.W_Q)
    evals = {name: evaluate(v.scores(qk, held[0]), held[1], held_mask) for name, v in variants.items()}
    for d in DIRECTIONS[args.direction]:
        m = match_alpha(qk, held, evals[f"gradient {d}"]["mean_log_self_mass"])
        name = f"eigen {d} (matched)"
        variants[name] = Variant(eigen_scorer(qk, m.alpha), alpha=m.alpha, match=m)
        evals[name] = evaluate(variants[name].scores(qk, held[0]), held[1], held_mask)

    views = vocabulary_views(model, args, qk, variants, word_id)
    for before, now in zip(W_before, (model.W_Q[layer, head], model.W_K[layer, head])):
        if not torch.equal(before, now):  # the model must come out exactly as it went in
            raise RuntimeError("model weights changed during steering")

    no_match = {"alpha_matched": None, "match_target": float("nan"), "match_achieved": float("nan")}
    table = pd.DataFrame([{"variant": name, "alpha": v.alpha, **(v.match.row() if v.match else no_match),
                           **evals[name], **metrics}
                          for (name, v), metrics in zip(variants.items(), views.pop("metrics").to_dict("records"))])
    curve = pd.DataFrame(curves)
    matches = {name: v.match for name, v in variants.items() if v.match is not None}
    summary = {
        "model": args.model, "layer": layer, "head": head, "query_word": args.query_word,
        "variants": {r["variant"]: {k: r[k] for k in SUMMARY_KEYS} for r in table.to_dict("records")},
        "eigen_matching": {name: {"alpha": m.alpha, "matched": m.matched, "target_mean_log_self_mass": m.target,
                                  "achieved_mean_log_self_mass": m.achieved} for name, m in matches.items()},
        "all_alphas_matched": all(m.matched for m in matches.values()),
        "loss_first_last": {d: [float(curve[curve.direction == d].train_loss.iloc[0]),
                                float(curve[curve.direction == d].train_loss.iloc[-1])]
                            for d in DIRECTIONS[args.direction]},
    }
    ctx = context_inputs(model, args, rank_queries(tok, model.cfg.d_vocab, 0, args.seed)[0])
    if ctx is not None:
        views["in_context"] = in_context_ranks(model, args, variants, views["self_ranks"], ctx)
    return Results({"loss_curve": curve, "variants": table, **views}, summary)


def in_context_ranks(model, args, variants: dict[str, Variant], ranks: pd.DataFrame, ctx) -> pd.DataFrame:
    """Per variant (original, promoting update): the category words' median self-rank over the
    vocabulary on effective embeddings (self_ranks.csv), and over the words that occur in the
    text windows on their true layer inputs there (common.context_inputs; every other key keeps
    its effective row) and on their effective embeddings. (The claim's self+copies mass is
    measured on the head's true inputs in prompts already.)"""
    E = effective_embeddings(model, args.layer)
    Ex = ctx.substitute(E)
    cat = ranks[ranks.kind == "category"]
    covered = ctx.covered(sorted(cat.token_id.unique()))
    note = f"{ctx.n_windows} windows of {ctx.text}"
    rows = []
    for name in [n for n in ("original", "gradient promote") if n in variants]:
        mine = cat[cat.variant == name]
        same = mine[mine.token_id.isin(covered.numpy())]["rank"]
        inctx = self_rank(variants[name].scorer, Ex, covered).double().median().item() if len(covered) else None
        rows += comparison(f"median self-rank of category words, {name}", float(mine["rank"].median()), len(mine),
                           inctx, len(covered), float(same.median()) if len(same) else None, note)
    return comparison_table(rows)


# ----------------------------------------------------------------------------------------------
# Figures (from the saved files only) and report
# ----------------------------------------------------------------------------------------------


def variant_labels(variants: pd.DataFrame) -> dict[str, str]:
    """Figure label of every variant (saved rows): an eigen variant whose alpha missed its target
    says so, with the value reached and the target."""
    labels = {}
    for r in variants.itertuples():
        labels[r.variant] = r.variant
        if str(r.alpha_matched) == "False":
            labels[r.variant] = (f"{r.variant.removesuffix(' (matched)')}: NOT matched (alpha {r.alpha:.3g} "
                                 f"reaches mean log self-mass {r.match_achieved:.2f}, target {r.match_target:.2f})")
    return labels


def unmatched(variants: pd.DataFrame) -> pd.DataFrame:
    """Saved rows of eigen variants whose alpha did not reach its target."""
    return variants[variants.alpha_matched.astype(str) == "False"]


def render(out_dir) -> list[Path]:
    from common.plotting import plt, save_figure, token_heatmap

    out_dir, paths = Path(out_dir), []
    meta = load_meta(out_dir)
    weights = verdict_text(meta)  # the weights' verdict, under every figure
    labels_of = variant_labels(load_table(out_dir, "variants"))
    curve = load_table(out_dir, "loss_curve")
    dirs = list(dict.fromkeys(curve.direction))
    fig, axes = plt.subplots(1, len(dirs), figsize=(5.2 * len(dirs), 3.6), squeeze=False)
    for ax, d in zip(axes[0], dirs):
        c = curve[curve.direction == d]
        ax.plot(c.step, c.train_loss, label="train")
        h = c.dropna(subset=["heldout_loss"])
        ax.plot(h.step, h.heldout_loss, "o-", ms=3, label="held-out")
        ax.set_xlabel("step")
        ax.set_ylabel("-mean log m + keep KL" if d == "promote" else "softplus(log m - target) + keep KL")
        if (c.train_loss > 0).all() and c.train_loss.max() / max(c.train_loss.min(), 1e-30) > 100:
            ax.set_yscale("log")
        ax.set_title(f"{d} self-attention")
        ax.legend()
    paths.append(save_figure(fig, out_dir / "loss_curve.png", weights))

    groups = load_table(out_dir, "group_attention")
    group_of = {w: g for g, words in GROUP_TOKENS.items() for w in words}
    names = list(dict.fromkeys(groups.variant))
    labels = [str(q) for q in dict.fromkeys(groups[groups.variant == names[0]]["query"])]
    n, cols = len(labels), min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 5.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        m = groups[groups.variant == name].attention.to_numpy().reshape(n, n)  # saved query-major
        token_heatmap(ax, m, labels, title=fill(labels_of.get(name, name), 44), vmin=0, vmax=1, cmap="viridis",
                      center=None, groups=[group_of.get(w, "") for w in labels])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"Attention among the {n} group tokens (softmax over these keys, effective embeddings)")
    paths.append(save_figure(fig, out_dir / "group_heatmaps.png", weights))

    ranks = load_table(out_dir, "self_ranks")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, g in ranks[ranks.kind == "category"].groupby("variant", sort=False):
        r = np.sort(g["rank"].to_numpy())
        ax.step(r + 1, np.arange(1, len(r) + 1) / len(r), where="post", label=fill(labels_of.get(name, name), 60))
    ax.set_xscale("log")
    ax.set_xlabel("self-rank + 1 over the full vocabulary (1 = own key is the top key)")
    ax.set_ylabel("fraction of query tokens")
    ax.legend(fontsize=7)
    ax.set_title("Where each category word's own key ranks")
    paths.append(save_figure(fig, out_dir / "self_rank.png", weights))
    return paths


def report(results: Results, out_dir: Path) -> None:
    variants, top, word = results.tables["variants"], results.tables["monday_top10"], results.summary["query_word"]
    c = Console(width=max(Console().width, 150))
    t = Table(title="Held-out attention per variant")
    for col in ("variant", "alpha", "self+copies", "log self", "in-category", "in-cat share of non-self", "BOS",
                "score", "median self-rank (category)", "|dW_QK|/|W_QK|"):
        t.add_column(col, no_wrap=col == "alpha")
    for _, r in variants.iterrows():
        alpha = "" if pd.isna(r.alpha) else f"{r.alpha:.3g}" + ("" if str(r.alpha_matched) == "True" else " [red]NOT matched[/]")
        t.add_row(r.variant, alpha, f"{r.mass_self_and_copies:.3g}", f"{r.mean_log_self_mass:.2f}",
                  f"{r.mass_in_category:.3f}",
                  f"{r.in_category_share_of_nonself:.3f}", f"{r.mass_bos:.3f}", f"{r.semantic_score:.3f}",
                  f"{r.category_median_rank:.0f}", f"{r.edit_fro_rel:.3f}")
    c.print(t)
    for r in unmatched(variants).itertuples():
        c.print(f"[bold red]warning:[/] {r.variant} is NOT matched: no alpha reached the target held-out mean log self-mass "
                f"{r.match_target:.3f}; alpha {r.alpha:.4g} (the furthest edit tried) reaches {r.match_achieved:.3f}. "
                "Its row is not a matched comparison (variants.csv: alpha_matched False).")
    t2 = Table(title=f"The 10 most attended tokens for {word!r} over the vocabulary")
    t2.add_column("#")
    names = list(dict.fromkeys(top.variant))
    for n in names:
        t2.add_column(n)
    for i in range(10):
        row = [str(i + 1)]
        for n in names:
            r = top[(top.variant == n) & (top["rank"] == i + 1)].iloc[0]
            tok = repr(r.token)[1:-1]
            row.append(f"[bold]{tok}[/]" if r.is_query else tok)
        t2.add_row(*row)
    c.print(t2)
    if line := context_text(out_dir):
        c.print(line)


@keeps_state
def main(argv: list[str] | None = None) -> int:
    """Optimise dW_Q, dW_K of the head on its cached layer input (per direction), evaluate every
    variant on held-out prompts, match eigenvalue steering to the gradient result, then view every
    variant over the vocabulary; save, draw from the saved files, report."""
    args = parse_args(argv)
    model, out_dir = start(args, SCRIPT)
    word_id = check_args(model, args)
    results = compute(model, args, word_id)
    save_results(out_dir, results, args, SCRIPT, weights=weights_verdict(args.model), meta={
        "matching": "eigen alpha matched on held-out mean log self-mass",
        "n_rank_queries_total": int(results.tables["self_ranks"].token_id.nunique())})
    write_json(out_dir / "effective_embeddings.json", effective_record(model, args.layer, args.head))
    render(out_dir)
    report(results, out_dir)
    return 0


# -- claims (common/claims.py): judged from the saved variants.csv ---------------------------------

SELF_MASS_BEFORE, SELF_MASS_AFTER = 0.05, 0.5  # mass on self + copies: off before, on after the update


def check_gradient_steering(out_dir) -> Evidence:
    """Mass on self and earlier copies before (< 0.05) and after (> 0.5) the promoting gradient update."""
    v = load_table(out_dir, "variants").set_index("variant")
    if "gradient promote" not in v.index:
        return Evidence("no promoting update in this run (--direction suppress)")
    o, p = float(v.loc["original", "mass_self_and_copies"]), float(v.loc["gradient promote", "mass_self_and_copies"])
    good = o < SELF_MASS_BEFORE and p > SELF_MASS_AFTER
    bad = o > SELF_MASS_AFTER or p < SELF_MASS_BEFORE
    return with_context(Evidence(f"mass on self+copies: original {o:.3g}, after the gradient update {p:.3g}",
                    {"self_mass_original": o, "self_mass_promoted": p},
                    published=REPRODUCED if good else DIFFERS if bad else INCONCLUSIVE, holds=bool(good)), out_dir)


CLAIMS = [Claim(
    "gradient-steering", SCRIPT, "A gradient update of W_Q/W_K steers self-attention back on", ORIGINAL, "qualitative",
    "group_heatmaps.png", "variants.csv",
    f"self+copies mass < {SELF_MASS_BEFORE} before and > {SELF_MASS_AFTER} after the promoting update; differs when "
    f"the head already attends to itself (> {SELF_MASS_AFTER}) or the update leaves it under {SELF_MASS_BEFORE}",
    check_gradient_steering, token_space=True)]


if __name__ == "__main__":
    raise SystemExit(main())
