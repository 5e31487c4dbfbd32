"""Replace one head's attention by a hypothesis and measure what the model's output loses.

Three kinds of replacement of one head (``head`` of layer ``layer``; L and H in hook names), each
leaving the head's values and W_O untouched:

* **pattern**: ``blocks.L.attn.hook_pattern[:, H]`` is overwritten by a given pattern, e.g.
  :func:`rules_pattern` (L1H5's three rules);
* **scores**: the head's attention logits are recomputed from its own LN-normalised input
  (``blocks.L.ln1.hook_normalized``) with an edited QK circuit (a :class:`common.factored.Factored`
  scorer: bilinear part plus the bias cross-terms, already divided by the attention scale) and
  written to ``blocks.L.attn.hook_attn_scores[:, H]`` with the causal mask applied as
  TransformerLens does (-inf above the diagonal), so the model's own softmax gives the pattern;
* **z**: ``blocks.L.attn.hook_z[:, :, H]`` through a function, for mean and resample ablation.

The head's scores from its layer input are computed here and nowhere else: :func:`head_scores`
for a factored scorer, :func:`qk_scores` for raw W_Q, W_K, b_Q, b_K tensors (differentiable, for
optimising the weights), both on :func:`layer_input`'s LN-normalised input.

Everything before layer L is the same in every run, so :func:`cache_inputs` runs layers 0..L
once per window and keeps ``blocks.L.hook_resid_pre``; each replacement then runs only layers
L..end from that residual (``start_at_layer``).

Devices: every hook and scorer computes on the device of the activations it is given (the model's
device): a scorer built on the CPU (common.factored, common.head_qk build them there) is moved
once per device (:func:`scorer_on`), qk_scores' weights likewise, and every tensor made here is
made on that device. :func:`cache_inputs` keeps its (large) cache on the CPU on purpose;
:func:`run_from_layer` moves it back.

Categories on natural text (:func:`categories_from_lists`): every single-token spelling of a
listed word counts (" Monday", "Monday" at a line start, " He" at a sentence start, " john";
``common.prompts.category_variant_ids``), where it is a whole word (not "Red" in
"Redistribution"; ``common.natural_text.WordBoundaries``). Spellings that are several tokens
(" monday" is " m" + "onday") have no single token to put in a category and count as none.

The effect of a replacement is the per-token KL(clean || replaced) of next-token distributions,
over every non-BOS position (position 0 is identical in every run: BOS can only attend to itself
and the ablations leave it alone). :func:`common.stats.explained_fraction` turns two such KLs into
1 - KL(clean, hypothesis) / KL(clean, ablated), with a bootstrap over windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from common.factored import Factored
from common.hook_names import act_name
from common.natural_text import WordBoundaries, word_boundaries
from common.prompts import category_variant_ids, mask_from_categories

# ----------------------------------------------------------------------------------------------
# Categories and the rules' pattern
# ----------------------------------------------------------------------------------------------


@dataclass
class CategoryMap:
    """token id -> category index, with category names and where they came from."""

    lookup: torch.Tensor  # [d_vocab] long, -1 for tokens in no category
    names: list[str]
    source: str
    words: WordBoundaries | None = None  # natural text: a token counts only where it is a whole word

    def of(self, token_id: int) -> int:
        return int(self.lookup[token_id]) if 0 <= token_id < len(self.lookup) else -1

    def name(self, token_id: int) -> str:
        c = self.of(token_id)
        return self.names[c] if c >= 0 else ""

    @property
    def n_tokens(self) -> int:
        return int((self.lookup >= 0).sum())

    def of_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Category of every position of ``tokens`` [batch, pos] (-1: none), on their device:
        the token's category where it is a whole word (with ``words``), else -1."""
        cats = self.lookup.to(tokens.device)[tokens]
        if self.words is not None:
            cats = cats.masked_fill(~self.words.whole_words(tokens), -1)
        return cats


def categories_from_lists(tokenizer, d_vocab: int) -> CategoryMap:
    """The word lists of :data:`common.prompts.CATEGORIES`, as natural text spells them: every
    spelling of a word that is one GPT-2 token (with or without the leading space; as listed,
    capitalised or lower-case; ``common.prompts.category_variant_ids``), counted where it is a
    whole word of the text (``common.natural_text.WordBoundaries``)."""
    ids = category_variant_ids(tokenizer)
    lookup = torch.full((d_vocab,), -1, dtype=torch.long)
    for c, toks in enumerate(ids.values()):
        lookup[torch.tensor(toks)] = c
    return CategoryMap(lookup, list(ids), "category lists (common.prompts.CATEGORIES, every single-token "
                       "spelling of each word, where it is a whole word)", word_boundaries(tokenizer, d_vocab))


