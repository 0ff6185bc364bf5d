"""What the gateway's background workers share (the monitor's and the engine mark check's): a queue a daemon
thread drains, waited on by tests and stopped at shutdown without losing what was queued."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

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
