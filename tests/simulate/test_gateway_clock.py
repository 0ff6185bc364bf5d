"""The gateway's virtual clock: ``X-Antidistill-Clock`` sets the audit time when (and only when) it is allowed."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from antidistill import settings as settings_module
from antidistill.errors import ConfigError
from antidistill.settings import Settings

from .conftest import running_gateway


@pytest.fixture(scope="module")
def api_key(clock_gateway) -> str:
    return clock_gateway.store.create_account("clock-user")[1]


def _chat(url: str, key: str, headers: dict[str, str] | None = None, stream: bool = False) -> httpx.Response:
    body = {
        "model": "atlas-1",
        "messages": [{"role": "user", "content": "What time is it?"}],
        "max_tokens": 8,
        "stream": stream,
    }
    return httpx.post(
        url + "/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    )


def _record(gw, response_id: str) -> dict:
    (rec,) = [r for r in gw.audit() if r["response_id"] == response_id]
    return rec


def _created_at(rec: dict) -> datetime:
    v = rec["created_at"]
    dt = v if isinstance(v, datetime) else datetime.fromisoformat(v)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def test_clock_header_sets_the_audit_time(clock_gateway, api_key):
    t = 1767571200.25  # 2026-01-05 00:00:00.25 UTC
    r = _chat(clock_gateway.url, api_key, {"X-Antidistill-Clock": str(t), "X-Forwarded-For": "81.2.69.160"})
    assert r.status_code == 200, r.text
    assert r.json()["created"] == int(t)
    rec = _record(clock_gateway, r.json()["id"])
    assert _created_at(rec) == datetime.fromtimestamp(t, UTC)
    assert rec["client_addr"] == "81.2.69.160"


def test_clock_header_works_for_streams_and_without_it_the_real_clock_counts(clock_gateway, api_key):
    t = 1767600000.0
    with httpx.stream(
        "POST",
        clock_gateway.url + "/v1/chat/completions",
        timeout=30,
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"Authorization": f"Bearer {api_key}", "X-Antidistill-Clock": f"{t:.3f}"},
    ) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: {")]
    import json

    rid = json.loads(lines[0][6:])["id"]
    assert _created_at(_record(clock_gateway, rid)) == datetime.fromtimestamp(t, UTC)
    before = time.time()
    r = _chat(clock_gateway.url, api_key)
    assert r.status_code == 200
    assert abs(_created_at(_record(clock_gateway, r.json()["id"])).timestamp() - before) < 60


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-5", "1e20", "", "12:30"])
def test_malformed_clock_is_refused_in_openais_error_shape(clock_gateway, api_key, value):
    n = len(clock_gateway.audit())
    r = _chat(clock_gateway.url, api_key, {"X-Antidistill-Clock": value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "X-Antidistill-Clock"
    assert err["code"] == "invalid_clock" and "unix seconds" in err["message"]
    assert len(clock_gateway.audit()) == n  # refused before anything was served or recorded


def test_clock_header_is_ignored_when_the_setting_is_off(tmp_path):
    with running_gateway(tmp_path) as gw:
        assert gw.settings.accept_client_clock is False
        key = gw.store.create_account("plain")[1]
        before = time.time()
        for value in ("1767571200", "garbage"):
            r = _chat(gw.url, key, {"X-Antidistill-Clock": value})
            assert r.status_code == 200, r.text
            assert abs(_created_at(_record(gw, r.json()["id"])).timestamp() - before) < 60


def test_client_clock_is_refused_in_prod(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="ACCEPT_CLIENT_CLOCK"):
        Settings(env="prod", data_dir=tmp_path, accept_client_clock=True)
    assert Settings(env="dev", data_dir=tmp_path, accept_client_clock=True).accept_client_clock
    monkeypatch.setenv("ANTIDISTILL_ENV", "prod")
    monkeypatch.setenv("ANTIDISTILL_ACCEPT_CLIENT_CLOCK", "true")
    settings_module.get_settings.cache_clear()
    with pytest.raises(ConfigError, match="refused when ANTIDISTILL_ENV is prod"):
        settings_module.get_settings()
    monkeypatch.setenv("ANTIDISTILL_ENV", "test")
    settings_module.get_settings.cache_clear()
    assert settings_module.get_settings().accept_client_clock is True
