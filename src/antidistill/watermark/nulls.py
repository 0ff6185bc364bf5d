"""Exact null distributions of the watermark scores. Pure functions, no I/O.

Every member of the scheme family scores a text as a sum over its distinct (context, token) tuples of a per-tuple
score whose distribution, for text written without the key, is known exactly:

* green-list schemes (KGW and kin): the score is 1 for a green token, 0 otherwise, Bernoulli(gamma), so ``n``
  tuples sum to Binomial(n, gamma); the p-value is the exact upper tail ``P(X >= g) = I_gamma(g, n - g + 1)``;
* Gumbel-max schemes: the score is ``-log(1 - u)`` for the tuple's keyed uniform ``u``, Exp(1), so ``n`` tuples
  sum to Gamma(n, 1); the p-value is the regularised upper incomplete gamma ``Q(n, s)``.

The normal approximation many detectors use understates tail probabilities by orders of magnitude exactly where
decisions are made (p around 1e-5 and below on short texts), so it is only reported, as a z-score.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from antidistill.errors import InputError


def binomial_sf(green: int | np.ndarray, n: int | np.ndarray, p: float) -> np.ndarray | float:
    """Exact ``P(X >= green)`` for ``X ~ Binomial(n, p)``; 1 when ``green <= 0``, 0 when ``green > n``."""
    g = np.asarray(green, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    if not 0.0 < p < 1.0:
        raise InputError(f"p must be in (0, 1), got {p}")
    if np.any(nn < 0):
        raise InputError("n must be >= 0")
    with np.errstate(all="ignore"):
        out = special.betainc(np.maximum(g, 1.0), np.maximum(nn - g + 1.0, 1e-300), p)
    out = np.where(g <= 0, 1.0, np.where(g > nn, 0.0, out))
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def gamma_sf(total: float | np.ndarray, n: int | np.ndarray) -> np.ndarray | float:
    """Exact ``P(S >= total)`` for ``S ~ Gamma(n, 1)`` (the sum of ``n`` Exp(1) scores); 1 when ``n == 0``."""
    s = np.asarray(total, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    if np.any(nn < 0):
        raise InputError("n must be >= 0")
    with np.errstate(all="ignore"):
        out = special.gammaincc(np.maximum(nn, 1.0), np.maximum(s, 0.0))
    out = np.where(nn <= 0, 1.0, out)
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out
