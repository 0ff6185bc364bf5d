"""What the gateway's background workers share (the monitor's and the engine mark check's): a queue a daemon
thread drains, waited on by tests and stopped at shutdown without losing what was queued."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from antidistill.store.api import Account, AuditEntry

log = logging.getLogger(__name__)

#: the item that tells a worker thread to end, after everything queued before it
STOP = object()


def wait_drained(q: queue.Queue[Any], timeout: float, poll: float = 0.01) -> bool:
    """Wait until every item put on ``q`` was processed (``task_done``); ``False`` on timeout."""
    deadline = time.monotonic() + timeout
    while q.unfinished_tasks:
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def stop_worker(q: queue.Queue[Any], thread: threading.Thread, timeout: float) -> bool:
    """Queue :data:`STOP` behind what is queued and join ``thread``, all within ``timeout`` seconds.
    Returns whether the thread ended."""
    if not thread.is_alive():
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            q.put(STOP, timeout=0.1)
            break
        except queue.Full:
            continue
    thread.join(max(0.0, deadline - time.monotonic()))
    return not thread.is_alive()


class ExchangeQueue:
    """Audited exchanges on a bounded queue, drained in batches by one daemon thread: what the monitor worker and
    the stream publisher share. Subclasses do the work in :meth:`process` (and :meth:`caught_up`).

    Args:
        name: the thread's name.
        maxsize: the queue's bound.
        batch: items taken off the queue at once (what is waiting, up to this).
        metrics: counters ``queued`` and ``dropped``, gauge ``depth`` (the gateway's ``MonitorMetrics``).
    """

    def __init__(self, name: str, maxsize: int, batch: int, metrics: Any) -> None:
        self.metrics = metrics
        self.batch = batch
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, entry: AuditEntry, account: Account) -> bool:
        """Queue one audited exchange; never blocks. ``False`` (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((entry, dict(account.metadata or {})))
        except queue.Full:
            self.metrics.dropped.inc()
            return False
        self.metrics.queued.inc()
        self.metrics.depth.set(self._queue.qsize())
        return True

    def process(self, items: list[tuple[AuditEntry, dict[str, Any]]]) -> None:
        """Handle a batch of ``(entry, account metadata)``."""
        raise NotImplementedError

    def caught_up(self) -> None:
        """Called when the queue is empty after a batch (the monitor flushes its scores then)."""

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is STOP for item in items)
            try:
                self.process([item for item in items if item is not STOP])
                if not stop and self._queue.empty():
                    self.caught_up()
            finally:
                for _ in items:
                    self._queue.task_done()
                self.metrics.depth.set(self._queue.qsize())
            if stop:
                return

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued exchange was processed (tests, shutdown); ``False`` on timeout."""
        return wait_drained(self._queue, timeout, poll=0.002)

    def stop(self, timeout: float = 10.0) -> None:
        """Process what is queued (up to ``timeout``), then end the thread."""
        if not stop_worker(self._queue, self._thread, timeout):
            log.warning(
                "%s did not finish within %.0f s; %d exchanges left", self._thread.name, timeout, self._queue.qsize()
            )
