"""The monitor inside the gateway: enforcement on the request path, scoring off it.

Two halves, kept apart on purpose:

* **Enforcement** (:meth:`Monitoring.admit`), on every exchange after authentication and before the rate limiter:
  the account's enforcement state (cached in memory for ``enforcement_ttl`` seconds, then read again from the
  store, so replicas sharing one database agree within that time) decides: ``block`` and ``review`` answer 403
  in OpenAI's error shape quoting the clause, ``throttle`` counts the request against an extra per-account
  limiter at the reduced rpm/tpm (429 + ``Retry-After`` beyond it; in Redis when the gateway's limits are, so
  replicas share it), ``flag`` passes.
* **Scoring** (:meth:`Monitoring.observe`): after an exchange is in the audit log, its record is put on a bounded
  queue and returned at once. One worker thread feeds it to the monitor, applies the policy to every assessment
  whose level rose (:class:`~antidistill.monitor.actions.Enforcer`: alert, enforcement and audit record in one
  transaction) and drops the account's cached state so the action holds from its next request. A full queue
  drops the event (``antidistill_monitor_events_dropped_total``) rather than slow a request; a monitor that
  raises is logged and counted (``antidistill_monitor_errors_total``) and never reaches a client.
* **Or publishing** (``ANTIDISTILL_MONITOR_MODE=stream``): the exchange goes to the monitor service's Redis Stream
  instead (:mod:`antidistill.gateway.stream`, :mod:`antidistill.monitor.stream`), and the service's notifications
  drop an account's cached state as soon as its enforcement changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.concurrency import run_in_threadpool

from antidistill.errors import ConfigError, MissingExtraError
from antidistill.extras import require
from antidistill.gateway.errors import APIError
from antidistill.gateway.limits import (
    InMemoryLimiter,
    LimiterUnavailable,
    Limits,
    RateLimited,
    RateLimiter,
    RedisLimiter,
    Reservation,
)
from antidistill.gateway.stream import EnforcementListener, StreamPublisher, stream_parts
from antidistill.gateway.worker import ExchangeQueue
from antidistill.monitor.actions import Enforcer, MonitorLike
from antidistill.monitor.api import Assessment, ExchangeEvent
from antidistill.monitor.policy import Policy
from antidistill.monitor.stream import enforcement_channel
from antidistill.settings import Settings
from antidistill.store.api import Account, AuditEntry, Enforcement, EnforcementStore

log = logging.getLogger(__name__)

#: accounts whose enforcement state is cached at most (the cache is emptied when it grows beyond)
MAX_CACHED_ACCOUNTS = 100_000
#: exchanges the worker takes off its queue at once (what is waiting, up to this)
WORKER_BATCH = 256


class MonitorMetrics:
    """The monitor's Prometheus metrics, in the gateway's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queued = Counter(
            "antidistill_monitor_events_queued", "Exchanges handed to the monitor worker.", registry=registry
        )
        self.dropped = Counter(
            "antidistill_monitor_events_dropped",
            "Exchanges not scored because the monitor's queue was full.",
            registry=registry,
        )
        self.errors = Counter(
            "antidistill_monitor_errors", "Exchanges the monitor or the policy failed on.", registry=registry
        )
        self.actions = Counter(
            "antidistill_monitor_actions",
            "Policy actions taken by the monitor, by action.",
            ["action"],
            registry=registry,
        )
        self.rejections = Counter(
            "antidistill_enforcement_rejections",
            "Requests refused by an enforcement action (review/block: 403, throttle: 429).",
            ["action"],
            registry=registry,
        )
        self.depth = Gauge(
            "antidistill_monitor_queue_depth", "Exchanges waiting for the monitor worker.", registry=registry
        )
        self.published = Counter(
            "antidistill_monitor_events_published",
            "Exchanges published to the monitor's stream (ANTIDISTILL_MONITOR_MODE=stream).",
            registry=registry,
        )
        self.unpublished = Counter(
            "antidistill_monitor_events_unpublished",
            "Exchanges not published to the monitor's stream because Redis failed (they are in the audit log).",
            registry=registry,
        )


class EnforcementCache:
    """Enforcement state per account, read from the store at most once per ``ttl`` seconds per account.

    Args:
        store: the store (``get_enforcement``).
        ttl: seconds a state read from the store is trusted (0: read on every request).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, store: EnforcementStore, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Enforcement | None]] = {}

    async def get(self, account_id: str) -> Enforcement | None:
        now = self._clock()
        with self._lock:
            hit = self._entries.get(account_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            state = await run_in_threadpool(self.store.get_enforcement, account_id)
        except Exception:
            # The audit append of this exchange will fail too if the database is gone; until then the last
            # known state holds (a block stays a block).
            log.warning("cannot read the enforcement state of %s; using the cached one", account_id, exc_info=True)
            return hit[1] if hit is not None else None
        with self._lock:
            if len(self._entries) >= MAX_CACHED_ACCOUNTS:
                self._entries.clear()
            self._entries[account_id] = (now, state)
        return state

    def invalidate(self, account_id: str | None = None) -> None:
        """Forget one account's state (all with ``None``): the next request reads it from the store."""
        with self._lock:
            if account_id is None:
                self._entries.clear()
            else:
                self._entries.pop(account_id, None)


