"""Policy enforcement in the gateway, end to end: a real uvicorn, the fake backend, the openai SDK.

An account whose monitor level rises is flagged, then throttled (429 + Retry-After at the reduced rate), then
blocked (403 quoting the clause) on its next request; every action is an audit record in the chain; an admin
clear restores access; replicas on one PostgreSQL database agree; a failing or slow monitor never costs a
request or an audit record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from antidistill.gateway import create_app
from antidistill.gateway.limits import InMemoryLimiter
from antidistill.gateway.server import BackgroundServer
from antidistill.keys import KeyRing, MasterKey
from antidistill.models.fake import FakeBackend
from antidistill.monitor.actions import ACTION_ENDPOINT, Enforcer, is_action_record
from antidistill.monitor.api import Assessment
from antidistill.monitor.policy import Policy
from antidistill.settings import get_settings
from antidistill.store.sql import Store
from tests.gateway.conftest import ADMIN_TOKEN, MASTER_KEY, gateway_settings
from tests.monitor.conftest import CLAUSE_41, POLICY
from tests.monitor.doubles import BatchingMonitor, BlockingMonitor, CountingMonitor, RaisingMonitor, scan_with

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@contextmanager
def serve(data_dir: Path, store: Store, monitor: Any = None, **overrides: Any) -> Iterator[tuple[str, Any]]:
    """A running gateway with ``monitor``: ``(url, app)``."""
    settings = gateway_settings(data_dir, **overrides)
    app = create_app(
        settings, backend=FakeBackend(), store=store, keyring=KeyRing(MasterKey.from_text(MASTER_KEY)), monitor=monitor
    )
    with BackgroundServer(app) as srv:
        yield srv.url, app


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def chat(c: openai.OpenAI, i: int = 0):
    return c.chat.completions.create(
        model="antidistill-fake", max_tokens=8, messages=[{"role": "user", "content": f"Explain topic number {i}."}]
    )


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'gw.db'}", gateway_settings(tmp_path))
    yield s
    s.close()


def test_flag_then_throttle_then_block_then_clear(tmp_path, store, policy_file):
    attacker, key, _ = store.create_account("harvester")
    benign, benign_key, _ = store.create_account("benign")
    monitor = CountingMonitor({"watch": 2, "alert": 3, "severe": 6}, watched=[attacker.id])
    with serve(tmp_path, store, monitor, policy_file=policy_file) as (url, app):
        mon = app.state.gateway.monitoring
        clock = FakeClock()
        mon.throttle_limiter = InMemoryLimiter(clock=clock)
        c, good = client(url, key), client(url, benign_key)

        chat(c, 1)
        chat(c, 2)  # the 2nd exchange: watch -> flag
        assert mon.worker.wait_idle()
        assert store.get_enforcement(attacker.id).action == "flag"
        chat(c, 3)  # flagged accounts are served; the 3rd exchange: alert -> throttle at 2 rpm
        assert mon.worker.wait_idle()
        state = store.get_enforcement(attacker.id)
        assert (state.action, state.rpm, state.clause) == ("throttle", 2, "4.2")

        chat(c, 4)
        chat(c, 5)
        with pytest.raises(openai.RateLimitError) as info:
            chat(c, 6)
        assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
        body = info.value.response.json()["error"]
        assert body["code"] == "account_throttled" and "clause 4.2" in body["message"]
        chat(good, 1)  # other accounts are not touched
        assert store.get_enforcement(benign.id) is None

        clock.t += 61  # a minute later the throttle admits again; the 6th exchange: severe -> block
        chat(c, 7)
        assert mon.worker.wait_idle()
        with pytest.raises(openai.PermissionDeniedError) as info:
            chat(c, 8)
        body = info.value.response.json()["error"]
        assert body["message"] == f"This account is blocked under clause 4.1 of the Terms of Service: '{CLAUSE_41}'"
        assert (body["code"], body["type"]) == ("account_blocked", "permission_error")
        with pytest.raises(openai.PermissionDeniedError):  # streams too
            c.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "x"}])
        assert metric(url, 'antidistill_enforcement_rejections_total{action="block"}') == 2
        assert metric(url, 'antidistill_enforcement_rejections_total{action="throttle"}') == 1

        # every action is an audit record in the chain; refused requests are not exchanges
        records = list(store.iter_audit())
        actions = [r for r in records if is_action_record(r)]
        assert [(r["request"]["action"], r["status"]) for r in actions] == [
            ("flag", 200),
            ("throttle", 429),
            ("block", 403),
        ]
        block = actions[-1]
        assert block["endpoint"] == ACTION_ENDPOINT and block["account_id"] == attacker.id
        assert block["request"]["clause"] == {"id": "4.1", "title": "Distillation", "text": CLAUSE_41}
        assert block["request"]["previous"] == "throttle" and block["request"]["alert"]["level"] == "severe"
        exchanges = [r for r in records if not is_action_record(r)]
        assert sum(r["account_id"] == attacker.id for r in exchanges) == 6
        assert store.verify_audit().ok
        # the monitor was fed exchanges only, never its own action records
        assert {e.endpoint for e in monitor.events} == {"/v1/chat/completions"}

        # the admin API: alerts, the state, and a clear that restores access at once
        alerts = httpx.get(url + "/admin/alerts", headers=ADMIN, params={"account_id": attacker.id}).json()
        assert [(a["level"], a["action"]) for a in alerts] == [
            ("watch", "flag"),
            ("alert", "throttle"),
            ("severe", "block"),
        ]
        assert alerts[-1]["audit_seq"] == block["seq"]
        assert httpx.get(url + "/admin/alerts").status_code == 401
        got = httpx.get(url + f"/admin/accounts/{attacker.id}/enforcement", headers=ADMIN).json()
        assert (got["action"], got["active"], got["clause"]) == ("block", True, "4.1")
        assert httpx.get(url + "/admin/accounts/acct_nope/enforcement", headers=ADMIN).status_code == 404
        r = httpx.post(url + f"/admin/accounts/{attacker.id}/enforcement/clear", headers=ADMIN)
        assert r.status_code == 200 and (r.json()["action"], r.json()["set_by"]) == ("none", "admin")
        chat(c, 9)  # served again
        assert mon.worker.wait_idle()
        assert store.get_enforcement(attacker.id).action == "none"  # the monitor does not undo an admin
        cleared = [r for r in store.iter_audit() if is_action_record(r)][-1]
        assert (cleared["request"]["action"], cleared["request"]["previous"], cleared["api_key_id"]) == (
            "none",
            "block",
            "admin",
        )
        assert store.verify_audit().ok


def test_a_batching_monitor_is_flushed_when_the_worker_catches_up(tmp_path, store, policy_file):
    account, key, _ = store.create_account("a")
    monitor = BatchingMonitor({"severe": 2})
    with serve(tmp_path, store, monitor, policy_file=policy_file) as (url, app):
        c = client(url, key)
        chat(c, 1)
        chat(c, 2)
        assert app.state.gateway.monitoring.worker.wait_idle()
        assert monitor.flushes >= 1 and monitor.pending == []
        assert store.get_enforcement(account.id).action == "block"
        with pytest.raises(openai.PermissionDeniedError):
            chat(c, 3)


def test_a_failing_monitor_costs_no_request_and_no_record(tmp_path, store):
    account, key, _ = store.create_account("a")
    monitor = RaisingMonitor({"watch": 1})
    with serve(tmp_path, store, monitor) as (url, app):
        c = client(url, key)
        for i in range(5):
            assert chat(c, i).choices[0].message.content
        assert app.state.gateway.monitoring.worker.wait_idle()
        assert metric(url, "antidistill_monitor_errors_total") == 5
    assert len(monitor.events) == 5
    assert store.audit_count() == 5 and store.verify_audit().ok
    assert store.get_enforcement(account.id) is None


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path, store):
    _, key, _ = store.create_account("a")
    monitor = BlockingMonitor({"watch": 100})
    try:
        with serve(tmp_path, store, monitor, monitor_queue_size=2) as (url, app):
            c = client(url, key)
            chat(c, 0)
            assert monitor.entered.wait(10)  # the worker is stuck in observe; the queue holds 2 more
            t0 = time.perf_counter()
            for i in range(1, 7):
                chat(c, i)
            assert time.perf_counter() - t0 < 10  # nothing waited for the monitor
            assert metric(url, "antidistill_monitor_events_dropped_total") == 4
            assert metric(url, "antidistill_monitor_events_queued_total") == 3
            monitor.release.set()
            assert app.state.gateway.monitoring.worker.wait_idle()
        assert len(monitor.events) == 3
        assert store.audit_count() == 7 and store.verify_audit().ok
    finally:
        monitor.release.set()


def test_enforcement_without_the_monitor_and_its_ttl(tmp_path, store, policy_file):
    """The gateway enforces what a scan or another replica set, within the cache's TTL."""
    account, key, _ = store.create_account("a")
    with serve(tmp_path, store, policy_file=policy_file, enforcement_ttl=0.3) as (url, app):
        assert app.state.gateway.monitoring.worker is None
        c = client(url, key)
        chat(c)
        severe = Assessment(
            account.id, None, 0.99, "severe", ("bulk harvesting",), datetime.now(UTC), families=("traffic", "content")
        )
        assert Enforcer(store, Policy.load(policy_file)).apply(severe).applied
        deadline = time.monotonic() + 5
        while True:
            try:
                chat(c)
            except openai.PermissionDeniedError as exc:
                assert CLAUSE_41 in exc.message
                break
            assert time.monotonic() < deadline, "the block never reached the gateway"
            time.sleep(0.05)


