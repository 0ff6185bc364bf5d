"""Serving an app from a background thread: for the demo, benchmarks and tests that need a real HTTP server."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp

from antidistill.gateway.protocol import ConnectionLimits, uvicorn_options


class BackgroundServer:
    """An ASGI app served by a real uvicorn on a free 127.0.0.1 port, in a daemon thread.

    The listening socket is bound before uvicorn starts and handed to it, so no other process can take the port
    in between. The server enforces the same connection limits as ``antidistill serve``
    (:mod:`antidistill.gateway.protocol`).

    Args:
        app: the ASGI app.
        log_level: uvicorn's log level.
        start_timeout: seconds to wait for the server to start.
        limits: the connection limits; default: those of the gateway's settings when ``app`` is a gateway
            (:func:`~antidistill.gateway.app.create_app`), else the settings' defaults.

    Example:
        >>> from fastapi import FastAPI
        >>> with BackgroundServer(FastAPI()) as srv:  # doctest: +SKIP
        ...     httpx.get(srv.url + "/docs")
    """

    def __init__(
        self,
        app: ASGIApp,
        log_level: str = "warning",
        start_timeout: float = 60.0,
        limits: ConnectionLimits | None = None,
    ) -> None:
        if limits is None:
            gateway = getattr(getattr(app, "state", None), "gateway", None)
            settings = getattr(gateway, "settings", None)
            limits = ConnectionLimits.from_settings(settings) if settings is not None else ConnectionLimits()

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        # proxy_headers off, as `antidistill serve` runs it: the app reads X-Forwarded-For itself, if trusted
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level=log_level,
                lifespan="on",
                access_log=False,
                timeout_graceful_shutdown=2,
                proxy_headers=False,
                **uvicorn_options(limits),
            )
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {self.start_timeout:.0f} s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