ID_COLUMNS = ("id", "token_id")
COMMUNITY_COLUMNS = ("community", "cluster")


def categories_from_communities(path: str | Path, d_vocab: int) -> CategoryMap:
    """A clustering.py community table: a token-id column (``id`` or ``token_id``) and a
    ``community`` column. A community of a single token holds no "same category, different
    token" pair, so its token counts as in no category (the rules send it to BOS either way).
    BOS is never a member."""
    path = Path(path)
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: cannot read community table {path}: {exc}") from None
    id_col = next((c for c in ID_COLUMNS if c in df.columns), None)
    com_col = next((c for c in COMMUNITY_COLUMNS if c in df.columns), None)
    if id_col is None or com_col is None:
        raise SystemExit(
            f"error: {path}: expected a token-id column {ID_COLUMNS} and a community column "
            f"{COMMUNITY_COLUMNS}; found {list(df.columns)}"
        )
    try:
        ids = df[id_col].astype("int64").to_numpy()
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {path}: column {id_col!r} must hold integer token ids ({exc})") from None
    labels = df[com_col].astype(str).to_numpy()
    ok = (ids >= 0) & (ids < d_vocab) & (ids != 50256)
    ids, labels = ids[ok], labels[ok]
    _, first = np.unique(ids, return_index=True)  # a token listed twice keeps its first community
    ids, labels = ids[np.sort(first)], labels[np.sort(first)]
    sizes = pd.Series(labels).value_counts()
    keep = sizes.loc[labels].to_numpy() >= 2
    ids, labels = ids[keep], labels[keep]
    if not len(ids):
        raise SystemExit(f"error: {path}: no community with two or more tokens within the vocabulary (0..{d_vocab - 1})")
    names = sorted(set(labels), key=lambda s: (len(s), s))
    index = {n: i for i, n in enumerate(names)}
    lookup = torch.full((d_vocab,), -1, dtype=torch.long)
    lookup[torch.from_numpy(ids)] = torch.tensor([index[s] for s in labels], dtype=torch.long)
    return CategoryMap(lookup, [f"community {n}" for n in names], f"communities from {path}")


def rules_mask(tokens: torch.Tensor, cats: CategoryMap) -> torch.Tensor:
    """Support [batch, q, k] of the rules' pattern: :func:`common.prompts.ideal_mask` with the
    categories looked up in a table (earlier keys k >= 1 in the query's category that are a
    different token; BOS (k = 0) when there is none)."""
    return mask_from_categories(tokens, cats.of_tokens(tokens))


def rules_pattern(tokens: torch.Tensor, cats: CategoryMap) -> torch.Tensor:
    """The rules' attention pattern [batch, q, k]: uniform over :func:`rules_mask`'s keys."""
    m = rules_mask(tokens, cats).float()
    return m / m.sum(-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# Hooks
# ----------------------------------------------------------------------------------------------


def pattern_hooks(layer: int, head: int, pattern: torch.Tensor) -> list:
    """Overwrite the head's hook_pattern by ``pattern`` [batch, q, k] (the batch being run)."""

    def fn(t, hook):
        t = t.clone()
        t[:, head] = pattern.to(t.device, t.dtype)
        return t

    return [(act_name("pattern", layer), fn)]


def scorer_on(scorer: Factored, device) -> Factored:
    """``scorer`` with its tensors on ``device`` (the same object when they are there already)."""
    device = torch.device(device)
    parts = (scorer.left, scorer.right, scorer.left_bias, scorer.right_bias)
    if all(t is None or t.device == device for t in parts):
        return scorer
    mv = lambda t: None if t is None else t.to(device)
    return Factored(mv(scorer.left), mv(scorer.right), mv(scorer.left_bias), mv(scorer.right_bias))


def head_scores(scorer, x: torch.Tensor) -> torch.Tensor:
    """Causally masked attention logits [batch, q, k] of ``scorer`` (a common.factored.Factored with
    biases and scale included) on LN-normalised inputs ``x`` [batch, pos, d_model], computed on
    ``x``'s device."""
    qf, kf = scorer_on(scorer, x.device).project(x, x)
    return _causal(qf @ kf.transpose(-1, -2)).to(x.dtype)


def qk_scores(x: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, b_Q: torch.Tensor | None = None,
              b_K: torch.Tensor | None = None, attn_scale: float = 1.0) -> torch.Tensor:
    """Causally masked attention logits [batch, q, k] of a head given as tensors: W_Q, W_K
    [d_model, d_head], b_Q, b_K [d_head] (None: zero), on LN-normalised inputs ``x`` [batch, pos,
    d_model]: (x W_Q + b_Q)(x W_K + b_K)^T / attn_scale, in the order TransformerLens computes
    them, on ``x``'s device (weights elsewhere are moved there). Differentiable in every tensor
    (gradient_steering optimises W_Q and W_K through it); :func:`head_scores` is the same for a
    factored scorer."""
    dev = x.device
    q, k = x @ W_Q.to(dev), x @ W_K.to(dev)
    if b_Q is not None:
        q = q + b_Q.to(dev)
    if b_K is not None:
        k = k + b_K.to(dev)
    return _causal(q @ k.transpose(-1, -2) / attn_scale)


def _causal(s: torch.Tensor) -> torch.Tensor:
    """-inf above the diagonal of [..., q, k] scores (TransformerLens' causal mask)."""
    n = s.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=s.device).tril()
    return s.masked_fill(~causal, float("-inf"))


