"""Factored bilinear forms ``M = left @ right.T``: algebra, exact symmetric/skew spectra, steering edits.

Conventions (used by every script of this repo)
------------------------------------------------
* **Orientation.** A :class:`Factored` is [n, n] with **rows = queries, columns = keys**: the
  score of a query vector x_q against a key vector x_k is x_q^T M x_k (plus optional bias
  cross-terms). Scores over token sets are [queries, keys].
* **Factored form.** Nothing is formed densely unless :meth:`Factored.dense` is asked for: the
  symmetric part W_sym = (M + M^T)/2 = [L, R] [R, L]^T / 2 and the skew part
  W_skew = (M - M^T)/2 = [L, R] [R, -L]^T / 2 both live in the span of the 2r columns of
  A = [L, R]. With A = Q T (thin QR), W_sym = Q (T S T^T) Q^T, so the eigendecomposition of a
  2r x 2r matrix gives *every* non-zero eigenpair of W_sym exactly (float64), without ever
  forming n x n, let alone vocab x vocab.
* **Inertia.** W_sym = A S A^T with A = [L, R] and S = [[0, I/2], [I/2, 0]] (r eigenvalues
  -1/2 and r eigenvalues +1/2). Sylvester's law of inertia: congruent symmetric matrices have
  the same numbers of negative, positive and zero eigenvalues, so when A = [W_Q, W_K] has full
  column rank 2r (then A S A^T is congruent to diag(S, 0)), W_sym has exactly r negative, r
  positive and n - 2r zero eigenvalues, whatever the head does. For a head with d_head = r the
  *count* of negative eigenvalues (64 of 128 for every one of gpt2-small's 144 heads) says
  nothing about the head beyond its rank; how the negatives interleave with the positives by
  magnitude (e.g. "33 of the 64 largest") is all a count can show. If A loses rank, both counts
  can only drop (each stays <= r). :meth:`Factored.inertia`, :func:`spectrum_summary`.
* **Steering edits** (:func:`steer`) scale selected eigenvalues of W_sym and return another
  Factored; biases, when present, are kept unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_EIG_RTOL = 1e-5  # eigenvalues below this fraction of the largest count as zero (float32 weights)


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

    def _spaces(self):
        """(Q, T, S, K): A = [L, R] = Q T (thin QR, Q [n, 2r] orthonormal), W_sym = Q S Q^T,
        W_skew = Q K Q^T (float64)."""
        L = self.left.detach().double().cpu()
        R = self.right.detach().double().cpu()
        A = torch.cat([L, R], 1)
        Q, T = torch.linalg.qr(A)  # A = Q T, Q [n, 2r]
        r = L.shape[1]
        TL, TR = T[:, :r], T[:, r:]  # L = Q TL, R = Q TR
        core = TL @ TR.T  # M = Q core Q^T
        return Q, T, (core + core.T) / 2, (core - core.T) / 2

    def _factor_space(self):
        """Q [n, m] orthonormal and the small cores: W_sym = Q S Q^T, W_skew = Q K Q^T (float64)."""
        Q, _, S, K = self._spaces()
        return Q, S, K

    def sym_eig(self, rtol: float = DEFAULT_EIG_RTOL, keep_zero: bool = False) -> "Eigen":
        """Every non-zero eigenpair of W_sym, sorted by eigenvalue (ascending, most negative first).

        Exact through the 2r-dimensional factor space (float64). ``rtol``: eigenvalues with
        |lambda| <= rtol * max|lambda| are treated as zero and dropped unless ``keep_zero``.
        """
        Q, S, _ = self._factor_space()
        return _eig_in_space(Q, S, rtol, keep_zero)

    def factor_rank(self, rtol: float = DEFAULT_EIG_RTOL) -> int:
        """Column rank of A = [left, right] ([n, 2r]): singular values of A (= those of T in
        A = Q T) above rtol * the largest (float64). W_sym and W_skew live in A's column span."""
        return _rank_of(self._spaces()[1], rtol)

    def inertia(self, rtol: float = DEFAULT_EIG_RTOL) -> "Inertia":
        """(negative, positive, zero) eigenvalue counts of W_sym over all ``dim`` eigenvalues, and
        the column rank of [left, right]; see the module docstring (Sylvester's law of inertia:
        full column rank 2r gives exactly (r, r, n - 2r)). Eigenvalues with |lambda| <= rtol *
        max|lambda| count as zero."""
        eig = self.sym_eig(rtol)
        neg, pos = eig.n_negative, eig.n_positive
        return Inertia(neg, pos, self.dim - neg - pos, self.factor_rank(rtol), self.rank_bound)

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


