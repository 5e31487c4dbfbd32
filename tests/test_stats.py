"""common.stats against references written out here (loops, scipy.stats, the textbook formulas)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from common.stats import (Z95, bootstrap_ci, bootstrap_indices, explained_fraction, fisher_ci, mean_ci,
                          percentile_interval)


def _quantile(x, q):
    """Linear-interpolation quantile (numpy's default, Hyndman & Fan type 7), written out."""
    x = np.sort(np.asarray(x, float))
    h = (len(x) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(x) - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


def test_mean_ci_matches_scipy_sem():
    x = np.random.default_rng(1).normal(size=(3, 4, 50))
    for axis in (-1, 0, 1):
        m, h = mean_ci(x, axis=axis)
        np.testing.assert_allclose(m, x.mean(axis), rtol=1e-12)
        np.testing.assert_allclose(h, 1.96 * sps.sem(x, axis=axis, ddof=1), rtol=1e-12)
    v = [1.0, 2.0, 4.0, 7.0]
    m, h = mean_ci(v)
    sd = math.sqrt(sum((a - 3.5) ** 2 for a in v) / 3)  # ddof = 1
    assert m == pytest.approx(3.5) and h == pytest.approx(1.96 * sd / 2)
    assert mean_ci(v, z=2.5)[1] == pytest.approx(2.5 * sd / 2)
    assert Z95 == 1.96


def test_mean_ci_edge_cases():
    m, h = mean_ci([3.0])  # n = 1: a point, half-width 0 (not NaN)
    assert m == 3.0 and h == 0.0
    m, h = mean_ci(np.full((2, 1), 5.0), axis=-1)
    np.testing.assert_array_equal(m, [5.0, 5.0])
    np.testing.assert_array_equal(h, [0.0, 0.0])
    m, h = mean_ci(np.full(10, 0.25))  # constant values
    assert m == pytest.approx(0.25) and h == 0.0
    m, h = mean_ci(np.array([True, False, True, True]))  # booleans are read as 0/1
    assert m == pytest.approx(0.75)


def test_bootstrap_indices_draws():
    idx = bootstrap_indices(7, 500, seed=3)
    assert idx.shape == (500, 7) and idx.min() >= 0 and idx.max() <= 6
    np.testing.assert_array_equal(idx, np.random.default_rng(3).integers(0, 7, size=(500, 7)))
    np.testing.assert_array_equal(bootstrap_indices(7, 500), bootstrap_indices(7, 500, seed=0))
    assert not np.array_equal(idx, bootstrap_indices(7, 500, seed=4))
    # a generator passed in is continued: groups drawn in turn from one seed
    rng, ref = np.random.default_rng(9), np.random.default_rng(9)
    for n in (4, 1, 6):
        np.testing.assert_array_equal(bootstrap_indices(n, 20, rng=rng), ref.integers(0, n, size=(20, n)))
    assert (bootstrap_indices(1, 10) == 0).all()  # n = 1: the only index


def test_percentile_interval_and_bootstrap_ci():
    boots = np.random.default_rng(2).normal(size=999)
    lo, hi = percentile_interval(boots)
    assert lo == pytest.approx(_quantile(boots, 0.025)) and hi == pytest.approx(_quantile(boots, 0.975))
    lo, hi = percentile_interval(boots, level=0.9)
    assert lo == pytest.approx(_quantile(boots, 0.05)) and hi == pytest.approx(_quantile(boots, 0.95))

    values = np.random.default_rng(5).exponential(size=40)
    idx = bootstrap_indices(40, 300, seed=6)
    means = [sum(values[j] for j in row) / len(row) for row in idx]
    lo, hi = bootstrap_ci(values, idx)
    assert lo == pytest.approx(_quantile(means, 0.025), rel=1e-12)
    assert hi == pytest.approx(_quantile(means, 0.975), rel=1e-12)
    assert lo <= values.mean() <= hi
    assert isinstance(lo, float) and isinstance(hi, float)


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci(np.full(12, 2.5), bootstrap_indices(12, 100)) == pytest.approx((2.5, 2.5))
    assert bootstrap_ci(np.array([4.0]), bootstrap_indices(1, 50)) == (4.0, 4.0)


def test_explained_fraction():
    rng = np.random.default_rng(7)
    abl = rng.uniform(0.5, 2.0, size=30)
    hyp = abl * rng.uniform(0.0, 0.6, size=30)
    idx = bootstrap_indices(30, 400, seed=8)
    r = explained_fraction(hyp, abl, idx)
    assert r["explained"] == pytest.approx(1 - hyp.sum() / abl.sum(), rel=1e-12)
    boots = [1 - hyp[row].sum() / abl[row].sum() for row in idx]
    assert r["ci_lo"] == pytest.approx(_quantile(boots, 0.025), rel=1e-12)
    assert r["ci_hi"] == pytest.approx(_quantile(boots, 0.975), rel=1e-12)
    assert r["ci_lo"] <= r["explained"] <= r["ci_hi"]
    r90 = explained_fraction(hyp, abl, idx, level=0.9)
    assert r90["ci_lo"] == pytest.approx(_quantile(boots, 0.05), rel=1e-12)


def test_explained_fraction_edge_cases():
    kl = np.array([0.3, 0.7, 1.1])
    idx = bootstrap_indices(3, 50)
    assert explained_fraction(kl, kl, idx) == pytest.approx({"explained": 0.0, "ci_lo": 0.0, "ci_hi": 0.0})
    assert explained_fraction(np.zeros(3), kl, idx) == pytest.approx({"explained": 1.0, "ci_lo": 1.0, "ci_hi": 1.0})
    r = explained_fraction([0.2], [0.8], bootstrap_indices(1, 10))  # n = 1
    assert r == pytest.approx({"explained": 0.75, "ci_lo": 0.75, "ci_hi": 0.75})
    # a resample whose ablated KL is all zero: the denominator is floored, no division by zero
    r = explained_fraction([0.0, 0.0], [0.0, 1.0], np.array([[0, 0], [0, 1]]))
    assert r["explained"] == 1.0 and np.isfinite([r["ci_lo"], r["ci_hi"]]).all()


def test_fisher_ci_formula():
    for rho, n in [(0.0, 50), (0.42, 20), (-0.8, 200), (0.999, 4)]:
        z, se = 0.5 * math.log((1 + rho) / (1 - rho)), 1.06 / math.sqrt(n - 3)
        expected = (math.tanh(z + 1.96 * se) - math.tanh(z - 1.96 * se)) / 2
        assert fisher_ci(rho, n) == pytest.approx(expected, rel=1e-12)
    assert fisher_ci(0.3, 40) == fisher_ci(-0.3, 40)  # symmetric in the sign of rho
    assert fisher_ci(0.0, 1003) == pytest.approx(math.tanh(1.96 * 1.06 / math.sqrt(1000)), rel=1e-12)
    assert fisher_ci(0.5, 30, z=sps.norm.ppf(0.995)) > fisher_ci(0.5, 30)


@pytest.mark.parametrize("rho,n", [(0.5, 3), (0.5, 1), (1.0, 50), (-1.0, 50), (float("nan"), 50), (float("inf"), 50)])
def test_fisher_ci_degenerate(rho, n):
    assert fisher_ci(rho, n) == 0.0