def _head_input(x: torch.Tensor, head: int) -> torch.Tensor:
    """hook_normalized of one head: [batch, pos, d_model] (split q/k/v inputs carry a head axis)."""
    return x if x.dim() == 3 else x[:, :, head]


@torch.no_grad()
def layer_input(model, tokens: torch.Tensor, layer: int, head: int, batch_size: int = 64) -> torch.Tensor:
    """``blocks.L.ln1.hook_normalized`` [n, pos, d_model] for ``tokens``, on the model's device: the
    LN-normalised input the head's W_Q and W_K read (fold_ln), which no edit of layer L changes.
    Runs layers 0..L only."""
    name = act_name("normalized", layer)
    out, seen = [], {}

    def save(t, hook):  # fires once per q/k/v input in some TransformerLens versions: all equal
        seen["x"] = t.detach()

    tokens = tokens.to(model.cfg.device)
    for s in range(0, len(tokens), batch_size):
        model.run_with_hooks(tokens[s : s + batch_size], stop_at_layer=layer + 1, fwd_hooks=[(name, save)])
        out.append(_head_input(seen.pop("x"), head))
    return torch.cat(out)


def score_hooks(layer: int, head: int, scorer) -> list:
    """Replace the head's attention logits by ``scorer``'s, computed from the same forward's
    ``blocks.L.ln1.hook_normalized`` (the exact input W_Q and W_K read under fold_ln)."""
    seen: dict[str, torch.Tensor] = {}
    placed: dict[torch.device, Factored] = {}  # the scorer on each device it has met

    def save(t, hook):
        seen["x"] = t

    def replace(t, hook):
        if t.device not in placed:
            placed[t.device] = scorer_on(scorer, t.device)
        t = t.clone()
        t[:, head] = head_scores(placed[t.device], _head_input(seen.pop("x"), head))
        return t

    return [(act_name("normalized", layer), save), (act_name("attn_scores", layer), replace)]


def z_hooks(layer: int, head: int, fn: Callable) -> list:
    """Apply ``fn(z_head [batch, pos, d_head], hook)`` to the head's slice of hook_z."""

    def hook_fn(t, hook):
        t = t.clone()
        t[:, :, head] = fn(t[:, :, head], hook)
        return t

    return [(act_name("z", layer), hook_fn)]


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def cache_inputs(model, tokens: torch.Tensor, layer: int, head: int, batch_size: int = 8,
                 progress: bool = False, scorer=None) -> dict[str, torch.Tensor]:
    """Run layers 0..L once: ``resid_pre`` [n, pos, d_model] (the input of layer L), the head's
    ``z`` [n, pos, d_head] and ``pattern`` [n, q, k]; with ``scorer`` also ``recomputed``, the
    pattern that scorer gives (a check that the score replacement is exact)."""
    names = {
        "resid_pre": act_name("resid_pre", layer),
        "z": act_name("z", layer),
        "pattern": act_name("pattern", layer),
        "x": act_name("normalized", layer),
    }
    out: dict[str, list] = {k: [] for k in (*names, "recomputed")}
    store: dict[str, torch.Tensor] = {}

    def save(t, hook):
        store[hook.name] = t.detach()

    it = range(0, len(tokens), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"layers 0..{layer}", unit="batch", leave=False)
    for s in it:
        model.run_with_hooks(tokens[s : s + batch_size].to(model.cfg.device), stop_at_layer=layer + 1,
                             fwd_hooks=[(n, save) for n in names.values()])
        out["resid_pre"].append(store[names["resid_pre"]].cpu())
        out["z"].append(store[names["z"]][:, :, head].cpu())
        out["pattern"].append(store[names["pattern"]][:, head].cpu())
        if scorer is not None:
            x = _head_input(store[names["x"]], head)
            out["recomputed"].append(torch.softmax(head_scores(scorer, x.cpu()), -1))
    res = {k: torch.cat(v) for k, v in out.items() if v}
    res.pop("x", None)
    return res