@dataclass(frozen=True)
class Inertia:
    """Sylvester inertia of W_sym: counts of negative, positive and zero eigenvalues (over all n),
    with the column rank of the factors A = [left, right] and r = the factors' width."""

    negative: int
    positive: int
    zero: int
    rank_factors: int
    r: int

    @property
    def rank(self) -> int:
        """Rank of W_sym (= negative + positive)."""
        return self.negative + self.positive

    @property
    def full_column_rank(self) -> bool:
        """A = [left, right] has full column rank 2r: then, by Sylvester's law, (r, r, n - 2r)."""
        return self.rank_factors == 2 * self.r

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.negative, self.positive, self.zero)


def inertia_note(d_head: int, top: int | None = None) -> str:
    """The sentence every figure showing a negative-eigenvalue count carries (module docstring)."""
    top_part = (f" A count among the top {top} only shows how negatives and positives interleave by "
                "magnitude; it does not single a head out.") if top else ""
    return (f"Sylvester's law of inertia: a head whose [W_Q W_K] has full column rank has exactly "
            f"d_head = {d_head} negative and {d_head} positive eigenvalues of W_sym.{top_part}")


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


def _eig_in_space(Q: torch.Tensor, S: torch.Tensor, rtol: float, keep_zero: bool = False) -> Eigen:
    lam, V = torch.linalg.eigh((S + S.T) / 2)
    vecs = Q @ V
    tol = rtol * float(lam.abs().max()) if lam.numel() else 0.0
    keep = torch.ones_like(lam, dtype=torch.bool) if keep_zero else lam.abs() > tol
    return Eigen(lam[keep], vecs[:, keep], tol)


def _rank_of(T: torch.Tensor, rtol: float) -> int:
    sv = torch.linalg.svdvals(T)
    return int((sv > rtol * float(sv.max())).sum()) if sv.numel() and float(sv.max()) > 0 else 0


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
    """Numbers the skew analysis reports for one bilinear form (weights only).

    Inertia (module docstring): ``n_negative``, ``n_positive`` and ``n_zero`` count W_sym's
    negative, positive and zero eigenvalues over all ``dim`` of them; ``rank_sym`` = n_negative +
    n_positive; ``rank_factors`` is the column rank of [left, right] (= [W_Q, W_K] for a head).
    By Sylvester's law of inertia a head whose [W_Q W_K] has full column rank
    (``full_column_rank``) has exactly d_head negative and d_head positive eigenvalues, so
    ``n_negative`` says nothing about self-suppression; ``n_negative_top{top}`` (the L1H5 post's
    "33 of the 64 largest") only says how negatives and positives interleave by magnitude.
    """
    Q, T, S, K = f._spaces()  # one QR for every number below (same values as the methods give)
    eig = _eig_in_space(Q, S, rtol)
    rank_factors = _rank_of(T, rtol)
    sv_sym, sv_skew = torch.linalg.svdvals(S), torch.linalg.svdvals(K)
    fro = {"full": float(torch.linalg.norm(S + K)), "sym": float(torch.linalg.norm(S)),
           "skew": float(torch.linalg.norm(K))}
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
        "n_zero": f.dim - eig.n_negative - eig.n_positive,
        "rank_sym": eig.n_negative + eig.n_positive,
        "rank_factors": rank_factors,
        "full_column_rank": rank_factors == 2 * f.rank_bound,
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
