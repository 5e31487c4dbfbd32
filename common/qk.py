"""The QK circuit of one head, kept factored: spectra, steering edits and streamed scoring.

Conventions (used by every script of this repo)
------------------------------------------------
* **Orientation.** ``W_QK = W_Q @ W_K.T`` is [d_model, d_model]; **rows are queries, columns are
  keys**: the bilinear score of a query vector x_q against a key vector x_k is x_q^T W_QK x_k.
  Scores over token sets are [queries, keys].
* **Scaling and biases.** The spectral objects (:meth:`Factored.sym_eig`, singular values, norms,
  steering edits) use the **weights only**: no 1/sqrt(d_head), no b_Q/b_K.
  :meth:`FactoredQK.scorer` returns the same head with ``(x_q W_Q + b_Q)(x_k W_K + b_K)^T /
  sqrt(d_head)``, i.e. the model's real attention logits on position-free inputs (TransformerLens
  with ``fold_ln`` folds LN1's weight into W_Q/W_K and its bias into b_Q/b_K, so LN-normalised
  inputs are exactly what the head reads). A steering edit applied to a scorer changes only its
  bilinear part; the bias cross-terms stay as they are.
* **Factored form.** Any matrix here is a :class:`Factored` ``left @ right.T`` (plus optional row
  biases), never formed densely unless :meth:`Factored.dense` is asked for: the symmetric part
  W_sym = (W_QK + W_QK^T)/2 = [W_Q, W_K] [W_K, W_Q]^T / 2 and the skew part
  W_skew = (W_QK - W_QK^T)/2 = [W_Q, W_K] [W_K, -W_Q]^T / 2 both live in the span of the
  2 * d_head columns of A = [W_Q, W_K]. With A = Q T (thin QR), W_sym = Q (T S T^T) Q^T, so the
  eigendecomposition of a 2*d_head x 2*d_head matrix gives *every* non-zero eigenpair of W_sym
  exactly (float64), without ever forming d_model x d_model, let alone vocab x vocab.
* **Effective embeddings** (:func:`effective_embeddings`): for every token t, the position-free
  input that layer-L attention sees (the original study's definition, for L = 1):
  LN( W_E[t] + mean_p W_pos[p] + sum_{l<L} [mean attn_out_l + MLP_l(...)] ), where each layer's
  attention output is replaced by its mean and each MLP is applied to the running token vector.
  **Where the means are taken:** W_pos over all n_ctx positions; each layer's attention output
  (``blocks.l.hook_attn_out``) over every non-BOS position of a fixed, seeded prompt mix
  (16 category prompts and 16 random-token prompts with 12 inserted category words, 48 tokens
  each, seed 0; see :func:`mean_attention_outputs`). "LN" is LNPre (centre, scale to unit RMS):
  ``model.blocks[L].ln1``, because the model is loaded with fold_ln.
* **Self-rank** of a query token t: the number of keys over the FULL vocabulary whose score is
  *strictly* higher than the score of t's own key (0 = self is the top key; the own key is
  excluded by index). Computed streamed in key chunks (:func:`self_rank`); for a whole grid of
  steering edits at once, :func:`self_rank_grid`.
* **Effective-basis spectra**: E W E^T / n_vocab ([vocab, vocab]) has the spectra of
  :meth:`Factored.in_gram` applied to E^T E / n_vocab (:func:`embedding_gram`), a 2r x 2r problem.

Check against the published numbers: on the real gpt2-small attention weights (../shared/gpt2),
:meth:`FactoredQK.from_gpt2_state_dict` (LN folded as TransformerLens does) gives for L1H5, in the
residual basis with weights only, 33 negative eigenvalues among the 64 largest and largest
singular values 1.861 (W_sym) and 1.347 (W_skew): the post's 33 of 64, 1.86 and 1.34.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.outputs import atomic_path, cache_dir

EFFECTIVE_VERSION = "eff-v1"  # bump when the definition of the effective embeddings changes
DEFAULT_EIG_RTOL = 1e-5  # eigenvalues below this fraction of the largest count as zero (float32 weights)


# ----------------------------------------------------------------------------------------------
# Factored matrices
# ----------------------------------------------------------------------------------------------


@dataclass
class Factored:
    """M = left @ right.T ([n, n], rows queries, columns keys), with optional affine biases.

    ``score(x_q, x_k) = (x_q @ left + left_bias) . (x_k @ right + right_bias)``. The biases are
    [r] vectors (or None); the spectral methods look at the bilinear part ``left @ right.T`` only.
    """

    left: torch.Tensor
    right: torch.Tensor
    left_bias: torch.Tensor | None = None
    right_bias: torch.Tensor | None = None

    def __post_init__(self):
        if self.left.shape != self.right.shape or self.left.dim() != 2:
            raise ValueError(f"left {tuple(self.left.shape)} and right {tuple(self.right.shape)} must be equal [n, r]")

    # -- algebra ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.left.shape[0]

    @property
    def rank_bound(self) -> int:
        return self.left.shape[1]

    def dense(self) -> torch.Tensor:
        """The dense [n, n] bilinear part (only for small n: tests, d_model-sized plots)."""
        return self.left @ self.right.T

    def _biases(self):
        r = self.rank_bound
        zl = torch.zeros(r, dtype=self.left.dtype, device=self.left.device)
        return (
            self.left_bias if self.left_bias is not None else zl,
            self.right_bias if self.right_bias is not None else zl,
        )

    def has_bias(self) -> bool:
        return self.left_bias is not None or self.right_bias is not None

    def plus(self, other: "Factored") -> "Factored":
        """Sum of bilinear parts (the rank factors concatenated); biases of ``self`` are kept,
        ``other`` must be bias-free (edits are bias-free by construction)."""
        if other.has_bias():
            raise ValueError("only a bias-free Factored can be added")
        other = other.to(self.left.dtype)
        lb, rb = self.left_bias, self.right_bias
        z = torch.zeros(other.rank_bound, dtype=self.left.dtype, device=self.left.device)
        return Factored(
            torch.cat([self.left, other.left], 1),
            torch.cat([self.right, other.right], 1),
            None if lb is None else torch.cat([lb, z]),
            None if rb is None else torch.cat([rb, z]),
        )

    def scaled(self, c: float) -> "Factored":
        """c * M (bias cross-terms scaled too)."""
        rb = None if self.right_bias is None else self.right_bias * c
        return Factored(self.left, self.right * c, self.left_bias, rb)

    def transpose(self) -> "Factored":
        return Factored(self.right, self.left, self.right_bias, self.left_bias)

    def weights_only(self) -> "Factored":
        return Factored(self.left, self.right)

    def to(self, dtype) -> "Factored":
        cv = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        return Factored(self.left.to(dtype), self.right.to(dtype), cv(self.left_bias), cv(self.right_bias))

    def in_basis(self, E: torch.Tensor, normalise: bool = False) -> "Factored":
        """The same bilinear form on rows of ``E`` [m, n]: E M E^T, kept factored ([m, m]).

        ``normalise`` divides E by sqrt(m), so the spectrum of the result is that of the mean
        over tokens, comparable across vocabulary sizes. Biases become row-independent offsets
        and are dropped here (the spectrum ignores them anyway).
        """
        E = E.to(self.left.dtype)
        if normalise:
            E = E / math.sqrt(E.shape[0])
        return Factored(E @ self.left, E @ self.right)

    def in_gram(self, gram: torch.Tensor) -> "Factored":
        """A small Factored with the same sym/skew spectra as ``in_basis(E, normalise=True)``,
        given only ``gram`` = E^T E / m ([n, n], see :func:`embedding_gram`).

        With A = [left, right] and B = E A / sqrt(m): B^T B = A^T gram A =: G, and the spectra of
        B core B^T depend on B only through G, so B' = G^{1/2} ([2r, 2r]) stands in for B. This
        costs O(n^2 r) per head instead of a QR of a vocab x 2r matrix.
        """
        A = torch.cat([self.left, self.right], 1).double()
        G = A.T @ gram.double().to(A.device) @ A
        w, V = torch.linalg.eigh((G + G.T) / 2)
        root = (V * w.clamp_min(0).sqrt()) @ V.T
        r = self.rank_bound
        return Factored(root[:, :r], root[:, r:])

    # -- symmetric / skew parts --------------------------------------------------------------
    def sym(self) -> "Factored":
        """W_sym = (M + M^T)/2 = [L, R][R, L]^T / 2 (bias-free)."""
        L, R = self.left, self.right
        return Factored(torch.cat([L, R], 1) / 2, torch.cat([R, L], 1))

    def skew(self) -> "Factored":
        """W_skew = (M - M^T)/2 = [L, R][R, -L]^T / 2 (bias-free)."""
        L, R = self.left, self.right
        return Factored(torch.cat([L, R], 1) / 2, torch.cat([R, -L], 1))

    def _factor_space(self):
        """Q [n, m] orthonormal and the small cores: W_sym = Q S Q^T, W_skew = Q K Q^T (float64)."""
        L = self.left.detach().double().cpu()
        R = self.right.detach().double().cpu()
        A = torch.cat([L, R], 1)
        Q, T = torch.linalg.qr(A)  # A = Q T, Q [n, 2r]
        r = L.shape[1]
        TL, TR = T[:, :r], T[:, r:]  # L = Q TL, R = Q TR
        core = TL @ TR.T  # M = Q core Q^T
        return Q, (core + core.T) / 2, (core - core.T) / 2

    def sym_eig(self, rtol: float = DEFAULT_EIG_RTOL, keep_zero: bool = False) -> "Eigen":
        """Every non-zero eigenpair of W_sym, sorted by eigenvalue (ascending, most negative first).

        Exact through the 2r-dimensional factor space (float64). ``rtol``: eigenvalues with
        |lambda| <= rtol * max|lambda| are treated as zero and dropped unless ``keep_zero``.
        """
        Q, S, _ = self._factor_space()
        lam, V = torch.linalg.eigh((S + S.T) / 2)
        vecs = Q @ V
        tol = rtol * float(lam.abs().max()) if lam.numel() else 0.0
        keep = torch.ones_like(lam, dtype=torch.bool) if keep_zero else lam.abs() > tol
        return Eigen(lam[keep], vecs[:, keep], tol)

    def sym_singular_values(self) -> torch.Tensor:
        """Singular values of W_sym, descending (= |eigenvalues|), float64, zeros included."""
        _, S, _ = self._factor_space()
        return torch.linalg.svdvals(S)

    def skew_singular_values(self) -> torch.Tensor:
        """Singular values of W_skew, descending (they come in equal pairs), float64."""
        _, _, K = self._factor_space()
        return torch.linalg.svdvals(K)

    def singular_values(self) -> torch.Tensor:
        """Singular values of the full bilinear part M, descending, float64."""
        Q, S, K = self._factor_space()
        return torch.linalg.svdvals(S + K)

    def frobenius(self) -> dict[str, float]:
        """Frobenius norms of M, W_sym and W_skew (||M||^2 = ||W_sym||^2 + ||W_skew||^2)."""
        _, S, K = self._factor_space()
        return {
            "full": float(torch.linalg.norm(S + K)),
            "sym": float(torch.linalg.norm(S)),
            "skew": float(torch.linalg.norm(K)),
        }

    # -- scoring -----------------------------------------------------------------------------
    def project(self, Xq: torch.Tensor, Xk: torch.Tensor | None = None):
        """(Xq @ left + left_bias, Xk @ right + right_bias): scores are then a plain dot product."""
        lb, rb = self._biases()
        dt = self.left.dtype
        qf = Xq.to(dt) @ self.left + lb
        kf = None if Xk is None else Xk.to(dt) @ self.right + rb
        return qf, kf

    def scores(self, Xq: torch.Tensor, Xk: torch.Tensor) -> torch.Tensor:
        """[n_q, n_k] scores of query vectors against key vectors (small sets only)."""
        qf, kf = self.project(Xq, Xk)
        return qf @ kf.T


@dataclass
class Eigen:
    """Eigenpairs of a symmetric factored matrix: values ascending, vectors [n, m] as columns."""

    values: torch.Tensor
    vectors: torch.Tensor
    tol: float = 0.0

    @property
    def n_negative(self) -> int:
        return int((self.values < 0).sum())

    @property
    def n_positive(self) -> int:
        return int((self.values > 0).sum())

    def top_by_magnitude(self, k: int) -> torch.Tensor:
        """The k eigenvalues of largest |lambda|, in descending |lambda| order."""
        order = torch.argsort(self.values.abs(), descending=True)[:k]
        return self.values[order]

    def n_negative_in_top(self, k: int) -> int:
        return int((self.top_by_magnitude(k) < 0).sum())

    def select(self, which: str | int) -> torch.Tensor:
        """Indices of the selected eigenpairs: ``"negative"`` (all), ``"positive"`` (all), or an
        int k: the k most negative (fewer if W_sym has fewer negative eigenvalues)."""
        neg = torch.nonzero(self.values < 0).flatten()  # ascending, so most negative first
        if which == "negative":
            return neg
        if which == "positive":
            return torch.nonzero(self.values > 0).flatten()
        if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
            if which < 0:
                raise ValueError(f"k must be >= 0, got {which}")
            return neg[: int(which)]
        raise ValueError(f"unknown eigenvalue selection {which!r}: 'negative', 'positive' or an int k")


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------


@dataclass
class FactoredQK:
    """One head's QK circuit from W_Q, W_K [d_model, d_head] and optional b_Q, b_K [d_head].

    See the module docstring for conventions: :meth:`weights` is W_QK = W_Q W_K^T (no scaling, no
    biases; used for spectra and edits); :meth:`scorer` adds biases and 1/sqrt(d_head) to give the
    model's attention logits. Build it from a model (:meth:`from_model`), from a GPT-2 state dict
    such as ../shared/gpt2 (:meth:`from_gpt2_state_dict`), or from raw tensors.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    b_Q: torch.Tensor | None = None
    b_K: torch.Tensor | None = None
    attn_scale: float | None = None  # default sqrt(d_head)
    layer: int | None = None
    head: int | None = None
    _eig_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.W_Q = torch.as_tensor(self.W_Q).detach().float()
        self.W_K = torch.as_tensor(self.W_K).detach().float()
        if self.W_Q.shape != self.W_K.shape or self.W_Q.dim() != 2:
            raise ValueError(f"W_Q {tuple(self.W_Q.shape)} and W_K {tuple(self.W_K.shape)} must be equal [d_model, d_head]")
        for name in ("b_Q", "b_K"):
            b = getattr(self, name)
            if b is not None:
                b = torch.as_tensor(b).detach().float()
                if b.shape != (self.d_head,):
                    raise ValueError(f"{name} has shape {tuple(b.shape)}, expected ({self.d_head},)")
                setattr(self, name, b)
        if self.attn_scale is None:
            self.attn_scale = math.sqrt(self.d_head)

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[1]

    @classmethod
    def from_model(cls, model, layer: int, head: int) -> "FactoredQK":
        """The processed (fold_ln) weights of ``model``'s head; includes b_Q, b_K and attn_scale."""
        scale = float(model.cfg.attn_scale) if getattr(model.cfg, "use_attn_scale", True) else 1.0
        if getattr(model.cfg, "scale_attn_by_inverse_layer_idx", False):
            scale *= layer + 1
        return cls(
            model.W_Q[layer, head].detach().cpu(), model.W_K[layer, head].detach().cpu(),
            model.b_Q[layer, head].detach().cpu(), model.b_K[layer, head].detach().cpu(),
            attn_scale=scale, layer=layer, head=head,
        )

    @classmethod
    def from_gpt2_state_dict(cls, sd: dict, layer: int, head: int, n_heads: int = 12,
                             fold_ln: bool = True) -> "FactoredQK":
        """From Hugging Face GPT-2 tensors (Conv1D [in, out] layout, e.g. ../shared/gpt2).

        With ``fold_ln`` (default), LN1's weight is folded into W_Q/W_K, its bias into b_Q/b_K,
        and W_Q/W_K are centred over d_model, exactly as TransformerLens' ``fold_ln`` does, so
        the result matches ``from_model`` on the processed model.
        """
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        w = torch.as_tensor(sd[f"h.{layer}.attn.c_attn.weight"]).float()
        b = torch.as_tensor(sd[f"h.{layer}.attn.c_attn.bias"]).float()
        d = w.shape[0]
        dh = d // n_heads
        if not 0 <= head < n_heads:
            raise ValueError(f"head {head} out of range 0..{n_heads - 1}")
        sl_q = slice(head * dh, (head + 1) * dh)
        sl_k = slice(d + head * dh, d + (head + 1) * dh)
        W_Q, W_K, b_Q, b_K = w[:, sl_q], w[:, sl_k], b[sl_q], b[sl_k]
        if fold_ln:
            g = torch.as_tensor(sd[f"h.{layer}.ln_1.weight"]).float()
            beta = torch.as_tensor(sd[f"h.{layer}.ln_1.bias"]).float()
            b_Q, b_K = b_Q + beta @ W_Q, b_K + beta @ W_K
            W_Q, W_K = g[:, None] * W_Q, g[:, None] * W_K
            W_Q, W_K = W_Q - W_Q.mean(0, keepdim=True), W_K - W_K.mean(0, keepdim=True)
        return cls(W_Q, W_K, b_Q, b_K, layer=layer, head=head)

    def weights(self) -> Factored:
        """W_QK = W_Q W_K^T: weights only, no 1/sqrt(d_head), no biases."""
        return Factored(self.W_Q, self.W_K)

    def scorer(self, biases: bool = True, scaled: bool = True) -> Factored:
        """(x_q W_Q + b_Q)(x_k W_K + b_K)^T / attn_scale: the model's attention logits."""
        c = 1.0 / self.attn_scale if scaled else 1.0
        zero = torch.zeros(self.d_head)
        if not biases:
            return Factored(self.W_Q, self.W_K * c)
        bq = self.b_Q if self.b_Q is not None else zero
        bk = self.b_K if self.b_K is not None else zero
        return Factored(self.W_Q, self.W_K * c, bq, bk * c)

    # -- spectra (weights only) --------------------------------------------------------------
    def sym(self) -> Factored:
        return self.weights().sym()

    def skew(self) -> Factored:
        return self.weights().skew()

    def sym_eig(self, rtol: float = DEFAULT_EIG_RTOL) -> Eigen:
        if rtol not in self._eig_cache:
            self._eig_cache[rtol] = self.weights().sym_eig(rtol)
        return self._eig_cache[rtol]

    def spectrum_summary(self, top: int = 64, rtol: float = DEFAULT_EIG_RTOL) -> dict:
        return spectrum_summary(self.weights(), top=top, rtol=rtol)

    # -- steering ----------------------------------------------------------------------------
    def steer(self, alpha: float, which: str | int = "negative", keep_skew: bool = True,
              biases: bool = False, scaled: bool = False, rtol: float = DEFAULT_EIG_RTOL) -> Factored:
        """See :func:`steer`; ``biases``/``scaled`` choose the base form (as in :meth:`scorer`)."""
        base = self.scorer(biases=biases, scaled=scaled)
        c = 1.0 / self.attn_scale if scaled else 1.0
        return steer(base, alpha, which, keep_skew, eig=self.sym_eig(rtol), eig_scale=c)


