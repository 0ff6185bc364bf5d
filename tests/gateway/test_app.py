"""The app's edges: the serve command's configuration errors, settings of the gateway, client addresses behind a
proxy, an unreachable Redis, and the audit record of a stream the client abandons."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from antidistill.cli.serve import serve
from antidistill.errors import ConfigError
from antidistill.gateway.app import create_app
from antidistill.gateway.deps import Gateway
from antidistill.gateway.limits import LimiterUnavailable, Limits, RedisLimiter
from antidistill.gateway.metrics import GatewayMetrics
from antidistill.models.base import GenerationChunk
from antidistill.models.fake import FakeBackend
from antidistill.settings import Settings

from .conftest import CHAT, LiveServer, auth, free_port, start_gateway


def _serve_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(serve)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "upstream"], "--upstream-url"),
        (["--backend", "fake", "--workers", "2"], "--redis-url"),
        (["--backend", "fake", "--database-url", "mysql://x/y"], "not supported"),
    ],
)
def test_serve_refuses_bad_configuration_in_one_line(args, message):
    result = CliRunner().invoke(_serve_app(), args)
    assert isinstance(result.exception, ConfigError), result.output
    assert message in str(result.exception)


def test_serve_help_lists_the_options():
    out = CliRunner().invoke(_serve_app(), ["--help"]).output
    for opt in (
        "--host",
        "--port",
        "--backend",
        "--model",
        "--upstream-url",
        "--database-url",
        "--redis-url",
        "--workers",
    ):
        assert opt in out


def test_admin_token_placeholder_is_refused_in_prod(tmp_path):
    with pytest.raises(ValueError, match="ANTIDISTILL_ADMIN_TOKEN"):
        Settings(env="prod", data_dir=tmp_path, admin_token="changeme")
    assert Settings(env="prod", data_dir=tmp_path).admin_token is None  # no default token
    s = Settings(env="prod", data_dir=tmp_path, admin_token="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b")
    assert "9f86d0818" not in repr(s)


def test_client_address_from_x_forwarded_for_only_when_trusted(gateway_dir, store, client):
    headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    for trusted, expected in ((False, "127.0.0.1"), (True, "198.51.100.7")):
        with start_gateway(gateway_dir, store, trust_forwarded_for=trusted) as gw:
            _, key, _ = gw.account("proxied")
            r = client.post(gw.v1 + "/chat/completions", json=CHAT, headers={**auth(key), **headers})
            assert gw.audit(r.json()["id"])[0]["client_addr"] == expected


def test_watermark_off_sends_no_keys_to_the_backend(gateway_dir, store, client):
    """``watermark=False`` (hosting a model unmarked, as the red team does with a student) passes no keys."""
    for on in (True, False):
        backend = FakeBackend()
        with start_gateway(gateway_dir, store, backend=backend, watermark=on) as gw:
            _, key, _ = gw.account(f"marks-{on}")
            assert client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)).status_code == 200
        assert (backend.requests[-1].mark is not None) is on


def test_unreachable_redis_answers_503_not_unlimited(gateway_dir, store, client):
    async def check():
        lim = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(LimiterUnavailable):
                await lim.check("a", Limits(rpm=5), 1)
        finally:
            await lim.aclose()

    asyncio.run(check())
    with start_gateway(gateway_dir, store, redis_url=f"redis://127.0.0.1:{free_port()}/0") as gw:
        _, limited, _ = gw.account("limited", rpm=5)
        _, free, _ = gw.account("unlimited")
        r = client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(limited))
        assert r.status_code == 503 and r.json()["error"]["code"] == "limiter_unavailable"
        # accounts without limits do not need the limiter
        assert client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(free)).status_code == 200


class SlowStream(FakeBackend):
    """Streams one word every 50 ms."""

    async def stream(self, request):
        async for item in super().stream(request):
            if isinstance(item, GenerationChunk):
                await asyncio.sleep(0.05)
            yield item


def test_abandoned_stream_is_audited_with_what_was_sent(gateway_dir, store):
    with start_gateway(gateway_dir, store, backend=SlowStream()) as gw:
        account, key, _ = gw.account("leaves-early")
        body = dict(CHAT, max_tokens=40, stream=True, seed=4)
        with (
            httpx.Client(timeout=10) as c,
            c.stream("POST", gw.v1 + "/chat/completions", json=body, headers=auth(key)) as r,
        ):
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            response_id = first.split('"id":"')[1].split('"')[0]
            next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        deadline = time.monotonic() + 5
        while not gw.audit(response_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        (rec,) = gw.audit(response_id)
        assert rec["status"] == 499 and rec["account_id"] == account.id
        assert rec["completion"][0]  # the words that had been sent
        assert rec["finish_reason"] is None


def test_two_apps_keep_separate_metrics(gateway_dir, store, client):
    with start_gateway(gateway_dir, store) as a, start_gateway(gateway_dir, store) as b:
        client.get(a.url + "/health")
        assert 'endpoint="/health"' in client.get(a.url + "/metrics").text
        assert 'endpoint="/health"' not in client.get(b.url + "/metrics").text


def test_live_server_helper_serves_any_asgi_app():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with LiveServer(app) as srv:
        assert httpx.get(srv.url).status_code == 204


# ---- a blank admin token ---------------------------------------------------------------------------------
def test_serve_refuses_a_blank_admin_token_in_one_line(monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_ENV", "dev")
    monkeypatch.setenv("ANTIDISTILL_ADMIN_TOKEN", "")
    result = CliRunner().invoke(_serve_app(), ["--backend", "fake"])
    assert isinstance(result.exception, ConfigError), result.output
    assert str(result.exception).startswith("admin_token: ANTIDISTILL_ADMIN_TOKEN is set but empty")


def test_admin_api_never_opens_with_a_blank_token(gateway_dir, store, client):
    """Past the settings (model_copy skips validation), the admin check itself refuses a blank token."""
    from pydantic import SecretStr

    from antidistill.gateway import create_app
    from antidistill.keys import KeyRing, MasterKey

    from .conftest import MASTER_KEY, gateway_settings

    for blank in ("", "  "):
        settings = gateway_settings(gateway_dir).model_copy(update={"admin_token": SecretStr(blank)})
        app = create_app(settings, backend=FakeBackend(), store=store, keyring=KeyRing(MasterKey.from_text(MASTER_KEY)))
        before = len(store.list_accounts())
        with LiveServer(app) as srv:
            # (a header value cannot end in blanks: "Bearer" is what "Bearer " + a blank token arrives as)
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer x"}):
                r = client.post(srv.url + "/admin/accounts", json={"name": "intruder"}, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "admin_disabled", r.text
        assert len(store.list_accounts()) == before


# ---- connection limits reach uvicorn ---------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_runs_uvicorn_with_the_connection_limits(workers, monkeypatch, tmp_path):
    import pickle

    import uvicorn

    from antidistill.gateway.protocol import ConnectionLimits, GuardedHttpToolsProtocol

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append(kw))
    monkeypatch.setenv("ANTIDISTILL_MAX_HEADER_BYTES", "4096")
    monkeypatch.setenv("ANTIDISTILL_HEADER_TIMEOUT", "3")
    monkeypatch.setenv("ANTIDISTILL_BODY_TIMEOUT", "4")
    monkeypatch.setenv("ANTIDISTILL_MAX_CONNECTIONS", "7")
    # serve hands its options to the workers through os.environ: set through monkeypatch, they are undone after
    monkeypatch.setenv("ANTIDISTILL_BACKEND", "fake")
    monkeypatch.setenv("ANTIDISTILL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # the parent never connects
    result = CliRunner().invoke(_serve_app(), ["--backend", "fake", "--workers", str(workers)])
    assert result.exit_code == 0, result.output
    (kw,) = calls
    # spawned workers get the config pickled: the protocol factory must survive it, limits included
    http = pickle.loads(pickle.dumps(kw["http"]))
    assert http.func is GuardedHttpToolsProtocol
    assert http.keywords["limits"] == ConnectionLimits(4096, 3.0, 4.0, 7)
    assert kw.get("limit_concurrency") is None  # it would answer 503 to requests, not bound connections


def test_a_gateway_part_read_before_the_app_starts_is_named():
    gw = Gateway(Settings(env="test", backend="fake"), GatewayMetrics(), backend=FakeBackend())
    assert gw.is_set("backend") and not gw.is_set("store")
    with pytest.raises(RuntimeError, match="store"):
        _ = gw.store
    app = create_app(Settings(env="test", backend="fake"), backend=FakeBackend())
    assert TestClient(app).get("/health").json() == {"status": "ok", "backend": "fake"}  # no lifespan run
