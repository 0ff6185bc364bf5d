"""Stage 7's pure helpers: action histories, levels, escalation, request numbers, the per-persona table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from antidistill.demo.stages.watch import (
    action_history,
    action_points,
    escalated,
    first_status,
    max_levels,
    persona_rows,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeAlert:
    account_id: str
    level: str
    action: str
    created_at: datetime


def alerts(*items):
    return [FakeAlert(a, lv, act, T0 + timedelta(seconds=i)) for i, (a, lv, act) in enumerate(items)]


def test_action_history_and_levels_in_time_order():
    items = list(
        reversed(
            alerts(("a", "alert", "throttle"), ("a", "severe", "block"), ("b", "watch", "flag"), ("b", "alert", "none"))
        )
    )
    assert action_history(items) == {"a": ["throttle", "block"], "b": ["flag"]}
    assert max_levels(items) == {"a": "severe", "b": "alert"}


def test_escalated_needs_the_order():
    assert escalated(["flag", "throttle", "block"])
    assert not escalated(["block", "throttle"])
    assert not escalated(["block"])
    assert not escalated([])
    # a hold for review refuses every request too: the shipped policy blocks only on two families of evidence
    assert escalated(["throttle", "review"], then=("block", "review"))
    assert not escalated(["throttle", "review"])
    assert not escalated(["review", "throttle"], then=("block", "review"))


def test_first_status_counts_the_accounts_requests_only():
    reqs = [
        {"account_id": "a", "status": 200},
        {"account_id": "b", "status": 429},
        {"account_id": "a", "status": 200},
        {"account_id": "a", "status": 429},
        {"account_id": "a", "status": 403},
    ]
    assert first_status(reqs, "a", 429) == 3
    assert first_status(reqs, "a", 403) == 4
    assert first_status(reqs, "b", 403) is None


def test_action_points_count_exchanges_before_each_action():
    recs = [{"account_id": "a", "endpoint": "/v1/chat/completions"}] * 3 + [
        {"account_id": "a", "endpoint": "monitor:action", "request": {"action": "throttle"}},
        {"account_id": "b", "endpoint": "/v1/chat/completions"},
        {"account_id": "a", "endpoint": "/v1/completions"},
        {"account_id": "a", "endpoint": "monitor:action", "request": {"action": "block"}},
    ]
    assert action_points(recs) == {"a": [("throttle", 3), ("block", 4)]}


def test_persona_rows_aggregate_by_persona():
    labels = [
        {"account_id": "a1", "persona": "bulk_harvester", "role": "attacker"},
        {"account_id": "c1", "persona": "casual", "role": "benign"},
        {"account_id": "c2", "persona": "casual", "role": "benign"},
        {"account_id": "h1", "persona": "hydra", "role": "attacker"},
    ]
    al = alerts(
        ("a1", "alert", "throttle"), ("a1", "severe", "block"), ("c1", "watch", "flag"), ("h1", "alert", "review")
    )
    reqs = [
        {"account_id": "a1", "status": 429},
        {"account_id": "a1", "status": 403},
        {"account_id": "a1", "status": 403},
        {"account_id": "c1", "status": 200},
    ]
    rows = {r.persona: r for r in persona_rows(labels, al, reqs)}
    assert [r.role for r in persona_rows(labels, al, reqs)] == ["benign", "attacker", "attacker"]
    b = rows["bulk_harvester"]
    assert (b.accounts, b.reached_alert, b.throttled, b.blocked, b.refused_429, b.refused_403) == (1, 1, 1, 1, 1, 2)
    c = rows["casual"]
    assert (c.accounts, c.reached_alert, c.throttled, c.blocked) == (2, 0, 0, 0)
    assert rows["hydra"].blocked == 1  # held for review refuses every request too