def steer(base: Factored, alpha: float, which: str | int = "negative", keep_skew: bool = True,
          eig: Eigen | None = None, eig_scale: float = 1.0) -> Factored:
    """The edited head W' = W_sym + sum_{m selected} (alpha - 1) lambda_m u_m u_m^T (+ W_skew).

    I.e. the selected eigenvalues of W_sym (``"negative"``: all negative ones; int k: the k most
    negative) are multiplied by ``alpha``; ``keep_skew=False`` also drops the skew part. ``base``
    may carry biases (kept unchanged); ``eig`` (default: of ``base``'s bilinear part) and
    ``eig_scale`` let a scaled scorer be edited with the weights' eigenpairs.
    """
    eig = eig if eig is not None else base.weights_only().sym_eig()
    idx = eig.select(which)
    dt = base.left.dtype
    U = eig.vectors[:, idx].to(dt)
    lam = eig.values[idx].to(dt) * eig_scale
    delta = Factored(U, U * ((alpha - 1.0) * lam))
    if keep_skew:
        return base.plus(delta)
    sym = base.weights_only().sym()
    return (_with_bias(sym, base) if base.has_bias() else sym).plus(delta)


def _with_bias(sym: Factored, base: Factored) -> Factored:
    """W_sym plus ``base``'s bias cross-terms, as one Factored.

    (xL + lb).(yR + rb) - (xL).(yR) = (xL).rb + lb.(yR) + lb.rb; each term gets its own block of
    factor columns: [x L | zero-left + lb | zero-left + 1] against [zero-right + rb | y R | lb.rb].
    """
    lb, rb = base._biases()
    n, r = base.dim, base.rank_bound
    dt = base.left.dtype
    zn = torch.zeros(n, r, dtype=dt)
    left = torch.cat([sym.left, base.left, zn, torch.zeros(n, 1, dtype=dt)], 1)
    right = torch.cat([sym.right, zn, base.right, torch.zeros(n, 1, dtype=dt)], 1)
    zs = torch.zeros(sym.rank_bound, dtype=dt)
    left_bias = torch.cat([zs, torch.zeros(r, dtype=dt), lb, torch.ones(1, dtype=dt)])
    right_bias = torch.cat([zs, rb, torch.zeros(r, dtype=dt), torch.dot(lb, rb).reshape(1)])
    return Factored(left, right, left_bias, right_bias)