def test_two_replicas_on_one_postgresql_database_agree(tmp_path, pg_url, policy_file):
    settings = gateway_settings(tmp_path)
    store_a, store_b = Store.open(pg_url, settings), Store.open(pg_url, settings)
    try:
        attacker, key, _ = store_a.create_account("harvester")
        monitor = CountingMonitor({"severe": 2}, watched=[attacker.id])
        with (
            serve(tmp_path / "a", store_a, monitor, policy_file=policy_file, enforcement_ttl=0.3) as (url_a, app_a),
            serve(tmp_path / "b", store_b, policy_file=policy_file, enforcement_ttl=0.3) as (url_b, _),
        ):
            a, b = client(url_a, key), client(url_b, key)
            chat(a, 1)
            chat(a, 2)  # replica A's monitor blocks the account
            assert app_a.state.gateway.monitoring.worker.wait_idle()

            def refused(c: openai.OpenAI) -> bool:
                try:
                    chat(c)
                except openai.PermissionDeniedError:
                    return True
                return False

            time.sleep(0.35)  # replica B's cached state expires
            assert refused(b) and refused(a)
            r = httpx.post(url_b + f"/admin/accounts/{attacker.id}/enforcement/clear", headers=ADMIN)
            assert r.json()["action"] == "none"
            time.sleep(0.35)
            assert not refused(a) and not refused(b)
        assert store_a.verify_audit().ok
        assert [r["request"]["action"] for r in store_a.iter_audit() if is_action_record(r)] == ["block", "none"]
    finally:
        store_a.close()
        store_b.close()


