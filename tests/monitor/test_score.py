"""Scoring: calibration honours its targets; rules give reasons; the scorer round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from antidistill.monitor.features import FEATURES, INDEX
from antidistill.monitor.score import Scorer, calibrate, level_of, rules


@pytest.mark.parametrize("n", [50, 449, 1000, 2500])
def test_calibration_honours_the_target_on_the_calibration_set(n):
    rng = np.random.default_rng(n)
    risks = rng.beta(1, 8, size=n)
    risks[:5] = 0.5  # ties
    targets = {"watch": 0.02, "alert": 0.005, "severe": 0.001}
    t = calibrate(risks, targets, floor=0.0, above_all=())
    assert t["watch"] <= t["alert"] <= t["severe"]
    for level, target in targets.items():
        assert (risks >= t[level]).mean() <= target
    # and is not needlessly strict: the next lower benign risk would break it
    below = np.sort(risks[risks < t["watch"]])[-1]
    assert (risks >= below).mean() > targets["watch"] or math.floor(targets["watch"] * n) == 0


def test_alert_sits_above_every_benign_calibration_account():
    risks = [0.01] * 995 + [0.3, 0.31, 0.35, 0.36, 0.4]
    t = calibrate(risks, {"watch": 0.02, "alert": 0.0025, "severe": 0.001})
    assert t["alert"] == pytest.approx(0.42) and t["severe"] == pytest.approx(0.42 + 0.58 / 4)
    assert t["watch"] < 0.3


def test_calibration_errors_name_the_field():
    with pytest.raises(ValueError, match="benign"):
        calibrate([], {"watch": 0.1, "alert": 0.1, "severe": 0.1})
    with pytest.raises(ValueError, match="alert"):
        calibrate([0.1], {"watch": 0.1, "alert": 1.5, "severe": 0.1})


def test_rules_speak_plain_words():
    x = np.zeros(len(FEATURES))
    x[INDEX["log_requests"]] = math.log1p(1000)
    x[INDEX["log_rate_per_hour"]] = math.log1p(2000)
    x[INDEX["template_top_share"]] = 0.97
    fired = rules(x)
    assert fired[0][1].startswith("the account sent 2,000 requests an hour")
    assert any("one prompt template" in r for _, r in fired)
    assert rules(np.zeros(len(FEATURES))) == []


def test_levels_and_state_round_trip():
    s = Scorer({"watch": 0.2, "alert": 0.5, "severe": 0.9})
    assert [level_of(r, s.thresholds) for r in (0.1, 0.2, 0.6, 0.95)] == ["none", "watch", "alert", "severe"]
    again = Scorer.from_state(s.to_state())
    assert again.thresholds == s.thresholds and not again.trained
    bad = s.to_state() | {"features": ["x"]}
    with pytest.raises(ValueError, match="features"):
        Scorer.from_state(bad)


def test_fast_isolation_scores_equal_scikit_learn():
    from sklearn.ensemble import IsolationForest

    from antidistill.monitor.score import isolation_scores

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    for max_features in (1.0, 0.5):
        iso = IsolationForest(n_estimators=20, max_features=max_features, random_state=0).fit(X)
        Y = rng.normal(size=(40, 6)) * 2
        np.testing.assert_array_equal(isolation_scores(iso, Y), -iso.score_samples(Y))


def test_flat_gradient_boosting_is_bit_identical_to_scikit_learn():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, len(FEATURES)))
    y = (X[:, 0] + 0.5 * X[:, 3] - X[:, 7] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values take the learned side
    hgb = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15, random_state=0).fit(X, y)
    s = Scorer({"watch": 0.2, "alert": 0.5, "severe": 0.9}, supervised=hgb, embeddings=True)
    Y = rng.normal(size=(64, len(FEATURES))) * 2
    Y[rng.random(Y.shape) < 0.05] = np.nan
    for batch in (Y[:1], Y[:3], Y):
        np.testing.assert_array_equal(s._supervised_proba(batch), hgb.predict_proba(batch)[:, 1])
    assert s._flat("supervised") is not None  # the fast path was taken, not the fallback


def test_alert_ceiling_can_leave_out_accounts_swept_into_an_attackers_cluster():
    risks = [0.01] * 995 + [0.3, 0.31, 0.35, 0.36, 0.9]  # 0.9: a customer linked into a hydra's cluster
    t = calibrate(risks, {"watch": 0.02, "alert": 0.0025, "severe": 0.001}, ceiling_risks=risks[:-1])
    assert t["alert"] == pytest.approx(0.38)
    assert sum(r >= t["alert"] for r in risks) <= math.floor(0.0025 * len(risks)) + 1