def spectrum_summary(f: Factored, top: int = 64, rtol: float = DEFAULT_EIG_RTOL) -> dict:
    """Numbers the skew analysis reports for one bilinear form (weights only)."""
    eig = f.sym_eig(rtol)
    sv_sym, sv_skew = f.sym_singular_values(), f.skew_singular_values()
    fro = f.frobenius()
    topk = eig.top_by_magnitude(top)
    return {
        "n_eigenvalues_nonzero": int(eig.values.numel()),
        "n_negative": eig.n_negative,
        "n_positive": eig.n_positive,
        f"n_negative_top{top}": int((topk < 0).sum()),
        "top_k": int(topk.numel()),
        "lambda_min": float(eig.values.min()) if eig.values.numel() else 0.0,
        "lambda_max": float(eig.values.max()) if eig.values.numel() else 0.0,
        "sv_max_sym": float(sv_sym[0]),
        "sv_max_skew": float(sv_skew[0]),
        "fro_full": fro["full"],
        "fro_sym": fro["sym"],
        "fro_skew": fro["skew"],
        "skew_share": fro["skew"] ** 2 / max(fro["full"] ** 2, 1e-30),
    }


def random_skew(d: int, rank: int | None = None, scale: float = 1.0, seed: int = 0) -> Factored:
    """A truly skew-symmetric random matrix (W^T = -W) as a factored form of rank ``rank``
    (even; default d rounded down to even): G H^T - H G^T with Gaussian G, H."""
    rank = d - d % 2 if rank is None else rank
    if rank % 2 or rank < 2:
        raise ValueError(f"a skew-symmetric rank must be even and >= 2, got {rank}")
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(d, rank // 2, generator=g) / math.sqrt(d)
    H = torch.randn(d, rank // 2, generator=g) / math.sqrt(d)
    f = Factored(torch.cat([G, H], 1), torch.cat([H, -G], 1))
    return f.scaled(scale / float(f.singular_values()[0]))


def random_symmetric(d: int, n_negative: int, rank: int | None = None, scale: float = 1.0,
                     seed: int = 0) -> Factored:
    """A random symmetric matrix U diag(lambda) U^T of rank ``rank`` (default d) with exactly
    ``n_negative`` negative eigenvalues (random orthonormal U, |lambda| ~ U(0.1, 1) * scale)."""
    rank = d if rank is None else rank
    if not 0 <= n_negative <= rank <= d:
        raise ValueError(f"need 0 <= n_negative ({n_negative}) <= rank ({rank}) <= d ({d})")
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d, rank, generator=g))
    mag = 0.1 + 0.9 * torch.rand(rank, generator=g)
    mag = mag / mag.max() * scale
    sign = torch.ones(rank)
    sign[:n_negative] = -1
    return Factored(U, U * (mag * sign))


