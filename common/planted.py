"""The planted model: a small GPT-2 whose layer-1 head 5 follows L1H5's three rules by construction.

Why: real gpt2-small weights cannot be downloaded offline, and a test can only check that an
analysis *recovers* a mechanism if the mechanism is known exactly. This model keeps the real GPT-2
vocabulary and tokenizer and the GPT-2 architecture (3 layers, 8 heads of 40 dims, d_model 320,
n_ctx 256, so the post's 255-word prompts fit), and is saved as an ordinary Hugging Face GPT-2 folder, so it is loaded through the same
route as any local model.

Version 4 (issue 22) makes L1H5 as imperfect as gpt2-small's where verdicts depend on it: modest
logits, a part of the category logit shared by every category word and a large generic part, so
that under the post's protocol it scores 0.54 (mass leaks to BOS and to unrelated words) and the
decoy 1.30; no guaranteed eigenvalue gap; BOS heads with 75-90% of their mass on BOS; ordinary
words' queries kept off the category keys' planted coordinates (ORDINARY_QUERY_SHARE), so that
clustering.py's vocabulary graph recovers the categories. Version 3 kept version 2's mechanism and added what gpt2-small
has and a simpler model hides (issue 10): later-layer heads that attend to BOS, non-zero biases and layer-norm parameters
everywhere, full-rank generic heads, positions as large as tokens, a position- and
content-dependent layer 0, a decoy head and a reader head.

**Design coordinates.** Every weight is designed in the coordinates TransformerLens works in after
``fold_ln`` / ``center_writing_weights`` (a head reads the LNPre output x^ = centred x scaled to
RMS 1, so |x^| = sqrt(d_model); ``q = x^ W_Q + b_Q``) and then *unfolded* into raw GPT-2 tensors
with random layer-norm gains g and biases beta (``W_raw = W / g``, ``b_raw = b - beta W_raw``), so
the folded model is exactly the design while every LN weight and bias of the folder is non-trivial.
All writes live in orthonormal blocks of the zero-mean subspace of the residual stream:

* K (category key, one per category), U and V (identity codes: word j of every category gets
  U_j and V_j, orthogonal within a category), N (every non-BOS token), B (BOS): the token
  embedding; O (the rest): random tokens' embedding and every generic write (biases, random
  heads and MLPs);
* P: positions. 20 sine/cosine pairs: a large slow pair (amplitude A_P_SLOW) that turns by only
  SLOW_ARC over positions 0..48, so the positions prompts use share most of their embedding (as
  gpt2-small's first positions do: mean pairwise cosine 0.83 over 1..48), while the later
  positions spread around the opposite side so that the mean over all 256 positions is 0; and
  19 fast pairs (periods 2.5..40, total amplitude A_P_FAST) that tell neighbours apart.
  Per-position norm 1.48, comparable to a category token's 1.81 (gpt2-small: 3.4-5 against
  3-4). The mean over all positions has norm 0.02, the mean over positions 1..48 1.34: the
  contrast of gpt2-small's 0.59 against 3.28 (issue 10, defect 4);
* A: layer-0 attention output; C: MLP0's category output; S: L1H5's output.

Layers (head (l, h)):

* layer 0: 8 generic heads reading token and position (random W_Q, W_K, W_V, sharp enough that
  the output depends on both), writing A. MLP0: neuron c reads K_c and writes C_c, so -- as in
  gpt2-small -- the category signal L1H5 reads is made by MLP0 from the token embedding; the other
  neurons are generic and write O.
* L1H5 (target): W_Q W_K^T = w_C^2 sum_c C_c C_c^T + w_C beta (sum_c C_c)(sum_c C_c)^T
  + w_V^2 sum_j V_j V_j^T - w_U^2 sum_j U_j U_j^T + w_B^2 N B^T + generic. The first term attracts
  same-category keys (rule 1), the second (LOGIT_ANY_CATEGORY) every category key a little; the third is a
  positive token-identity similarity and the third, with the large negative eigenvalues,
  outweighs it (rule 2: net self score LOGIT_SELF), so removing the negative eigenvalues makes each
  token its own top key; the N B^T term plus b_Q (which every query carries) give BOS its logit
  (rule 3), the N B^T term is the planted skew part. "Generic": a small random part (norm
  GENERIC_COLUMN per column) added to W_Q and W_K, then a random change of the head's d_head basis
  (W_Q -> W_Q M, W_K -> W_K M^-T, which leaves W_Q W_K^T unchanged), so no column is a planted
  direction and [W_Q, W_K] has full column rank 80: W_sym has exactly 40 negative and 40 positive
  eigenvalues (Sylvester's law of inertia). The generic part is large (version 4): it leaks
  attention to unrelated words (but never touches BOS: there it would be one undesigned offset
  for every query, see _target_head), and it moves every eigenvalue by up to ||sym(generic part)||_2,
  more than Weyl's inequality needs to guarantee the 12 identity-code eigenvalues -w_U^2 a gap
  to the other 28 negative ones, as in gpt2-small; ground_truth() states the designed spectrum
  (float64) and how much of the code subspace its most negative eigenvectors span. W_Q, W_K are orthogonal to P and A: L1H5 reads token identity only. OV: copies the
  attended word's K and U coordinates into S.
* L1H0: previous-token head reading P (the positional contrast for ablations); generic as L1H5.
* layer 2: the DECOY (2, 2) attracts same-category keys through C but does not suppress itself or
  its copies, and likes BOS as much: a partial rule-follower, worse than L1H5 and better than every
  other head on the semantic score; the READER (2, 7) attends to its own position and its W_V
  reads exactly S (V-composition with L1H5), writing K and U back, so L1H5's output reaches the
  logits; the other six heads attend mostly to BOS through b_Q (as most gpt2-small heads do) and
  write a BOS-dependent vector in O, so damaging BOS's residual changes the output.
* every other head: generic and diffuse; every head has b_Q, b_K, b_V, b_O of gpt2-small's size
  relative to its weights (L1H5: |b_Q| = 0.34 ||W_Q||_F, |b_K| = 0.26 ||W_K||_F, as in gpt2-small).

LN scales are not guessed: after designing each layer the build runs the designed layers in numpy
on seeded calibration prompts and reads the LN scales and coordinates the next layer's weights
are set from.

:func:`ground_truth` exposes what tests check against; every number in it comes from this
construction (design choices, or float64 linear algebra on the designed matrices), never from the
analysis code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.gpt2_tokenizer import TOKENIZER_DIR, load_tokenizer
from common.outputs import cache_dir
from common.planted_names import TWINS, planted_twin
from common.prompts import (CATEGORIES, category_prompts, category_token_ids, ideal_mask, random_token_prompts,
                             token_category_map)

VERSION = "planted-v4"
D_MODEL, N_LAYERS, N_HEADS, N_CTX = 320, 3, 8, 256  # 256: the post's 255-word prompt + BOS
D_HEAD = D_MODEL // N_HEADS
D_MLP = 4 * D_MODEL  # TransformerLens' GPT-2 conversion ignores n_inner
LN_EPS = 1e-5
TARGET = (1, 5)
POSITIONAL_HEAD = (1, 0)
DECOY_HEAD = (2, 2)
READER_HEAD = (2, 7)
READER_COMPOSITION = "V"
BOS_HEADS = [(2, h) for h in range(N_HEADS) if (2, h) not in (DECOY_HEAD, READER_HEAD)]
N_CODES = max(len(w) for w in CATEGORIES.values())
N_FREQ = D_HEAD // 2  # positional code: N_FREQ sine/cosine pairs
N_A = 16  # layer-0 attention output block
PROMPT_POSITIONS = (1, 48)  # where the repo's prompts live (BOS + 48 tokens); defect 4

# Residual norms of each written component. The identity codes are shared across categories, so
# they are kept smaller than the category components.
A_K, A_U, A_V, A_N, A_B, A_OTHER = 1.0, 0.8, 0.8, 1.0, 1.0, 1.4
A_C = 1.0  # MLP0 output for a category token
A_P_SLOW, A_P_FAST = 1.35, 0.6  # |p| = sqrt(A_P_SLOW^2 + A_P_FAST^2) = 1.48
SLOW_ARC = 0.5  # radians the slow pair turns over positions 0..48 (prompt positions stay alike)
A_ATTN0 = 0.5  # RMS norm of layer-0 attention output
# Target attention logits (after 1/sqrt(d_head)) for L1H5 on a typical category query. Version 4
# (issue 22): modest enough that L1H5 is as imperfect as gpt2-small's (v3: 12 / -6 / 7, score
# 0.001). Part of the category logit, LOGIT_ANY_CATEGORY, is shared by every category word (a
# content word likes every content word a little): the post's prompts hold nothing but category
# words, so there mass leaks to the other categories and L1H5 scores about 0.6, as gpt2-small does,
# while in natural text (few category words) a word's partners still take most of its mass and the
# three rules explain most of the head's effect. The cost: on prompts of category words only, a
# query with no partner gives much of its mass to the other categories' words instead of BOS.
LOGIT_SAME_CATEGORY, LOGIT_SELF, LOGIT_BOS = 5.5, -6.0, 5.75
LOGIT_ANY_CATEGORY = 2.75  # part of LOGIT_SAME_CATEGORY every category key gets from every category query
LOGIT_BOS_FROM_B_Q = 2.0  # part of LOGIT_BOS carried by b_Q (the rest by the N B^T term)
# Positive part of the identity signal: with the negative eigenvalues removed, self then beats
# every other word of its category by this margin (as scaling them to 0 does in gpt2-small).
LOGIT_IDENTITY = 4.0
LOGIT_PREV_TOKEN = 16.0
LOGIT_READER_SELF = 12.0
# The decoy: a partial rule-follower above the post's floor for every other head (1.2 under the
# post's protocol; v3's 8 / 8 scored 0.48).
LOGIT_DECOY_CATEGORY, LOGIT_DECOY_BOS = 2.0, 4.0
# BOS logit of the BOS heads over their diffuse generic scores: 75-90% of their mass on BOS, as
# gpt2-small's later heads, not v3's 99% (8.5).
LOGIT_BOS_HEADS = 5.0
# Twins (common.planted_names): the one switch each flips in L1H5's planted part.
LOGIT_POSITIONAL = 8.0  # positional: std over the prompt positions of L1H5's key-position logit
LOGIT_SKEW = 14.0  # skew: spectral norm (in logits) of the skew identity-code term
SKEW_BLOCK = 6  # skew: the skew term rotates codes 0-5 among themselves, and 6-11
GENERIC_COLUMN = 0.15  # norm of each head column's generic (random) part (positional heads, decoy)
# The same for L1H5. Version 4: large enough (v3: 0.08) that Weyl's inequality no longer
# guarantees a gap between the identity-code eigenvalues and the generic ones, and that the random
# part leaks mass to unrelated words, as gpt2-small's L1H5 does.
TARGET_GENERIC_COLUMN = 0.5
# The share of that generic part's O rows (what ordinary words' queries read) kept in the planted
# columns of L1H5's W_Q (_target_head): enough that ordinary words keep some attention structure
# and join the categories' communities (largest 161 tokens on the demo graph), little enough that
# they no longer prefer category words of every category.
ORDINARY_QUERY_SHARE = 0.25
GENERIC_LOGIT_STD = {"layer0": 2.5, "diffuse": 1.2}  # std of random heads' attention logits
# Folded bias norms relative to ||W||_F (gpt2-small, mean over heads: b_Q 0.2-0.6, b_K 0.2-0.7;
# L1H5 0.34 and 0.26).
B_Q_RATIO, B_K_RATIO = 0.34, 0.26
B_V_NORM, B_O_NORM, B_OUT_NORM = 0.5, 0.3, 0.3
# Raw layer-norm parameters, gpt2-small-like: gains about 0.2-0.5, bias norms 1-2.
LN_GAIN = ((0.18, 0.04), (0.9, 0.1), (0.22, 0.05), (0.25, 0.05), (0.24, 0.07), (0.29, 0.07))
LN_BIAS_NORM = 1.5


def _gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _ln(x):
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + LN_EPS)


class _Design:
    """Folded (TransformerLens-processed) weights of every layer, filled in layer by layer."""

    def __init__(self, d: int):
        H, dh, m = N_HEADS, D_HEAD, D_MLP
        self.layers = [
            {"W_Q": np.zeros((H, d, dh)), "W_K": np.zeros((H, d, dh)), "W_V": np.zeros((H, d, dh)),
             "W_O": np.zeros((H, dh, d)), "b_Q": np.zeros((H, dh)), "b_K": np.zeros((H, dh)),
             "b_V": np.zeros((H, dh)), "b_O": np.zeros(d), "W_in": np.zeros((d, m)), "b_in": np.zeros(m),
             "W_out": np.zeros((m, d)), "b_out": np.zeros(d)}
            for _ in range(N_LAYERS)
        ]

    def attn(self, l: int, x: np.ndarray, return_pattern: bool = False):
        """Attention output [batch, pos, d] of layer l on residual x (numpy, causal)."""
        p = self.layers[l]
        xh = _ln(x)
        q = xh[:, None] @ p["W_Q"][None] + p["b_Q"][None, :, None]  # [batch, head, pos, d_head]
        k = xh[:, None] @ p["W_K"][None] + p["b_K"][None, :, None]
        v = xh[:, None] @ p["W_V"][None] + p["b_V"][None, :, None]
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D_HEAD)
        n = x.shape[1]
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        a = np.exp(s)
        a /= a.sum(-1, keepdims=True)
        out = ((a @ v) @ p["W_O"][None]).sum(1) + p["b_O"]
        return (out, a) if return_pattern else out

    def mlp(self, l: int, x: np.ndarray) -> np.ndarray:
        p = self.layers[l]
        return _gelu_new(_ln(x) @ p["W_in"] + p["b_in"]) @ p["W_out"] + p["b_out"]

    def block(self, l: int, x: np.ndarray) -> np.ndarray:
        x = x + self.attn(l, x)
        return x + self.mlp(l, x)


def _slow_angles(n_ctx: int, last_prompt: int, arc: float) -> np.ndarray:
    """Angle of the slow positional pair: turns by ``arc`` over positions 0..last_prompt (so the
    prompt positions share most of their embedding, as gpt2-small's first positions do), then
    the later positions spread evenly over an arc around the opposite direction, as wide as
    makes the mean over all n_ctx positions exactly zero (gpt2-small: the 1024-position mean is
    small and nearly orthogonal to the prompt positions' mean)."""
    early = np.arange(last_prompt + 1) * arc / last_prompt
    n_late = n_ctx - len(early)
    pull = np.abs(np.exp(1j * early).sum())
    centre = np.angle(np.exp(1j * early).sum()) + np.pi
    lo, hi = 1e-6, np.pi  # half-width w: n_late sin(w) / w = pull
    for _ in range(100):
        w = (lo + hi) / 2
        lo, hi = (w, hi) if n_late * np.sin(w) / w > pull else (lo, w)
    late = centre + np.linspace(-w, w, n_late)
    return np.concatenate([early, late])


def _scale(x: np.ndarray) -> np.ndarray:
    """LNPre's scale factor sqrt(d)/|x - mean| per position (what multiplies every coordinate)."""
    xc = x - x.mean(-1, keepdims=True)
    return 1.0 / np.sqrt((xc**2).mean(-1) + LN_EPS)


def _random_in(rng, block: np.ndarray, n: int, norm: float) -> np.ndarray:
    """[d, n] random columns in the span of ``block`` [d, k], each of expected norm ``norm``."""
    return block @ rng.normal(size=(block.shape[1], n)) * (norm / np.sqrt(block.shape[1]))


def _bias(rng, block: np.ndarray, norm: float) -> np.ndarray:
    v = block @ rng.normal(size=block.shape[1])
    return v * norm / np.linalg.norm(v)


def _head_bias(rng, n: int, norm: float) -> np.ndarray:
    v = rng.normal(size=n)
    return v * norm / np.linalg.norm(v)


def _orthogonal_skew(rng, n: int, block: int = SKEW_BLOCK) -> np.ndarray:
    """A random n x n skew matrix with every singular value 1, block diagonal over consecutive
    code blocks of size ``block`` (even): Q_b diag(J2, J2, ...) Q_b^T in each. Equal singular
    values give the most Frobenius mass (hence score variance) for a given spectral norm, so the
    skew twin's skew part is large in the scores yet smaller than W_sym's largest eigenvalue; the
    blocks keep that mass among nearby words (the six of each category that the group heatmaps
    show share one block), where a single 12 x 12 rotation would spread it over all pairs."""
    j = np.zeros((n, n))
    for s in range(0, n, block):
        q, _ = np.linalg.qr(rng.normal(size=(block, block)))
        jb = np.zeros((block, block))
        i = np.arange(0, block, 2)
        jb[i, i + 1], jb[i + 1, i] = 1.0, -1.0
        j[s : s + block, s : s + block] = q @ jb @ q.T
    return j


class _Build:
    """What the per-layer builders of :func:`build_state_dict` share: the seeded random streams,
    the tokenizer and category ids, the named residual blocks, the positional code, the
    calibration residuals and the designed layers. Each builder reads what earlier ones set and
    sets its own results here; the order of the builders (and so of the random draws) is part of
    the construction."""

    def __init__(self, seed: int, twin: str | None):
        self.seed, self.twin = seed, twin
        self.rng = np.random.default_rng(seed)
        self.twin_rng = np.random.default_rng([seed, 22])  # the twins' own draws (issue 22)
        self.tok = load_tokenizer()
        self.vocab, self.bos = self.tok.vocab_size, self.tok.bos_token_id
        self.cat_ids = category_token_ids(self.tok)
        self.n_cat = len(self.cat_ids)
        self.d, self.dh, self.H = D_MODEL, D_HEAD, N_HEADS
        self.sqdh = np.sqrt(self.dh)

    # Head builders shared by the layers (every random draw comes from self.rng, in call order).
    def generic_qk(self, layer, hh, space, logit_std):
        """Random W_Q, W_K columns in ``space``: attention logits of std about ``logit_std``
        (an LN output has norm sqrt(d) and, mostly, lies in ``space``)."""
        sigma = np.sqrt(logit_std * space.shape[1] / self.d)
        layer["W_Q"][hh] = _random_in(self.rng, space, self.dh, sigma)
        layer["W_K"][hh] = _random_in(self.rng, space, self.dh, sigma)

    def generic_ov(self, layer, hh, read, write, out_norm):
        """Random OV: value coordinates about N(0, 1), output of norm about ``out_norm`` per key."""
        layer["W_V"][hh] = _random_in(self.rng, read, self.dh, np.sqrt(read.shape[1] / self.d))
        layer["W_O"][hh] = _random_in(self.rng, write, self.dh, out_norm / np.sqrt(self.dh)).T

    def set_biases(self, layer, hh, v_norm=B_V_NORM, designed_bq=None, complete=False):
        """gpt2-small-sized b_Q, b_K (relative to ||W||_F) and b_V. ``designed_bq`` (a part of
        b_Q the mechanism needs) is kept; a random part orthogonal to it fills b_Q's norm (unless
        ``complete``: then it is all of b_Q)."""
        rng, dh = self.rng, self.dh
        nq = B_Q_RATIO * np.linalg.norm(layer["W_Q"][hh])
        bq = np.zeros(dh) if designed_bq is None else np.asarray(designed_bq, float)
        if complete:
            nq = np.linalg.norm(bq)
        elif np.linalg.norm(bq) >= 0.95 * nq:
            raise RuntimeError(f"planted: b_Q's designed part {np.linalg.norm(bq):.2f} exceeds its norm {nq:.2f}")
        r = rng.normal(size=dh)
        if bq.any():
            r -= (r @ bq) / (bq @ bq) * bq
        layer["b_Q"][hh] = bq if complete else bq + r * np.sqrt(nq**2 - bq @ bq) / np.linalg.norm(r)
        layer["b_K"][hh] = _head_bias(rng, dh, B_K_RATIO * np.linalg.norm(layer["W_K"][hh]))
        layer["b_V"][hh] = _head_bias(rng, dh, v_norm)

    def gauge(self, layer, hh, designed_bq=None, ov=False):
        """A random change of the head's d_head basis, W_Q -> W_Q M, W_K -> W_K M^-T (and, with
        ``ov``, W_V -> W_V M', W_O -> M'^-1 W_O): W_Q W_K^T and W_V W_O are unchanged, but no
        column of the head is a planted direction any more (as in a trained head). Returns the
        designed b_Q part in the new basis."""
        rng, dh = self.rng, self.dh

        def rand_m():
            q1, _ = np.linalg.qr(rng.normal(size=(dh, dh)))
            q2, _ = np.linalg.qr(rng.normal(size=(dh, dh)))
            return q1 @ np.diag(np.exp(rng.uniform(-0.2, 0.2, dh))) @ q2

        M = rand_m()
        layer["W_Q"][hh] = layer["W_Q"][hh] @ M
        layer["W_K"][hh] = layer["W_K"][hh] @ np.linalg.inv(M).T
        if ov:
            Mv = rand_m()
            layer["W_V"][hh] = layer["W_V"][hh] @ Mv
            layer["W_O"][hh] = np.linalg.inv(Mv) @ layer["W_O"][hh]
            layer["b_V"][hh] = layer["b_V"][hh] @ Mv
        return None if designed_bq is None else designed_bq @ M

    def bos_attraction(self, layer, hh, logit, b_coord):
        """BOS logit ``logit`` from b_Q: returns a b_Q part bv u (0.7 of b_Q's gpt2-sized norm, u a
        random unit vector) and adds (logit sqrt(d_head) / bv) u to BOS's key only (reading B,
        whose coordinate after LN is ``b_coord``). Queries keep only 0.1 of their component
        along u, so the BOS logit is the same for every query (as in gpt2-small's BOS heads)."""
        bv = 0.7 * B_Q_RATIO * np.linalg.norm(layer["W_Q"][hh])
        u = self.rng.normal(size=self.dh)
        u /= np.linalg.norm(u)
        layer["W_Q"][hh] = layer["W_Q"][hh] @ (np.eye(self.dh) - 0.9 * np.outer(u, u))
        layer["W_K"][hh] += np.outer((logit * self.sqdh / bv / b_coord) * self.B[:, 0], u)
        return bv * u


def _embeddings(b: _Build) -> None:
    """The residual blocks, the token embedding (category words: K_c + U_j + V_j + N) and the
    positional code (slow and fast sine/cosine pairs in P), with the rotation and pair weights the
    positional heads use."""
    rng, d, n_cat = b.rng, b.d, b.n_cat
    # Orthonormal basis of the zero-mean subspace, carved into named blocks.
    g = rng.normal(size=(d, d))
    g[:, 0] = 1.0
    basis, _ = np.linalg.qr(g)
    basis = basis[:, 1:]  # column 0 spans the all-ones direction
    sizes = {"K": n_cat, "C": n_cat, "U": N_CODES, "V": N_CODES, "N": 1, "B": 1, "P": 2 * N_FREQ,
             "A": N_A, "S": n_cat + N_CODES}
    blocks, start = {}, 0
    for name, size in sizes.items():
        blocks[name] = basis[:, start : start + size]
        start += size
    O = basis[:, start:]
    K, C, U, V, N, B, P, A, S = (blocks[k] for k in sizes)
    b.basis, b.O = basis, O
    b.K, b.C, b.U, b.V, b.N, b.B, b.P, b.A, b.S = K, C, U, V, N, B, P, A, S
    b.TOKEN = np.concatenate([K, U, V, N, B, O], 1)  # what the token embedding can write
    b.INPUT0 = np.concatenate([b.TOKEN, P], 1)  # layer 0's input space
    b.BLIND = np.concatenate([K, C, U, V, N, B, O], 1)  # everything but P, A, S: generic parts

    # Token embedding.
    wte = (O @ rng.normal(size=(O.shape[1], b.vocab)).astype(np.float32) * (A_OTHER / np.sqrt(O.shape[1]))).T
    wte += (A_N * N[:, 0]).astype(np.float32)
    category_of = {}
    for c, ids in enumerate(b.cat_ids.values()):
        for j, t in enumerate(ids):
            wte[t] = A_K * K[:, c] + A_U * U[:, j] + A_V * V[:, j] + A_N * N[:, 0]
            category_of[t] = c
    wte[b.bos] = A_B * B[:, 0]
    b.wte, b.category_of = wte, category_of

    # Positional embedding: pair 0 slow (see _slow_angles), pairs 1.. fast; constant norm.
    omega = np.concatenate([[SLOW_ARC / PROMPT_POSITIONS[1]], 2 * np.pi / np.geomspace(2.5, 40.0, N_FREQ - 1)])
    amp = np.concatenate([[A_P_SLOW], np.full(N_FREQ - 1, A_P_FAST / np.sqrt(N_FREQ - 1))])
    ang = np.arange(N_CTX)[:, None] * omega[None, :]
    ang[:, 0] = _slow_angles(N_CTX, PROMPT_POSITIONS[1], SLOW_ARC)
    b.s_pos = np.concatenate([amp * np.cos(ang), amp * np.sin(ang)], 1)  # P coordinates [n_ctx, 40]
    b.wpe = b.s_pos @ P.T
    # rot: row vector s_p @ rot = s_{p-1} (each pair rotated back by one step)
    rot = np.zeros((2 * N_FREQ, 2 * N_FREQ))
    f = np.arange(N_FREQ)
    c_, s_ = np.cos(omega), np.sin(omega)
    rot[f, f], rot[f + N_FREQ, f] = c_, s_
    rot[f, f + N_FREQ], rot[f + N_FREQ, f + N_FREQ] = -s_, c_
    b.rot = rot
    # per-pair weights of the positional heads: the slow pair barely counts (sharp peaks)
    pair_w = np.concatenate([[0.1], np.ones(N_FREQ - 1)])
    b.Dp = np.diag(np.concatenate([pair_w, pair_w]))


def _calibration(b: _Build) -> None:
    """Calibration prompts: the residual of the designed layers is measured on these."""
    tok, seed = b.tok, b.seed
    cal_tokens = torch.cat([category_prompts(tok, 8, 48, seed=1000 + seed, repeat_prob=0.2).tokens,
                            random_token_prompts(tok, 8, 48, n_inserted=12, seed=1000 + seed).tokens]).numpy()
    b.x0 = b.wte[cal_tokens].astype(np.float64) + b.wpe[None, : cal_tokens.shape[1]]
    b.is_cat = np.vectorize(lambda t: t in b.category_of)(cal_tokens)
    b.cat_idx = np.vectorize(lambda t: b.category_of.get(t, 0))(cal_tokens)
    b.is_bos = cal_tokens == b.bos
    b.cal_tokens = cal_tokens
    b.des = _Design(b.d)


def _layer0(b: _Build) -> None:
    """Layer 0: generic heads reading token and position, writing A; MLP0 writes the category C."""
    rng, des, L0, n_cat, x0 = b.rng, b.des, b.des.layers[0], b.n_cat, b.x0
    for hh in range(b.H):
        b.generic_qk(L0, hh, b.INPUT0, GENERIC_LOGIT_STD["layer0"])
        b.generic_ov(L0, hh, b.INPUT0, b.A, 1.0)
        b.set_biases(L0, hh)
    out0 = des.attn(0, x0)
    L0["W_O"] *= A_ATTN0 / np.sqrt((out0[:, 1:] ** 2).sum(-1).mean())  # RMS output norm A_ATTN0
    L0["b_O"] = _bias(rng, b.O, B_O_NORM)
    # MLP0: neuron c reads K_c (gain/bias: active only for category words), writes C_c.
    s_mid = _scale(x0 + des.attn(0, x0))
    k_ln = np.median(s_mid[b.is_cat]) * A_K  # K_c coordinate after LN2 for a category token
    gain, bias = 0.6, -1.5
    L0["W_in"][:, :n_cat] = gain * b.K
    L0["b_in"][:n_cat] = bias
    act = float(_gelu_new(gain * k_ln + bias))
    L0["W_out"][:n_cat] = (A_C / act) * b.C.T
    n_gen = D_MLP - n_cat  # generic neurons: read the layer input, write O, mostly inactive
    L0["W_in"][:, n_cat:] = _random_in(rng, b.INPUT0, n_gen, np.sqrt(b.INPUT0.shape[1] / b.d))
    L0["b_in"][n_cat:] = rng.normal(-1.5, 0.3, size=n_gen)
    L0["W_out"][n_cat:] = _random_in(rng, b.O, n_gen, 0.02).T
    # b_out cancels the category neurons' output at rest (gelu(bias) < 0): a token that is not
    # category c (BOS, an ordinary word, a word of another category) gets no C_c coordinate, so
    # L1H5's category terms see nothing from it (v4 first tuning: BOS had -0.3 on every C_c, a
    # fixed -1.2-logit offset through the any-category term, undesigned).
    L0["b_out"] = _bias(rng, b.O, B_OUT_NORM) - (A_C / act) * float(_gelu_new(bias)) * b.C.sum(1)
    b.x1 = des.block(0, x0)


def _target_head(b: _Build) -> None:
    """L1H5: the planted QK part (with the twin's switch), its OV and its biases."""
    rng, twin, d, dh, sqdh, n_cat = b.rng, b.twin, b.d, b.dh, b.sqdh, b.n_cat
    K, C, U, V, N, B, P, S = b.K, b.C, b.U, b.V, b.N, b.B, b.P, b.S
    L1, x1, is_cat, cat_idx = b.des.layers[1], b.x1, b.is_cat, b.cat_idx
    s1 = b.s1 = _scale(x1)
    ln1 = float(np.median(s1[is_cat]))  # LN1 scale of a category token
    ln1_bos = float(np.median(s1[b.is_bos]))
    # L1H5 planted part (columns: C | V | U | BOS | one free column). The twins' switches:
    # copying flips the sign of the U term; no-mlp0 reads the category from K (the token
    # embedding) instead of C (MLP0); skew adds a skew matrix to the V block; positional adds a
    # key-position term to the BOS column's key (below, once the query's coordinate is known).
    h = TARGET[1]
    CAT = K if twin == "no-mlp0" else C
    x1_ln = _ln(x1)  # the calibration tokens' LN1 output
    c_coord = float(np.median((x1_ln @ CAT)[is_cat, cat_idx[is_cat]]))  # its coordinate after LN1
    w_c = np.sqrt((LOGIT_SAME_CATEGORY - LOGIT_ANY_CATEGORY) * sqdh) / c_coord
    beta = LOGIT_ANY_CATEGORY * sqdh / (w_c * c_coord**2)  # every category key, for every category query
    w_v = np.sqrt(LOGIT_IDENTITY * sqdh) / (ln1 * A_V)
    w_u = np.sqrt((LOGIT_SAME_CATEGORY + LOGIT_IDENTITY - LOGIT_SELF) * sqdh) / (ln1 * A_U)
    w_b = np.sqrt((LOGIT_BOS - LOGIT_BOS_FROM_B_Q) * sqdh / (ln1 * A_N * ln1_bos * A_B))
    u_sign = 1.0 if twin == "copying" else -1.0
    # V block in code coordinates: query word i, key word j get (ln1 A_V)^2 M_V[i, j] / sqrt(d_head)
    M_V = w_v**2 * np.eye(N_CODES)
    b.skew_codes = None
    if twin == "skew":
        b.skew_codes = _orthogonal_skew(b.twin_rng, N_CODES)  # logit LOGIT_SKEW * skew_codes[i, j]
        M_V = M_V + LOGIT_SKEW * sqdh / (ln1 * A_V) ** 2 * b.skew_codes
    cols = np.cumsum([0, n_cat, N_CODES, N_CODES, 1])
    PQ, PK = np.zeros((d, dh)), np.zeros((d, dh))
    PQ[:, : cols[1]], PK[:, : cols[1]] = w_c * CAT, CAT @ (w_c * np.eye(n_cat) + beta * np.ones((n_cat, n_cat)))
    PQ[:, cols[1] : cols[2]], PK[:, cols[1] : cols[2]] = w_v * V, V @ M_V.T / w_v
    PQ[:, cols[2] : cols[3]], PK[:, cols[2] : cols[3]] = w_u * U, u_sign * w_u * U
    PQ[:, cols[3]], PK[:, cols[3]] = w_b * N[:, 0], w_b * B[:, 0]
    b.pos_key = None
    if twin == "positional":
        # A key-position logit f(p) = sum over the fast pairs of a_f sin(omega_f p): zero at BOS's
        # position 0 (sin 0 = 0, so BOS keeps its logit), mean about 0 over positions (so a mean
        # ablation of the positions removes it), std LOGIT_POSITIONAL over the prompt positions.
        # Every non-BOS query carries the BOS column's N coordinate, so every query sees it.
        a = np.zeros(2 * N_FREQ)
        a[N_FREQ + 1 :] = b.twin_rng.normal(size=N_FREQ - 1)
        f_raw = b.s_pos @ a
        q_b = ln1 * A_N * w_b + LOGIT_BOS_FROM_B_Q * sqdh / (ln1_bos * A_B * w_b)  # query coordinate
        sp_key = float(np.median(s1[:, 1:]))
        lo_p, hi_p = PROMPT_POSITIONS
        w_pos = LOGIT_POSITIONAL * sqdh / (q_b * sp_key * f_raw[lo_p : hi_p + 1].std())
        PK[:, cols[3]] += w_pos * (P @ a)
        b.pos_key = (q_b * sp_key * w_pos / sqdh) * f_raw  # the designed logit per key position
    # The generic part never touches BOS: it gives BOS's layer-1 input no query and no key, and
    # the BOS column none at all. BOS's logit is then exactly the designed one for every query
    # (a random part there is one fixed key's offset, shared by every query through the N and
    # bias coordinates all tokens have: +0.9 logits, undesigned, in the first v4 tuning).
    gq, gk = (_random_in(rng, b.BLIND, dh, TARGET_GENERIC_COLUMN) for _ in range(2))
    x_bos = b.BLIND @ (b.BLIND.T @ _ln(x1[:1, :1])[0, 0])  # BOS's LN1 input within the generic part's space
    u_bos = x_bos / np.linalg.norm(x_bos)
    for g in (gq, gk):
        g -= np.outer(u_bos, u_bos @ g)
        g[:, cols[3]] = 0.0
    # Ordinary words' queries barely read the planted columns (C | V | U). There the category
    # keys have large planted coordinates (the any-category term above all), so any random query
    # component an ordinary word has there spreads the category keys by about 1 logit, against 0.1
    # among ordinary keys: every ordinary word's top-attended tokens were then category words of
    # all categories, and on clustering.py's 3000-token graph Leiden merged the categories into
    # communities of 600-900 tokens (the first v4 tuning: issue 22's clustering defect). So in
    # those columns the generic query keeps its rows on the category words' own directions
    # (K, C, U, V) and only ORDINARY_QUERY_SHARE of its O rows (what ordinary words vary in). The
    # rows of what every token has -- N, and the common O vector the biases write (a category
    # word's whole O part, 98% of it) -- move onto each category's K row, scaled by their
    # coordinate's ratio to K_c's: a category query reads what it read before, an ordinary one
    # does not.
    pc = slice(0, cols[3])
    xc = x1_ln[is_cat]
    k_c = (xc @ K)[np.arange(len(xc)), cat_idx[is_cat]]
    o_mean = (xc @ b.O).mean(0)
    shared = np.stack([N[:, 0], b.O @ (o_mean / np.linalg.norm(o_mean))], 1)  # orthonormal
    ratio = np.median((xc @ shared) / k_c[:, None], axis=0)  # their coordinates per unit of K_c
    shared_rows = shared.T @ gq[:, pc]
    cat_dirs = np.concatenate([K, C, U, V], 1)
    inside = cat_dirs @ (cat_dirs.T @ gq[:, pc])
    o_part = gq[:, pc] - inside - shared @ shared_rows  # B was projected out above
    gq[:, pc] = inside + ORDINARY_QUERY_SHARE * o_part + K @ np.tile(ratio @ shared_rows, (n_cat, 1))
    L1["W_Q"][h], L1["W_K"][h] = PQ + gq, PK + gk
    bq = np.zeros(dh)  # b_Q against BOS's key coordinate in the BOS column
    bq[cols[3]] = LOGIT_BOS_FROM_B_Q * sqdh / (ln1_bos * A_B * w_b)
    # OV: copy the attended word's K and U coordinates into S (norm ~1 in the residual).
    read = b.read = np.concatenate([K, U], 1)
    n_ov = b.n_ov = read.shape[1]
    L1["W_V"][h][:, :n_ov] = read / np.sqrt(ln1)
    L1["W_O"][h][:n_ov] = S.T / np.sqrt(ln1)
    L1["W_V"][h][:, n_ov:] = _random_in(rng, b.BLIND, dh - n_ov, 0.02)
    L1["W_O"][h][n_ov:] = _random_in(rng, S, dh - n_ov, 0.02).T
    # b_Q: the BOS part, and the rest of its gpt2-sized norm along the one column no planted key
    # uses (so b_Q prefers no token over another: every key but BOS gets only a generic bias).
    M = b.gauge(L1, h, np.eye(dh), ov=True)  # the basis change; rows: canonical columns
    e_b, e_f = M[cols[3]], M[cols[4]]
    nq, beta_b = B_Q_RATIO * np.linalg.norm(L1["W_Q"][h]), bq[cols[3]]
    a2, a1, a0 = e_f @ e_f, 2 * beta_b * (e_b @ e_f), beta_b**2 * (e_b @ e_b) - nq**2
    beta_f = (-a1 + np.sqrt(a1**2 - 4 * a2 * a0)) / (2 * a2)
    b.set_biases(L1, h, v_norm=0.05, designed_bq=beta_b * e_b + beta_f * e_f, complete=True)
    b.PQ, b.PK, b.w_u = PQ, PK, w_u


def _layer1(b: _Build) -> None:
    """Layer 1: the target L1H5 (:func:`_target_head`), the previous-token head L1H0, generic
    diffuse heads and a generic MLP."""
    rng, dh, sqdh, s_pos, Dp, P = b.rng, b.dh, b.sqdh, b.s_pos, b.Dp, b.P
    L1 = b.des.layers[1]
    _target_head(b)
    h, s1 = TARGET[1], b.s1
    # L1H0: previous-token head. The query at p is rotated back one step, so it matches key p - 1.
    hp = POSITIONAL_HEAD[1]
    sp = float(np.median(s1[:, 1:]))
    peak = sp**2 * (s_pos[10] @ Dp @ Dp @ s_pos[10]) / sqdh
    g_p = np.sqrt(LOGIT_PREV_TOKEN / peak)
    L1["W_Q"][hp] = g_p * P @ b.rot @ Dp + _random_in(rng, b.BLIND, dh, GENERIC_COLUMN)
    L1["W_K"][hp] = g_p * P @ Dp + _random_in(rng, b.BLIND, dh, GENERIC_COLUMN)
    b.gauge(L1, hp)
    b.set_biases(L1, hp)
    b.generic_ov(L1, hp, b.basis, b.O, 0.3)
    # Other layer-1 heads: generic and diffuse.
    for hh in range(b.H):
        if hh not in (h, hp):
            b.generic_qk(L1, hh, b.basis, GENERIC_LOGIT_STD["diffuse"])
            b.generic_ov(L1, hh, b.basis, b.O, 0.3)
            b.set_biases(L1, hh)
    L1["b_O"] = _bias(rng, b.O, B_O_NORM)
    _generic_mlp(rng, L1, b.basis, b.O, 0.4)
    b.x2 = b.des.block(1, b.x1)


def _layer2(b: _Build) -> None:
    """Layer 2: BOS heads, the decoy (category attraction without self-suppression) and the reader
    (V-composition with L1H5), a generic MLP."""
    rng, dh, sqdh, n_cat, C, B, P, S, x2 = b.rng, b.dh, b.sqdh, b.n_cat, b.C, b.B, b.P, b.S, b.x2
    L2, is_cat, cat_idx, Dp = b.des.layers[2], b.is_cat, b.cat_idx, b.Dp
    s2 = _scale(x2)
    ln2 = float(np.median(s2[:, 1:]))
    c2 = float(np.median((_ln(x2) @ C)[is_cat, cat_idx[is_cat]]))  # C_c coordinate after LN
    b2 = float(np.median((_ln(x2) @ B[:, 0])[b.is_bos]))  # B coordinate of BOS after LN
    # BOS heads: diffuse generic scores, plus b_Q against a key column that reads B.
    for (_, hh) in BOS_HEADS:
        b.generic_qk(L2, hh, b.basis, GENERIC_LOGIT_STD["diffuse"] / 2)
        b.generic_ov(L2, hh, b.basis, b.O, 0.3)
        b.set_biases(L2, hh, designed_bq=b.bos_attraction(L2, hh, LOGIT_BOS_HEADS, b2))
        L2["W_V"][hh][:, 0] += 2.0 * B[:, 0] / b2  # BOS's value: about 2 in coordinate 0 ...
        L2["W_O"][hh][0] = _bias(rng, b.O, 0.5)  # ... written as a BOS-specific vector in O
    # Decoy: same-category attraction through C (self and copies included) and an equal BOS logit.
    hd = DECOY_HEAD[1]
    w_d = np.sqrt(LOGIT_DECOY_CATEGORY * sqdh) / c2
    L2["W_Q"][hd] = _random_in(rng, b.BLIND, dh, GENERIC_COLUMN)
    L2["W_K"][hd] = _random_in(rng, b.BLIND, dh, GENERIC_COLUMN)
    L2["W_Q"][hd][:, :n_cat] += w_d * C
    L2["W_K"][hd][:, :n_cat] += w_d * C
    bq = b.bos_attraction(L2, hd, LOGIT_DECOY_BOS, b2)
    b.set_biases(L2, hd, designed_bq=b.gauge(L2, hd, bq))
    b.generic_ov(L2, hd, b.basis, b.O, 0.3)
    # Reader: attends to its own position (P, no rotation); W_V reads S, W_O writes K and U.
    hr = READER_HEAD[1]
    peak = ln2**2 * (b.s_pos[10] @ Dp @ Dp @ b.s_pos[10]) / sqdh
    g_r = np.sqrt(LOGIT_READER_SELF / peak)
    L2["W_Q"][hr] = g_r * P @ Dp + _random_in(rng, b.BLIND, dh, GENERIC_COLUMN)
    L2["W_K"][hr] = g_r * P @ Dp + _random_in(rng, b.BLIND, dh, GENERIC_COLUMN)
    n_ov = b.n_ov
    L2["W_V"][hr][:, :n_ov] = S / np.sqrt(ln2)
    L2["W_O"][hr][:n_ov] = b.read.T / np.sqrt(ln2)
    L2["W_V"][hr][:, n_ov:] = _random_in(rng, S, dh - n_ov, 0.02)
    L2["W_O"][hr][n_ov:] = _random_in(rng, b.O, dh - n_ov, 0.02).T
    b.gauge(L2, hr, ov=True)
    b.set_biases(L2, hr)
    L2["b_O"] = _bias(rng, b.O, B_O_NORM)
    _generic_mlp(rng, L2, b.basis, b.O, 0.4)


def _design_masses(b: _Build) -> dict:
    """Attention masses of the designed layers (numpy) on the calibration prompts: what the
    modest logits give once the generic parts are in (a construction measurement, never the
    analysis code's). L1H5: its BOS mass on the queries with no allowed key but BOS (rule 3); the
    BOS heads: their mean mass on BOS over every query q >= 1."""
    tokens = torch.tensor(b.cal_tokens)
    mask = ideal_mask(tokens, token_category_map(b.tok)).numpy()
    no_key = mask[:, :, 0] & (mask.sum(-1) == 1)
    no_key[:, 0] = False
    _, a1 = b.des.attn(1, b.x1, return_pattern=True)
    _, a2 = b.des.attn(2, b.x2, return_pattern=True)
    bos_heads = [float(a2[:, hh, 1:, 0].mean()) for _, hh in BOS_HEADS]
    return {"target_bos_on_bos_only_queries": float(a1[:, TARGET[1]][..., 0][no_key].mean()),
            "bos_heads_bos_mass": bos_heads}


def _spectrum_truth(b: _Build) -> dict:
    """Ground truth of the target's spectrum, from the designed matrices (float64); raises when
    the construction misses what it promises (full rank of every head, no near-zero eigenvalue).

    Version 4 promises no eigenvalue gap (issue 22: gpt2-small's L1H5 has none): the generic part
    moves every eigenvalue by up to ``perturbation_bound`` (Weyl), and that bound may exceed the
    distance between the identity codes' -w_U^2 and the other negative eigenvalues. What the
    analyses are judged on is stated directly instead: the designed negative eigenvalues and how
    much of the identity-code subspace U the k most negative eigenvectors span."""
    h, w_u = TARGET[1], b.w_u
    L1 = b.des.layers[1]
    W_Q, W_K = L1["W_Q"][h], L1["W_K"][h]
    sym = lambda M: (M + M.T) / 2  # noqa: E731
    plant_sym = sym(b.PQ @ b.PK.T)
    full_sym = sym(W_Q @ W_K.T)
    delta = float(np.linalg.norm(full_sym - plant_sym, 2))  # Weyl: every eigenvalue moves by at most delta
    plant_eig = np.linalg.eigvalsh(plant_sym)
    if b.twin == "copying":  # the identity codes are +w_U^2 now: no planted negative subspace
        planted_neg, weyl_gap = None, None
    else:
        planted_neg = -(w_u**2)
        is_code = np.abs(plant_eig - planted_neg) <= 1e-9 * w_u**2
        if is_code.sum() != N_CODES:
            raise RuntimeError("planted: the identity codes do not give N_CODES eigenvalues -w_U^2")
        # the largest |negative| planted eigenvalue besides them (the positional twin's term can
        # exceed w_U^2: then there is no gap, as there is none by Weyl in the plain model either)
        other_neg = max(0.0, float(-plant_eig[~is_code].min()))
        lo, hi = other_neg + delta, w_u**2 - delta
        weyl_gap = [float(lo), float(hi)] if hi > lo else None  # a gap Weyl guarantees, if any
    full_eig, vecs = np.linalg.eigh(full_sym)  # ascending: the most negative first
    # Full column rank of [W_Q, W_K] for every head -> Sylvester: d_head negative, d_head positive.
    for l, layer in enumerate(b.des.layers):
        for hh in range(b.H):
            sv = np.linalg.svd(np.concatenate([layer["W_Q"][hh], layer["W_K"][hh]], 1), compute_uv=False)
            if sv[-1] < 1e-3 * sv[0]:
                raise RuntimeError(f"planted: head ({l}, {hh}) is not generic (rank-deficient [W_Q, W_K])")
    min_nonzero = np.sort(np.abs(full_eig))[-2 * b.dh]  # 2 d_head non-zero eigenvalues
    if min_nonzero < 1e-4 * np.abs(full_eig).max():
        raise RuntimeError(f"planted: target has a near-zero W_sym eigenvalue ({min_nonzero:.2e})")
    # Share of the identity-code subspace U spanned by the k most negative eigenvectors, k = 1..d_head.
    code_energy = np.cumsum(((b.U.T @ vecs[:, : b.dh]) ** 2).sum(0)) / N_CODES
    return {
        # Sylvester: [W_Q, W_K] has full column rank 2 d_head (checked above, float64), so W_sym
        # has exactly d_head negative and d_head positive eigenvalues -- for every head.
        "n_negative_eigenvalues": b.dh,
        "n_positive_eigenvalues": b.dh,
        # The planted subspace: N_CODES identity-code eigenvalues -w_U^2 of the planted part, each
        # moved by at most perturbation_bound (Weyl); weyl_gap is the interval of |eigenvalue| that
        # Weyl keeps free between them and every other negative one (None: no guaranteed gap).
        # (copying: none; its identity codes are positive eigenvalues +w_U^2, fields None)
        "n_large_negative_eigenvalues": 0 if planted_neg is None else N_CODES,
        "planted_negative_eigenvalue": None if planted_neg is None else float(planted_neg),
        "perturbation_bound": delta,
        "weyl_gap": weyl_gap,
        # The designed W_sym (float64): its d_head negative eigenvalues, ascending; the share of U
        # in the span of the k most negative eigenvectors (entry k - 1; about 0.9 at k = N_CODES:
        # the generic part turns the code eigenvectors partly out of U).
        "negative_eigenvalues": [float(v) for v in full_eig[: b.dh]],
        "code_energy_in_most_negative": [float(v) for v in code_energy],
        "min_abs_eigenvalue": float(min_nonzero),
    }


def _unfold(b: _Build) -> dict[str, np.ndarray]:
    """Unfold the design into raw GPT-2 tensors with random layer-norm parameters
    (``W_raw = W / g``, ``b_raw = b - beta W_raw``)."""
    rng, d = b.rng, b.d
    sd: dict[str, np.ndarray] = {"wte.weight": b.wte, "wpe.weight": b.wpe}
    ln_params = []
    for i in range(N_LAYERS):
        (m1, sd1), (m2, sd2) = LN_GAIN[2 * i], LN_GAIN[2 * i + 1]
        g1 = np.clip(rng.normal(m1, sd1, d), 0.3 * m1, None)
        g2 = np.clip(rng.normal(m2, sd2, d), 0.3 * m2, None)
        ln_params.append((g1, _head_bias(rng, d, LN_BIAS_NORM), g2, _head_bias(rng, d, LN_BIAS_NORM)))
    for i, p in enumerate(b.des.layers):
        g1, beta1, g2, beta2 = ln_params[i]
        raw = {}
        for name in ("Q", "K", "V"):
            W = p[f"W_{name}"] / g1[None, :, None]  # [H, d, dh]
            raw[name] = (W.transpose(1, 0, 2).reshape(d, d), (p[f"b_{name}"] - np.einsum("d,hde->he", beta1, W)).reshape(-1))
        sd[f"h.{i}.ln_1.weight"], sd[f"h.{i}.ln_1.bias"] = g1, beta1
        sd[f"h.{i}.attn.c_attn.weight"] = np.concatenate([raw[n][0] for n in "QKV"], 1)
        sd[f"h.{i}.attn.c_attn.bias"] = np.concatenate([raw[n][1] for n in "QKV"])
        sd[f"h.{i}.attn.c_proj.weight"] = p["W_O"].reshape(d, d)
        sd[f"h.{i}.attn.c_proj.bias"] = p["b_O"]
        W_in = p["W_in"] / g2[:, None]
        sd[f"h.{i}.ln_2.weight"], sd[f"h.{i}.ln_2.bias"] = g2, beta2
        sd[f"h.{i}.mlp.c_fc.weight"], sd[f"h.{i}.mlp.c_fc.bias"] = W_in, p["b_in"] - beta2 @ W_in
        sd[f"h.{i}.mlp.c_proj.weight"], sd[f"h.{i}.mlp.c_proj.bias"] = p["W_out"], p["b_out"]
    sd["ln_f.weight"] = np.clip(rng.normal(1.0, 0.2, d), 0.3, None)  # ln_f: gain ~1, small bias
    sd["ln_f.bias"] = _head_bias(rng, d, 0.3)
    return sd


def _truth(b: _Build, spectrum: dict) -> dict:
    """The ground truth: design choices, and numbers measured on the designed layers."""
    twin, L1, h, wpe = b.twin, b.des.layers[1], TARGET[1], b.wpe

    def planted_bias(layer, hh):
        return {"b_Q": float(np.linalg.norm(layer["b_Q"][hh])), "b_K": float(np.linalg.norm(layer["b_K"][hh])),
                "W_Q_fro": float(np.linalg.norm(layer["W_Q"][hh])), "W_K_fro": float(np.linalg.norm(layer["W_K"][hh]))}

    pos_norm = np.linalg.norm(wpe, axis=1)
    truth = {
        "version": VERSION,
        "seed": b.seed,
        "twin": twin,
        "false_claims": list(TWINS[twin].false_claims) if twin else [],
        "n_layers": N_LAYERS,
        "target": list(TARGET),
        "positional_head": list(POSITIONAL_HEAD),
        "decoy_head": list(DECOY_HEAD),
        "reader_head": list(READER_HEAD),
        "reader_composition": READER_COMPOSITION,
        "bos_heads": [list(x) for x in BOS_HEADS],
        "prompt_positions": list(PROMPT_POSITIONS),
        "categories": {name: ids for name, ids in b.cat_ids.items()},
        **spectrum,
        "design_masses": _design_masses(b),
        "logits": {"same_category": LOGIT_SAME_CATEGORY, "bos": LOGIT_BOS,
                   "any_category": LOGIT_ANY_CATEGORY,  # another category's word, for a category query
                   # copying: the U term adds instead of subtracting its (5.5 + 4 + 6) logits
                   "self": (2 * (LOGIT_SAME_CATEGORY + LOGIT_IDENTITY) - LOGIT_SELF if twin == "copying"
                            else LOGIT_SELF),
                   "bos_from_b_Q": LOGIT_BOS_FROM_B_Q,
                   "self_without_negative_eigenvalues": LOGIT_SAME_CATEGORY + LOGIT_IDENTITY,
                   "previous_token": LOGIT_PREV_TOKEN, "decoy_category": LOGIT_DECOY_CATEGORY,
                   "decoy_bos": LOGIT_DECOY_BOS, "bos_heads": LOGIT_BOS_HEADS},
        "target_bias": planted_bias(L1, h),
        "position_norm": {"per_position_mean": float(pos_norm.mean()),
                          "mean_all_positions": float(np.linalg.norm(wpe.mean(0))),
                          "mean_prompt_positions": float(np.linalg.norm(wpe[PROMPT_POSITIONS[0] : PROMPT_POSITIONS[1] + 1].mean(0))),
                          "category_token": float(np.sqrt(A_K**2 + A_U**2 + A_V**2 + A_N**2))},
    }
    if twin == "positional":
        truth["positional_key_logit"] = [float(v) for v in b.pos_key]  # per key position, designed
        truth["logits"]["positional_std"] = LOGIT_POSITIONAL
    if twin == "skew":
        truth["skew_codes"] = b.skew_codes.tolist()  # logit LOGIT_SKEW * skew_codes[i, j], word i -> word j
        truth["logits"]["skew_spectral"] = LOGIT_SKEW
    if twin == "no-mlp0":
        truth["category_read_from"] = "K"  # the token embedding (the plain model: "C", MLP0)
    return truth


def build_state_dict(seed: int = 0, twin: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The Hugging Face GPT-2 state dict (Conv1D [in, out] layout) and the ground truth.

    ``twin`` (a name of :data:`common.planted_names.TWINS`, None for the plain model) flips one
    switch in L1H5's planted part; every other weight is drawn from the same random stream as the
    plain model's (the twin's own random numbers come from a separate generator), so a twin differs
    from the plain model in L1H5 (and in what later layers calibrate on its output) only.

    The builders run in this order, each on the shared :class:`_Build` (the order of the random
    draws is part of the construction: the plain model's weights are bit-identical to those of
    the single-function builder before the split, tests/test_planted.py)."""
    if twin is not None and twin not in TWINS:
        raise ValueError(f"unknown planted twin {twin!r} (known: {', '.join(TWINS)})")
    b = _Build(seed, twin)
    _embeddings(b)
    _calibration(b)
    _layer0(b)
    _layer1(b)
    _layer2(b)
    spectrum = _spectrum_truth(b)
    sd = _unfold(b)
    truth = _truth(b, spectrum)
    tensors = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in sd.items()}
    return tensors, truth


def _generic_mlp(rng, layer: dict, space: np.ndarray, out: np.ndarray, out_norm: float) -> None:
    """A random MLP reading ``space`` (pre-activations about N(-0.5, 1)) and writing ``out``
    (output norm about ``out_norm``)."""
    m, d = D_MLP, space.shape[0]
    layer["W_in"] = _random_in(rng, space, m, np.sqrt(space.shape[1] / d))
    layer["b_in"] = rng.normal(-0.5, 0.3, size=m)
    layer["W_out"] = _random_in(rng, out, m, out_norm / (0.45 * np.sqrt(m))).T
    layer["b_out"] = _bias(rng, out, B_OUT_NORM)


def write_folder(folder: Path, seed: int = 0, twin: str | None = None) -> None:
    """Write the planted model (or a twin) as a Hugging Face GPT-2 folder (config, safetensors,
    tokenizer, ground_truth.json)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tensors, truth = build_state_dict(seed, twin)
    cfg = GPT2Config(
        vocab_size=tensors["wte.weight"].shape[0], n_positions=N_CTX, n_embd=D_MODEL,
        n_layer=N_LAYERS, n_head=N_HEADS, activation_function="gelu_new", layer_norm_epsilon=LN_EPS,
        bos_token_id=50256, eos_token_id=50256,
    )
    hf = GPT2LMHeadModel(cfg)
    missing, unexpected = hf.transformer.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.endswith("attn.bias") and not m.endswith("masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"planted state dict mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(folder))
    for f in TOKENIZER_DIR.glob("*.json"):
        shutil.copy(f, folder / f.name)
    shutil.copy(TOKENIZER_DIR / "merges.txt", folder / "merges.txt")
    (folder / "ground_truth.json").write_text(json.dumps(truth, indent=1))


def _source_fingerprint() -> str:
    """Rebuild the cached folder whenever this construction or the word lists change."""
    here = Path(__file__).parent
    src = b"".join((here / f).read_bytes() for f in ("planted.py", "planted_names.py", "prompts.py"))
    return hashlib.sha256(src).hexdigest()[:12]


def planted_folder(seed: int = 0, twin: str | None = None) -> Path:
    """The cached planted-model folder (of ``twin``, None for the plain model), built (atomically)
    on first use; each twin has its own folder."""
    if twin is not None and twin not in TWINS:
        planted_twin(f"planted:{twin}")  # SystemExit naming the twins
    name = VERSION if twin is None else f"{VERSION}-{twin}"
    folder = cache_dir() / f"{name}-seed{seed}-{_source_fingerprint()}"
    if (folder / "ground_truth.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        write_folder(tmp, seed, twin)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race; its folder is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ground_truth(seed: int = 0, twin: str | None = None) -> dict:
    """The ground truth of the plain planted model (``twin`` None) or of a twin."""
    return json.loads((planted_folder(seed, twin) / "ground_truth.json").read_text())
