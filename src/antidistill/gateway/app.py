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
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from antidistill import __version__
from antidistill.errors import ConfigError
from antidistill.extras import require
from antidistill.gateway.deps import Gateway
from antidistill.gateway.errors import BodyLimitMiddleware, install_exception_handlers
from antidistill.gateway.limits import RateLimiter, make_limiter
from antidistill.gateway.metrics import GatewayMetrics, MetricsMiddleware
from antidistill.gateway.routes import admin, docs, openai, service
from antidistill.gateway.routes import monitor as monitor_routes
from antidistill.keys import KeyRing
from antidistill.models.base import Backend
from antidistill.settings import Settings, get_settings

log = logging.getLogger(__name__)


def make_backend(settings: Settings) -> Backend:
    """The backend the settings name (``ANTIDISTILL_BACKEND``)."""
    if settings.backend == "fake":
        from antidistill.models.fake import FakeBackend

        return FakeBackend()
    if settings.backend == "upstream":
        from antidistill.models.upstream import UpstreamBackend

        if not settings.upstream_url:
            raise ConfigError("backend 'upstream' needs ANTIDISTILL_UPSTREAM_URL (or --upstream-url)")
        key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        try:
            return UpstreamBackend(settings.upstream_url, key, settings.upstream_model, settings.upstream_timeout)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    require("model", "the local backend")  # upstream and fake need no model
    from antidistill.models.local_backend import LocalBackend

    return LocalBackend(model_path=settings.model, cache_dir=settings.cache_dir)


def open_store(settings: Settings) -> Any:
    """The database the settings name (``ANTIDISTILL_DATABASE_URL``, default: SQLite in the data directory)."""
    from antidistill.store.sql import Store

    return Store.open(settings=settings)


def create_app(settings: Settings | None = None, *, backend: Backend | None = None, store: Any = None,
               limiter: RateLimiter | None = None, keyring: KeyRing | None = None, monitor: Any = None) -> FastAPI:
    """The gateway as an ASGI app.

    Args:
        settings: default: the process settings (``ANTIDISTILL_*``).
        backend: default: the one ``settings.backend`` names. Started and closed by the app's lifespan.
        store: default: :func:`open_store`, opened and closed by the lifespan; a given store is left open.
        limiter: default: Redis if ``settings.redis_url``, else in process.
        keyring: default: :meth:`KeyRing.open` (master key from the settings).
        monitor: the monitor the gateway feeds (:class:`~antidistill.monitor.actions.MonitorLike`); default: with
            ``settings.monitor`` on, :func:`~antidistill.gateway.monitoring.load_monitor`, else none. The policy
            (``settings.policy_file``) is enforced whenever ``settings.enforcement`` is on or a monitor runs.
    """
    settings = settings or get_settings()
    gw = Gateway(settings=settings, metrics=GatewayMetrics(), backend=backend, store=store, limiter=limiter,
                 keyring=keyring)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        own_store, own_limiter = gw.store is None, gw.limiter is None
        if gw.keyring is None:
            gw.keyring = KeyRing.open(settings)
        if gw.backend is None:
            gw.backend = make_backend(settings)
        if gw.store is None:
            gw.store = await run_in_threadpool(open_store, settings)
        if gw.limiter is None:
            gw.limiter = make_limiter(settings)
        if monitor is not None or settings.monitor or settings.enforcement:
            from antidistill.gateway.monitoring import Monitoring, load_monitor

            feed = monitor
            if feed is None and settings.monitor:
                feed = await run_in_threadpool(load_monitor, settings)
            gw.monitoring = Monitoring.from_settings(settings, gw.store, gw.metrics.registry, monitor=feed)
            gw.monitoring.start()
        await gw.backend.start()
        gw.started = int(time.time())
        log.info("gateway ready: backend=%s model=%s watermark=%s limits=%s", gw.backend.name, gw.backend.model_id,
                 "token-level" if gw.backend.marks else "none (this backend cannot mark)",
                 "redis" if settings.redis_url and own_limiter else type(gw.limiter).__name__)
        try:
            yield
        finally:
            for task in list(gw.background):  # audit records of abandoned streams
                with suppress(Exception):  # each task logs its own failure
                    await task
            if gw.monitoring is not None:
                await gw.monitoring.aclose()
            await gw.backend.aclose()
            if own_limiter:
                await gw.limiter.aclose()
            if own_store:
                await run_in_threadpool(gw.store.close)

    app = FastAPI(title="antidistill gateway", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible API that watermarks every completion per account, enforces limits "
                              "and writes a tamper-evident audit log.",
                  strict_content_type=False,  # a JSON body without a Content-Type is still read as JSON
                  # the schema and the docs pages are served by routes.docs: the full schema to the admin only
                  openapi_url=None, docs_url=None, redoc_url=None)
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