class MonitorWorker(ExchangeQueue):
    """One thread that feeds exchanges to the monitor and applies the policy to what it answers.

    Args:
        monitor: the monitor (:class:`~antidistill.monitor.actions.MonitorLike`).
        enforcer: applies the policy.
        metrics: where drops, errors and actions are counted.
        maxsize: the queue's bound.
        on_action: called with the account id after an action took effect (drops the cached state).
    """

    def __init__(
        self,
        monitor: MonitorLike,
        enforcer: Enforcer,
        metrics: MonitorMetrics,
        maxsize: int,
        on_action: Callable[[str], None] = lambda _a: None,
    ) -> None:
        # under load the monitor hashes a batch's prompts at once
        super().__init__("antidistill-monitor", maxsize, WORKER_BATCH, metrics)
        self.monitor = monitor
        self.enforcer = enforcer
        self.on_action = on_action

    def process(self, items: list[tuple[AuditEntry, dict[str, Any]]]) -> None:
        self._process_batch(items)

    def caught_up(self) -> None:
        self._flush()

    def _flush(self) -> None:
        # A monitor that batches its scores (pipeline.Monitor) is flushed whenever the worker catches up: under
        # load the batches fill, when traffic is light every rise is reported at once.
        flush = getattr(self.monitor, "flush", None)
        if flush is None:
            return
        try:
            rises = flush()
        except Exception:
            self.metrics.errors.inc()
            log.error("the monitor failed to flush its scores", exc_info=True)
            return
        self._apply(rises)

    def _process_batch(self, items: list[tuple[AuditEntry, dict[str, Any]]]) -> None:
        events = []
        for entry, metadata in items:
            try:
                events.append((entry, ExchangeEvent.from_record(entry, metadata)))
            except Exception:
                self.metrics.errors.inc()
                log.error("the monitor could not read exchange %s", entry.response_id, exc_info=True)
        prepare = getattr(self.monitor, "prepare", None)
        if prepare is not None and len(events) > 1:
            try:
                prepare([ev for _, ev in events])
            except Exception:  # only a cache warm-up: observe() does the same work one event at a time
                log.warning("the monitor failed to prepare a batch", exc_info=True)
        for entry, ev in events:
            try:
                assessments = self.monitor.observe(ev)
            except Exception:
                self.metrics.errors.inc()
                log.error("the monitor failed on exchange %s", entry.response_id, exc_info=True)
                continue
            self._apply(assessments)

    def _apply(self, assessments: Iterable[Assessment] | None) -> None:
        for a in assessments or ():
            try:
                outcome = self.enforcer.apply(a)
            except Exception:
                self.metrics.errors.inc()
                log.error("applying the policy to account %s failed", getattr(a, "account_id", "?"), exc_info=True)
                continue
            if outcome.applied:
                self.metrics.actions.labels(outcome.action).inc()
                self.on_action(a.account_id)


#: builds a gateway's stream publisher and enforcement listener from its metrics and its cache's invalidate
StreamFactory = Callable[[MonitorMetrics, Callable[[str | None], None]], tuple[StreamPublisher, EnforcementListener]]


def _clause_words(policy: Policy, e: Enforcement) -> str:
    clause = policy.clause(e.clause)
    if clause is None:
        return f"clause {e.clause} of the Terms of Service" if e.clause else "the Terms of Service"
    return f"clause {clause.id} of the Terms of Service: '{clause.text}'"