# ----------------------------------------------------------------------------------------------
# Scoring over token sets and the full vocabulary
# ----------------------------------------------------------------------------------------------


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
    it = range(0, len(q_ids), query_chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="self-rank", unit="chunk")
    for qs in it:
        qi = q_ids[qs : qs + query_chunk]
        qf, _ = f.project(E[qi])
        s_self = (qf * kf_all[qi]).sum(-1)
        count = torch.zeros(len(qi), dtype=torch.long)
        for ks in range(0, kf_all.shape[0], key_chunk):
            s = qf @ kf_all[ks : ks + key_chunk].T
            # The own key is excluded by index: the matmul may round it a hair above s_self.
            rows = torch.nonzero((qi >= ks) & (qi < ks + s.shape[1])).flatten()
            s[rows, qi[rows] - ks] = -torch.inf
            count += (s > s_self[:, None]).sum(-1)
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


# ----------------------------------------------------------------------------------------------
# Effective embeddings
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def embedding_gram(E: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """E^T E / n_tokens in float64 ([d_model, d_model]), accumulated in chunks."""
    d = E.shape[1]
    G = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, E.shape[0], chunk):
        x = E[s : s + chunk].double()
        G += x.T @ x
    return G / E.shape[0]


def model_fingerprint(model) -> str:
    """sha256 (16 hex) of every parameter's bytes and the config fields that change outputs.

    Cached on the model object: hashing gpt2-small's 500 MB takes about a second.
    """
    cached = getattr(model, "_l1h5_fingerprint", None)
    if cached:
        return cached
    h = hashlib.sha256()
    cfg = model.cfg
    h.update(repr((cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.n_ctx,
                   cfg.act_fn, cfg.normalization_type)).encode())
    for name, p in sorted(model.state_dict().items()):
        if not torch.is_floating_point(p):
            continue
        h.update(name.encode())
        h.update(p.detach().float().contiguous().cpu().numpy().tobytes())
    fp = h.hexdigest()[:16]
    try:
        model._l1h5_fingerprint = fp
    except AttributeError:
        pass
    return fp


