"""Prometheus metrics of one gateway app, in a registry of its own (two apps in one process never mix counts).

Exposed at ``GET /metrics``: requests by endpoint and status, prompt and completion tokens, request latency,
rate-limit rejections by limit, backend errors by kind, audit failures. With several uvicorn workers, each
worker counts its own requests (scrape each, or run one worker per container).
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: routes reported under their own name; everything else is "other" (unbounded label values would blow up
#: the time series count: paths with ids, scanners' random URLs).
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/metrics", "/health")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def endpoint_label(path: str) -> str:
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    if path.startswith("/admin/"):
        return "/admin"
    return "other"


class GatewayMetrics:
    """The gateway's metrics.

    Example:
        >>> m = GatewayMetrics()
        >>> m.requests.labels("/v1/models", "200").inc()
        >>> b"antidistill_requests_total" in m.render()
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "antidistill_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "antidistill_request_latency_seconds",
            "Time from request to the end of the response (streams: to [DONE]).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_latency = Histogram(
            "antidistill_backend_latency_seconds",
            "Time spent in the model backend.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "antidistill_tokens", "Tokens served, by kind (prompt or completion).", ["kind"], registry=r
        )
        self.limit_rejections = Counter(
            "antidistill_rate_limit_rejections", "Requests refused with 429, by limit.", ["limit"], registry=r
        )
        self.backend_errors = Counter(
            "antidistill_backend_errors", "Backend failures, by kind (error, timeout).", ["backend", "kind"], registry=r
        )
        self.audit_failures = Counter(
            "antidistill_audit_failures", "Exchanges refused because the audit log could not record them.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by endpoint and status, and times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        endpoint = endpoint_label(scope.get("path", ""))
        status = 500
        done = False

        async def observing_send(message: Message) -> None:
            nonlocal status, done
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False) and not done:
                done = True
                self._observe(endpoint, status, start)
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            if not done:  # the app failed, or the client went away mid-stream
                self._observe(endpoint, status, start)

    def _observe(self, endpoint: str, status: int, start: float) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
