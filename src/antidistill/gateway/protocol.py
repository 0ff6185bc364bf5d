"""What the HTTP server refuses before a request reaches the app: huge request heads, slow reads, too many
connections.

uvicorn's httptools protocol (kept for its speed: about 1.5x the requests/s of h11) takes a request head of any
size, waits forever for one that never ends and accepts every connection, so one client could hold memory and
sockets without ever authenticating. :class:`GuardedHttpToolsProtocol` subclasses it and adds, per connection:

* a cap on the request head (request line and headers, ``max_header_bytes``). Its bytes are counted as they
  arrive; a read that would take the head past the cap without ending it is answered 431 and the connection is
  closed, before the parser sees that read, so a 16 MiB header costs the server at most the cap.
* a deadline for the head (``header_timeout``), armed when the connection opens (a client that connects and
  sends nothing is closed too, without an answer) and when the first byte of a later request arrives on a
  kept-alive connection; past it, 408 and the connection is closed. Between requests uvicorn's keep-alive
  timeout applies, and while the app works on a request no deadline runs.
* a deadline for the body (``body_timeout``), from the end of the head to the end of the body, so that a body
  sent a byte at a time cannot hold the connection either. While uvicorn has stopped reading the socket (64 KiB
  of body wait for the app, or a pipelined request for the one before it) a deadline that passes starts again:
  that wait is the server's.
* a cap on open connections per server process (``max_connections``): past it a new connection is answered
  503 and closed at once, so the sockets and memory of one process stay bounded.

uvicorn's own ``limit_concurrency`` does not do the last: it accepts every connection, reads and parses its
request head, and only then answers 503 if the open connections or the running tasks have reached the limit.
It bounds the requests handed to the app, not the connections; a slowloris connection never finishes its head,
so it is never refused, and it counts towards the limit, pushing well-formed requests to 503.

Example:
    >>> import uvicorn
    >>> from fastapi import FastAPI
    >>> config = uvicorn.Config(FastAPI(), **uvicorn_options(ConnectionLimits(max_header_bytes=8192)))
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from antidistill.gateway.errors import error_body
from antidistill.settings import Settings

log = logging.getLogger(__name__)

#: seconds between two warnings of one kind (a flood of refused connections must not flood the log too)
WARN_INTERVAL = 10.0
_last_warned: dict[str, float] = {}


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits :class:`GuardedHttpToolsProtocol` enforces (defaults: the settings' defaults).

    Args:
        max_header_bytes: the largest request head (request line and headers) in bytes.
        header_timeout: seconds for a whole request head to arrive.
        body_timeout: seconds for a whole request body to arrive after its head.
        max_connections: open connections of one server process.
    """

    max_header_bytes: int = _default("max_header_bytes")
    header_timeout: float = _default("header_timeout")
    body_timeout: float = _default("body_timeout")
    max_connections: int = _default("max_connections")

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "header_timeout", "body_timeout", "max_connections"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=settings.max_connections,
        )


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` and ``uvicorn.Config`` that make the server enforce ``limits``.

    The protocol is passed as a ``functools.partial`` of a module-level class: uvicorn calls it as it would the
    class, and it pickles, so the worker processes of ``--workers N`` (spawned) enforce the same limits.
    """
    return {"http": functools.partial(GuardedHttpToolsProtocol, limits=limits)}


def _ends_head(window: bytes) -> bool:
    return b"\r\n\r\n" in window or b"\n\n" in window


def _warn_now(kind: str) -> bool:
    now = time.monotonic()
    if now - _last_warned.get(kind, -WARN_INTERVAL) < WARN_INTERVAL:
        return False
    _last_warned[kind] = now
    return True


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head cap, read deadlines and a connection cap.

    Args:
        config, server_state, app_state, _loop: as uvicorn passes them to every protocol.
        limits: what to enforce (default: :class:`ConnectionLimits`'s defaults).
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.connection_limits = limits or ConnectionLimits()
        self._in_head = True  # the bytes arriving now belong to a request head (none of it parsed yet, perhaps)
        self._head_started = False  # the parser has seen the first byte of that head
        self._head_bytes = 0
        self._head_tail = b""  # the head's last bytes so far: its blank line may be split between two reads
        self._in_body = False
        self._deadline: asyncio.TimerHandle | None = None  # of the head or of the body, never both at once

    # ---- asyncio.Protocol ------------------------------------------------------------------------------
    # uvicorn's own connection_made takes an asyncio.Transport (what a stream server hands it), narrower than
    # asyncio.BaseProtocol's BaseTransport; this override keeps uvicorn's signature
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.connection_limits.max_connections
        if len(self.connections) > limit:
            if _warn_now("connections"):
                log.warning(
                    "more than %d open connections: new ones are answered 503 and closed (ANTIDISTILL_MAX_CONNECTIONS)",
                    limit,
                )
            self._refuse(
                503, "the server has too many open connections; retry later", "too_many_connections", retry_after=True
            )
            return
        self._arm(self.connection_limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            cap = self.connection_limits.max_header_bytes
            room = max(0, cap - self._head_bytes)
            # Checked before the parser sees the bytes: httptools keeps an unfinished header line in memory,
            # however long it grows.
            if len(data) > room and not _ends_head(self._head_tail + data[:room]):
                log.debug("%s: request head over %d bytes: 431", self._peer(), cap)
                self._refuse(
                    431, f"the request line and headers are larger than {cap} bytes", "request_header_fields_too_large"
                )
                return
            self._head_bytes += len(data)
            self._head_tail = (self._head_tail + data[-3:])[-3:]
        super().data_received(data)
        if self._deadline is None and not self.transport.is_closing():
            if self._in_head and self._head_started:
                self._arm(self.connection_limits.header_timeout)
            elif self._in_body:
                self._arm(self.connection_limits.body_timeout)

    # ---- parser callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head_started = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = self._head_started = False
        self._head_bytes, self._head_tail = 0, b""
        self._in_body = True
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = True  # what comes next is the next request's head
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection now belongs to the websocket protocol: no deadline of ours may close it.
        self._in_head = self._in_body = False
        self._disarm()
        super().handle_websocket_upgrade()

    # ---- helpers ---------------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:
            # uvicorn stopped reading (64 KiB of body wait for the app, or a pipelined request for the one before
            # it): the wait is the server's, not the client's. The period starts again.
            self._arm(self.connection_limits.body_timeout if self._in_body else self.connection_limits.header_timeout)
            return
        if self._in_body:
            # The app owns the response; closing makes its receive() answer http.disconnect.
            log.debug(
                "%s: request body not received within %.1f s: closed", self._peer(), self.connection_limits.body_timeout
            )
            self.transport.close()
            return
        log.debug(
            "%s: request head not received within %.1f s: closed", self._peer(), self.connection_limits.header_timeout
        )
        if not self._head_started:
            # Nothing was sent: close without a word. A 408 on an idle connection could be read by its client as
            # the answer to a request it sends at that very moment; a plain close it retries elsewhere.
            self.transport.close()
            return
        self._refuse(
            408, f"the request was not received within {self.connection_limits.header_timeout:g} s", "request_timeout"
        )

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"

    def _refuse(self, status: int, message: str, code: str, *, retry_after: bool = False) -> None:
        """Answer ``status`` in OpenAI's error shape (unless a response is under way) and close the connection."""
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps(
                error_body(message, "server_error" if status >= 500 else "invalid_request_error", None, code)
            ).encode()
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content += [name, b": ", value, b"\r\n"]
            if retry_after:
                content.append(b"retry-after: 1\r\n")
            content += [
                b"content-type: application/json\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\nconnection: close\r\n\r\n",
                body,
            ]
            self.transport.write(b"".join(content))
        self.transport.close()
