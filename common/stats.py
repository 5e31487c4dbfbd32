"""The toolkit's statistics, one implementation each.

Conventions, stated once:

* **Spread: sample standard deviation, ``ddof=1``.** The values are a sample (prompts, windows,
  queries) from a larger population, so the unbiased variance estimator is the one that goes into
  a standard error. With ``n = 1`` there is no spread to estimate: the half-width is reported as 0
  rather than NaN (one value gives a point, not an interval; the caller reports ``n``).
* **Normal-approximation 95% intervals use z = 1.96** (the two-sided 97.5% normal quantile,
  rounded as usually printed). :func:`mean_ci` gives ``mean +/- 1.96 * sd / sqrt(n)``: the sample
  sizes here are tens to thousands, where the t and normal quantiles agree to the precision reported.
* **Bootstrap intervals are percentile intervals** (the ``(1 - level)/2`` and ``1 - (1 - level)/2``
  quantiles of the resampled statistic, numpy's default linear interpolation): no assumption about
  the statistic's distribution, and ratios such as :func:`explained_fraction` are skewed.
* **Resamples are drawn once and shared.** :func:`bootstrap_indices` returns an ``[n_boot, n]``
  index array that every statistic over the same units reuses, so intervals of different heads,
  methods or variants come from the same resamples and are comparable. The draw is
  ``numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))``; pass ``rng`` instead of
  ``seed`` to continue an existing generator (several groups drawn in turn from one seed).
* **Correlation intervals use the Fisher z-transform** (:func:`fisher_ci`), with the standard
  error ``1.06 / sqrt(n - 3)`` for a Spearman rho (Fieller, Hartley & Pearson 1957; a Pearson r
  would use ``1 / sqrt(n - 3)``), mapped back with tanh and reported as a symmetric half-width.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.96


def mean_ci(values: np.ndarray, axis: int = -1, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Mean and normal-approximation 95% half-width (``z * sd(ddof=1) / sqrt(n)``) along ``axis``;
    the half-width is 0 when ``n = 1``."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis)
    half = z * values.std(axis, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean, half


def bootstrap_indices(n: int, n_boot: int, seed: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """[n_boot, n] indices drawn with replacement, from ``default_rng(seed)`` or from ``rng`` when
    given (shared by every statistic over the same units, so their CIs are comparable)."""
    if rng is None:
        rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def percentile_interval(boots: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates ``boots``."""
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, with resample indices ``idx`` [n_boot, n]."""
    return percentile_interval(np.asarray(values)[idx].mean(1), level)


def explained_fraction(kl_hyp: np.ndarray, kl_abl: np.ndarray, idx: np.ndarray, level: float = 0.95) -> dict:
    """1 - mean KL(clean, hypothesis) / mean KL(clean, ablated), from per-window means [n],
    with a percentile bootstrap CI over windows (``idx`` from :func:`bootstrap_indices`; a resample's
    denominator is floored at 1e-30)."""
    kl_hyp, kl_abl = np.asarray(kl_hyp, float), np.asarray(kl_abl, float)
    point = 1.0 - kl_hyp.mean() / kl_abl.mean()
    boots = 1.0 - kl_hyp[idx].mean(1) / np.maximum(kl_abl[idx].mean(1), 1e-30)
    lo, hi = percentile_interval(boots, level)
    return {"explained": float(point), "ci_lo": lo, "ci_hi": hi}


def fisher_ci(rho: float, n: int, z: float = Z95) -> float:
    """Half-width (on the rho scale, symmetric approximation) of a 95% CI for a Spearman rho:
    ``(tanh(atanh(rho) + z*se) - tanh(atanh(rho) - z*se)) / 2`` with ``se = 1.06 / sqrt(n - 3)``;
    0 when ``n <= 3``, rho is not finite or ``|rho| >= 1``."""
    if n <= 3 or not np.isfinite(rho) or abs(rho) >= 1:
        return 0.0
    zr, se = np.arctanh(rho), 1.06 / np.sqrt(n - 3)
    return float((np.tanh(zr + z * se) - np.tanh(zr - z * se)) / 2)
