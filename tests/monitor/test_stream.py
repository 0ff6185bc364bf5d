"""The monitor as a service (``ANTIDISTILL_MONITOR_MODE=stream`` and ``antidistill monitor run``), end to end.

Real Redis and real PostgreSQL; every test has its own stream key and schema. Two gateway replicas publish, one
service scores (the same as one in-process monitor that saw all the traffic); a service killed with SIGKILL and
restarted loses no event and takes no action twice; a block reaches a replica within a second; a gateway whose
Redis is gone still serves and counts what it could not publish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from antidistill.errors import ConfigError
from antidistill.monitor.actions import Enforcer, is_action_record, new_alert_id
from antidistill.monitor.api import Assessment, ExchangeEvent
from antidistill.monitor.pipeline import Monitor
from antidistill.monitor.policy import Policy
from antidistill.monitor.score import Scorer
from antidistill.monitor.stream import FIELD, StreamMonitor, effect_key, redis_client
from antidistill.monitor.train import plan_events
from antidistill.settings import Settings
from antidistill.simulate.driver import account_metadata
from antidistill.simulate.scenario import Scenario
from antidistill.store.sql import Store
from tests.gateway.conftest import MASTER_KEY, REDIS_URL, gateway_settings, redis_or_skip
from tests.monitor.test_enforcement import ADMIN, metric, serve

GROUP = "antidistill-monitor"


@pytest.fixture
def stream() -> Any:
    """A fresh stream key (deleted afterwards) and a Redis client."""
    r = redis_or_skip()
    key = f"test-stream-{uuid.uuid4().hex[:10]}"
    yield key
    r.delete(key)
    r.close()


def service(store: Any, stream: str, policy_file: Path, consumer: str = "c1", **kw: Any) -> StreamMonitor:
    """An in-process ``monitor run``: the rules-only monitor (no trained model here), the test policy."""
    return StreamMonitor(
        redis_client(REDIS_URL),
        stream,
        GROUP,
        consumer,
        Monitor(Scorer.rules_only()),
        Enforcer(store, Policy.load(policy_file)),
        block_ms=50,
        **kw,
    )


def hydra_plan(**kw: Any) -> Any:
    """A hydra of 8 accounts (272 requests in a virtual day) that the rules-only monitor links and flags."""
    values: dict[str, Any] = {"seed": 4, "days": 1.0, "counts": {"hydra": 1}, "hydra_members": (8, 8)}
    values.update(hydra_daily_budget=None, volume=3.0)
    values.update(kw)
    return Scenario(**values).build()


def stream_settings(data_dir: Path, stream: str, **kw: Any) -> dict[str, Any]:
    return {
        "monitor_mode": "stream",
        "monitor_stream_url": REDIS_URL,
        "monitor_stream": stream,
        "accept_client_clock": True,
        "trust_forwarded_for": True,
        **kw,
    }


def send(http: httpx.Client, api_key: str, req: Any) -> int:
    """One planned request, as the simulator's driver sends it (assistant turns answered "ok")."""
    headers = {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": req.user_agent,
        "X-Forwarded-For": req.client_addr,
        "X-Antidistill-Clock": f"{req.t:.3f}",
    }
    body: dict[str, Any] = {"model": req.model}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.messages is not None:
        body["messages"] = [dict(m, content=m.get("content") or "ok") for m in req.messages]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = req.prompt or ""
        path = "/v1/completions"
    return http.post(path, json=body, headers=headers).status_code


def rises(assessments: list[Assessment]) -> list[tuple[str, str, float, int]]:
    return [(a.account_id, a.level, round(a.risk, 9), a.cluster_size) for a in assessments]


