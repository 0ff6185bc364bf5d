"""Scoring: calibration honours its targets; rules give reasons; the scorer round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from antidistill.monitor.features import FEATURES, INDEX
from antidistill.monitor.score import Scorer, calibrate, families_of, level_of, rules, rules_score, timing_only


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
    assert any("one prompt template" in r.reason for r in fired)
    assert {r.family for r in fired} == {"traffic", "content"}
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


# ---- the guards: the rules' floor, the knob, timing alone; evidence families -----------------------------------
THRESHOLDS = {"watch": 0.25, "alert": 0.42, "severe": 0.56}  # what training calibrates (a default-scale model)


class Model:
    """A fitted classifier's stand-in: ``predict_proba`` from a function of one feature vector."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def predict_proba(self, X):
        p = np.array([self.fn(dict(zip(FEATURES, x, strict=True))) for x in X])
        return np.c_[1 - p, p]


BENIGN = {"gap_cv": 1.2, "hour_entropy": 0.6, "active_hours": 0.4, "log_demand": math.log1p(512)}


def vec(n: int = 487, **features: float) -> np.ndarray:
    """An account's window: ``n`` requests, benign-looking unless told otherwise."""
    x = np.zeros(len(FEATURES))
    x[INDEX["log_requests"]] = math.log1p(n)
    for name, v in {**BENIGN, **features}.items():
        x[INDEX[name]] = v
    return x


def trained(fn, guards: bool = True) -> Scorer:
    median = vec(100)
    return Scorer(
        THRESHOLDS, supervised=Model(fn), benign_median=median, benign_scale=np.ones(len(FEATURES)), guards=guards
    )


def one(s: Scorer, x: np.ndarray):
    return s.score(x[None, :])[0]


#: the held-out canonical distiller: ~70 templated exercises a day for a week, each demanding the full reasoning and
#: 1024 tokens, at a human-looking pace
HARVESTER = vec(
    487,
    log_rate_per_hour=math.log1p(2.9),
    template_top_share=0.92,
    cot_share=1.0,
    long_demand_share=1.0,
    single_turn_share=1.0,
    word_diversity=0.3,
)


def test_decisive_rule_evidence_is_a_floor_the_model_cannot_unlearn():
    low = lambda f: 0.05  # noqa: E731 - a model that learnt the simulator and scores the canonical distiller low
    old = one(trained(low, guards=False), HARVESTER)
    new = one(trained(low), HARVESTER)
    assert old.parts["rules"] > 0.8 and old.level in ("none", "watch")  # what the weighted mean alone gives
    assert new.level == "alert" and new.risk >= THRESHOLDS["alert"]
    assert new.parts["floor"] == pytest.approx(new.risk)
    assert "step-by-step reasoning" in new.reasons[0] and "one prompt template" in new.reasons[1]
    assert new.families == ("content",)
    # the rules-only monitor gives the same level on the same evidence: the floor is its scale mapped onto ours
    assert one(Scorer.rules_only(), HARVESTER).level == "alert"
    # and the floor never lowers what the model says
    assert one(trained(lambda f: 0.99), HARVESTER).level == "severe"


def test_the_floor_maps_the_rules_scale_onto_the_calibrated_levels():
    s = Scorer(THRESHOLDS)
    d = np.array([0.49, 0.5, 0.69, 0.7, 0.89, 0.9])
    assert [level_of(float(v), THRESHOLDS) for v in s.floor(d)] == [
        "none",
        "watch",
        "watch",
        "alert",
        "alert",
        "severe",
    ]
    np.testing.assert_allclose(Scorer.rules_only().floor(d), d)  # the identity on the rules' own scale
    # traffic shape sets no floor: a fast evaluation harness demanding the reasoning is not lifted by it
    harness = vec(2600, log_rate_per_hour=math.log1p(1800), cot_share=1.0)
    r = one(trained(lambda f: 0.0), harness)
    assert r.parts["floor"] < THRESHOLDS["alert"] and r.families == ("traffic", "content")


def test_long_demand_alone_is_neither_decisive_nor_a_family():
    only = vec(500, long_demand_share=1.0)
    fired = rules(only)
    assert [r.kind for r in fired] == ["demand"] and fired[0].family is None
    assert one(Scorer.rules_only(), only).families == ()
    # reasoning demands (watch on their own) plus 1024+ tokens: the knob adds weight, never a level
    x = vec(500, cot_share=1.0, long_demand_share=1.0)
    r = one(Scorer.rules_only(), x)
    assert r.parts["rules"] >= 0.7  # the old rules-only monitor called this alert
    assert r.level == "watch" == one(Scorer.rules_only(), vec(500, cot_share=1.0)).level
    assert r.risk > one(Scorer.rules_only(), vec(500, cot_share=1.0)).risk  # weight within the level
    s = trained(lambda f: 0.4)
    assert one(trained(lambda f: 0.4, guards=False), x).level == "alert"
    assert one(s, x).level == "watch"


#: a nightly batch job: machine-regular intervals, around the clock, long answers, nothing else
BATCH = vec(
    600, log_rate_per_hour=math.log1p(25), gap_cv=0.02, hour_entropy=1.0, active_hours=1.0, long_demand_share=1.0
)


def test_timing_alone_stays_below_watch_for_rules_and_model():
    fired = rules(BATCH)
    assert {r.kind for r in fired} == {"regular", "clock", "demand"}
    assert timing_only(fired) and families_of(fired) == ("traffic",)
    assert rules_score(fired) >= 0.5  # the old rules-only monitor put it at watch
    assert one(Scorer.rules_only(), BATCH).level == "none"
    loves_timing = lambda f: 0.95 if f["gap_cv"] < 0.2 else 0.02  # noqa: E731
    assert one(trained(loves_timing, guards=False), BATCH).level == "severe"
    r = one(trained(loves_timing), BATCH)
    assert r.level == "none" and r.risk < THRESHOLDS["watch"] and r.parts["timing_capped"] == 1.0
    # the model's evidence outside timing still counts in full
    other = lambda f: 0.95 if f["prompt_len_cv"] < 0.05 else 0.02  # noqa: E731
    assert one(trained(other), BATCH).level == "severe"
    # and timing with another family is not "timing alone"
    both = BATCH.copy()
    both[INDEX["cot_share"]] = 1.0
    assert not timing_only(rules(both)) and one(Scorer.rules_only(), both).level == "alert"


def test_families_group_the_rules():
    fast = vec(1000, log_rate_per_hour=math.log1p(2000), template_top_share=0.97)
    assert families_of(rules(fast)) == ("traffic", "content")
    pivot = vec(300, log_switches=math.log1p(3), fresh_model_share=0.9)
    assert families_of(rules(pivot)) == ("release",)
    weak = vec(300, template_top_share=0.55)  # a rule that fired, too weak to be its family's evidence
    assert rules(weak) and families_of(rules(weak)) == ()
