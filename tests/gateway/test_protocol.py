"""Connection limits, enforced before a request reaches the app (gateway/protocol.py): a cap on the request head,
deadlines for the head and the body, a cap on open connections; and what they must leave alone (kept-alive
connections waiting on a slow answer, bodies sent in pieces, heads just under the cap).

Every test talks raw HTTP over sockets to a real uvicorn on 127.0.0.1, with bounded counts and timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI, Request

from antidistill.gateway.protocol import ConnectionLimits, GuardedHttpToolsProtocol, uvicorn_options
from antidistill.models.fake import FakeBackend

from .conftest import CHAT, LiveServer, start_gateway

MIB = 1024 * 1024
#: short deadlines for the tests that wait for them
SHORT = {"header_timeout": 1.0, "body_timeout": 1.0}
SLACK = 1.5  # seconds a deadline may be late on a loaded 2-core machine
GROWTH_LIMIT = 8  # MiB the server may grow by while four clients send unfinished 32 MiB headers


def connect(url: str, timeout: float = 5.0) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes | None:
    """Everything the server sends until it closes the connection (a reset counts as closed), or ``None`` if
    it is still open after ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return None
    return data


def closed_now(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting)."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def status_of(reply: bytes | None) -> int | None:
    return int(reply.split(b" ", 2)[1]) if reply and reply.startswith(b"HTTP/1.1 ") else None


def get(url: str, path: str = "/health", headers: str = "") -> int | None:
    with connect(url) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        return status_of(read_until_closed(s))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.fixture(scope="module")
def short(gateway_dir, store) -> Iterator:
    """A gateway with 1 s deadlines for the head and the body."""
    with start_gateway(gateway_dir, store, **SHORT) as gw:
        yield gw


# ---- the request head's size -----------------------------------------------------------------------------
def test_limits_come_from_the_settings(gateway, short):
    assert ConnectionLimits.from_settings(gateway.settings) == ConnectionLimits()
    assert ConnectionLimits.from_settings(short.settings).header_timeout == 1.0
    opts = uvicorn_options(ConnectionLimits(max_header_bytes=2048))
    assert isinstance(opts["http"], functools.partial) and opts["http"].func is GuardedHttpToolsProtocol
    with pytest.raises(ValueError, match="max_connections"):
        ConnectionLimits(max_connections=0)


@pytest.mark.parametrize("size", [100 * 1024, 16 * MIB])
def test_an_oversized_header_is_refused(gateway, size):
    """Before: 200 for both (uvicorn's httptools protocol has no limit). Now: 431, or closed while sending."""
    with connect(gateway.url) as s:
        with contextlib.suppress(OSError):  # closed under our feet: the server stopped reading at the cap
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        reply = read_until_closed(s)
    assert reply is not None, "the connection was left open"
    assert status_of(reply) in (431, None), reply[:200]
    if reply:
        assert b'"code": "request_header_fields_too_large"' in reply and b"connection: close" in reply
    assert get(gateway.url) == 200  # and the server serves the next client


def test_headers_just_under_the_cap_are_served(gateway):
    cap = gateway.settings.max_header_bytes
    assert get(gateway.url, headers=f"X-Pad: {'a' * (cap - 200)}\r\n") == 200
    assert get(gateway.url, headers=f"X-Pad: {'a' * cap}\r\n") == 431