# ---- two replicas, one service ------------------------------------------------------------------------------
def test_two_replicas_and_one_service_score_as_one_monitor(tmp_path, pg_url, stream, policy_file):
    # the rules-only monitor links the hydra but no longer raises it on its demanded answer length alone (a knob
    # the client sets: it never carries a level); a chain-of-thought extractor beside it gives the rises to compare
    plan = hydra_plan(counts={"hydra": 1, "cot_extractor": 1})
    settings = gateway_settings(tmp_path)
    store_a, store_b = Store.open(pg_url, settings), Store.open(pg_url, settings)
    try:
        with (
            serve(tmp_path / "a", store_a, **stream_settings(tmp_path, stream, policy_file=policy_file)) as (ua, app_a),
            serve(tmp_path / "b", store_b, **stream_settings(tmp_path, stream, policy_file=policy_file)) as (ub, app_b),
        ):
            keys = {}
            for a in plan.accounts:  # created through replica A's admin API, used on both
                r = httpx.post(
                    ua + "/admin/accounts", json={"name": a.name, "metadata": account_metadata(a)}, headers=ADMIN
                )
                assert r.status_code == 201, r.text
                keys[a.key] = (r.json()["account"]["id"], r.json()["api_key"])
            with httpx.Client(base_url=ua, timeout=30) as ha, httpx.Client(base_url=ub, timeout=30) as hb:
                replicas = [(ha, app_a), (hb, app_b)]
                for i, req in enumerate(plan.requests):  # every account's traffic alternates between the replicas
                    http, app = replicas[i % 2]
                    assert send(http, keys[req.account][1], req) == 200
                    # one request at a time on the stream, so that its order is the audit log's (the reference's)
                    assert app.state.gateway.monitoring.publisher.wait_idle()
            assert metric(ua, "antidistill_monitor_events_published_total") > 0
            assert metric(ub, "antidistill_monitor_events_published_total") > 0

        seen: list[Assessment] = []
        svc = service(store_a, stream, policy_file, on_assessment=lambda _id, a, _new: seen.append(a))
        stats = svc.run(exit_when_idle=True)
        assert stats.events == len(plan.requests) and stats.malformed == 0

        # the reference: one monitor fed every exchange of the (shared) audit log, scored after each
        ref = Monitor(Scorer.rules_only())
        expected: list[Assessment] = []
        accounts = {a.id: a.metadata for a in store_a.list_accounts()}
        for rec in store_a.iter_records():
            if rec.is_exchange:
                expected += ref.observe(ExchangeEvent.from_record(rec, accounts[rec.account_id]))
                expected += ref.flush()
        assert expected and rises(seen) == rises(expected)

        # the hydra is one cluster in the service, as in the reference
        ids = [keys[a.key][0] for a in plan.accounts if a.persona == "hydra"]
        assert len({svc.monitor.linker.find(i) for i in ids}) == 1
        assert len({ref.linker.find(i) for i in ids}) == 1
        # and its effects are in the store: one alert per level rise, the flag actions in the audit log
        alerts = store_a.list_alerts()
        assert sorted((a.account_id, a.level) for a in alerts) == sorted((a.account_id, a.level) for a in expected)
        actions = [r for r in store_a.iter_audit() if is_action_record(r)]
        assert len(actions) == sum(a.audit_seq is not None for a in alerts) > 0
        assert store_a.verify_audit().ok
    finally:
        store_a.close()
        store_b.close()


# ---- exactly once ---------------------------------------------------------------------------------------------
def publish(r: Any, stream: str, events: list[ExchangeEvent]) -> None:
    pipe = r.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(stream, {FIELD: ev.to_json()})
    pipe.execute()


def effects(store: Store) -> tuple[Counter[tuple[str, str, float, str]], Counter[tuple[str, str]]]:
    """The alerts (account, level, risk, action) and the action records (account, action) in a store."""
    alerts = Counter((a.account_id, a.level, round(a.risk, 9), a.action) for a in store.list_alerts())
    actions = Counter((r["account_id"], r["request"]["action"]) for r in store.iter_audit() if is_action_record(r))
    return alerts, actions