# ---- the CLI ---------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_scan_alerts_and_clear(tmp_path, monkeypatch, policy_file):
    from antidistill.cli import monitor as monitor_cli

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("ANTIDISTILL_POLICY_FILE", str(policy_file))
    get_settings.cache_clear()
    with Store.open(db, get_settings()) as store:
        attacker, key, _ = store.create_account("harvester")
        _, benign_key, _ = store.create_account("benign")
        with serve(tmp_path, store) as (url, _app):
            for i in range(6):
                chat(client(url, key), i)
            chat(client(url, benign_key))
    monitor = CountingMonitor({"watch": 2, "alert": 3, "severe": 6}, watched=[attacker.id])
    monkeypatch.setattr(monitor_cli, "_monitor_parts", lambda _s: (monitor, scan_with(monitor)))

    r = runner.invoke(monitor_cli.monitor_app, ["scan", "--dry-run", "--database-url", db])
    assert r.exit_code == 0, r.output
    assert "would take 1 action" in r.stdout and attacker.id in r.stdout
    with Store.open(db, get_settings()) as store:
        assert store.get_enforcement(attacker.id) is None and store.list_alerts() == []

    monitor.__init__({"watch": 2, "alert": 3, "severe": 6}, watched=[attacker.id])
    r = runner.invoke(monitor_cli.monitor_app, ["scan", "--json", "--database-url", db])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [(a["account_id"], a["action"]) for a in report["assessments"]] == [(attacker.id, "block")]
    for k in ("account_id", "level", "risk", "reasons", "cluster_id", "action"):  # the fields outside checks read
        assert k in report["assessments"][0]
    assert report["assessments"][0]["families"] == ["traffic", "content"]
    assert report["accounts"] == 2

    monitor.__init__({"watch": 2, "alert": 3, "severe": 6}, watched=[attacker.id])
    r = runner.invoke(monitor_cli.monitor_app, ["scan", "--json", "--database-url", db])  # idempotent
    assert json.loads(r.stdout)["assessments"][0]["applied"] is False
    # the second scan read the log with the first scan's action record in it, and skipped it
    assert {e.endpoint for e in monitor.events} == {"/v1/chat/completions"} and len(monitor.events) == 7

    r = runner.invoke(monitor_cli.monitor_app, ["alerts", "--json", "--database-url", db])
    alerts = json.loads(r.stdout)
    # one alert: the second scan's identical judgement is not a new one
    assert [(a["account_id"], a["level"], a["action"], a["clause"]) for a in alerts] == [
        (attacker.id, "severe", "block", "4.1")
    ]
    r = runner.invoke(
        monitor_cli.monitor_app, ["alerts", "--since", "1h", "--account", attacker.id, "--database-url", db]
    )
    assert r.exit_code == 0 and "block (4.1)" in r.stdout
    r = runner.invoke(monitor_cli.monitor_app, ["alerts", "--since", "yesterday", "--database-url", db])
    assert r.exit_code != 0

    r = runner.invoke(monitor_cli.monitor_app, ["clear", attacker.id, "--database-url", db])
    assert r.exit_code == 0 and "block cleared" in r.stdout
    r = runner.invoke(monitor_cli.monitor_app, ["enforcements", "--database-url", db])
    assert "no account" in r.stdout
    with Store.open(db, get_settings()) as store:
        assert store.verify_audit().ok
        assert [x["request"]["action"] for x in store.iter_audit() if is_action_record(x)] == ["block", "none"]


