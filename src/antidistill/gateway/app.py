"""The gateway's app factory.

Example:
    >>> from antidistill.models.fake import FakeBackend
    >>> from antidistill.settings import Settings
    >>> app = create_app(Settings(env="test", backend="fake"), backend=FakeBackend())
    >>> sorted(app.openapi()["paths"])[-3:]
    ['/v1/completions', '/v1/models', '/v1/models/{model}']
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from antidistill import __version__
from antidistill.errors import ConfigError
from antidistill.extras import require
from antidistill.gateway.deps import Gateway
from antidistill.gateway.errors import BodyLimitMiddleware, install_exception_handlers
from antidistill.gateway.limits import RateLimiter, make_limiter
from antidistill.gateway.metrics import GatewayMetrics, MetricsMiddleware
from antidistill.gateway.monitoring import Monitoring, load_monitor
from antidistill.gateway.routes import admin, docs, openai, service
from antidistill.gateway.routes import monitor as monitor_routes
from antidistill.gateway.verify import MarkVerifier
from antidistill.keys import KeyRing
from antidistill.models.base import Backend
from antidistill.models.fake import FakeBackend
from antidistill.monitor.actions import MonitorLike
from antidistill.settings import Settings, get_settings
from antidistill.store.api import Storage
from antidistill.store.sql import Store

if TYPE_CHECKING:
    from antidistill.watermark.config import WatermarkConfig

log = logging.getLogger(__name__)


def make_backend(settings: Settings) -> Backend:
    """The backend the settings name (``ANTIDISTILL_BACKEND``)."""
    if settings.backend == "fake":
        return FakeBackend()
    if settings.backend in ("upstream", "vllm"):
        # their HTTP client stack: 0.15 s, for these only
        from antidistill.models.upstream import UpstreamBackend
        from antidistill.models.vllm_backend import VLLMBackend

        if not settings.upstream_url:
            raise ConfigError(f"backend '{settings.backend}' needs ANTIDISTILL_UPSTREAM_URL (or --upstream-url)")
        key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        try:
            if settings.backend == "vllm":
                return VLLMBackend(
                    settings.upstream_url,
                    _watermark_config(settings),
                    key,
                    settings.upstream_model,
                    settings.upstream_timeout,
                )
            return UpstreamBackend(settings.upstream_url, key, settings.upstream_model, settings.upstream_timeout)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    require("model", "the local backend")  # upstream, vllm and fake need no model
    # torch and transformers (seconds to import, and the model extra's): only a local backend loads them
    from antidistill.models.local_backend import LocalBackend

    return LocalBackend(model_path=settings.model, cache_dir=settings.cache_dir, config=_watermark_config(settings))


def _watermark_config(settings: Settings) -> WatermarkConfig:
    try:
        return settings.watermark_config()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def open_store(settings: Settings) -> Store:
    """The database the settings name (``ANTIDISTILL_DATABASE_URL``, default: SQLite in the data directory)."""
    return Store.open(settings=settings)


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    store: Storage | None = None,
    limiter: RateLimiter | None = None,
    keyring: KeyRing | None = None,
    monitor: MonitorLike | None = None,
    verify_tokenizer: Callable[[], Any] | None = None,
) -> FastAPI:
    """The gateway as an ASGI app.

    Args:
        settings: default: the process settings (``ANTIDISTILL_*``).
        backend: default: the one ``settings.backend`` names. Started and closed by the app's lifespan.
        store: any :class:`~antidistill.store.api.Storage`; default: :func:`open_store`, opened and closed by the
            lifespan; a given store is left open.
        limiter: default: Redis if ``settings.redis_url``, else in process.
        keyring: default: :meth:`KeyRing.open` (master key from the settings).
        monitor: the monitor the gateway feeds (:class:`~antidistill.monitor.actions.MonitorLike`); default: with
            ``settings.monitor`` on, :func:`~antidistill.gateway.monitoring.load_monitor`, else none. The policy
            (``settings.policy_file``) is enforced whenever ``settings.enforcement`` is on or a monitor runs.
        verify_tokenizer: for a backend that marks in another process (``vllm``), what loads the served model's
            tokenizer for the sample check (:mod:`antidistill.gateway.verify`); default: ``settings.model``'s, or
            the embedded model's. The check runs when ``settings.verify_every`` > 0 and watermarking is on.
    """
    settings = settings or get_settings()
    gw = Gateway(
        settings=settings, metrics=GatewayMetrics(), backend=backend, store=store, limiter=limiter, keyring=keyring
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        own_store, own_limiter = not gw.is_set("store"), not gw.is_set("limiter")
        if not gw.is_set("keyring"):
            gw.keyring = KeyRing.open(settings)
        if not gw.is_set("backend"):
            gw.backend = make_backend(settings)
        if own_store:
            gw.store = await run_in_threadpool(open_store, settings)
        if own_limiter:
            gw.limiter = make_limiter(settings)
        streamed = settings.monitor_mode == "stream"
        if monitor is not None or settings.monitor or settings.enforcement or streamed:
            feed = monitor
            if feed is None and settings.monitor and not streamed:  # streamed: `monitor run` scores
                feed = await run_in_threadpool(load_monitor, settings)
            gw.monitoring = Monitoring.from_settings(settings, gw.store, gw.metrics.registry, monitor=feed)
            gw.monitoring.start()
        if gw.backend.marks_remotely and settings.watermark and settings.verify_every > 0:
            engine = f"the {gw.backend.name} engine at {gw.backend.url}" if gw.backend.url else "the engine"
            gw.verifier = MarkVerifier.from_settings(settings, gw.metrics.registry, engine, verify_tokenizer)
            gw.verifier.start()
        await gw.backend.start()
        gw.started = int(time.time())
        log.info(
            "gateway ready: backend=%s model=%s watermark=%s limits=%s",
            gw.backend.name,
            gw.backend.model_id,
            "token-level" if gw.backend.marks else "none (this backend cannot mark)",
            "redis" if settings.redis_url and own_limiter else type(gw.limiter).__name__,
        )
        try:
            yield
        finally:
            for task in list(gw.background):  # audit records of abandoned streams
                with suppress(Exception):  # each task logs its own failure
                    await task
            if gw.monitoring is not None:
                await gw.monitoring.aclose()
            if gw.verifier is not None:
                await run_in_threadpool(gw.verifier.stop)
                gw.verifier = None
            await gw.backend.aclose()
            if own_limiter:
                await gw.limiter.aclose()
            if own_store:
                await run_in_threadpool(gw.store.close)

    app = FastAPI(
        title="antidistill gateway",
        version=__version__,
        lifespan=lifespan,
        description="OpenAI-compatible API that watermarks every completion per account, enforces limits "
        "and writes a tamper-evident audit log.",
        strict_content_type=False,  # a JSON body without a Content-Type is still read as JSON
        # the schema and the docs pages are served by routes.docs: the full schema to the admin only
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gw
    install_exception_handlers(app)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(monitor_routes.router)
    app.include_router(service.router)
    app.include_router(docs.schema_router)
    if settings.api_docs:
        app.include_router(docs.pages_router)
    # Added last is outermost: metrics see every response, including the body limit's 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=gw.metrics)
    return app