def harvest_events() -> list[ExchangeEvent]:
    """~9000 exchanges of a hydra and a bulk harvester: flagged and throttled by the rules-only monitor."""
    plan = hydra_plan(seed=3, counts={"hydra": 1, "bulk_harvester": 1}, hydra_members=(10, 10), volume=10.0)
    tag = uuid.uuid4().hex[:6]
    return [ExchangeEvent(**{**ev.__dict__, "account_id": f"{tag}-{ev.account_id}"}) for ev in plan_events(plan)]


def reference_effects(tmp_path: Path, stream: str, events: list[ExchangeEvent], policy_file: Path) -> Any:
    """The effects of the same events consumed by one service that never crashed (its own stream and store)."""
    r = redis_or_skip()
    key = stream + "-ref"
    try:
        publish(r, key, events)
        store = Store.open(f"sqlite:///{tmp_path / 'ref.db'}", gateway_settings(tmp_path))
        try:
            service(store, key, policy_file).run(exit_when_idle=True)
            return effects(store)
        finally:
            store.close()
    finally:
        r.delete(key)


def test_redelivered_events_take_no_action_twice(tmp_path, stream, policy_file):
    events = harvest_events()[:1500]
    r = redis_or_skip()
    publish(r, stream, events)
    store = Store.open(f"sqlite:///{tmp_path / 'gw.db'}", gateway_settings(tmp_path))
    try:
        crashed = service(store, stream, policy_file, count=1000)
        crashed.ensure_group()
        crashed._ack = lambda ids=None: None  # dies after committing the effects, before acknowledging
        assert crashed.step() == 1000 and crashed.stats.actions > 0
        assert r.xpending(stream, GROUP)["pending"] == 1000

        restarted = service(store, stream, policy_file, consumer="c2")
        restarted.run(exit_when_idle=True)
        assert restarted.stats.replayed == 1000
        assert restarted.stats.duplicates == crashed.stats.alerts  # every committed effect found, none redone
        assert r.xpending(stream, GROUP)["pending"] == 0
        assert effects(store) == reference_effects(tmp_path, stream, events, policy_file)
    finally:
        store.close()


def test_rises_are_keyed_on_the_same_entries_whatever_the_read_size(tmp_path, stream, policy_file):
    # scores are computed per read batch; a rise's effect key names the entry at whose checkpoint it was formed, so
    # a replay in pages of another size (a restart) finds the same keys
    events = harvest_events()[:1500]
    r = redis_or_skip()
    publish(r, stream, events)
    keyed = {}
    for count in (1, 7, 256):
        store = Store.open(f"sqlite:///{tmp_path / f'gw{count}.db'}", gateway_settings(tmp_path))
        got: list[tuple[str, str, str]] = []
        try:
            svc = StreamMonitor(
                redis_client(REDIS_URL),
                stream,
                f"group-{count}",
                "c1",
                Monitor(Scorer.rules_only()),
                Enforcer(store, Policy.load(policy_file)),
                count=count,
                block_ms=50,
                on_assessment=lambda entry_id, a, _new, got=got: got.append((entry_id, a.account_id, a.level)),
            )
            assert svc.run(exit_when_idle=True).events == len(events)
        finally:
            store.close()
        keyed[count] = got
    assert keyed[1] and keyed[1] == keyed[7] == keyed[256]
    entries = {e.decode() if isinstance(e, bytes) else e for e, _ in r.xrange(stream)}
    assert len({e for e, _, _ in keyed[1]}) > 1 and all(e in entries for e, _, _ in keyed[1])