def test_cli_policy_check(tmp_path):
    from antidistill.cli import monitor as monitor_cli

    r = runner.invoke(monitor_cli.monitor_app, ["policy"])
    assert r.exit_code == 0 and "severe -> block on >= 2 evidence families, else review" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("action: block", "action: ban"))
    r = runner.invoke(monitor_cli.monitor_app, ["policy", str(bad)])
    assert r.exit_code != 0 and "rules[2].action" in str(r.exception)


# ---- Monitoring.admit directly ---------------------------------------------------------------------------
def _monitoring(store: Store, policy_file: Path, limiter: Any = None):
    from prometheus_client import CollectorRegistry

    from antidistill.gateway.monitoring import Monitoring

    return Monitoring(store, Policy.load(policy_file), CollectorRegistry(), ttl=0, throttle_limiter=limiter)


def test_review_and_cluster_rules_answer_403_under_review(tmp_path, store):
    import asyncio

    from antidistill.gateway.errors import APIError

    p = tmp_path / "cluster.yaml"
    p.write_text(POLICY + '  - {level: alert, action: review, clause: "4.1", scope: cluster, min_cluster_size: 3}\n')
    mon = _monitoring(store, p)
    members = [
        Assessment(
            f"acct_{i}", "cl_farm", 0.7, "alert", ("shared payment fingerprint",), datetime.now(UTC), cluster_size=3
        )
        for i in range(3)
    ]
    assert [o.action for o in mon.enforcer.apply_all(members)] == ["review"] * 3
    with pytest.raises(APIError) as info:
        asyncio.run(mon.admit("acct_1", 10))
    assert (info.value.status, info.value.code) == (403, "account_under_review")
    assert CLAUSE_41 in info.value.message
    assert asyncio.run(mon.admit("acct_other", 10)) is None


def test_one_family_holds_for_review_two_block_and_the_audit_record_names_them(tmp_path, store, policy_file):
    """A severe judgement on one family of evidence is a review (403 until an admin clears), not a block; a second
    independent family escalates it to a block; each action's audit record names the families."""
    import asyncio

    from antidistill.gateway.errors import APIError

    mon = _monitoring(store, policy_file)
    at = datetime.now(UTC)
    one = Assessment("acct_s", None, 0.99, "severe", ("one template",), at, families=("content",))
    out = mon.enforcer.apply(one)
    assert (out.action, out.decision.clause.id, out.decision.fell_back) == ("review", "4.1", True)
    with pytest.raises(APIError) as info:
        asyncio.run(mon.admit("acct_s", 10))
    assert (info.value.status, info.value.code) == (403, "account_under_review")
    two = Assessment("acct_s", "cl_1", 0.99, "severe", ("linked",), at, cluster_size=5, families=("content", "linking"))
    assert mon.enforcer.apply(two).action == "block"
    actions = [r["request"] for r in store.iter_audit() if is_action_record(r)]
    assert [(a["action"], a["families"], a["fell_back"]) for a in actions] == [
        ("review", ["content"], True),
        ("block", ["content", "linking"], False),
    ]
    assert "[evidence: content]" in actions[0]["reason"] and "block needs 2 families" in actions[0]["reason"]
    assert actions[1]["alert"]["families"] == ["content", "linking"]
    assert store.verify_audit().ok


def test_throttle_is_shared_through_redis(tmp_path, store, policy_file):
    import asyncio

    from antidistill.gateway.errors import APIError
    from antidistill.gateway.limits import RedisLimiter
    from tests.gateway.conftest import REDIS_URL, redis_or_skip

    redis_or_skip().close()
    prefix = f"test-{uuid.uuid4().hex[:8]}:throttle"
    alert = Assessment("acct_t", None, 0.6, "alert", ("r",), datetime.now(UTC))

    async def run() -> None:
        a = _monitoring(store, policy_file, RedisLimiter(REDIS_URL, prefix))
        b = _monitoring(store, policy_file, RedisLimiter(REDIS_URL, prefix))
        try:
            assert a.enforcer.apply(alert).action == "throttle"
            await a.admit("acct_t", 10)
            await b.admit("acct_t", 10)  # two replicas, one budget of 2 requests per minute
            for m in (a, b):
                with pytest.raises(APIError) as info:
                    await m.admit("acct_t", 10)
                assert info.value.status == 429 and info.value.headers["Retry-After"]
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(run())


def test_serve_refuses_a_bad_policy_file_in_one_line(tmp_path):
    import typer

    from antidistill.cli.serve import serve
    from antidistill.errors import ConfigError

    app = typer.Typer()
    app.command()(serve)
    bad = tmp_path / "p.yaml"
    bad.write_text(POLICY.replace('clause: "4.1"}', "}"))
    r = runner.invoke(app, ["--backend", "fake", "--policy", str(bad)])
    assert isinstance(r.exception, ConfigError) and "rules[2].clause is missing" in str(r.exception)
