"""Exact statistics: binomial tails against scipy and exact rationals, corrections, intervals, combination."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from antidistill.detection.stats import (
    binomial_sf,
    bonferroni,
    clopper_pearson,
    fisher_combine,
    min_green_for,
    z_score,
)


def exact_tail(g: int, n: int, p: Fraction) -> Fraction:
    """P(X >= g) for X ~ Binomial(n, p), in exact rational arithmetic."""
    return sum((math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(max(g, 0), n + 1)), Fraction(0))


@pytest.mark.parametrize("p", [0.01, 0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("n", [1, 2, 5, 10, 50, 200, 1000])
def test_binomial_sf_matches_scipy(n, p):
    g = np.arange(0, n + 3)
    got = binomial_sf(g, np.full_like(g, n), p)
    want = sps.binom.sf(g - 1, n, p)  # P(X >= g) = P(X > g - 1)
    big = want > 1e-290
    np.testing.assert_allclose(got[big], want[big], rtol=1e-9)
    assert np.all(got[~big] <= 1e-280)


@pytest.mark.parametrize(
    ("g", "n", "p"),
    [
        (150, 200, Fraction(1, 4)),
        (30, 40, Fraction(1, 4)),
        (12, 12, Fraction(1, 2)),
        (7, 100, Fraction(1, 10)),
        (60, 120, Fraction(1, 4)),
    ],
)
def test_binomial_sf_matches_exact_rationals(g, n, p):
    assert binomial_sf(g, n, float(p)) == pytest.approx(float(exact_tail(g, n, p)), rel=1e-10)


def test_far_tail_is_exact_where_the_normal_approximation_is_not():
    n, g, p = 200, 150, 0.25
    exact = float(exact_tail(g, n, Fraction(1, 4)))
    got = binomial_sf(g, n, p)
    assert got == pytest.approx(exact, rel=1e-10)
    normal = float(sps.norm.sf(z_score(g, n, p)))
    assert abs(math.log10(normal / exact)) > 2  # the approximation is off by orders of magnitude
    assert normal < exact  # and on the anti-conservative side


def test_edge_cases():
    assert binomial_sf(0, 10, 0.25) == 1.0
    assert binomial_sf(-3, 10, 0.25) == 1.0
    assert binomial_sf(0, 0, 0.25) == 1.0
    assert binomial_sf(11, 10, 0.25) == 0.0
    assert binomial_sf(1, 0, 0.25) == 0.0
    assert binomial_sf(10, 10, 0.25) == pytest.approx(0.25**10, rel=1e-12)
    assert binomial_sf(1, 10, 0.25) == pytest.approx(1 - 0.75**10, rel=1e-12)
    assert isinstance(binomial_sf(3, 10, 0.25), float)
    arr = binomial_sf(np.array([0, 5, 11]), np.array([10, 10, 10]), 0.25)
    assert isinstance(arr, np.ndarray) and arr.shape == (3,)
    assert arr[0] == 1.0 and arr[2] == 0.0


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_binomial_sf_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must be"):
        binomial_sf(1, 10, p)


def test_binomial_sf_rejects_negative_n():
    with pytest.raises(ValueError, match="n must be"):
        binomial_sf(1, -1, 0.25)


def test_z_score():
    assert z_score(50, 200, 0.25) == 0.0
    assert z_score(60, 200, 0.25) == pytest.approx(10 / math.sqrt(200 * 0.25 * 0.75))
    assert z_score(0, 0, 0.25) == 0.0


def test_bonferroni():
    assert bonferroni(1e-6, 1000) == pytest.approx(1e-3)
    assert bonferroni(0.01, 1) == 0.01
    assert bonferroni(0.01, 0) == 0.01  # no test counts as one
    assert bonferroni(0.3, 10) == 1.0


def test_clopper_pearson_matches_scipy():
    for k, n in [(0, 10), (3, 10), (10, 10), (50, 2000), (1, 1)]:
        for conf in (0.95, 0.99):
            ci = sps.binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
            lo, hi = clopper_pearson(k, n, conf)
            assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)
    assert clopper_pearson(0, 10)[0] == 0.0
    assert clopper_pearson(10, 10)[1] == 1.0
    lo, hi = clopper_pearson(5, 100)
    assert lo < 0.05 < hi
    with pytest.raises(ValueError, match="n must be"):
        clopper_pearson(0, 0)


def test_clopper_pearson_covers():
    # an exact interval covers the true proportion at least at its nominal rate
    rng = np.random.default_rng(40)
    n, p = 60, 0.2
    ks = rng.binomial(n, p, size=2000)
    covered = sum(lo <= p <= hi for lo, hi in (clopper_pearson(int(k), n, 0.9) for k in ks))
    assert covered / len(ks) >= 0.9 - 3 * math.sqrt(0.09 / len(ks))


def test_fisher_combine():
    assert fisher_combine([1.0, 1.0]) == pytest.approx(1.0)
    for p in (0.5, 0.01, 1e-8):
        assert fisher_combine([p]) == pytest.approx(p, rel=1e-9)  # one p-value combines to itself
    ps = [0.03, 0.2, 0.5]
    assert fisher_combine(ps) == pytest.approx(sps.combine_pvalues(ps, method="fisher").pvalue, rel=1e-9)
    assert fisher_combine([1e-5, 0.9]) < 1e-3
    assert 0.0 < fisher_combine([0.0, 0.5]) < 1e-250  # zero is clamped, not log(0)
    assert fisher_combine([0.01, 0.01]) < 0.01  # two independent weak signals add up


def test_fisher_combine_is_calibrated_on_uniform_p_values():
    rng = np.random.default_rng(41)
    combined = np.array([fisher_combine(list(rng.random(2))) for _ in range(4000)])
    k = int((combined <= 0.05).sum())
    lo, hi = clopper_pearson(k, len(combined), 0.999)
    assert lo <= 0.05 <= hi


@pytest.mark.parametrize(
    ("alpha", "n", "p"), [(1e-3, 100, 0.25), (0.05, 20, 0.5), (1e-6, 50, 0.25), (0.01, 1, 0.001), (1e-5, 1000, 0.1)]
)
def test_min_green_for(alpha, n, p):
    g = min_green_for(alpha, n, p)
    assert g is not None and 0 < g <= n
    assert binomial_sf(g, n, p) <= alpha
    assert binomial_sf(g - 1, n, p) > alpha


def test_min_green_for_unreachable():
    assert min_green_for(1e-5, 3, 0.25) is None  # even 3 greens of 3 give p = 1/64
    assert min_green_for(0.25**3, 3, 0.25) == 3
