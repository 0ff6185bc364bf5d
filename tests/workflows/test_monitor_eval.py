"""The evaluation summary: what the policy would do, and the benign block rate apart from the alert rate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from scipy.stats import binomtest

from antidistill.monitor.api import Assessment
from antidistill.monitor.policy import Policy
from antidistill.workflows.monitor_eval import action_summary, wilson

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def assess(account: str, level: str, families: tuple[str, ...] = ()) -> Assessment:
    return Assessment(account, None, 0.5, level, ("r",), T0, families=families)


def test_benign_blocks_are_counted_apart_from_holds_and_alerts():
    labels = [{"account_id": f"b{i}", "role": "benign", "persona": "casual"} for i in range(8)]
    labels += [{"account_id": "h", "role": "attacker", "persona": "hydra"}]
    changes = [
        assess("b0", "alert"),
        assess("b1", "severe", ("content",)),  # one family: held for review, not blocked
        assess("b2", "alert", ("content",)),
        assess("b2", "severe", ("content", "traffic")),  # the second family: blocked
        assess("h", "watch"),
        assess("h", "severe", ("traffic", "linking")),
    ]
    action, summary = action_summary(labels, changes, Policy.default())
    assert action == {"b0": "throttle", "b1": "review", "b2": "block", "h": "block"}
    b = summary["benign"]
    assert (b["blocked"]["accounts"], b["blocked"]["of"], b["held"]["accounts"]) == (1, 8, 2)
    assert b["blocked"]["wilson95"] == [round(v, 5) for v in wilson(1, 8)]
    assert b["actions"] == {"none": 5, "throttle": 1, "review": 1, "block": 1}
    assert summary["attacker"]["blocked"]["accounts"] == 1
    assert summary["benign_blocked"] == [{"account_id": "b2", "persona": "casual", "families": ["traffic", "content"]}]


@pytest.mark.parametrize(("k", "n"), [(0, 1349), (1, 1349), (3, 40), (20, 20)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_wilson_refuses_nonsense():
    with pytest.raises(ValueError, match="n must be positive"):
        wilson(0, 0)
    with pytest.raises(ValueError, match="k must be in"):
        wilson(5, 3)