def test_kill_9_mid_stream_loses_nothing_and_acts_once(tmp_path, pg_url, stream, policy_file):
    events = harvest_events()[:4000]
    r = redis_or_skip()
    publish(r, stream, events)
    Store.open(pg_url, gateway_settings(tmp_path)).close()  # the schema, migrated
    env = {
        **os.environ,
        "ANTIDISTILL_ENV": "test",
        "ANTIDISTILL_DATA_DIR": str(tmp_path / "svc"),
        "ANTIDISTILL_MASTER_KEY": MASTER_KEY,
        "ANTIDISTILL_DATABASE_URL": pg_url,
        "ANTIDISTILL_MONITOR_STREAM_URL": REDIS_URL,
        "ANTIDISTILL_MONITOR_STREAM": stream,
        "ANTIDISTILL_POLICY_FILE": str(policy_file),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "antidistill", "monitor", "run", "--exit-when-idle"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = Store.open(pg_url, gateway_settings(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            groups = r.xinfo_groups(stream)
            read = groups[0]["entries-read"] or 0 if groups else 0
            # a batch read and not acknowledged, more to come; best after its first effect is committed
            if groups and groups[0]["pending"] > 0 and read < len(events) and (read > 2048 or store.list_alerts()):
                break
            time.sleep(0.001)
        assert proc.poll() is None, "the service finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = r.xinfo_groups(stream)[0]
        assert 0 < killed_at["entries-read"] < len(events) and killed_at["pending"] > 0
        # the effects committed for entries that were never acknowledged: the restart must find each, not redo it
        pending = [p["message_id"].decode() for p in r.xpending_range(stream, GROUP, "-", "+", len(events))]
        alerts = store.list_alerts()
        committed = {a.id for a in alerts}
        in_flight = sum(
            new_alert_id(effect_key(stream, entry_id, a.account_id, a.level)) in committed
            for entry_id in pending
            for a in alerts
        )
    finally:
        proc.kill()
        store.close()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert r.xpending(stream, GROUP)["pending"] == 0  # every event scored and acknowledged
    assert r.xinfo_groups(stream)[0]["entries-read"] == len(events)
    summary = done.stdout.strip().splitlines()[-1]
    assert f"scored {len(events)} events" in summary, summary  # the replay and the rest: all of them
    assert f"{in_flight} repeated effects skipped" in summary, summary

    store = Store.open(pg_url, gateway_settings(tmp_path))
    try:
        got = effects(store)
        assert store.verify_audit().ok
    finally:
        store.close()
    expected = reference_effects(tmp_path, stream, events, policy_file)
    assert got == expected and sum(expected[1].values()) > 0  # the same alerts and actions, each once


# ---- one consumer per group ----------------------------------------------------------------------------------
def test_a_second_consumer_of_the_group_waits_then_refuses(tmp_path, stream, policy_file):
    publish(redis_or_skip(), stream, harvest_events()[:50])
    store = Store.open(f"sqlite:///{tmp_path / 'gw.db'}", gateway_settings(tmp_path))
    try:
        first = service(store, stream, policy_file, consumer="first", lease_ms=10_000)
        first.acquire()  # a live consumer (it would renew at every read)
        second = service(store, stream, policy_file, consumer="second", lease_ms=400)
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=r"another monitor \(first\) is consuming"):
            second.run(exit_when_idle=True)
        assert time.monotonic() - t0 >= 0.7  # it waited for the lease (twice its length) before refusing
        assert second.stats.events == 0  # and read nothing
        first.release()
        assert second.run(exit_when_idle=True).events == 50
    finally:
        store.close()


def test_a_lease_left_by_a_killed_consumer_lapses_and_one_taken_stops_its_holder(tmp_path, stream, policy_file):
    publish(redis_or_skip(), stream, harvest_events()[:50])
    store = Store.open(f"sqlite:///{tmp_path / 'gw.db'}", gateway_settings(tmp_path))
    try:
        killed = service(store, stream, policy_file, consumer="killed", lease_ms=300)
        killed.acquire()  # and never renewed nor freed, as by SIGKILL
        nxt = service(store, stream, policy_file, consumer="next", lease_ms=300)
        assert nxt.run(exit_when_idle=True).events == 50  # it waited for the lease to lapse, then consumed
        nxt.acquire()
        time.sleep(0.4)  # nxt stalls past its lease; killed's process comes back
        killed.acquire(wait_s=0)
        with pytest.raises(ConfigError, match="passed to killed"):
            nxt.step()
        assert nxt._stop.is_set()
    finally:
        store.close()


# ---- enforcement reaches the replicas --------------------------------------------------------------------------
def test_a_block_reaches_a_replica_within_a_second(tmp_path, stream, policy_file):
    store = Store.open(f"sqlite:///{tmp_path / 'gw.db'}", gateway_settings(tmp_path))
    try:
        account, key, _ = store.create_account("harvester")
        overrides = stream_settings(tmp_path, stream, policy_file=policy_file, enforcement_ttl=3600.0)
        with serve(tmp_path, store, **overrides) as (url, app):
            listener = app.state.gateway.monitoring.listener
            assert listener.subscribed.wait(5)
            body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.post(url + "/v1/chat/completions", json=body, headers=headers).status_code == 200

            svc = service(store, stream, policy_file)
            severe = Assessment(
                account.id, None, 0.99, "severe", ("harvesting",), datetime.now(UTC), families=("traffic", "content")
            )
            t0 = time.monotonic()
            svc._apply("1-0", severe)  # what the service does with a rise: commit, then tell the gateways
            while True:
                status = httpx.post(url + "/v1/chat/completions", json=body, headers=headers).status_code
                if status == 403 or time.monotonic() - t0 > 1.0:
                    break
                time.sleep(0.02)
            assert status == 403 and time.monotonic() - t0 < 1.0  # the cache's TTL is an hour
    finally:
        store.close()


# ---- Redis outages ---------------------------------------------------------------------------------------------
def test_publishing_survives_an_unreachable_redis(tmp_path, stream):
    store = Store.open(f"sqlite:///{tmp_path / 'gw.db'}", gateway_settings(tmp_path))
    try:
        _, key, _ = store.create_account("customer")
        overrides = stream_settings(tmp_path, stream, monitor_stream_url="redis://127.0.0.1:1/0")
        with serve(tmp_path, store, **overrides) as (url, app):
            body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
            t0 = time.monotonic()
            r = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and time.monotonic() - t0 < 1.0
            assert app.state.gateway.monitoring.publisher.wait_idle()
            assert metric(url, "antidistill_monitor_events_unpublished_total") == 1
        assert [rec.response_id for rec in store.iter_records() if rec.is_exchange] == [r.json()["id"]]
    finally:
        store.close()


def test_stream_mode_without_a_redis_is_one_clear_error():
    with pytest.raises(ValueError, match="ANTIDISTILL_MONITOR_MODE=stream needs a Redis"):
        Settings(env="test", monitor_mode="stream")


def test_events_round_trip_as_json():
    ev = next(plan_events(hydra_plan()))
    line = ev.to_json()
    assert ExchangeEvent.from_json(line) == ev and "api_key" not in json.loads(line)


def test_monitor_run_without_its_redis_is_one_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from antidistill.cli import monitor as monitor_cli
    from antidistill.errors import ConfigError
    from antidistill.settings import get_settings

    monkeypatch.setenv("ANTIDISTILL_ENV", "test")
    monkeypatch.setenv("ANTIDISTILL_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        url = "redis://:s3cret-password@127.0.0.1:1/0"
        r = CliRunner().invoke(monitor_cli.monitor_app, ["run", "--stream-url", url])
        assert isinstance(r.exception, ConfigError)
        assert "cannot reach the monitor stream's Redis at redis://:***@127.0.0.1:1/0" in str(r.exception)
        assert "s3cret" not in str(r.exception)
        r = CliRunner().invoke(monitor_cli.monitor_app, ["run"])
        assert isinstance(r.exception, ConfigError) and "--stream-url" in str(r.exception)
    finally:
        get_settings.cache_clear()
