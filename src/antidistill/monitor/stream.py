"""The monitor as a service: one consumer of the gateways' exchange stream scores and enforces for every replica.

With ``ANTIDISTILL_MONITOR_MODE=stream`` each gateway replica publishes every audited exchange to one Redis
Stream (``ANTIDISTILL_MONITOR_STREAM``, one :class:`~antidistill.monitor.api.ExchangeEvent` as JSON in the field
``event`` of each entry) instead of scoring it in process; ``antidistill monitor run`` (:class:`StreamMonitor`)
reads the stream through a consumer group, feeds the same monitor the gateway would run, applies the policy
through the same :class:`~antidistill.monitor.actions.Enforcer` and tells the gateways on the channel
``<stream>:enforcement`` which account's enforcement changed (they drop its cached state at once; their cache's
TTL is the fallback).

Exactly-once effects
--------------------
An entry is acknowledged (``XACK``) only after the effects of its event are committed. Each effect (an alert,
with the enforcement and the audit record it brings, in one transaction) is keyed on the stream, the entry id, the
account and the level (:func:`effect_key`); the alert's id derives from the key, so an event delivered again after
a crash finds its effect committed and does nothing (:attr:`Outcome.duplicate`).

State after a restart
---------------------
The monitor's state (per-account feature windows, clusters, the levels reached) is rebuilt by replaying the
stream itself, in stream order, up to the group's last delivered entry (:meth:`StreamMonitor.rebuild`): entries
already acknowledged are observed without effects (theirs are committed), pending ones (delivered to a consumer
that died before acknowledging them, claimed with ``XAUTOCLAIM``) with their keyed effects, then acknowledged.
The stream rather than the audit log, because the stream's order is the order the monitor saw: replicas append to
the log and to the stream in slightly different orders, and the scores depend on the order. The price: the stream
must keep its entries (``ANTIDISTILL_MONITOR_STREAM_MAXLEN``); what was trimmed away is not replayed. Checkpoints
of the monitor's state (snapshot + entry id, then replay from there) would lift that limit; they are not built.

Scores are computed once per batch of what a read returned (the monitor's due scores are flushed at its end). A
batch's size depends on timing, but the monitor forms its judgements checkpoint by checkpoint whatever the batch,
so a restart gives the same level rises as a run without one; each rise is keyed on the entry of the exchange at
whose checkpoint it was formed (:attr:`Assessment.event`), which is in the batch that produced it, so the rises a
replay finds for a pending entry are the ones whose effects may be missing. (Flushing per event gave the same
rises at two thirds of the throughput: the models' per-call cost was paid at every checkpoint.)

One consumer: the monitor's state (clusters span accounts) lives in one process, so a group has one active
consumer; a second would see part of the traffic, as two embedded monitors do. A consumer holds the group's lease
(a Redis key, ``<stream>:<group>:lease``, renewed at every read and expiring :data:`LEASE_MS` after the last); a
second ``monitor run`` on the same group waits for it (a consumer killed with SIGKILL frees it when it expires) and
then refuses to start, with one line naming the holder; a consumer that finds its lease taken stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from antidistill.errors import ConfigError, InputError
from antidistill.extras import require
from antidistill.monitor.actions import Enforcer, MonitorLike, Outcome
from antidistill.monitor.api import Assessment, ExchangeEvent

log = logging.getLogger(__name__)

#: the one field of a stream entry: the event as JSON
FIELD = "event"
#: entries read (and replayed) at once
READ_COUNT = 256
#: how long a consumer's lease on its group outlives its last renewal (milliseconds)
LEASE_MS = 5000
# renew (or free) the lease only while this consumer holds it: a check and a write in one step
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_FREE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def enforcement_channel(stream: str) -> str:
    """The pub/sub channel on which the service names accounts whose enforcement changed."""
    return f"{stream}:enforcement"


def effect_key(stream: str, entry_id: str, account_id: str, level: str) -> str:
    """The idempotency key of one effect: an account's level rise seen while processing one stream entry."""
    return f"{stream}/{entry_id}/{account_id}/{level}"


