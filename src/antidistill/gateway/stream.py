"""The gateway's side of the monitor service (``ANTIDISTILL_MONITOR_MODE=stream``, :mod:`antidistill.monitor.stream`).

* :class:`StreamPublisher`: every audited exchange goes, as one :class:`~antidistill.monitor.api.ExchangeEvent`
  in JSON, onto a bounded queue that one thread writes to the Redis Stream (what is waiting, in one pipeline).
  Nothing on the request path waits for Redis: a full queue drops the event
  (``antidistill_monitor_events_dropped_total``), an unreachable Redis loses the batch being written
  (``antidistill_monitor_events_unpublished_total``) and the thread pauses before the next attempt. The exchange
  itself is in the audit log either way (written before it is published): ``antidistill monitor scan`` reads it.
* :class:`EnforcementListener`: one thread subscribed to the service's channel; each message names an account
  whose enforcement changed, whose cached state is dropped at once (after a reconnection, every account's, since
  messages may have been missed). The enforcement cache's TTL stays the fallback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from antidistill.gateway.worker import ExchangeQueue
from antidistill.monitor.api import ExchangeEvent
from antidistill.monitor.stream import FIELD, redis_client, safe_url
from antidistill.store.api import AuditEntry

log = logging.getLogger(__name__)

#: events written to the stream in one pipeline at most
PUBLISH_BATCH = 256
#: seconds the publisher waits after a failed write before the next (events queue, up to the bound, meanwhile)
RETRY_PAUSE_S = 1.0


class StreamPublisher(ExchangeQueue):
    """Publishes audited exchanges to the monitor's stream from one background thread.

    Args:
        client: a synchronous ``redis.Redis`` (:func:`~antidistill.monitor.stream.redis_client`).
        stream: the stream's key.
        maxlen: entries the stream keeps (approximate trimming with every write).
        maxsize: the queue's bound.
        metrics: the gateway's :class:`~antidistill.gateway.monitoring.MonitorMetrics` (``queued``, ``dropped``,
            ``published``, ``unpublished``, ``depth``).
    """

    def __init__(self, client: Any, stream: str, maxlen: int, maxsize: int, metrics: Any) -> None:
        super().__init__("antidistill-publisher", maxsize, PUBLISH_BATCH, metrics)
        self.redis = client
        self.stream = stream
        self.maxlen = maxlen
        self._stopping = threading.Event()
        self._failing = False

    def process(self, items: list[tuple[AuditEntry, dict[str, Any]]]) -> None:
        self._publish(items)

    def _publish(self, items: list[tuple[AuditEntry, dict[str, Any]]]) -> None:
        if not items:
            return
        lines = []
        for entry, metadata in items:
            try:
                lines.append(ExchangeEvent.from_record(entry, metadata).to_json())
            except Exception:
                self.metrics.errors.inc()
                log.error("cannot serialise exchange %s for the monitor stream", entry.response_id, exc_info=True)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for line in lines:
                pipe.xadd(self.stream, {FIELD: line}, maxlen=self.maxlen, approximate=True)
            pipe.execute()
        except Exception as exc:
            self.metrics.unpublished.inc(len(lines))
            if not self._failing:
                log.warning(
                    "cannot publish to the monitor stream (%s); exchanges stay in the audit log only until it is back",
                    type(exc).__name__,
                )
            self._failing = True
            self._stopping.wait(RETRY_PAUSE_S)
            return
        if self._failing:
            log.warning("publishing to the monitor stream again")
        self._failing = False
        self.metrics.published.inc(len(lines))

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()  # no pause after a failure from here on
        super().stop(timeout)
        self.redis.close()


class EnforcementListener:
    """Drops cached enforcement states when the monitor service says they changed.

    Args:
        client: a synchronous ``redis.Redis`` with ``decode_responses=True``.
        channel: the service's channel (:func:`~antidistill.monitor.stream.enforcement_channel`).
        on_change: called with an account id, or ``None`` for every account.
        url: the Redis' URL, for messages (its password is never shown).
    """

    def __init__(self, client: Any, channel: str, on_change: Callable[[str | None], None], url: str = "") -> None:
        self.redis = client
        self.channel = channel
        self.on_change = on_change
        self.url = safe_url(url)
        self.subscribed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="antidistill-enforcement-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.on_change(None)  # anything said while we were not listening is lost: read every state again
                self.subscribed.set()
                failing = False
                while not self._stopping.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg is not None and msg.get("type") == "message" and isinstance(msg.get("data"), str):
                        self.on_change(msg["data"])
            except Exception as exc:
                self.subscribed.clear()
                if not failing:
                    log.warning(
                        "enforcement changes from the monitor service are not heard (%s at %s); the cache's TTL "
                        "applies until it is back",
                        type(exc).__name__,
                        self.url,
                    )
                failing = True
                self._stopping.wait(1.0)
            finally:
                pubsub.close()

    def notify(self, account_id: str) -> None:
        """Tell every replica (this one too) that ``account_id``'s enforcement changed (best effort)."""
        try:
            self.redis.publish(self.channel, account_id)
        except Exception as exc:
            log.warning("cannot tell the other replicas about account %s (%s)", account_id, type(exc).__name__)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)
        self.redis.close()


def stream_parts(
    url: str,
    stream: str,
    channel: str,
    maxlen: int,
    maxsize: int,
    metrics: Any,
    on_change: Callable[[str | None], None],
) -> tuple[StreamPublisher, EnforcementListener]:
    """The publisher and the listener of one gateway, each with its own connection to ``url``."""
    # short timeouts: the publisher's thread waits on them, and an outage should cost a second, not a minute
    publisher = StreamPublisher(
        redis_client(url, socket_connect_timeout=1, socket_timeout=2), stream, maxlen, maxsize, metrics
    )
    listener = EnforcementListener(
        redis_client(url, socket_connect_timeout=1, socket_timeout=5), channel, on_change, url
    )
    return publisher, listener
