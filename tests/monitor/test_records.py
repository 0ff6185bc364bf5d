"""The monitor reads typed audit records (``Store.iter_records``), the gateway's entries and exported dicts alike:
the same events, the same exchanges, the same level changes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from antidistill.keys import MasterKey
from antidistill.monitor.actions import Enforcer, exchange_records, is_action_record
from antidistill.monitor.api import Assessment, ExchangeEvent
from antidistill.monitor.pipeline import Monitor, scan_records
from antidistill.monitor.policy import Policy
from antidistill.monitor.score import Scorer
from antidistill.settings import Settings
from antidistill.store.api import PENDING_STATUS, AuditEntry, AuditRecord
from antidistill.store.sql import Store

T0 = datetime(2026, 3, 1, tzinfo=UTC)
REQUESTS = [
    {
        "model": "m",
        "max_tokens": 4000,
        "messages": [
            {"role": "system", "content": "Be thorough."},
            {"role": "user", "content": "Solve problem {i} step by step."},
        ],
    },
    {
        "model": "m",
        "max_completion_tokens": 900,
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Dev"}, {"type": "image_url"}]},
            {"role": "user", "content": [{"type": "text", "text": "part {i}"}]},
            "not a message",
        ],
    },
    {"prompt": ["complete {i}", 7, "this"], "max_tokens": True},
    {"prompt": 12345, "model": None},
    {"messages": "nope", "max_tokens": "9"},
    {},
]


def entry(i: int, account: str, **kw: object) -> AuditEntry:
    req = {k: (v.replace("{i}", str(i)) if isinstance(v, str) else v) for k, v in REQUESTS[i % len(REQUESTS)].items()}
    values: dict[str, object] = dict(
        response_id=f"r{i}",
        account_id=account,
        api_key_id="key",
        created_at=T0 + timedelta(seconds=7 * i),
        endpoint="/v1/completions" if "prompt" in req else "/v1/chat/completions",
        client_addr=f"203.0.113.{i % 3}" if i % 4 else None,
        user_agent="curl/8" if i % 5 else None,
        request=req,
        completion=["ok"],
        prompt_tokens=10 + i,
        completion_tokens=300,
        finish_reason="stop",
        latency_ms=5.0,
        watermark={"status": "unwatermarked"},
        request_raw=b"{}" if i % 2 else None,
    )
    values.update(kw)
    return AuditEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path):
    s = Store.open(
        f"sqlite:///{tmp_path / 'audit.db'}",
        Settings(env="test", data_dir=tmp_path / "data"),
        master=MasterKey(bytes(32)),
    )
    accounts = ["acct_bot", "acct_human", "acct_other"]
    for i in range(240):
        a = accounts[0] if i % 3 else accounts[i % 2 + 1]
        if i % 11 == 0:  # a stream: its opening record first
            s.append_audit(entry(i, a, status=PENDING_STATUS, completion=[], watermark={"status": "pending"}))
        s.append_audit(entry(i, a, status=429 if i % 17 == 0 else 200))
    # a policy action in the same chain
    Enforcer(s, Policy.default(), clock=lambda: T0).apply(
        Assessment("acct_bot", None, 0.99, "severe", ("harvesting",), T0, families=("traffic", "content"))
    )
    yield s
    s.close()


META = {"acct_bot": {"organisation": "Bots Ltd"}, "acct_human": {"payment_fingerprint": ["odd", 1]}}


def test_events_are_the_same_from_every_form(store):
    records, dicts = list(store.iter_records()), list(store.iter_audit())
    assert len(records) == len(dicts) > 240
    for r, d in zip(records, dicts, strict=True):
        ev = ExchangeEvent.from_record(r, META.get(r.account_id))
        assert ev == ExchangeEvent.from_record(d, META.get(r.account_id))
        # the gateway hands the monitor its AuditEntry, before any record exists
        fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(AuditEntry)}
        assert ExchangeEvent.from_record(AuditEntry(**fields), META.get(r.account_id)) == ev
    ev = ExchangeEvent.from_record(next(r for r in records if r.response_id == "r1"))
    assert (ev.model, ev.system, ev.prompt, ev.turns, ev.max_tokens) == ("m", "Dev", "part {i}", 3, 900)


def test_exchange_records_skip_the_same_records(store):
    records, dicts = list(store.iter_records()), list(store.iter_audit())
    typed = [r.seq for r in exchange_records(records)]
    assert typed == [d["seq"] for d in exchange_records(dicts)]
    assert typed == [r.seq for r in records if r.is_exchange]
    assert all(isinstance(r, AuditRecord) for r in exchange_records(records))
    assert [is_action_record(r) for r in records] == [is_action_record(d) for d in dicts]
    assert sum(is_action_record(r) for r in records) == 1


def test_scan_records_typed_or_dicts_gives_the_same_level_changes(store):
    def scan(records) -> list[dict]:
        return [a.to_dict() for a in scan_records(records, META, Monitor(Scorer.rules_only()))]

    typed = scan(store.iter_records())
    assert typed == scan(store.iter_audit())
    assert scan(exchange_records(store.iter_records())) == scan(exchange_records(store.iter_audit()))
    assert typed  # not a comparison of two empty lists