def redis_client(url: str, **kw: Any) -> Any:
    """A synchronous ``redis.Redis`` for ``url`` (the redis extra, imported here only), answers decoded."""
    require("redis", "the monitor stream (ANTIDISTILL_MONITOR_MODE=stream)")
    import redis

    kw.setdefault("socket_connect_timeout", 2)
    kw.setdefault("socket_timeout", 10)
    return redis.Redis.from_url(url, decode_responses=True, **kw)


def safe_url(url: str) -> str:
    """``url`` without its password (for messages)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


@dataclass
class StreamStats:
    """What a :class:`StreamMonitor` did: events scored (live and replayed), effects and their repeats."""

    events: int = 0
    replayed: int = 0
    malformed: int = 0
    actions: int = 0
    alerts: int = 0
    duplicates: int = 0


class StreamMonitor:
    """Consumes a stream of exchange events with a consumer group; scores, enforces, acknowledges.

    Args:
        client: a synchronous ``redis.Redis`` with ``decode_responses=True`` (:func:`redis_client`).
        stream: the stream's key.
        group: the consumer group.
        consumer: this consumer's name in the group.
        monitor: the monitor (:class:`~antidistill.monitor.pipeline.Monitor`, or any ``MonitorLike``).
        enforcer: applies the policy.
        count: entries read at once.
        block_ms: how long one read waits for new entries.
        on_assessment: called with every level rise (replayed ones too) and whether its effects applied now.
        lease_ms: how long the group's lease outlives its last renewal (:data:`LEASE_MS`); :meth:`run` waits up to
            twice that for a lease held by another consumer.

    Example (with a Redis at hand)::

        sm = StreamMonitor(redis_client(url), "antidistill:monitor:events", "antidistill-monitor", "host-1",
                           Monitor.load(settings), Enforcer(store, policy))
        sm.run(threading.Event())
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        monitor: MonitorLike,
        enforcer: Enforcer,
        *,
        count: int = READ_COUNT,
        block_ms: int = 1000,
        on_assessment: Callable[[str, Assessment, bool], None] | None = None,
        lease_ms: int = LEASE_MS,
    ) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.monitor = monitor
        self.enforcer = enforcer
        self.count = count
        self.block_ms = block_ms
        self.on_assessment = on_assessment
        self.channel = enforcement_channel(stream)
        self.stats = StreamStats()
        self._unacked: list[str] = []
        self._stop = threading.Event()
        self.lease_key = f"{stream}:{group}:lease"
        self.lease_ms = lease_ms
        self._leased = False

    # ---- setup and recovery -------------------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the consumer group (from the stream's first entry, the stream too) unless it exists."""
        import redis

        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def rebuild(self) -> int:
        """Rebuild the monitor's state after a restart (see the module docstring); returns the entries replayed.

        Every pending entry of the group is claimed for this consumer, then the stream is replayed in order up to
        the group's last delivered entry: acknowledged entries without effects, pending ones with their (keyed)
        effects, which are then acknowledged.
        """
        self.ensure_group()
        last = self._last_delivered()
        if last in (None, "0-0"):
            return 0
        pending = self._claim_pending()
        start, n, seen = "-", 0, set()
        while True:
            self._keep()  # a long replay renews the lease as the reads do
            entries = self.redis.xrange(self.stream, min=start, max=last, count=self.count)
            self._handle(self._read(entries), effects=pending)
            for entry_id, _ in entries:
                if entry_id in pending:
                    self._unacked.append(entry_id)
                    seen.add(entry_id)
            n += len(entries)
            self._ack()
            if len(entries) < self.count:
                break
            start = "(" + entries[-1][0]
        self.stats.replayed += n
        self._ack(sorted(pending - seen))  # pending, but trimmed from the stream: nothing left to process
        log.info("monitor state rebuilt from %d stream entries (%d were pending)", n, len(pending))
        return n

    def _last_delivered(self) -> str | None:
        for g in self.redis.xinfo_groups(self.stream):
            if g.get("name") == self.group:
                return str(g.get("last-delivered-id"))
        return None

    def _claim_pending(self) -> set[str]:
        out: set[str] = set()
        start = "0-0"
        while True:
            # not JUSTID: redis-py drops the cursor from that reply
            reply = self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=0, start_id=start, count=1000
            )
            nxt, entries = reply[0], reply[1]
            out.update(entry_id for entry_id, _ in entries)
            if len(reply) > 2:  # Redis 7: entries pending but trimmed from the stream
                out.update(reply[2])
            if nxt in ("0-0", "0"):
                return out
            start = nxt

    # ---- the group's one consumer --------------------------------------------------------------------------
    def acquire(self, wait_s: float | None = None) -> None:
        """Take the group's lease, waiting up to ``wait_s`` (default: twice the lease) while another consumer holds
        it; :class:`~antidistill.errors.ConfigError` if it is still held then."""
        deadline = time.monotonic() + (2 * self.lease_ms / 1000 if wait_s is None else wait_s)
        while True:
            if self.redis.set(self.lease_key, self.consumer, nx=True, px=self.lease_ms) or self._renew():
                self._leased = True
                return
            holder = self.redis.get(self.lease_key)
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"another monitor ({holder or 'unknown'}) is consuming {self.stream} as group {self.group}: a "
                    f"group has one consumer (a stopped one frees it within {self.lease_ms / 1000:g} s)"
                )
            if self._stop.wait(0.1):
                raise ConfigError("stopped while waiting for the monitor group's lease")

    def release(self) -> None:
        """Free the group's lease (if this consumer holds it)."""
        if self._leased:
            self._leased = False
            try:
                self.redis.eval(_FREE, 1, self.lease_key, self.consumer)
            except Exception:
                log.warning("cannot free the monitor group's lease; it expires on its own", exc_info=True)

    def _renew(self) -> bool:
        return bool(self.redis.eval(_RENEW, 1, self.lease_key, self.consumer, self.lease_ms))

    def _keep(self) -> None:
        """Renew the lease (taken again if it lapsed and is free); stop if another consumer took it."""
        if not self._leased or self._renew():
            return
        if self.redis.set(self.lease_key, self.consumer, nx=True, px=self.lease_ms):
            log.warning("the monitor group's lease had lapsed (a read, a batch or Redis took too long); taken again")
            return
        self._leased = False
        self.stop()
        raise ConfigError(
            f"the monitor group's lease passed to {self.redis.get(self.lease_key) or 'another consumer'}: this "
            "consumer stops (two consumers would each see part of the traffic)"
        )

    # ---- the loop -----------------------------------------------------------------------------------------
    def step(self) -> int:
        """Read once (waiting up to ``block_ms`` for new entries), process what came, acknowledge; returns the
        number of entries read."""
        self._keep()
        self._ack()  # what a failed acknowledgement left
        reply = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.count, block=self.block_ms
        )
        entries = reply[0][1] if reply else []
        self._handle(self._read(entries), effects=None)
        self._unacked.extend(entry_id for entry_id, _ in entries)
        self._ack()
        return len(entries)

    def run(self, *, exit_when_idle: bool = False) -> StreamStats:
        """Rebuild, then consume until :meth:`stop` (or, with ``exit_when_idle``, until a read finds nothing)."""
        import redis

        self.acquire()
        try:
            self.rebuild()
            failing = False
            while not self._stop.is_set():
                try:
                    n = self.step()
                except redis.ConnectionError:
                    if not failing:
                        log.warning("the monitor stream's Redis is unreachable; retrying", exc_info=True)
                    failing = True
                    self._stop.wait(1.0)
                    continue
                failing = False
                if n == 0 and exit_when_idle:
                    break
        finally:
            self.release()
        return self.stats

    def stop(self) -> None:
        """End :meth:`run` after the entry being processed (its effects committed, acknowledged or not)."""
        self._stop.set()

    # ---- one entry ----------------------------------------------------------------------------------------
    def _read(self, entries: list[tuple[str, dict[str, str]]]) -> list[tuple[str, ExchangeEvent | None]]:
        """Each entry's event (``None``: malformed, logged and counted), after :meth:`Monitor.prepare` on them all
        (a cache warm-up only: the scores are the same without it)."""
        out: list[tuple[str, ExchangeEvent | None]] = []
        for entry_id, fields in entries:
            try:
                out.append((entry_id, ExchangeEvent.from_json(fields.get(FIELD, ""))))
            except InputError as exc:
                self.stats.malformed += 1
                log.error("stream entry %s skipped: %s", entry_id, exc)
                out.append((entry_id, None))
        prepare = getattr(self.monitor, "prepare", None)
        if prepare is not None and len(out) > 1:
            prepare([ev for _, ev in out if ev is not None])
        return out

    def _handle(self, items: list[tuple[str, ExchangeEvent | None]], *, effects: set[str] | None) -> None:
        """Observe a batch's events, score them, apply the effects of the level rises whose entries are in
        ``effects`` (``None``: all)."""
        monitor = self.monitor
        flush = getattr(monitor, "flush", None)
        batched = flush is not None and hasattr(monitor, "events")
        entry_of: dict[int, str] = {}  # the monitor's event count -> the entry that carried that event
        found: list[tuple[str, Assessment]] = []
        last = ""
        for entry_id, event in items:
            if event is None:
                continue
            rises = list(monitor.observe(event))
            self.stats.events += 1
            last = entry_id
            if batched:
                entry_of[monitor.events] = entry_id  # type: ignore[attr-defined]
                found += [(entry_of.get(a.event, entry_id), a) for a in rises]
            else:  # a monitor without batched scores: its rises belong to the event that produced them
                found += [(entry_id, a) for a in (*rises, *(flush() if flush is not None else ()))]
        if batched and flush is not None and last:
            # a rise's checkpoint came in this batch (the last one was flushed at its end)
            found += [(entry_of.get(a.event, last), a) for a in flush()]
        for entry_id, a in found:
            apply = effects is None or entry_id in effects
            if self.on_assessment is not None:
                self.on_assessment(entry_id, a, apply)
            if apply:
                self._apply(entry_id, a)

    def _apply(self, entry_id: str, a: Assessment) -> None:
        key = effect_key(self.stream, entry_id, a.account_id, a.level)
        delay = 0.5
        while True:
            try:
                outcome = self.enforcer.apply(a, key=key)
                break
            except Exception:
                # the store is unreachable: the effect is retried (keyed, so at most once) rather than skipped
                # or the event observed twice; a stop leaves the entry unacknowledged for the next run
                log.error("applying the policy to account %s failed; retrying", a.account_id, exc_info=True)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)
        self._count(outcome)
        if outcome.applied or (outcome.duplicate and outcome.alert is not None and outcome.alert.action != "none"):
            self.notify(a.account_id)

    def _count(self, outcome: Outcome) -> None:
        if outcome.duplicate:
            self.stats.duplicates += 1
        elif outcome.alert is not None:
            self.stats.alerts += 1
        if outcome.applied:
            self.stats.actions += 1

    def notify(self, account_id: str) -> None:
        """Tell the gateways that ``account_id``'s enforcement changed (best effort: their TTL is the fallback)."""
        try:
            self.redis.publish(self.channel, account_id)
        except Exception:
            log.warning("cannot notify the gateways about account %s", account_id, exc_info=True)

    def _ack(self, ids: Iterable[str] | None = None) -> None:
        todo = list(ids) if ids is not None else self._unacked
        if not todo:
            return
        try:
            self.redis.xack(self.stream, self.group, *todo)
        except Exception:
            if ids is not None:
                self._unacked.extend(todo)
            log.warning("acknowledging %d stream entries failed; retrying with the next read", len(todo))
            return
        if ids is None:
            self._unacked = []


def default_consumer() -> str:
    """This process's consumer name: host and process id."""
    import os
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"
