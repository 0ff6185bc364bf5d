"""Budget planning for a closed-mode scan: from a pilot, how many tuples, queries, tokens and how much money a
scan needs to reach a target p-value. Pure functions; the numbers are approximations and say so.

From the pilot's scores of the planning key (the provider key, else the best account key) on its positions:

* the per-tuple effect ``d = mean - mu0`` with a 95% normal confidence interval ``d +- 1.96 sd / sqrt(n)``;
* **fixed-n test** (normal approximation of the exact tail): to reach ``p`` (after the correction for the ``T``
  keys tested, ``p / T``) with probability ``power``, ``n = ((z_{1-p/T} sd0 + z_power sd1) / d)^2`` tuples;
* **sequential test** (the e-process of :mod:`antidistill.forensics.sequential`): under the alternative the log of
  the mixture grows by ``g = max_lam (lam mean - psi(lam))`` per tuple (for the best grid point; the mixture loses at
  most ``log K``), so it crosses ``log(T / p) + log K`` after about ``(log(T / p) + log K) / g`` tuples (a
  Chernoff-type first-passage estimate; the median stopping time is close to it);
* tuples on the key's positions -> all tuples (the share of the key's positions in the pilot) -> queries (tuples
  per query seen in the pilot; later queries add fewer new tuples as repeats are scored once, so this is a lower
  bound on queries) -> suspect completion tokens (tokens per query) -> money (``price`` per 1,000 tokens).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from antidistill.forensics.sequential import EProcess

#: the stated approximations, printed with every plan
APPROXIMATION = (
    "fixed-n: normal approximation of the exact tail at the pilot's effect; sequential: Chernoff first-passage "
    "(threshold / mean log-growth per tuple); queries from the pilot's tuples per query (a lower bound: repeats "
    "add no tuples)"
)


@dataclass(frozen=True)
class Pilot:
    """What a pilot observed for the planning key.

    Args:
        n: scored tuples on the key's positions; mean, sd: their scores' mean and standard deviation.
        null_mean, null_sd: one tuple's null moments.
        share: the key's positions among all scored tuples.
        tuples, queries, tokens: all scored tuples, requests and completion tokens of the pilot.
        tests: keys the key's family is corrected for.
    """

    n: int
    mean: float
    sd: float
    null_mean: float
    null_sd: float
    share: float
    tuples: int
    queries: int
    tokens: int
    tests: int = 1


@dataclass(frozen=True)
class BudgetPlan:
    """The plan printed before a full scan (``None`` where the pilot shows no excess to extrapolate)."""

    target_p: float
    effect: float
    effect_ci: tuple[float, float]
    tuples_fixed: float | None
    tuples_sequential: float | None
    tuples_fixed_range: tuple[float | None, float | None]
    queries: float | None
    tokens: float | None
    cost: float | None
    tuples_per_query: float
    tokens_per_query: float
    approximation: str = APPROXIMATION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tuples_fixed(effect: float, null_sd: float, alt_sd: float, p: float, power: float = 0.5) -> float | None:
    """Tuples for the fixed-n test to reach ``p`` with probability ``power`` (normal approximation).

    Example:
        >>> round(tuples_fixed(0.05, 0.433, 0.458, 1e-6))
        1695
    """
    if effect <= 0.0:
        return None
    z = stats.norm.isf(p) * null_sd + stats.norm.ppf(power) * alt_sd
    return float((max(z, 0.0) / effect) ** 2)


def tuples_sequential(e: EProcess, mean: float, p: float) -> float | None:
    """Tuples for the mixture e-process ``e`` to reach ``p`` when scores have mean ``mean`` (Chernoff estimate)."""
    growth = float(np.max(e.lam * mean - e.psi))
    if growth <= 0.0:
        return None
    return (math.log(1.0 / p) + math.log(len(e.lam))) / growth


def plan_budget(pilot: Pilot, e: EProcess, target_p: float, price_per_1k: float | None = None) -> BudgetPlan:
    """The budget to reach ``target_p`` overall (see the module docstring); ``e`` gives the sequential test's grid
    and null (its state is not used)."""
    n = max(pilot.n, 1)
    effect = pilot.mean - pilot.null_mean
    half = 1.96 * pilot.sd / math.sqrt(n)
    p = target_p / max(pilot.tests, 1)
    fixed = tuples_fixed(effect, pilot.null_sd, pilot.sd, p)
    rng = (
        tuples_fixed(effect + half, pilot.null_sd, pilot.sd, p),
        tuples_fixed(effect - half, pilot.null_sd, pilot.sd, p),
    )
    seq = tuples_sequential(e, pilot.mean, p)
    per_query = pilot.tuples / max(pilot.queries, 1)
    tok_per_query = pilot.tokens / max(pilot.queries, 1)
    need = min((x for x in (fixed, seq) if x is not None), default=None)
    queries = need / max(pilot.share, 1e-12) / per_query if need is not None and per_query > 0 else None
    tokens = queries * tok_per_query if queries is not None else None
    cost = tokens / 1000.0 * price_per_1k if tokens is not None and price_per_1k is not None else None
    return BudgetPlan(
        target_p,
        effect,
        (effect - half, effect + half),
        fixed,
        seq,
        rng,
        queries,
        tokens,
        cost,
        per_query,
        tok_per_query,
    )


def _n(x: float | None) -> str:
    return "no estimate (no excess in the pilot)" if x is None else f"{math.ceil(x):,}"


def describe(plan: BudgetPlan) -> list[str]:
    """The plan in lines for a reader."""
    lo, hi = plan.effect_ci
    r_lo, r_hi = plan.tuples_fixed_range
    money = f", about {plan.cost:,.2f} at the given price" if plan.cost is not None else ""
    return [
        f"pilot: per-tuple effect {plan.effect:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}); "
        f"{plan.tuples_per_query:.1f} tuples and {plan.tokens_per_query:.1f} completion tokens per query",
        f"to reach p <= {plan.target_p:g}: {_n(plan.tuples_fixed)} tuples on the key's positions (fixed-n, median; "
        f"{_n(r_lo)} to {_n(r_hi)} over the effect's CI), {_n(plan.tuples_sequential)} with the sequential test",
        f"needs about {_n(plan.queries)} queries, {_n(plan.tokens)} suspect completion tokens{money}",
        f"approximations: {plan.approximation}",
    ]
