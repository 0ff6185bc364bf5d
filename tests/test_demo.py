"""``antidistill demo``: the helpers of stages 7 and 8 (fast), and the quick demo end to end (slow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from antidistill.demo_stages import (
    DemoSizes,
    action_history,
    action_points,
    escalated,
    first_status,
    max_levels,
    persona_rows,
    short_id,
    shorten,
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


def test_sizes_quick_is_smaller_everywhere():
    full, quick = DemoSizes.for_mode(False), DemoSizes.for_mode(True)
    assert quick.quick and not full.quick
    for f in ("serve_tokens", "gateway_tokens", "harvest", "harvest_tokens", "customer_requests", "closed_prompts"):
        assert getattr(quick, f) <= getattr(full, f), f
    assert quick.harvest * quick.epochs < full.harvest * full.epochs
    assert quick.closed_prompts == 0 < full.closed_prompts
    assert DemoSizes.for_mode(False, max_tokens=64).serve_tokens == 64
    assert DemoSizes.for_mode(True, max_tokens=32).serve_tokens == 32


def test_action_history_and_levels_in_time_order():
    items = list(reversed(alerts(("a", "alert", "throttle"), ("a", "severe", "block"), ("b", "watch", "flag"),
                                 ("b", "alert", "none"))))
    assert action_history(items) == {"a": ["throttle", "block"], "b": ["flag"]}
    assert max_levels(items) == {"a": "severe", "b": "alert"}


def test_escalated_needs_the_order():
    assert escalated(["flag", "throttle", "block"])
    assert not escalated(["block", "throttle"])
    assert not escalated(["block"])
    assert not escalated([])


def test_first_status_counts_the_accounts_requests_only():
    reqs = [{"account_id": "a", "status": 200}, {"account_id": "b", "status": 429}, {"account_id": "a", "status": 200},
            {"account_id": "a", "status": 429}, {"account_id": "a", "status": 403}]
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
    labels = [{"account_id": "a1", "persona": "bulk_harvester", "role": "attacker"},
              {"account_id": "c1", "persona": "casual", "role": "benign"},
              {"account_id": "c2", "persona": "casual", "role": "benign"},
              {"account_id": "h1", "persona": "hydra", "role": "attacker"}]
    al = alerts(("a1", "alert", "throttle"), ("a1", "severe", "block"), ("c1", "watch", "flag"),
                ("h1", "alert", "review"))
    reqs = [{"account_id": "a1", "status": 429}, {"account_id": "a1", "status": 403},
            {"account_id": "a1", "status": 403}, {"account_id": "c1", "status": 200}]
    rows = {r.persona: r for r in persona_rows(labels, al, reqs)}
    assert [r.role for r in persona_rows(labels, al, reqs)] == ["benign", "attacker", "attacker"]
    b = rows["bulk_harvester"]
    assert (b.accounts, b.reached_alert, b.throttled, b.blocked, b.refused_429, b.refused_403) == (1, 1, 1, 1, 1, 2)
    c = rows["casual"]
    assert (c.accounts, c.reached_alert, c.throttled, c.blocked) == (2, 0, 0, 0)
    assert rows["hydra"].blocked == 1  # held for review refuses every request too


def test_text_helpers():
    assert short_id("acct_0123456789abcdef") == "acct_01234567…"
    assert short_id("short") == "short"
    assert shorten("a  b\n c") == "a b c"
    assert len(shorten("x" * 200, 20)) == 20


@pytest.mark.slow
def test_quick_demo_end_to_end(capsys, tmp_path, shared_cache_env):
    from antidistill.cli import main

    report = tmp_path / "report"
    try:
        main(["demo", "--quick", "--report-dir", str(report)])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert "checks passed" in out and "FAILED" not in out
    for stage in ("7. Watch", "8. Prove"):
        assert stage in out
    evidence = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert evidence["subject"]["kind"] == "account"
    assert (report / "report.html").is_file() and (report / "SHA256SUMS").is_file()
