"""Fixtures of the gateway tests: a real uvicorn on a free 127.0.0.1 port, the fake backend, a real Store.

One gateway (fake backend, SQLite store, in-process limits) is shared by the module that asks for it; tests that
need another configuration (an upstream backend, a small body limit) start their own with :class:`LiveServer`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from antidistill.gateway import create_app
from antidistill.gateway.server import BackgroundServer
from antidistill.keys import KeyRing, MasterKey
from antidistill.models.fake import FakeBackend
from antidistill.settings import Settings
from antidistill.store.api import is_pending_record
from antidistill.store.sql import Store

ADMIN_TOKEN = "admin-" + "7f3c9a1e5b2d4c6f8a0e1b3d5f7a9c2e"
MASTER_KEY = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"


def free_port() -> int:
    """A port that was free a moment ago (for subprocesses, which cannot inherit our socket easily)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LiveServer = BackgroundServer  # the tests' name for it


def gateway_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": data_dir,
        "cache_dir": data_dir / "cache",
        "backend": "fake",
        "admin_token": ADMIN_TOKEN,
        "master_key": MASTER_KEY,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Gateway:
    """A running gateway and the objects behind it."""

    url: str
    store: Store
    backend: Any
    settings: Settings
    keyring: KeyRing
    app: Any

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def account(self, name: str = "acct", **limits: Any) -> tuple[Any, str, Any]:
        """A new account: ``(account, api_key, key_info)``."""
        return self.store.create_account(name, **limits)

    def audit(self, response_id: str | None = None, *, pending: bool = False) -> list[dict[str, Any]]:
        """The audit records (of one response): the final ones, and with ``pending`` streams' opening ones too."""
        rows = [r for r in self.store.iter_audit() if pending or not is_pending_record(r)]
        return rows if response_id is None else [r for r in rows if r["response_id"] == response_id]

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def gateway_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def store(gateway_dir) -> Iterator[Store]:
    settings = gateway_settings(gateway_dir)
    s = Store.open(f"sqlite:///{gateway_dir / 'gateway.db'}", settings=settings)
    yield s
    s.close()


def start_gateway(data_dir: Path, store: Store, backend: Any = None, **overrides: Any):
    """A context manager yielding a running :class:`Gateway` (fake backend unless another is given)."""
    settings = gateway_settings(data_dir, **overrides)
    keyring = KeyRing(MasterKey.from_text(MASTER_KEY))
    backend = backend if backend is not None else FakeBackend()
    app = create_app(settings, backend=backend, store=store, keyring=keyring)

    class _Ctx:
        def __enter__(self) -> Gateway:
            self.srv = LiveServer(app).__enter__()
            return Gateway(self.srv.url, store, backend, settings, keyring, app)

        def __exit__(self, *exc: object) -> None:
            self.srv.__exit__(*exc)

    return _Ctx()


@pytest.fixture(scope="module")
def gateway(gateway_dir, store) -> Iterator[Gateway]:
    """The shared gateway: fake backend, real SQLite store, in-process rate limits."""
    with start_gateway(gateway_dir, store) as gw:
        yield gw


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


CHAT = {"model": "antidistill-fake", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16}


# ---- a stub OpenAI-compatible upstream ------------------------------------------------------------------
def stub_upstream(mode: dict[str, Any]) -> FastAPI:
    """An OpenAI-compatible server whose behaviour the test sets in ``mode``: ``delay`` (seconds before the
    answer), ``status`` (an error status to answer with), else a fixed completion (streamed if asked)."""
    app = FastAPI()
    seen: list[dict[str, Any]] = []
    app.state.seen = seen

    async def answer(request: Request, chat: bool):
        body = await request.json()
        seen.append(body)
        if mode.get("delay"):
            await asyncio.sleep(mode["delay"])
        if mode.get("status"):
            return JSONResponse(
                {"error": {"message": "stub failure", "type": "server_error"}}, status_code=mode["status"]
            )
        text = mode.get("text", "Hello from upstream")
        n = body.get("n", 1)
        usage = {"prompt_tokens": 7, "completion_tokens": 4 * n, "total_tokens": 7 + 4 * n}
        if body.get("stream"):

            async def events():
                for i in range(n):
                    for piece in text.split(" "):
                        delta = {"delta": {"content": piece + " "}} if chat else {"text": piece + " "}
                        event = {
                            "id": "up",
                            "model": "stub-model",
                            "choices": [{"index": i, "finish_reason": None, **delta}],
                        }
                        yield "data: " + json.dumps(event) + "\n\n"
                    done = {"delta": {}} if chat else {"text": ""}
                    yield (
                        "data: "
                        + json.dumps(
                            {
                                "id": "up",
                                "model": "stub-model",
                                "choices": [{"index": i, "finish_reason": "stop", **done}],
                            }
                        )
                        + "\n\n"
                    )
                yield "data: " + json.dumps({"id": "up", "model": "stub-model", "choices": [], "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        if chat:
            choices = [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                for i in range(n)
            ]
        else:
            choices = [{"index": i, "text": text, "finish_reason": "stop"} for i in range(n)]
        return {
            "id": "up",
            "object": "chat.completion",
            "created": 0,
            "model": "stub-model",
            "choices": choices,
            "usage": usage,
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "stub-model", "object": "model", "created": 0, "owned_by": "x"}]}

    return app


# The same variables and defaults as the store's tests (tests/store/conftest.py).
REDIS_URL = os.environ.get("ANTIDISTILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("ANTIDISTILL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _unavailable(what: str, url: str, exc: Exception) -> None:
    msg = f"{what} at {url} is unreachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + "; CI must run the tests that need it")
    pytest.skip(msg)


def redis_or_skip(url: str = REDIS_URL):
    """A connected sync Redis client; skip when Redis is unreachable, but fail under CI (CI=true)."""
    import redis

    r = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        r.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", url, exc)
    return r


def postgres_or_skip(url: str = POSTGRES_URL):
    """A psycopg connection (autocommit); skip when PostgreSQL is unreachable, but fail under CI."""
    import psycopg
    from sqlalchemy.engine import make_url

    libpq = make_url(url).set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    try:
        return psycopg.connect(libpq, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        _unavailable("PostgreSQL", make_url(url).render_as_string(), exc)


@pytest.fixture
def pg_schema():
    """The URL of a fresh PostgreSQL schema (search_path set through libpq options), dropped afterwards."""
    import uuid

    from sqlalchemy.engine import make_url

    conn = postgres_or_skip()
    schema = f"gw_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    yield (
        make_url(POSTGRES_URL)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    conn.close()