def mean_prompt_tokens(tokenizer, seed: int = 0) -> torch.Tensor:
    """The fixed prompt mix over which mean attention outputs are taken (module docstring)."""
    from common.prompts import category_prompts, random_token_prompts

    a = category_prompts(tokenizer, 16, 48, seed=seed).tokens
    b = random_token_prompts(tokenizer, 16, 48, n_inserted=12, seed=seed).tokens
    return torch.cat([a, b])


@torch.no_grad()
def mean_attention_outputs(model, layers: list[int], seed: int = 0) -> dict[int, torch.Tensor]:
    """Mean of ``blocks.l.hook_attn_out`` over the non-BOS positions of :func:`mean_prompt_tokens`."""
    if not layers:
        return {}
    tokens = mean_prompt_tokens(model.tokenizer, seed).to(model.cfg.device)
    tokens = tokens[:, : model.cfg.n_ctx]
    store: dict[int, torch.Tensor] = {}

    def save(t, hook):
        store[int(hook.name.split(".")[1])] = t[:, 1:].reshape(-1, t.shape[-1]).mean(0).detach().cpu()

    model.run_with_hooks(tokens, stop_at_layer=max(layers) + 1,
                         fwd_hooks=[(f"blocks.{l}.hook_attn_out", save) for l in layers])
    return store


