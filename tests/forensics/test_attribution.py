"""The scan's statistics on synthetic tuples: exact null distributions, the pooled cluster test, controls."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from antidistill.forensics.attribution import attribute_tuples, control_keys, pooled_counts, pooled_test
from antidistill.forensics.scan import ScanKeys, build_report
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark
from tests.synthetic import TEST_MASTER, sample

CONFIG = WatermarkConfig(scheme="antidistill-v1")
WM = Watermark(CONFIG)
GAMMA = 0.25


def _random_keys(rng, k: int) -> list[WatermarkKey]:
    return [
        WatermarkKey(f"r{i}", f"r{i}", 1, int(v)) for i, v in enumerate(rng.integers(0, 2**64, size=k, dtype=np.uint64))
    ]


def _distinct_tuples(rng, n: int, vocab: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.unique(rng.integers(0, vocab, size=(2 * n, 2)), axis=0)
    pairs = pairs[rng.permutation(len(pairs))[:n]]
    return pairs[:, :1].copy(), pairs[:, 1].copy()


def test_pooled_count_is_exactly_binomial_under_h0():
    """Independent keys on fixed key-independent tuples: the pooled count is Binomial(K n, gamma): its mean and
    variance (no overdispersion from pooling K keys on the same tuples), and p-values that are uniform."""
    rng = np.random.default_rng(1)
    k, n, trials = 8, 60, 1500
    ctx, tok = _distinct_tuples(rng, n)
    counts = np.empty(trials, dtype=np.int64)
    pvals = np.empty(trials)
    for i in range(trials):
        keys = _random_keys(rng, k)
        counts[i] = pooled_counts(WM, keys, ctx, tok, None).sum()
        pvals[i] = pooled_test(WM, keys, ctx, tok).p_value
    m = k * n
    assert abs(counts.mean() - m * GAMMA) < 4 * np.sqrt(m * GAMMA * (1 - GAMMA) / trials)
    var_ratio = counts.var(ddof=1) / (m * GAMMA * (1 - GAMMA))
    assert 0.85 < var_ratio < 1.15, var_ratio
    # discrete p-values are super-uniform: P(p <= a) <= a, and close to it for a large n
    for a in (0.01, 0.05, 0.2, 0.5):
        frac = float((pvals <= a).mean())
        assert frac <= a + 3 * np.sqrt(a * (1 - a) / trials), (a, frac)
        assert frac >= 0.5 * a - 3 * np.sqrt(a / trials), (a, frac)
    # the tail of the count against Binomial(K n, gamma), at a few thresholds
    for c in (m * GAMMA + 10, m * GAMMA + 20):
        a = stats.binom.sf(c - 1, m, GAMMA)
        assert abs(float((counts >= c).mean()) - a) < 4 * np.sqrt(a * (1 - a) / trials), c


def test_pooled_test_rejects_a_key_counted_twice():
    k = TEST_MASTER.account_key("a")
    with pytest.raises(ValueError, match="distinct"):
        pooled_test(WM, [k, k], np.zeros((3, 1), np.int64), np.arange(3))


def _harvest(rng, accounts: list[str], tokens_each: int, vocab: int = 4000):
    """Each account's watermarked text (account + provider key), as a student that reproduced them would emit."""
    ctx, tok = [], []
    for a in accounts:
        seq = sample(rng, WM, TEST_MASTER.account_key(a), TEST_MASTER.provider_key(), tokens_each, vocab)[0]
        ctx.append(seq[:-1, None])
        tok.append(seq[1:])
    ctx, tok = np.concatenate(ctx), np.concatenate(tok)
    _, first = np.unique(np.column_stack([ctx[:, 0], tok]), axis=0, return_index=True)
    first.sort()
    return ctx[first], tok[first]


