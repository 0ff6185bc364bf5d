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

from antidistill.errors import InputError


def binomial_sf(green: int | np.ndarray, n: int | np.ndarray, p: float) -> np.ndarray | float:
    """Exact ``P(X >= green)`` for ``X ~ Binomial(n, p)``; 1 when ``green <= 0``, 0 when ``green > n``."""
    g = np.asarray(green, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    if not 0.0 < p < 1.0:
        raise InputError(f"p must be in (0, 1), got {p}")
    if np.any(nn < 0):
        raise InputError("n must be >= 0")
    from scipy import special  # imported here: marking (an engine, a GPU benchmark) runs without scipy

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
    from scipy import special

    with np.errstate(all="ignore"):
        out = special.gammaincc(np.maximum(nn, 1.0), np.maximum(s, 0.0))
    out = np.where(nn <= 0, 1.0, out)
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


#: relative size of the part of a series left off (below float64 resolution of the sum)
_SERIES_TOLERANCE = 1e-17


def weighted_gamma_sf(total: float | np.ndarray, n: int | np.ndarray, weight: float) -> np.ndarray | float:
    """Exact ``P(S >= total)`` for ``S = (1 - weight) X + weight Y``, ``X`` and ``Y`` independent Gamma(n, 1).

    The null of vLLM's dual-key score (``weight`` is its ``alpha``). With ``a >= b`` the two weights and
    ``rho = b / a``, ``S`` is a mixture of Gamma(2n + k) variables of scale ``b`` with negative-binomial weights
    NB(k; n, rho) (Moschopoulos 1985, "The distribution of the sum of independent gamma random variables", from
    ``(1 - a t)^-n = rho^n (1 - b t)^-n (1 - (1 - rho) / (1 - b t))^-n`` expanded in powers), so

        ``P(S >= s) = sum_k NB(k; n, rho) Q(2n + k, s / b)``.

    Every ``Q`` is at most 1, so the terms past ``K`` add at most the negative-binomial tail beyond ``K``: the series
    is summed until that tail is below 1e-17 of the sum. Weights 0 and 1 give Gamma(n, 1), weight 1/2 gives
    Gamma(2n, 1/2); 1 when ``n == 0``.
    """
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"weight must be in [0, 1], got {weight}")
    s = np.asarray(total, dtype=np.float64)
    nn = np.asarray(n, dtype=np.float64)
    if np.any(nn < 0):
        raise InputError("n must be >= 0")
    a, b = max(weight, 1.0 - weight), min(weight, 1.0 - weight)
    if b == 0.0:
        return gamma_sf(s, nn)
    if a == b:
        return gamma_sf(s / b, 2.0 * nn)
    s, nn = np.broadcast_arrays(s, nn)
    out = np.ones(s.shape, dtype=np.float64)
    rho = b / a
    for n_value in np.unique(nn):
        if n_value <= 0:
            continue
        rows = nn == n_value
        out[rows] = _mixture_sf(np.maximum(s[rows], 0.0) / b, float(n_value), rho)
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def _mixture_sf(x: np.ndarray, n: float, rho: float) -> np.ndarray:
    """``sum_k NB(k; n, rho) Q(2n + k, x)`` for each ``x``, in chunks of ``k`` until the rest is negligible."""
    from scipy import special

    mean = n * (1.0 - rho) / rho
    sd = np.sqrt(n * (1.0 - rho)) / rho
    chunk = int(mean + 12.0 * sd) + 64
    acc = np.zeros(x.shape, dtype=np.float64)
    todo = np.ones(x.shape, dtype=bool)
    start = 0
    while todo.any():
        k = np.arange(start, start + chunk, dtype=np.float64)
        w = np.exp(
            special.gammaln(n + k)
            - special.gammaln(n)
            - special.gammaln(k + 1.0)
            + n * np.log(rho)
            + k * np.log1p(-rho)
        )
        with np.errstate(all="ignore"):
            acc[todo] += (special.gammaincc(2.0 * n + k[None, :], x[todo, None]) * w[None, :]).sum(axis=1)
        start += chunk
        rest = float(special.betainc(start, n, 1.0 - rho))  # P(NB > start - 1), the weight not summed yet
        todo &= rest > _SERIES_TOLERANCE * acc
        if rest == 0.0:
            break
    return acc


# ---- log moment-generating functions of one tuple's null score (for sequential tests) -------------------------
def bernoulli_log_mgf(lam: np.ndarray, p: float) -> np.ndarray:
    """``log E[exp(lam X)]`` for ``X ~ Bernoulli(p)`` (a green indicator)."""
    lam = np.asarray(lam, dtype=np.float64)
    out: np.ndarray = np.log1p(p * np.expm1(lam))
    return out


def weighted_exp_log_mgf(lam: np.ndarray, weights: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """``log E[exp(lam S)]`` for ``S = sum_i w_i E_i``, ``E_i`` independent Exp(1): ``-sum_i log(1 - lam w_i)``;
    ``inf`` where ``lam w_i >= 1`` (the moment does not exist). One weight 1 is the Gumbel-max score's Exp(1)."""
    lam = np.asarray(lam, dtype=np.float64)
    out = np.zeros(lam.shape, dtype=np.float64)
    for w in weights:
        with np.errstate(all="ignore"):
            out = out - np.where(lam * w < 1.0, np.log1p(-lam * w), -np.inf)
    return out


def fair_bits_log_mgf(lam: np.ndarray, bits: int) -> np.ndarray:
    """``log E[exp(lam B)]`` for ``B ~ Binomial(bits, 1/2)`` (a tournament tuple's sum of fair bits)."""
    lam = np.asarray(lam, dtype=np.float64)
    out: np.ndarray = bits * (np.logaddexp(0.0, lam) - np.log(2.0))
    return out
