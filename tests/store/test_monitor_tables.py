"""The monitor's tables: alerts, enforcement state, and actions written with their audit record in one transaction.

Every test runs on SQLite and on PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from antidistill.store.api import Alert, Enforcement
from tests.store.entries import make_entry

T = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def alert(i: int, account: str = "acct_a", **kw) -> Alert:
    values = dict(
        id=f"alert_{i:04d}",
        account_id=account,
        cluster_id="cl_1" if i % 2 else None,
        risk=0.5 + i / 100,
        level="alert",
        reasons=("many near-duplicate prompts", "é ✓ unicode"),
        scores={"rules": 0.7},
        at=T + timedelta(minutes=i),
        action="none",
        clause=None,
        created_at=T + timedelta(minutes=i),
    )
    values.update(kw)
    return Alert(**values)


def enforcement(account: str = "acct_a", action: str = "throttle", **kw) -> Enforcement:
    values = dict(
        account_id=account,
        action=action,
        level="alert",
        clause="4.2",
        since=T,
        rpm=5 if action == "throttle" else None,
        reason="risk 0.80 (alert)",
    )
    values.update(kw)
    return Enforcement(**values)


def test_alerts_round_trip_and_filter(store):
    for i in range(5):
        store.record_alert(alert(i, account="acct_a" if i < 3 else "acct_b"))
    got = store.list_alerts()
    assert [a.id for a in got] == [f"alert_{i:04d}" for i in range(5)]
    assert got[1].cluster_id == "cl_1" and got[0].cluster_id is None
    assert got[0].reasons == ("many near-duplicate prompts", "é ✓ unicode")
    assert got[0].scores == {"rules": 0.7} and got[0].at == T
    assert [a.id for a in store.list_alerts(account_id="acct_b")] == ["alert_0003", "alert_0004"]
    assert [a.id for a in store.list_alerts(since=T + timedelta(minutes=3))] == ["alert_0003", "alert_0004"]
    assert [a.id for a in store.list_alerts(limit=2)] == ["alert_0003", "alert_0004"]  # the newest, oldest first
    with pytest.raises(ValueError, match="limit"):
        store.list_alerts(limit=0)
    with pytest.raises(ValueError, match="action"):
        store.record_alert(alert(9, action="nuke"))


def test_enforcement_set_get_clear_with_audit_records(store):
    assert store.get_enforcement("acct_a") is None
    store.append_audit(make_entry(1))
    seq = store.set_enforcement(
        enforcement(),
        audit=make_entry(2, endpoint="monitor:action", completion=[]),
        alert=alert(1, action="throttle", clause="4.2"),
    )
    assert seq == 2
    e = store.get_enforcement("acct_a")
    assert (e.action, e.rpm, e.set_by, e.active(T)) == ("throttle", 5, "monitor", True)
    (a,) = store.list_alerts()
    assert a.audit_seq == 2 and a.action == "throttle"
    assert [x.account_id for x in store.list_enforcements()] == ["acct_a"]

    lifted = store.clear_enforcement("acct_a", "admin", audit=make_entry(3, endpoint="monitor:action"))
    assert lifted.action == "throttle"
    e = store.get_enforcement("acct_a")
    assert (e.action, e.set_by, e.level, e.active(T)) == ("none", "admin", "alert", False)
    assert store.list_enforcements() == [] and len(store.list_enforcements(active_only=False)) == 1
    assert store.clear_enforcement("acct_a", "admin") is None  # nothing left to clear
    assert store.verify_audit().ok and store.verify_audit().records == 3


def test_only_if_is_decided_under_the_lock_and_writes_nothing_when_refused(store):
    store.set_enforcement(enforcement(action="block"))
    head = store.audit_head()
    refused = store.set_enforcement(
        enforcement(action="throttle"),
        audit=make_entry(1),
        alert=alert(1),
        only_if=lambda cur: cur is None or cur.action != "block",
    )
    assert refused is None
    assert store.get_enforcement("acct_a").action == "block"
    assert store.audit_head() == head and store.list_alerts() == []


def test_lapsed_enforcement_is_inactive(store):
    store.set_enforcement(enforcement(until=T + timedelta(minutes=5)))
    e = store.get_enforcement("acct_a")
    assert e.active(T + timedelta(minutes=4)) and not e.active(T + timedelta(minutes=5))
    assert store.list_enforcements() == []  # lapsed long ago in real time


def test_bad_enforcement_is_refused(store):
    with pytest.raises(ValueError, match="action"):
        store.set_enforcement(enforcement(action="ban"))
    with pytest.raises(ValueError, match="set_by"):
        store.set_enforcement(enforcement(set_by="someone"))
    with pytest.raises(ValueError, match="rpm"):
        store.set_enforcement(enforcement(rpm=0))


def test_concurrent_escalations_apply_once(store):
    """Eight writers race to block one account, each only if it is not blocked yet: exactly one wins."""
    store.set_enforcement(enforcement(action="flag"))
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        seq = store.set_enforcement(
            enforcement(action="block"),
            audit=make_entry(100 + i),
            only_if=lambda cur: cur is None or cur.action != "block",
        )
        if seq is not None:
            wins.append(seq)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1
    assert store.audit_count() == 1 and store.verify_audit().ok


def test_non_finite_numbers(store):
    got = store.record_alert(alert(1, scores={"rules": 0.5, "anomaly": float("nan")}))
    assert got.scores == {"rules": 0.5}
    with pytest.raises(ValueError, match="risk must be a finite number"):
        store.record_alert(alert(2, risk=float("inf")))
    assert [a.id for a in store.list_alerts()] == ["alert_0001"]