class Monitoring:
    """Enforcement and (optionally) incremental scoring for one gateway app.

    Args:
        store: the gateway's store.
        policy: the policy.
        registry: the gateway's Prometheus registry.
        monitor: the monitor to feed (``None``: enforce only, e.g. what ``monitor scan`` or an admin set).
        ttl: seconds the enforcement cache trusts a state.
        queue_size: the worker's queue bound.
        throttle_limiter: the limiter of throttled accounts (default: in process).
        stream: with ``ANTIDISTILL_MONITOR_MODE=stream``, the publisher and the enforcement listener
            (:func:`~antidistill.gateway.stream.stream_parts` builds them; their callbacks are this object's).
    """

    def __init__(
        self,
        store: EnforcementStore,
        policy: Policy,
        registry: CollectorRegistry,
        *,
        monitor: MonitorLike | None = None,
        ttl: float = 2.0,
        queue_size: int = 10_000,
        throttle_limiter: RateLimiter | None = None,
        stream: StreamFactory | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.enforcer = Enforcer(store, policy)
        self.metrics = MonitorMetrics(registry)
        self.cache = EnforcementCache(store, ttl)
        self.throttle_limiter = throttle_limiter or InMemoryLimiter()
        self.monitor = monitor
        self.worker = (
            MonitorWorker(monitor, self.enforcer, self.metrics, queue_size, self.cache.invalidate)
            if monitor is not None
            else None
        )
        self.publisher: StreamPublisher | None = None
        self.listener: EnforcementListener | None = None
        if stream is not None:
            self.publisher, self.listener = stream(self.metrics, self.cache.invalidate)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: EnforcementStore,
        registry: CollectorRegistry,
        monitor: MonitorLike | None = None,
    ) -> Monitoring:
        """The settings' policy file, and a throttle limiter in Redis when the gateway's limits are there."""
        policy = Policy.load(settings.policy_file)
        limiter = (
            RedisLimiter(settings.redis_url, f"{settings.rate_limit_prefix}:throttle") if settings.redis_url else None
        )
        stream: StreamFactory | None = None
        url = settings.stream_url
        if settings.monitor_mode == "stream" and url:

            def stream(
                metrics: MonitorMetrics, on_change: Callable[[str | None], None]
            ) -> tuple[StreamPublisher, EnforcementListener]:
                return stream_parts(
                    url,
                    settings.monitor_stream,
                    enforcement_channel(settings.monitor_stream),
                    settings.monitor_stream_maxlen,
                    settings.monitor_queue_size,
                    metrics,
                    on_change,
                )

        return cls(
            store,
            policy,
            registry,
            monitor=monitor,
            ttl=settings.enforcement_ttl,
            queue_size=settings.monitor_queue_size,
            throttle_limiter=limiter,
            stream=stream,
        )

    def start(self) -> None:
        for part in (self.worker, self.publisher, self.listener):
            if part is not None:
                part.start()

    async def aclose(self) -> None:
        for part in (self.worker, self.publisher, self.listener):
            if part is not None:
                await run_in_threadpool(part.stop)
        await self.throttle_limiter.aclose()

    # ---- the request path ---------------------------------------------------------------------------
    async def admit(self, account_id: str, tokens: int) -> Reservation | None:
        """Apply the account's enforcement to one exchange reserving ``tokens``: raise 403/429 or let it pass.

        Returns the throttle's reservation (to settle with the tokens used), or ``None``.
        """
        state = await self.cache.get(account_id)
        if state is None or not state.active(datetime.now(UTC)) or state.action == "flag":
            return None
        if state.action == "block":
            self.metrics.rejections.labels("block").inc()
            raise APIError(
                403, f"This account is blocked under {_clause_words(self.policy, state)}", code="account_blocked"
            )
        if state.action == "review":
            self.metrics.rejections.labels("review").inc()
            raise APIError(
                403,
                f"This account is suspended pending review under "
                f"{_clause_words(self.policy, state)} Contact the provider to have it reviewed.",
                code="account_under_review",
            )
        if state.action == "throttle":
            limits = Limits(rpm=state.rpm, tpm=state.tpm)
            if limits.unlimited:
                return None
            try:
                return await self.throttle_limiter.check(account_id, limits, tokens)
            except RateLimited as exc:
                self.metrics.rejections.labels("throttle").inc()
                headers = {"Retry-After": str(exc.retry_after)}
                if exc.too_large:
                    headers["x-should-retry"] = "false"
                raise APIError(
                    429,
                    f"This account is throttled under {_clause_words(self.policy, state)} ({exc})",
                    type="tokens" if exc.limit != "rpm" else "requests",
                    code="account_throttled",
                    headers=headers,
                ) from None
            except LimiterUnavailable as exc:
                raise APIError(
                    503, "rate limiting is unavailable; try again shortly", code="limiter_unavailable"
                ) from exc
        return None

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        try:
            await self.throttle_limiter.commit(reservation, used_tokens)
        except Exception:  # a lost correction only keeps the reservation counted
            log.warning("throttle settlement failed", exc_info=True)

    def observe(self, entry: AuditEntry, account: Account) -> None:
        """Hand an audited exchange to the monitor worker and/or the stream publisher (never blocks, never
        raises)."""
        for part in (self.worker, self.publisher):
            if part is None:
                continue
            try:
                part.submit(entry, account)
            except Exception:  # the request was served and recorded; scoring is best effort
                log.warning("cannot queue exchange %s for the monitor", entry.response_id, exc_info=True)

    def clear(self, account_id: str, by: str = "admin") -> Enforcement | None:
        """Lift an account's enforcement (with its audit record) and forget the cached state (on every replica
        that listens to the monitor service's channel)."""
        lifted = self.enforcer.clear(account_id, by)
        self.cache.invalidate(account_id)
        if self.listener is not None:
            self.listener.notify(account_id)
        return lifted


def load_monitor(settings: Settings) -> MonitorLike:
    """The monitor the settings ask for (:class:`antidistill.monitor.pipeline.Monitor`)."""
    try:
        require("monitor", "ANTIDISTILL_MONITOR (serve --monitor)")
        # the monitor's heavy part (numpy, scikit-learn, datasketch: the monitor extra), only with --monitor on
        from antidistill.monitor.pipeline import Monitor
    except MissingExtraError:
        raise
    except ImportError as exc:
        raise ConfigError(f"ANTIDISTILL_MONITOR is on but the monitor cannot be loaded: {exc}") from None
    return Monitor.load(settings)
