"""Streams and the audit chain: no text leaves before the exchange is in the chain (a pending record first, 503 if
it cannot be written), and an abandoned stream is charged, and recorded, with the tokens generated for it (tpm and
tokens per day, in process and on Redis)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import httpx
import pytest

from antidistill.models.base import GenerationChunk
from antidistill.models.fake import FakeBackend
from antidistill.store import db as store_db
from antidistill.store.api import PENDING_STATUS
from antidistill.store.sql import Store

from .conftest import CHAT, REDIS_URL, auth, gateway_settings, redis_or_skip, start_gateway

WORDS = 60


class LongSlowStream(FakeBackend):
    """Always a 60-word answer (one token a word), one word every ``delay`` seconds."""

    def __init__(self, delay: float = 0.01) -> None:
        super().__init__()
        self.delay = delay

    def _text(self, request, prompt, index):
        return " ".join(f"w{i}" for i in range(WORDS))

    async def stream(self, request):
        async for item in super().stream(request):
            if isinstance(item, GenerationChunk):
                await asyncio.sleep(self.delay)
            yield item


def _response_id(line: str) -> str:
    return line.split('"id":"')[1].split('"')[0]


def test_a_stream_opens_with_a_pending_record(gateway, client):
    _, key, _ = gateway.account("streamer")
    body = dict(CHAT, stream=True, seed=3)
    r = client.post(gateway.v1 + "/chat/completions", json=body, headers=auth(key))
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    pending, final = gateway.audit(_response_id(r.text), pending=True)
    assert (pending["status"], final["status"]) == (PENDING_STATUS, 200)
    assert pending["seq"] < final["seq"] and pending["completion"] == [] and final["completion"][0]
    assert pending["request"] == final["request"] and pending["request_raw"] == final["request_raw"]
    assert gateway.audit(_response_id(r.text)) == [final]  # consumers see one exchange


def test_the_record_keeps_the_request_verbatim(gateway, client):
    """NaN, 1e400, duplicate keys and spacing: the raw body is in the chain exactly as it came."""
    _, key, _ = gateway.account("verbatim")
    raw = (
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,\n'
        b' "x_nan": NaN, "x_big": 1e400, "x_dup": 1, "x_dup": 2, "x_prec": 0.1000000000000000055511151231}'
    )
    r = client.post(
        gateway.v1 + "/chat/completions", content=raw, headers={**auth(key), "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    (rec,) = gateway.audit(r.json()["id"])
    assert rec["request_raw"] == {"utf8": raw.decode()} and rec["v"] == 2


def _hold_write_lock(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_no_text_leaves_while_the_log_is_write_locked(tmp_path):
    """Another process holds the database's write lock: the client gets nothing (not even headers) until the
    opening record is written, then the whole stream."""
    path = tmp_path / "locked.db"
    settings = gateway_settings(tmp_path)
    with (
        Store.open(f"sqlite:///{path}", settings=settings) as store,
        start_gateway(tmp_path, store, backend=LongSlowStream(0.0)) as gw,
    ):
        _, key, _ = gw.account("locked")
        lock = _hold_write_lock(path)
        got: dict[str, float] = {}

        def client():
            with (
                httpx.Client(timeout=20) as c,
                c.stream("POST", gw.v1 + "/chat/completions", headers=auth(key), json=dict(CHAT, stream=True)) as r,
            ):
                got["headers"] = time.monotonic()
                for line in r.iter_lines():
                    if '"content":"w' in line:
                        got.setdefault("text", time.monotonic())
                got["status"] = r.status_code

        t = threading.Thread(target=client)
        t.start()
        time.sleep(1.5)
        assert "headers" not in got  # nothing at all has left yet
        released = time.monotonic()
        lock.execute("COMMIT")
        lock.close()
        t.join(20)
        assert got["status"] == 200 and got["text"] >= released
        (rec,) = [r for r in store.iter_audit() if r["status"] == PENDING_STATUS]
        assert len(gw.audit(rec["response_id"], pending=True)) == 2


def test_503_before_any_text_when_the_log_cannot_be_written(tmp_path, monkeypatch):
    monkeypatch.setattr(store_db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "stuck.db"
    settings = gateway_settings(tmp_path)
    with (
        Store.open(f"sqlite:///{path}", settings=settings) as store,
        start_gateway(tmp_path, store, backend=LongSlowStream(0.0)) as gw,
    ):
        _, key, _ = gw.account("stuck")
        before = store.audit_head().seq
        lock = _hold_write_lock(path)
        try:
            r = httpx.post(gw.v1 + "/chat/completions", json=dict(CHAT, stream=True), headers=auth(key), timeout=20)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable"
        assert "w0" not in r.text and store.audit_head().seq == before


# ---- abandoned streams are charged what they cost ---------------------------------------------------------
def _abandon_streams(gw, key, attempts: int, read: int) -> tuple[list[int], list[str]]:
    """Open ``attempts`` streams one after another, read ``read`` words of each and hang up. Returns the status
    of each attempt and the response ids of those that streamed."""
    statuses, ids = [], []
    with httpx.Client(timeout=20) as c:
        for _ in range(attempts):
            body = dict(CHAT, stream=True, max_tokens=WORDS)
            with c.stream("POST", gw.v1 + "/chat/completions", json=body, headers=auth(key)) as r:
                statuses.append(r.status_code)
                if r.status_code != 200:
                    r.read()
                    continue
                words = 0
                for line in r.iter_lines():
                    if line.startswith("data:") and ids[-1:] != [_response_id(line)]:
                        ids.append(_response_id(line))
                    if '"content":"w' in line or '"content":" w' in line:
                        words += 1
                        if words >= read:
                            break  # hang up mid-way
    return statuses, ids


def _wait_for_records(gw, ids: list[str]) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        recs = [r for i in ids for r in gw.audit(i)]
        if len(recs) == len(ids):
            return recs
        time.sleep(0.05)
    raise AssertionError("abandoned streams were not all recorded")


LIMIT = 150  # tokens; a stream reserves ~7 + 60 and is charged ~7 + the words generated before the hang-up


@pytest.mark.parametrize("limit", ["tpm", "tokens_per_day"])
@pytest.mark.parametrize("limiter", ["memory", "redis"])
def test_abandoned_streams_are_charged_and_recorded(tmp_path, store, limit, limiter):
    overrides = {}
    if limiter == "redis":
        redis_or_skip()
        overrides["redis_url"] = REDIS_URL
    with start_gateway(tmp_path, store, backend=LongSlowStream(0.01), **overrides) as gw:
        _, key, _ = gw.account(f"walks-away-{limit}-{limiter}", **{limit: LIMIT})
        statuses, ids = _abandon_streams(gw, key, attempts=8, read=25)
        recs = _wait_for_records(gw, ids)
    assert all(r["status"] == 499 for r in recs)
    assert all(r["completion_tokens"] >= 25 for r in recs)  # at least what the client was sent
    assert all(len(r["completion"][0].split()) <= r["completion_tokens"] for r in recs)
    charged = sum(r["prompt_tokens"] + r["completion_tokens"] for r in recs)
    # without charging, all eight pass (8 x 25 words delivered > the limit); with it the limit holds
    assert 429 in statuses and statuses.count(200) <= 4, statuses
    assert charged <= LIMIT, (charged, statuses)