KL_BLOCK_ROWS = 64  # rows (positions) per block of vocabulary-sized temporaries in kl_per_token


def row_blocks(n: int, block: int = KL_BLOCK_ROWS) -> list[slice]:
    """``n`` rows in contiguous near-equal blocks of at most ``block`` rows (so no block is a sliver:
    every block has at least min(n, block // 2) rows)."""
    k = max(1, -(-n // block))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def log_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last axis of float32 ``logits``, written back into ``logits`` block by
    block of rows (the same numbers as torch.log_softmax on the whole tensor: it is row-wise), so
    the log-probs cost no second vocabulary-sized tensor."""
    flat = logits.view(-1, logits.shape[-1])
    for r in row_blocks(len(flat)):
        flat[r] = torch.log_softmax(flat[r], -1)
    return logits


def kl_per_token(clean_logp: torch.Tensor, logits: torch.Tensor, clean_p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(clean || other) [batch, pos] from clean log-probs and the other run's logits.

    Computed block by block of positions (:func:`row_blocks`): every operation is row-wise, so the
    numbers are those of the whole-tensor computation, while the temporaries (the other run's
    log-probs, the clean probabilities when ``clean_p`` is not given, their product) are a few
    blocks of rows, not vocabulary-sized tensors of the whole batch.
    """
    shape, vocab = logits.shape[:-1], logits.shape[-1]
    lg, lp = logits.reshape(-1, vocab), clean_logp.reshape(-1, vocab)
    cp = clean_p.reshape(-1, vocab) if clean_p is not None else None
    out = torch.empty(len(lg), dtype=lp.dtype, device=lp.device)
    for r in row_blocks(len(lg)):
        d = torch.log_softmax(lg[r].float(), -1)
        d.sub_(lp[r]).neg_()  # log p - log q
        p = cp[r] if cp is not None else lp[r].exp()
        out[r] = torch.linalg.vecdot(p, d).clamp_min(0.0)
    return out.view(shape)


@torch.no_grad()
def final_residual(model, resid_pre: torch.Tensor, layer: int, hooks: list) -> torch.Tensor:
    """What the unembedding reads [batch, pos, d_model]: layers L..end on a cached residual, with
    ``hooks``, then ln_final (the model's own modules, so its hooks fire as in a full forward)."""
    with model.hooks(fwd_hooks=hooks):
        x = model(resid_pre.to(model.cfg.device), start_at_layer=layer, stop_at_layer=model.cfg.n_layers)
        return model.ln_final(x) if model.cfg.normalization_type is not None else x


def unembed(model, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` [..., d_model]: TransformerLens' Unembed (F.linear with the bias fused)
    without the transposed copy of W_U it makes on every call (twice the size of a batch's logits
    at gpt2-small size). The same numbers to float32 round-off, not bit for bit: W_U is read in the
    other memory layout, and the BLAS kernel (the order of its sums) may differ with the layout and
    with the number of rows, differently on different CPUs."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(F.linear(x, model.W_U.T, model.b_U), model.cfg.output_logits_soft_cap)


@torch.no_grad()
def run_from_layer(model, resid_pre: torch.Tensor, layer: int, hooks: list) -> torch.Tensor:
    """Logits of layers L..end on a cached residual, with ``hooks`` (:func:`final_residual`, then
    :func:`unembed`: the model's logits to float32 round-off; hooks on ``unembed.hook_in``/``hook_out``
    do not fire)."""
    return unembed(model, final_residual(model, resid_pre, layer, hooks))