@torch.no_grad()
def compute_effective_embeddings(model, layer: int = 1, batch_size: int = 2048) -> torch.Tensor:
    """The uncached computation behind :func:`effective_embeddings` ([d_vocab, d_model], float32)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.cfg.n_layers - 1}")
    dev = model.cfg.device
    attn_mean = mean_attention_outputs(model, list(range(layer)))
    pos_mean = model.W_pos.mean(0)
    W_E = model.W_E
    out = torch.empty(W_E.shape[0], W_E.shape[1], dtype=torch.float32)
    for s in range(0, W_E.shape[0], batch_size):
        x = (W_E[s : s + batch_size] + pos_mean)[None]  # [1, batch, d_model]: modules want [b, pos, d]
        for l in range(layer):
            blk = model.blocks[l]
            x = x + attn_mean[l].to(dev)
            if not getattr(model.cfg, "attn_only", False):
                x = x + blk.mlp(blk.ln2(x))
        out[s : s + batch_size] = model.blocks[layer].ln1(x)[0].float().cpu()
    return out


def effective_embeddings(model, layer: int = 1, batch_size: int = 2048, cache: bool = True) -> torch.Tensor:
    """Effective token embeddings [d_vocab, d_model] seen by layer ``layer``'s attention.

    Definition and where the means are taken: module docstring. Cached on disk under
    ``cache_dir()/effective/<fingerprint>-L<layer>.pt`` (written atomically), so every script
    shares one computation per model.
    """
    if not cache:
        return compute_effective_embeddings(model, layer, batch_size)
    path = cache_dir() / "effective" / f"{model_fingerprint(model)}-{EFFECTIVE_VERSION}-L{layer}.pt"
    if path.exists():
        try:
            E = torch.load(path, map_location="cpu", weights_only=True)
            if E.shape == (model.cfg.d_vocab, model.cfg.d_model):
                return E
        except Exception:  # a corrupt cache file is recomputed, never trusted
            pass
    E = compute_effective_embeddings(model, layer, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(E, tmp)
    return E


def load_shared_gpt2_state_dict(folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The partial gpt2-small weights of ../shared/gpt2 (attention, LN, wpe; no wte or MLP)."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder else Path(__file__).resolve().parents[2] / "shared" / "gpt2"
    path = folder / "gpt2_small_partial_f32.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return load_file(str(path))


# ----------------------------------------------------------------------------------------------
# Self-rank over a grid of steering edits (svd_rank_ablation.py)
# ----------------------------------------------------------------------------------------------


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
    pass per (k, chunk) bins each key's threshold against the sorted scale grid (bucketize) and a
    cumulative sum gives the counts for every scale at once. E @ factors is computed once.
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
    dt = base.left.dtype
    U = eig.vectors[:, neg[:k_max]].to(dt)
    lam = (eig.values[neg[:k_max]] * eig_scale).to(dt)
    kf_all = project_keys(base, E)
    ku_all = E.to(dt) @ U  # [vocab, k_max]
    out = torch.empty(len(ks), n_t, len(q_ids), dtype=torch.long)
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
        counts = torch.zeros(len(ks), nq, n_t + 1, dtype=torch.long)
        row_off = (torch.arange(nq) * (n_t + 1))[:, None]
        for ks0 in range(0, kf_all.shape[0], key_chunk):
            kf = kf_all[ks0 : ks0 + key_chunk]
            b = qf @ kf.T - b_self[:, None]
            rows = torch.nonzero((qi >= ks0) & (qi < ks0 + kf.shape[0])).flatten()
            b[rows, qi[rows] - ks0] = -1.0  # the own key never counts (d is zeroed there too)
            d = torch.zeros_like(b)
            done = 0
            for ik, k in enumerate(ks):
                k_eff = min(k, k_max)
                if k_eff > done:
                    d += qu[:, done:k_eff] @ ku_all[ks0 : ks0 + key_chunk, done:k_eff].T
                    d -= d_self_all[:, done:k_eff].sum(-1, keepdim=True)
                    d[rows, qi[rows] - ks0] = 0.0
                    done = k_eff
                counts[ik] += _threshold_counts(b, d, t_sorted, row_off, nq, n_t)
        ranks = counts.cumsum(-1)[..., :n_t]  # [len(ks), nq, n_t]
        out[:, :, qs : qs + nq] = ranks.permute(0, 2, 1)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(len(order))
    return out[:, inv]


def _uniform_step(t_sorted: torch.Tensor) -> float | None:
    """The grid step when ``t_sorted`` is evenly spaced (then bins are computed arithmetically)."""
    if len(t_sorted) < 2:
        return None
    steps = torch.diff(t_sorted.double())
    h = float(steps.mean())
    return h if h > 0 and float((steps - h).abs().max()) <= 1e-6 * h else None


def _threshold_counts(b, d, t_sorted, row_off, nq, n_t):
    """Per row, a difference array over the sorted t grid whose cumulative sum is
    #{j : b_j + t d_j > 0}.

    With r = -b/d: a key with d > 0 counts for t > r, one with d < 0 for t < r. So
    count(t) = #{d>=0, r<t} - #{d<0, r<=t} + #{d<0}: one bin index per key (the first grid
    index with t > r) and one bincount weighted +1 (d >= 0) or -1 (d < 0) serve both signs; the
    row sums of the weights give #{d<0}. d = 0 needs no case: r = -inf (b > 0, always counts) or
    +inf (b < 0, never), and b = d = 0 (an exact tie, never counts) is sent to the unused bin.
    A key that ties the own key exactly at a grid value of t (float rounding) may be counted
    either way.
    """
    x = torch.div(b, d)  # = -r
    h = _uniform_step(t_sorted)
    if h is not None:  # evenly spaced grid: floor arithmetic, several times faster than bucketize
        t0 = float(t_sorted[0])
        idx = x.mul_(-1.0 / h).add_(1.0 - t0 / h).floor_().clamp_(0, n_t).nan_to_num_(nan=float(n_t))
        idx = idx.to(torch.int64)
    else:
        idx = torch.bucketize(x.neg_().nan_to_num_(nan=float("inf")), t_sorted, right=True)
    idx.add_(row_off)
    w = torch.sign(d).add_(0.5).sign_()  # -1 where d < 0, else +1
    c = torch.bincount(idx.view(-1), weights=w.view(-1), minlength=nq * (n_t + 1)).view(nq, n_t + 1)
    n_neg = (b.shape[1] - c.sum(1)) / 2
    c[:, 0] += n_neg
    return c.round_().to(torch.long)
