"""``antidistill serve``: the gateway under uvicorn.

Registered in :mod:`antidistill.cli` as ``app.command()(serve)`` (also ``python -m antidistill serve``).
Secrets (admin token, master key, upstream key) are read from the environment
only, never from options, so they stay out of shell histories and process listings.

uvicorn's own proxy-header handling is off (by default it believes ``X-Forwarded-For`` from 127.0.0.1, so any
local process could choose the client address written to the audit log); the app reads that header itself, and
only when ``ANTIDISTILL_TRUST_FORWARDED_FOR`` is set.

The connection limits (request-head size, head and body deadlines, open connections; see
:mod:`antidistill.gateway.protocol`) go to uvicorn as its HTTP protocol, so every worker enforces them.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from antidistill.cli.options import SCHEME_HELP
from antidistill.errors import ConfigError
from antidistill.extras import require


class BackendChoice(StrEnum):
    local = "local"
    upstream = "upstream"
    vllm = "vllm"
    fake = "fake"


def _settings(overrides: dict[str, Any]):
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.settings import Settings

    try:
        return Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            e = errors()[0]
            field = ".".join(str(x) for x in e.get("loc", ()))
            msg = str(e["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{field}: {msg}" if field else msg) from None
        raise ConfigError(str(exc)) from None


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    backend: Annotated[
        BackendChoice | None,
        typer.Option(
            "--backend",
            help="Serve from the local model, an upstream server (unmarked), a vLLM server that marks with "
            "antidistill's plugin (keys named per request), or the fake backend.",
            case_sensitive=False,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Local model directory or GGUF file (default: the embedded model).")
    ] = None,
    upstream_url: Annotated[
        str | None,
        typer.Option("--upstream-url", help="OpenAI-compatible server to proxy (backend upstream or vllm)."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="postgresql://… or sqlite:///… (default: SQLite in the data dir)."),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Share rate limits between replicas through Redis.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Worker processes (more than one needs --redis-url).")
    ] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    monitor: Annotated[
        bool | None,
        typer.Option(
            "--monitor/--no-monitor",
            help="Score the traffic as it passes and enforce the policy on it.",
            show_default=False,
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Policy file (default: the shipped terms of service policy).", dir_okay=False),
    ] = None,
    watermark: Annotated[
        bool | None,
        typer.Option(
            "--watermark/--no-watermark",
            help="Mark completions (off only to host a model unmarked, e.g. a red-team student).",
            show_default=False,
        ),
    ] = None,
    watermark_scheme: Annotated[
        str | None,
        typer.Option(
            "--watermark-scheme",
            help=SCHEME_HELP.replace("Watermark scheme:", "Scheme of new completions:", 1)
            + " (or ANTIDISTILL_WATERMARK_SCHEME). Records keep the scheme that marked them, so a change of "
            "default leaves old ones detectable.",
        ),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible gateway: watermarked completions, limits, audit log, admin API, metrics."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    import logging

    require("gateway", "`antidistill serve`")
    import uvicorn

    overrides: dict[str, Any] = {
        "backend": backend.value if backend else None,
        "model": model,
        "upstream_url": upstream_url,
        "database_url": database_url,
        "redis_url": redis_url,
        "monitor": monitor,
        "policy_file": policy,
        "watermark": watermark,
        "watermark_scheme": watermark_scheme,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = _settings(overrides)
    if settings.backend in ("upstream", "vllm") and not settings.upstream_url:
        raise ConfigError(f"--backend {settings.backend} needs --upstream-url (or ANTIDISTILL_UPSTREAM_URL)")
    if workers > 1 and not settings.redis_url:
        raise ConfigError("--workers > 1 needs --redis-url: each worker would otherwise keep its own rate limits")
    if settings.admin_token is None:
        typer.echo("note: ANTIDISTILL_ADMIN_TOKEN is not set; the admin API is disabled", err=True)
    if settings.monitor or settings.enforcement:
        from antidistill.monitor.policy import Policy

        Policy.load(settings.policy_file)  # a bad policy file is one line here, not a traceback at startup
    if not settings.watermark:
        typer.echo("note: watermarking is off: completions carry no mark and cannot be traced to an account")
    if settings.monitor and workers > 1 and settings.monitor_mode != "stream":
        typer.echo(
            "note: with --workers > 1 each worker's monitor sees only its share of the traffic; set "
            "ANTIDISTILL_MONITOR_MODE=stream and run `antidistill monitor run` for one monitor of all of it",
            err=True,
        )
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from antidistill.gateway.protocol import ConnectionLimits, uvicorn_options

    # header size, read deadlines and open connections (per worker process): see gateway/protocol.py
    guard = uvicorn_options(ConnectionLimits.from_settings(settings))
    if workers == 1:
        from antidistill.gateway.app import create_app, make_backend, open_store

        # Built here rather than in the app's startup, so a configuration error is one line, not a traceback.
        store = open_store(settings)
        try:
            app = create_app(settings, backend=make_backend(settings), store=store)
            uvicorn.run(
                app,
                host=host,
                port=port,
                log_level=log_level,
                lifespan="on",
                timeout_graceful_shutdown=10,
                proxy_headers=False,
                **guard,
            )
        finally:
            store.close()
        return
    # Worker processes build their own app from the environment: pass the options on through it.
    for key, value in overrides.items():
        os.environ[f"ANTIDISTILL_{key.upper()}"] = str(value)
    uvicorn.run(
        "antidistill.gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=10,
        proxy_headers=False,
        **guard,
    )
