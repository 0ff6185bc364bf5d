"""Exact statistics for green counts. Pure functions, no I/O.

Under the null hypothesis (text written without the key) each distinct (context, token) pair is green with
probability ``gamma`` independently, so the green count of ``n`` pairs is Binomial(n, gamma). The p-value is
the exact upper tail ``P(X >= g) = I_gamma(g, n - g + 1)`` (regularized incomplete beta). The normal
approximation used by many detectors understates tail probabilities by orders of magnitude exactly where
decisions are made (p around 1e-5 and below on short texts), so it is only reported, as a z-score.
"""

from __future__ import annotations

import math

from scipy import stats

from antidistill.errors import InputError
from antidistill.watermark.nulls import binomial_sf, gamma_sf

__all__ = [
    "binomial_sf",
    "bonferroni",
    "clopper_pearson",
    "fisher_combine",
    "gamma_sf",
    "min_green_for",
    "z_score",
]


def z_score(green: int, n: int, p: float) -> float:
    """The one-proportion z-score (reported for readers; decisions use :func:`binomial_sf`)."""
    if n <= 0:
        return 0.0
    return (green - p * n) / math.sqrt(n * p * (1.0 - p))


def bonferroni(p_value: float, tests: int) -> float:
    """Family-wise corrected p-value for the smallest of ``tests`` p-values (valid under any dependence)."""
    return min(1.0, p_value * max(1, tests))


def fisher_combine(p_values: list[float]) -> float:
    """Fisher's method for independent tests. With discrete (super-uniform) p-values it is conservative."""
    ps = [min(1.0, max(p, 1e-300)) for p in p_values]
    stat = -2.0 * sum(math.log(p) for p in ps)
    return float(stats.chi2.sf(stat, 2 * len(ps)))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) confidence interval for a binomial proportion."""
    if n <= 0:
        raise InputError("n must be > 0")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def min_green_for(alpha: float, n: int, p: float) -> int | None:
    """Smallest green count whose p-value is <= alpha for n pairs (None if even n greens are not enough)."""
    if binomial_sf(n, n, p) > alpha:
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if binomial_sf(mid, n, p) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo
