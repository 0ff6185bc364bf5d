"""Rate limits: the window arithmetic, and limits that hold under 50 concurrent clients, in one gateway process
and across two gateway processes sharing Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from antidistill.gateway.limits import InMemoryLimiter, Limits, RateLimited, RedisLimiter

from .conftest import (
    ADMIN_TOKEN,
    CHAT,
    MASTER_KEY,
    REDIS_URL,
    auth,
    free_port,
    redis_or_skip,
)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


# ---- window arithmetic (in process, fake clock) --------------------------------------------------------
def test_rpm_sliding_window_and_retry_after():
    clock = Clock(1_000_000.2)
    lim = InMemoryLimiter(clock)
    limits = Limits(rpm=3)
    for dt in (0, 10, 20):
        clock.t = 1_000_000.2 + dt
        run(lim.check("a", limits, 1))
    with pytest.raises(RateLimited) as e:
        run(lim.check("a", limits, 1))
    assert e.value.limit == "rpm" and e.value.retry_after == 40  # the first request leaves the window at +60
    run(lim.check("b", limits, 1))  # accounts are separate
    clock.t = 1_000_000.2 + 60
    run(lim.check("a", limits, 1))
    with pytest.raises(RateLimited):
        run(lim.check("a", limits, 1))


def test_tpm_reservation_is_settled_to_actual_usage():
    lim = InMemoryLimiter(Clock())
    limits = Limits(tpm=100)
    r1 = run(lim.check("a", limits, 60))
    with pytest.raises(RateLimited) as e:
        run(lim.check("a", limits, 60))
    assert e.value.limit == "tpm" and not e.value.too_large
    run(lim.commit(r1, 10))  # used far less than reserved
    run(lim.check("a", limits, 60))
    with pytest.raises(RateLimited) as e:
        run(lim.check("a", limits, 101))
    assert e.value.too_large


def test_tokens_per_day_resets_at_utc_midnight():
    day = 86_400
    clock = Clock(20_000 * day + day - 30)
    lim = InMemoryLimiter(clock)
    run(lim.check("a", Limits(tokens_per_day=100), 80))
    with pytest.raises(RateLimited) as e:
        run(lim.check("a", Limits(tokens_per_day=100), 30))
    assert e.value.limit == "tokens_per_day" and e.value.retry_after == 30
    clock.t += 31
    run(lim.check("a", Limits(tokens_per_day=100), 30))


def test_a_refused_request_counts_nothing():
    lim = InMemoryLimiter(Clock())
    run(lim.check("a", Limits(rpm=10, tpm=50), 40))
    with pytest.raises(RateLimited):
        run(lim.check("a", Limits(rpm=10, tpm=50), 40))
    for _ in range(9):  # the refused request took no rpm slot
        run(lim.check("a", Limits(rpm=10), 0))


# ---- Redis -----------------------------------------------------------------------------------------------
@pytest.fixture
def redis_prefix():
    r = redis_or_skip()
    prefix = f"antidistill-test-{uuid.uuid4().hex}"
    yield prefix
    for k in r.scan_iter(f"{prefix}:*"):
        r.delete(k)
    r.close()


def test_redis_limiter_is_exact_under_50_concurrent_checks(redis_prefix):
    async def main():
        lims = [RedisLimiter(REDIS_URL, prefix=redis_prefix) for _ in range(2)]  # two "replicas"
        limits = Limits(rpm=20, tpm=1000)

        async def one(i):
            try:
                res = await lims[i % 2].check("acct", limits, 10)
                return res
            except RateLimited as exc:
                return exc

        out = await asyncio.gather(*(one(i) for i in range(50)))
        ok = [o for o in out if not isinstance(o, RateLimited)]
        refused = [o for o in out if isinstance(o, RateLimited)]
        assert len(ok) == 20 and len(refused) == 30
        assert all(r.limit == "rpm" and 1 <= r.retry_after <= 60 for r in refused)
        # tokens: 20 × 10 reserved; settle each to 40 -> 800 counted; 200 left
        await asyncio.gather(*(lims[0].commit(o, 40) for o in ok))
        with pytest.raises(RateLimited) as e:
            await lims[1].check("acct2", Limits(tpm=100), 101)
        assert e.value.too_large
        await lims[1].check("acct", Limits(tpm=1000), 200)
        with pytest.raises(RateLimited) as e:
            await lims[0].check("acct", Limits(tpm=1000), 1)
        assert e.value.limit == "tpm"
        for lim in lims:
            await lim.aclose()

    run(main())


def test_redis_limiter_tokens_per_day(redis_prefix):
    async def main():
        lim = RedisLimiter(REDIS_URL, prefix=redis_prefix)
        r = await lim.check("a", Limits(tokens_per_day=100), 90)
        with pytest.raises(RateLimited) as e:
            await lim.check("a", Limits(tokens_per_day=100), 20)
        assert e.value.limit == "tokens_per_day" and e.value.retry_after <= 86_400
        await lim.commit(r, 50)
        await lim.check("a", Limits(tokens_per_day=100), 20)
        await lim.aclose()

    run(main())


# ---- 50 concurrent clients against one gateway ------------------------------------------------------------
async def _burst(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        return await asyncio.gather(
            *(c.post(urls[i % len(urls)] + "/v1/chat/completions", json=CHAT, headers=auth(key)) for i in range(n))
        )


def test_rpm_holds_under_50_concurrent_clients(gateway):
    account, key, _ = gateway.account("burst", rpm=20)
    responses = asyncio.run(_burst([gateway.url], key, 50))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20 and statuses.count(429) == 30
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in responses if r.status_code == 429)
    records = [r for r in gateway.audit() if r["account_id"] == account.id]
    assert sorted(r["response_id"] for r in records) == sorted(
        r.json()["id"] for r in responses if r.status_code == 200
    )


def test_tpm_holds_under_50_concurrent_clients(gateway):
    _, key, _ = gateway.account("burst-tokens", tpm=400)
    responses = asyncio.run(_burst([gateway.url], key, 50))
    ok = [r.json() for r in responses if r.status_code == 200]
    assert 0 < len(ok) < 50
    assert sum(o["usage"]["total_tokens"] for o in ok) <= 400


# ---- two gateway processes sharing Redis and PostgreSQL -----------------------------------------------------


def _start(port: int, env: dict[str, str], db_url: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "antidistill",
        "serve",
        "--backend",
        "fake",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database-url",
        db_url,
        "--redis-url",
        REDIS_URL,
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_ready(urls: list[str], procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = set(urls)
    while pending:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"gateway exited early: {p.stdout.read()}")
        for u in list(pending):
            try:
                if httpx.get(u + "/health", timeout=1).status_code == 200:
                    pending.discard(u)
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateways not ready after {timeout} s: {pending}")
        time.sleep(0.1)


def test_limits_hold_across_two_gateway_processes(tmp_path, redis_prefix, pg_schema):
    from antidistill.settings import Settings
    from antidistill.store.sql import Store

    settings = Settings(env="test", data_dir=tmp_path, master_key=MASTER_KEY)
    store = Store.open(pg_schema, settings=settings)  # migrates the schema before the gateways start
    rpm_account, rpm_key, _ = store.create_account("two-proc-rpm", rpm=20)
    tpm_account, tpm_key, _ = store.create_account("two-proc-tpm", tpm=400)
    env = {
        **os.environ,
        "ANTIDISTILL_ENV": "test",
        "ANTIDISTILL_DATA_DIR": str(tmp_path),
        "ANTIDISTILL_MASTER_KEY": MASTER_KEY,
        "ANTIDISTILL_ADMIN_TOKEN": ADMIN_TOKEN,
        "ANTIDISTILL_RATE_LIMIT_PREFIX": redis_prefix,
    }
    ports = [free_port(), free_port()]
    procs = [_start(p, env, pg_schema) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        _wait_ready(urls, procs)
        # 8 requests through the second replica, then 50 concurrent clients spread over both: the first replica
        # knows of the 8, so exactly 12 more pass in all
        first = [
            httpx.post(urls[1] + "/v1/chat/completions", json=CHAT, headers=auth(rpm_key), timeout=30) for _ in range(8)
        ]
        assert [r.status_code for r in first] == [200] * 8
        responses = asyncio.run(_burst(urls, rpm_key, 50))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 12 and statuses.count(429) == 38, statuses
        assert {i % 2 for i, r in enumerate(responses) if r.status_code == 429} == {0, 1}
        rpm_ids = sorted(r.json()["id"] for r in first + responses if r.status_code == 200)

        responses = asyncio.run(_burst(urls, tpm_key, 50))
        ok = [r.json() for r in responses if r.status_code == 200]
        assert 0 < len(ok) < 50
        assert sum(o["usage"]["total_tokens"] for o in ok) <= 400

        # one audit chain in PostgreSQL: one record per served exchange, from both processes, and it verifies
        records = list(store.iter_audit())
        assert sorted(r["response_id"] for r in records if r["account_id"] == rpm_account.id) == rpm_ids
        assert len([r for r in records if r["account_id"] == tpm_account.id]) == len(ok)
        assert store.verify_audit().ok
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        store.close()
