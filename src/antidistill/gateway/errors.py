"""Every error as OpenAI's error JSON, ``{"error": {"message", "type", "param", "code"}}``, and the body limit.

Clients written for OpenAI (the official SDKs first) read ``error.message`` and map the status code to an
exception class, so the gateway answers every failure in that shape, including the ones FastAPI and Starlette
raise themselves (validation, unknown route, wrong method, unparseable body).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from antidistill.models.base import BackendError, BackendTimeout
from antidistill.store.api import NotFoundError

log = logging.getLogger(__name__)

#: status -> (type, code) for errors raised without a more specific type.
_DEFAULTS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "backend_error"),
    503: ("server_error", "unavailable"),
    504: ("server_error", "backend_timeout"),
}


class APIError(Exception):
    """An error the gateway answers with OpenAI's error JSON.

    Args:
        status: the HTTP status.
        message: what went wrong, for the person who sent the request (never a secret).
        type: OpenAI's error type (``invalid_request_error``, ``rate_limit_error``, ``server_error``, …).
        param: the request field at fault, if any.
        code: a machine-readable code (``invalid_api_key``, ``rate_limit_exceeded``, …).
        headers: extra response headers (``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        default_type, default_code = _DEFAULTS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        self.status = status
        self.message = message
        self.type = type or default_type
        self.param = param
        self.code = code if code is not None else default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def client_param(loc: tuple[Any, ...] | list[Any], body: Any = None) -> str | None:
    """The request field an error is about, as the client wrote it (``messages.0.content``), or ``None``.

    pydantic's ``loc`` also names the validators and union members it tried (``function-after[…]``, ``str``,
    ``list[TextPart]``, ``tagged-union[…]``): those are not fields of the request. With the parsed ``body`` the
    path is walked in it, keeping only keys and indices that are there (plus the last, missing, field's name);
    without it, anything that is not a plain field name or index is dropped.

    Example:
        >>> body = {"messages": [{"role": "user", "content": 5}]}
        >>> client_param(("body", "messages", 0, "content", "function-after[_unicode(), str]"), body)
        'messages.0.content'
        >>> client_param(("body", "messages", 0, "content", "list[TextPart]", 0, "text"), body)
        'messages.0.content'
        >>> client_param(("body", "max_tokens"), {})
        'max_tokens'
    """
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out: list[str] = []
    if isinstance(body, dict | list):
        node: Any = body
        for p in parts:
            if isinstance(node, dict) and isinstance(p, str) and p in node:
                out.append(p)
                node = node[p]
            elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
                out.append(str(p))
                node = node[p]
            elif isinstance(node, dict) and isinstance(p, str) and _FIELD_NAME.fullmatch(p):
                out.append(p)  # a missing (or unknown) field of this object
                break
            elif not isinstance(node, dict | list):
                break  # below a value: what follows is pydantic's, not the client's
        return ".".join(out) or None
    for p in parts:
        if isinstance(p, int) or (
            isinstance(p, str)
            and _FIELD_NAME.fullmatch(p)
            and p not in ("str", "int", "float", "bool", "list", "dict", "none")
        ):
            out.append(str(p))
    return ".".join(out) or None


def validation_message(errors: list[dict[str, Any]], body: Any = None) -> tuple[str, str | None]:
    """One readable line from pydantic's errors (the first error; the count of the others), and its field (as
    the client named it in ``body``, see :func:`client_param`)."""
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or "invalid JSON"
        return f"the request body is not valid JSON: {detail}", None
    param = client_param(first.get("loc", ()), body)
    msg = str(first.get("msg", "invalid value"))
    if param is None and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object", None
    where = f"'{param}': " if param else ""
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"invalid value for {where}{msg}{more}" if param else f"invalid request body: {msg}{more}", param


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = validation_message(list(exc.errors()), getattr(exc, "body", None))
    return APIError(400, message, param=param, code="invalid_value" if param else None).response()


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else None
    if status == 400 and detail == "There was an error parsing the body":
        detail = "the request body could not be parsed (it must be UTF-8 encoded JSON)"
    elif status == 404:
        detail = "not found" if detail in (None, "Not Found") else detail
    elif status == 405:
        detail = "method not allowed"
    elif status == 413:
        detail = detail if detail and detail != "Request Entity Too Large" else "request body too large"
    headers = dict(exc.headers) if exc.headers else None
    return APIError(status if status >= 400 else 500, detail or "error", headers=headers).response()


async def _backend_error(_: Request, exc: BackendError) -> JSONResponse:
    if isinstance(exc, BackendTimeout):
        return APIError(504, f"the model backend timed out: {exc}").response()
    status = getattr(exc, "status_code", 502)
    return APIError(status, f"the model backend failed: {exc}" if status >= 500 else str(exc)).response()


async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
    return APIError(404, str(exc)).response()


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return APIError(500, "the server had an error while processing your request").response()


_E = TypeVar("_E", bound=Exception)


def _handle(app: FastAPI, exc_class: type[_E], handler: Callable[[Request, _E], Awaitable[JSONResponse]]) -> None:
    """``app.add_exception_handler``, with the handler's exception type tied to the class it handles."""
    # Starlette types every handler as taking any Exception, which a handler of one class is not
    app.add_exception_handler(exc_class, handler)  # type: ignore[arg-type]


def install_exception_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into OpenAI's error JSON."""
    _handle(app, APIError, _api_error)
    _handle(app, RequestValidationError, _validation_error)
    _handle(app, StarletteHTTPException, _http_error)
    _handle(app, BackendError, _backend_error)
    _handle(app, NotFoundError, _not_found)
    _handle(app, Exception, _unhandled)


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a body without (or with a false) Content-Length passes the limit.

    An HTTPException, so FastAPI's body reader re-raises it and the handler above answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


def _json_bytes(status: int, message: str) -> bytes:
    return json.dumps(APIError(status, message).body()).encode()


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse bodies over ``max_bytes`` with 413, before reading them.

    A declared ``Content-Length`` over the limit is refused at once, without reading a byte; a body sent
    without one (chunked) is counted while it is received and refused as soon as it passes the limit.

    Args:
        app: the ASGI app.
        max_bytes: the largest accepted body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reply(self, send: Send, status: int, message: str) -> None:
        body = _json_bytes(status, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reply(send, 400, "invalid Content-Length header")
                    return
                break
        if declared is not None and declared > self.max_bytes:
            await self._reply(
                send, 413, f"request body of {declared} bytes is larger than the limit of {self.max_bytes} bytes"
            )
            return
        limit = self.max_bytes
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reply(send, 413, f"request body larger than the limit of {limit} bytes")