def test_spread_harvest_is_caught_by_the_cluster_and_by_no_single_account():
    rng = np.random.default_rng(7)
    ring = [f"sybil-{i:02d}" for i in range(50)]
    innocents = [f"user-{i}" for i in range(10)]
    ctx, tok = _harvest(rng, ring, 20)
    keys = ScanKeys.from_master(TEST_MASTER, ring + innocents, {"ring": ring, "innocents": innocents})
    att = attribute_tuples(CONFIG, ctx, tok, keys.provider, keys.accounts, keys.clusters, control_keys(12))
    assert att.account_keys_tested == 60
    # no account alone is significant after correction, not even at 0.05
    assert min(a.p_corrected for a in att.accounts) > 0.05
    ring_res = next(c for c in att.clusters if c.cluster_id == "ring")
    inn_res = next(c for c in att.clusters if c.cluster_id == "innocents")
    assert ring_res.keys == 50 and ring_res.n == 50 * att.account_positions
    assert ring_res.p_corrected < 1e-4
    assert inn_res.p_corrected > 1e-3
    assert att.clusters[0].cluster_id == "ring"
    # the provider test needs no account at all, and sees the whole campaign
    assert att.provider.p_value < 1e-6
    assert att.p_value <= 3 * min(att.provider.p_corrected, ring_res.p_corrected)
    assert all(c.p_value > 1e-3 for c in att.controls)


def test_single_heavy_account_is_attributed_among_many():
    rng = np.random.default_rng(3)
    ctx, tok = _harvest(rng, ["mallory"], 400)
    others = [f"user-{i}" for i in range(40)]
    keys = ScanKeys.from_master(TEST_MASTER, [*others, "mallory"])
    r = build_report(
        "open", "synthetic", CONFIG, ctx, tok, keys, alpha=1e-3, parameters={}, texts=1, tokens_seen=399, skipped={}
    )
    assert r.attributed_account == "mallory" and r.best_account.p_corrected < 1e-6
    assert r.accounts[1].p_corrected > 1e-3
    assert r.significant and r.controls_ok and "mallory" in r.verdict
    assert r.curve[-1].tokens_scored == r.tokens_scored
    assert r.curve[-1].provider_p == pytest.approx(r.provider.p_value)
    # the curve's p-values fall as tuples accumulate (for a marked model)
    assert r.curve[-1].provider_p < r.curve[len(r.curve) // 2].provider_p


def test_unmarked_tuples_give_uniform_controls_and_no_verdict():
    rng = np.random.default_rng(12)
    ctx, tok = _distinct_tuples(rng, 3000)
    keys = ScanKeys.from_master(TEST_MASTER, [f"user-{i}" for i in range(20)], {"c": ["user-1", "user-2"]})
    r = build_report(
        "closed",
        "synthetic",
        CONFIG,
        ctx,
        tok,
        keys,
        alpha=1e-3,
        parameters={},
        texts=1,
        tokens_seen=3000,
        skipped={},
        controls=200,
        control_seed=5,
    )
    assert not r.significant and r.attributed_account is None and r.attributed_cluster is None
    ps = np.array([c.p_value for c in r.controls])
    assert len(ps) == 200 and r.controls_ok
    assert stats.kstest(ps, "uniform").pvalue > 1e-3  # n = 1500 provider positions: p-values nearly continuous
    d = r.to_dict()
    for field in (
        "mode",
        "suspect",
        "parameters",
        "tokens_seen",
        "tokens_scored",
        "skipped",
        "provider",
        "accounts",
        "best_account",
        "clusters",
        "curve",
        "controls",
        "verdict",
        "p_value",
    ):
        assert field in d
    assert d["parameters"]["control_seed"] == 5 and d["parameters"]["watermark"] == CONFIG.to_dict()


def test_control_keys_are_replayable_and_distinct_from_issued_keys():
    a, b = control_keys(10, seed=1), control_keys(10, seed=1)
    assert [k.value for k in a] == [k.value for k in b]
    assert len({k.value for k in a}) == 10
    assert {k.value for k in a}.isdisjoint({k.value for k in control_keys(10, seed=2)})


def test_bad_inputs_name_the_problem():
    keys = ScanKeys.from_master(TEST_MASTER, ["a"])
    with pytest.raises(ValueError, match="cluster 'c'"):
        attribute_tuples(
            CONFIG, np.zeros((1, 1), np.int64), np.zeros(1, np.int64), keys.provider, keys.accounts, {"c": ["a", "zed"]}
        )
    with pytest.raises(ValueError, match="alpha"):
        build_report(
            "open",
            "x",
            CONFIG,
            np.zeros((0, 1)),
            np.zeros(0),
            keys,
            alpha=0,
            parameters={},
            texts=0,
            tokens_seen=0,
            skipped={},
        )