def test_many_small_headers_count_towards_the_cap(gateway):
    lines = "".join(f"X-H{i}: {'v' * 60}\r\n" for i in range(gateway.settings.max_header_bytes // 60))
    assert get(gateway.url, headers=lines) == 431


def test_unfinished_huge_headers_do_not_grow_memory(gateway):
    """Before: four connections each sending an unfinished 32 MiB header took the server from 126 to 315 MiB.

    The server runs in this process, so this process's RSS is the server's (the client reuses one 1 MiB buffer).
    """
    chunk = b"a" * MIB

    def flood(count: int) -> list[tuple[socket.socket, int]]:
        out = []
        for _ in range(count):
            s = connect(gateway.url, timeout=2)
            sent = 0
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(32):
                    s.sendall(chunk)
                    sent += 1
            except OSError:  # reset by the server, or its window stayed shut (timeout): it stopped reading
                pass
            out.append((s, sent))
        return out

    for s, _ in flood(1):  # warm up the code paths once before measuring
        s.close()
    before = rss_mib()
    conns = flood(4)
    time.sleep(0.3)
    grown = rss_mib() - before
    try:
        assert grown < GROWTH_LIMIT, f"RSS grew by {grown:.1f} MiB"
        assert all(sent < 32 for _, sent in conns), "the server read a whole 32 MiB header"
        assert all(read_until_closed(s, timeout=3) is not None for s, _ in conns), "a connection was left open"
    finally:
        for s, _ in conns:
            s.close()
    assert get(gateway.url) == 200


# ---- deadlines -------------------------------------------------------------------------------------------
def test_slowloris_connections_are_closed_by_the_head_deadline(short):
    """Before: 100 connections sending a header line at a time were all still open after 40 s."""
    n = 50
    socks = [connect(short.url) for _ in range(n)]
    start = time.monotonic()
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    open_socks = list(socks)
    served = None
    while open_socks and time.monotonic() - start < SHORT["header_timeout"] + SLACK + 2:
        for s in open_socks:
            with contextlib.suppress(OSError):
                s.send(b"X-Slow: 1\r\n")
        if served is None:
            served = get(short.url)  # a well-formed client is served meanwhile
        time.sleep(0.2)
        open_socks = [s for s in open_socks if not closed_now(s)]
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    assert not open_socks, f"{len(open_socks)}/{n} slow connections still open after {elapsed:.1f} s"
    assert elapsed < SHORT["header_timeout"] + SLACK
    assert served == 200


def test_a_slow_head_gets_408_and_a_silent_connection_is_closed(short):
    with connect(short.url) as slow, connect(short.url) as silent:
        start = time.monotonic()
        slow.sendall(b"GET /health HTTP/1.1\r\n")
        reply = read_until_closed(slow, timeout=SHORT["header_timeout"] + SLACK)
        assert status_of(reply) == 408 and b'"code": "request_timeout"' in reply
        assert time.monotonic() - start >= SHORT["header_timeout"] - 0.1
        # no answer where no request began: a client could take it for the answer to a request it sends then
        assert read_until_closed(silent, timeout=SLACK) == b""


def test_a_trickling_body_is_cut_off(short):
    _, key, _ = short.account("trickler")
    with connect(short.url) as s:
        s.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
        )
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < SHORT["body_timeout"] + SLACK + 2:
            try:
                s.send(b" ")
            except OSError:
                closed = True
                break
            if closed_now(s):
                closed = True
                break
            s.setblocking(True)
            time.sleep(0.2)
    assert closed and time.monotonic() - start < SHORT["body_timeout"] + SLACK


def test_a_slow_answer_on_a_kept_alive_connection_is_not_cut(gateway_dir, store):
    """No deadline runs while the app works: a 1.2 s completion under 0.5 s deadlines, twice on one connection,
    and a body sent in two pieces with a pause shorter than the body deadline."""
    import json

    with start_gateway(
        gateway_dir, store, backend=FakeBackend(latency=1.2), header_timeout=0.5, body_timeout=0.8
    ) as gw:
        _, key, _ = gw.account("patient")
        parts = urlsplit(gw.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = json.dumps(CHAT).encode()
        ports = set()
        for _ in range(2):
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
            ports.add(conn.sock.getsockname()[1])
        assert len(ports) == 1  # the same connection both times
        conn.close()
        with connect(gw.url, timeout=10) as s:
            s.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body[:10]
            )
            time.sleep(0.4)
            s.sendall(body[10:])
            assert status_of(read_until_closed(s, timeout=10)) == 200


def test_a_body_the_app_reads_late_is_not_cut():
    """uvicorn stops reading past 64 KiB of unread body: the deadline must not blame the client for that wait."""
    app = FastAPI()

    @app.post("/late")
    async def late(request: Request) -> dict:
        await asyncio.sleep(1.2)  # longer than the body deadline, before reading a byte
        return {"size": len(await request.body())}

    body = b"x" * (512 * 1024)
    with (
        LiveServer(app, limits=ConnectionLimits(header_timeout=0.5, body_timeout=0.5)) as srv,
        connect(srv.url, timeout=10) as s,
    ):
        s.sendall(
            f"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        reply = read_until_closed(s, timeout=10)
    assert status_of(reply) == 200 and reply.endswith(b'{"size":524288}')


# ---- open connections ------------------------------------------------------------------------------------
def test_connections_past_the_cap_get_503(gateway_dir, store):
    with start_gateway(gateway_dir, store, max_connections=3, header_timeout=10.0) as gw:
        idle = [connect(gw.url) for _ in range(3)]
        time.sleep(0.3)  # let the server accept them
        try:
            with connect(gw.url) as extra:
                reply = read_until_closed(extra, timeout=3)
            assert status_of(reply) == 503 and b"retry-after: 1" in reply
            assert b'"code": "too_many_connections"' in reply
        finally:
            idle.pop().close()
        time.sleep(0.3)
        assert get(gw.url) == 200  # a freed place is taken again
        for s in idle:
            s.close()
