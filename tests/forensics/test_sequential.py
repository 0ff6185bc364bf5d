"""The anytime-valid sequential test and the budget planner, on simulated tuple scores (numpy, no model).

Validity: under each member's exact null, stopping at the first time the sequential p-value is <= alpha (optional
stopping over the whole stream) rejects at most alpha of the time: the Clopper-Pearson 95% upper bound of the
rejection rate over 4,000 replications is <= alpha. The naive rule (stop when the fixed-n exact p-value is <= alpha,
checked as the data come) exceeds alpha clearly on the same streams, so the check can tell the difference.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from antidistill.forensics.planner import Pilot, plan_budget, tuples_fixed, tuples_sequential
from antidistill.forensics.sequential import EProcess, SequentialScan
from antidistill.keys import MasterKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.nulls import bernoulli_log_mgf, binomial_sf, fair_bits_log_mgf, gamma_sf
from antidistill.watermark.schemes import get_scheme

REPS = 4000
N = 600
GAMMA = 0.25
BITS = 4


def _bernoulli(rng, p, shape):
    return (rng.random(shape) < p).astype(np.float64)


def _exp(rng, mean, shape):
    return rng.exponential(mean, shape)


def _bits(rng, p, shape):
    return rng.binomial(BITS, p, shape).astype(np.float64)


# (name, null log-MGF, sampler, null parameter, alternative parameter, fixed-n tail of a sum over n)
NULLS = [
    (
        "green-list",
        lambda lam: bernoulli_log_mgf(lam, GAMMA),
        _bernoulli,
        GAMMA,
        0.35,
        lambda s, n: binomial_sf(s, n, GAMMA),
    ),
    ("gumbel", lambda lam: get_scheme("gumbel", 0.5, 3).null_log_mgf(lam, None), _exp, 1.0, 1.25, gamma_sf),
    (
        "tournament",
        lambda lam: fair_bits_log_mgf(lam, BITS),
        _bits,
        0.5,
        0.56,
        lambda s, n: binomial_sf(s, n * BITS, 0.5),
    ),
]


def _sequential_ps(log_mgf, scores: np.ndarray, chunk: int = 100) -> np.ndarray:
    """The sequential p-value of each row at the end of the stream (= at the first crossing, for rejection)."""
    e = EProcess(log_mgf, streams=len(scores))
    for i in range(0, scores.shape[1], chunk):
        e.update(scores[:, i : i + chunk])
    return e.p_values()


def _cp_upper(k: int, n: int, level: float = 0.95) -> float:
    return 1.0 if k >= n else float(stats.beta.ppf(level, k + 1, n - k))


def _cp_lower(k: int, n: int, level: float = 0.99) -> float:
    return 0.0 if k == 0 else float(stats.beta.ppf(1 - level, k, n - k + 1))


@pytest.mark.parametrize("name,psi,draw,null,alt,tail", NULLS, ids=[n[0] for n in NULLS])
def test_optional_stopping_keeps_the_level_and_the_naive_rule_does_not(name, psi, draw, null, alt, tail):
    rng = np.random.default_rng(11)
    scores = draw(rng, null, (REPS, N))
    p_seq = _sequential_ps(psi, scores)
    # the naive rule: the fixed-n exact p checked after every 10 tuples, stop at the first p <= alpha
    checks = np.arange(10, N + 1, 10)
    p_fixed = np.asarray(tail(np.cumsum(scores, axis=1)[:, checks - 1], checks[None, :])).min(axis=1)
    for alpha in (0.01, 0.05):
        k = int((p_seq <= alpha).sum())
        assert _cp_upper(k, REPS) <= alpha, (name, alpha, k)
        naive = int((p_fixed <= alpha).sum())
        assert _cp_lower(naive, REPS) > alpha, (name, alpha, naive)


@pytest.mark.parametrize("name,psi,draw,null,alt,tail", NULLS, ids=[n[0] for n in NULLS])
def test_marked_scores_are_rejected(name, psi, draw, null, alt, tail):
    rng = np.random.default_rng(12)
    p_seq = _sequential_ps(psi, draw(rng, alt, (200, 2 * N)))
    assert (p_seq <= 0.01).mean() >= 0.9, name


def test_never_issued_keys_on_unmarked_tuples_stay_valid():
    """The scan's own sequential families (provider, 10 accounts, a cluster) on random tuples, 300 master keys."""
    rng = np.random.default_rng(13)
    cfg = WatermarkConfig(scheme="antidistill-v1")
    hits = 0
    for _ in range(300):
        master = MasterKey(rng.bytes(32))
        keys = {a: [master.account_key(a)] for a in ("a", "b", "c")}
        s = SequentialScan(cfg, [master.provider_key()], keys, {"ab": ["a", "b"]})
        for _ in range(4):
            s.update(rng.integers(0, 5000, (100, 1)), rng.integers(0, 5000, 100))
        hits += min(p for p, _ in s.family_ps().values()) * 3 <= 0.05
    assert _cp_upper(hits, 300) <= 0.05 + 0.03  # 300 replications: the bound is looser; the rate is ~0


def test_planner_fixed_n_matches_simulation():
    """At the planned n, the exact binomial p reaches the target about half the time (the plan is a median)."""
    gamma, p1, target = 0.25, 0.30, 1e-6
    n = round(tuples_fixed(p1 - gamma, np.sqrt(gamma * (1 - gamma)), np.sqrt(p1 * (1 - p1)), target))
    rng = np.random.default_rng(14)
    reached = binomial_sf(rng.binomial(n, p1, 2000), n, gamma) <= target
    assert 0.4 <= reached.mean() <= 0.6, (n, reached.mean())


def test_planner_sequential_matches_simulation():
    """The Chernoff first-passage estimate is close to the median time the e-process needs."""
    gamma, p1, target = 0.25, 0.35, 1e-6
    e = EProcess(lambda lam: bernoulli_log_mgf(lam, gamma), streams=400)
    need = tuples_sequential(e, p1, target)
    rng = np.random.default_rng(15)
    scores = _bernoulli(rng, p1, (400, int(3 * need)))
    crossed = np.full(400, np.inf)
    for i in range(0, scores.shape[1], 20):
        e.update(scores[:, i : i + 20])
        crossed[(e.p_values() <= target) & np.isinf(crossed)] = i + 20
    assert 0.75 * need <= np.median(crossed) <= 1.3 * need, (need, np.median(crossed))


def test_plan_budget_turns_tuples_into_queries_tokens_and_money():
    e = EProcess(lambda lam: bernoulli_log_mgf(lam, 0.25))
    pilot = Pilot(
        n=400, mean=0.30, sd=0.458, null_mean=0.25, null_sd=0.433, share=0.5, tuples=800, queries=10, tokens=1280
    )
    plan = plan_budget(pilot, e, 1e-6, price_per_1k=0.5)
    need = min(plan.tuples_fixed, plan.tuples_sequential)
    assert plan.tuples_per_query == 80 and plan.tokens_per_query == 128
    assert plan.queries == pytest.approx(need / 0.5 / 80)
    assert plan.tokens == pytest.approx(plan.queries * 128) and plan.cost == pytest.approx(plan.tokens / 1000 * 0.5)
    lo, hi = plan.tuples_fixed_range
    assert lo < plan.tuples_fixed < hi
    none = plan_budget(Pilot(400, 0.2, 0.4, 0.25, 0.433, 0.5, 800, 10, 1280), e, 1e-6)
    assert none.tuples_fixed is None and none.tuples_sequential is None and none.queries is None
