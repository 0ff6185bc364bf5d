"""One exchange, from an authenticated request to a released response: limits, watermark keys, backend, audit.

The order is the point:

1. the rate limiter counts the request and reserves its tokens (429 if it may not pass);
2. the backend generates, marking with the account's and the provider's keys;
3. the reservation is corrected to the tokens used;
4. the exchange is appended to the audit log, and only then is the response released. A non-streamed answer
   that cannot be logged is refused (500). A stream is recorded twice: a pending record (the request, status
   :data:`~antidistill.store.api.PENDING_STATUS`) before the backend starts, so no text leaves before the
   exchange is in the chain (503 if it cannot be written), and the final record before the finish reasons,
   usage and ``[DONE]`` (an error event instead, if that one cannot be written).

A stream the client abandons, or that fails midway, settles the limits with the tokens generated so far, and its
record holds them: walking away from a stream does not make its tokens free.

Backend failures answer 502, timeouts 504 (or, once a stream has started, an error event) and are audited too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from antidistill.gateway.deps import Gateway, Principal
from antidistill.gateway.errors import APIError, error_body
from antidistill.gateway.limits import LimiterUnavailable, Limits, RateLimited, Reservation
from antidistill.models.base import (
    BackendError,
    BackendTimeout,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from antidistill.store.api import PENDING_STATUS, AuditEntry
from antidistill.watermark.marker import MarkKeys

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: status recorded in the audit log for a stream the client abandoned (nginx's "client closed request")
CLIENT_CLOSED = 499


@dataclass
class Exchange:
    """One request on its way through the gateway.

    Args:
        kind: ``chat`` or ``completion`` (the response shapes differ).
        endpoint: the path, for the audit record.
        body: the request body as parsed (unknown fields included), for the audit record.
        generation: what to ask the backend.
        stream, include_usage: how to answer.
        prompt_estimate: the prompt's tokens as estimated before generation (the limits' reservation).
        raw_body: the body's bytes exactly as received, for the audit record.
    """

    kind: str
    endpoint: str
    body: dict[str, Any]
    generation: GenerationRequest
    stream: bool
    include_usage: bool
    prompt_estimate: int
    raw_body: bytes | None = None


def client_address(request: Request, trust_forwarded_for: bool) -> str | None:
    """The client's address; behind a trusted proxy, the last hop the proxy recorded in ``X-Forwarded-For``."""
    if trust_forwarded_for:
        fwd = request.headers.get("x-forwarded-for")
        if fwd:
            last = fwd.split(",")[-1].strip()
            if last:
                return last[:100]
    return request.client.host if request.client else None


#: header carrying the client's clock (unix seconds), honoured only with ``accept_client_clock``
CLOCK_HEADER = "X-Antidistill-Clock"


def client_clock(request: Request) -> datetime | None:
    """The time in the ``X-Antidistill-Clock`` header (unix seconds), ``None`` without one; 400 if malformed."""
    raw = request.headers.get(CLOCK_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
        if not math.isfinite(value) or not 0 <= value < 253402300800:  # up to the year 9999
            raise ValueError(raw)
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        raise APIError(
            400,
            f"{CLOCK_HEADER} must be unix seconds (a number), got {raw[:40]!r}",
            param=CLOCK_HEADER,
            code="invalid_clock",
        ) from None


def _new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def _finish_summary(reasons: list[str | None]) -> str | None:
    seen = [r for r in dict.fromkeys(reasons) if r]
    return ",".join(seen) or None


class _Run:
    """The state of one exchange while it runs (timings, ids, reservation)."""

    def __init__(self, gw: Gateway, request: Request, principal: Principal, ex: Exchange) -> None:
        self.gw = gw
        self.principal = principal
        self.ex = ex
        self.t0 = time.perf_counter()
        self.created_at = datetime.now(UTC)
        if gw.settings.accept_client_clock:  # the simulator's virtual clock (refused in prod by the settings)
            self.created_at = client_clock(request) or self.created_at
        self.created = int(self.created_at.timestamp())
        self.id = _new_id(ex.kind)
        self.client_addr = client_address(request, gw.settings.trust_forwarded_for)
        ua = request.headers.get("user-agent")
        self.user_agent = ua[:512] if ua else None
        self.reservation: Reservation | None = None
        #: the reservation under a policy throttle (see antidistill.gateway.monitoring)
        self.throttle: Reservation | None = None
        self.deadline = 0.0

    # ---- limits ------------------------------------------------------------------------------------
    async def reserve(self) -> None:
        limits = Limits.of(self.principal.account)
        if limits.unlimited:
            return
        g = self.ex.generation
        tokens = self.ex.prompt_estimate + g.max_tokens * g.n
        try:
            self.reservation = await self.gw.limiter.check(self.principal.account.id, limits, tokens)
        except RateLimited as exc:
            self.gw.metrics.limit_rejections.labels(exc.limit).inc()
            headers = {"Retry-After": str(exc.retry_after)}
            if exc.too_large or exc.retry_after > 60:
                # OpenAI's SDKs retry a 429 at once unless told not to; waiting cannot help here (soon)
                headers["x-should-retry"] = "false"
            raise APIError(
                429,
                str(exc),
                type="tokens" if exc.limit != "rpm" else "requests",
                code="request_too_large" if exc.too_large else "rate_limit_exceeded",
                headers=headers,
            ) from None
        except LimiterUnavailable as exc:
            raise APIError(503, "rate limiting is unavailable; try again shortly", code="limiter_unavailable") from exc

    async def settle(self, used_tokens: int) -> None:
        if self.throttle is not None and self.gw.monitoring is not None:
            await self.gw.monitoring.settle(self.throttle, used_tokens)
        self.throttle = None
        if self.reservation is not None:
            try:
                await self.gw.limiter.commit(self.reservation, used_tokens)
            except Exception:  # the answer is ready; a lost correction only keeps the reservation counted
                log.warning("rate-limit settlement failed for %s", self.id, exc_info=True)

    # ---- audit -------------------------------------------------------------------------------------
    def entry(
        self,
        result: GenerationResult | None,
        status: int,
        texts: list[str] | None = None,
        finish: list[str | None] | None = None,
        watermark: dict[str, Any] | None = None,
        completion_tokens: int = 0,
    ) -> AuditEntry:
        """The audit record: of a result, or (``result`` ``None``) of what was sent before a failure or an
        abandoned stream, with the ``completion_tokens`` generated for it (the prompt then as estimated)."""
        prompt_tokens = self.ex.prompt_estimate if completion_tokens else 0
        if result is not None:
            texts = [c.text for c in result.choices]
            finish = [c.finish_reason for c in result.choices]
            watermark = result.watermark
            prompt_tokens, completion_tokens = result.prompt_tokens, result.completion_tokens
        return AuditEntry(
            response_id=self.id,
            account_id=self.principal.account.id,
            api_key_id=self.principal.key.id,
            created_at=self.created_at,
            endpoint=self.ex.endpoint,
            client_addr=self.client_addr,
            user_agent=self.user_agent,
            request=self.ex.body,
            completion=list(texts or []),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=_finish_summary(finish or []),
            latency_ms=(time.perf_counter() - self.t0) * 1000,
            watermark=watermark or self._unknown_watermark(),
            status=status,
            request_raw=self.ex.raw_body,
        )

    def pending_entry(self) -> AuditEntry:
        """A stream's first record: the request, before any text (see the module docstring)."""
        return self.entry(None, PENDING_STATUS, watermark=self._unknown_watermark("pending"))

    def _unknown_watermark(self, status: str = "partial") -> dict[str, Any]:
        # no final result (failure, abandoned stream): say what keys any text that was sent was marked with
        mark, backend = self.ex.generation.mark, self.gw.backend
        if backend.marks and mark is not None:
            return {
                "status": status,
                "key_id": mark.account.key_id,
                "provider_key_id": mark.provider.key_id if mark.provider else None,
            }
        return {"status": "unwatermarked", "reason": f"{backend.name or 'this'} backend does not watermark"}

    async def audit(self, entry: AuditEntry, *, observe: bool = True) -> None:
        """Append the record; raise if it cannot be written. ``observe``: hand it to the monitor too."""
        try:
            await run_in_threadpool(self.gw.store.append_audit, entry)
        except Exception:
            self.gw.metrics.audit_failures.inc()
            log.error("audit append failed for %s (%s)", self.id, self.ex.endpoint, exc_info=True)
            raise
        if observe and self.gw.monitoring is not None:  # scored off the request path, from what the log recorded
            self.gw.monitoring.observe(entry, self.principal.account)

    def verify(self, result: GenerationResult) -> None:
        """Hand an audited completion to the sample check of an engine's mark, if one runs (never blocks)."""
        if self.gw.verifier is not None:
            self.gw.verifier.offer(self.id, result, self.ex.generation.mark)

    async def audit_quietly(self, entry: AuditEntry) -> None:
        with suppress(Exception):
            await self.audit(entry)

    # ---- backend failures --------------------------------------------------------------------------
    def backend_failed(self, exc: BaseException) -> APIError:
        backend = self.gw.backend.name or "backend"
        if isinstance(exc, BackendTimeout | TimeoutError):
            self.gw.metrics.backend_errors.labels(backend, "timeout").inc()
            return APIError(504, "the model backend timed out" + (f": {exc}" if str(exc) else ""))
        status = getattr(exc, "status_code", 502)
        if status >= 500:
            self.gw.metrics.backend_errors.labels(backend, "error").inc()
            return APIError(status, f"the model backend failed: {exc}")
        return APIError(status, str(exc))

    def count_tokens(self, result: GenerationResult) -> None:
        self.gw.metrics.tokens.labels("prompt").inc(result.prompt_tokens)
        self.gw.metrics.tokens.labels("completion").inc(result.completion_tokens)
        self.gw.metrics.backend_latency.labels(self.gw.backend.name or "backend").observe(time.perf_counter() - self.t0)

    # ---- response bodies ---------------------------------------------------------------------------
    # The shapes of antidistill.gateway.schemas (ChatCompletion, Completion, ChatCompletionChunk, CompletionChunk),
    # built as plain dicts: one text chunk takes 7 us so, 13.5 us as validated model objects serialized by
    # pydantic-core, 20 us through model_dump + json.dumps (timeit), paid on every token of every stream.
    # tests/gateway/test_shapes.py holds every body and chunk the gateway emits to the models, field for field.
    def usage(self, result: GenerationResult) -> dict[str, int]:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }

    def body(self, result: GenerationResult) -> dict[str, Any]:
        if self.ex.kind == "chat":
            choices = [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for c in result.choices
            ]
            obj = "chat.completion"
        else:
            choices = [
                {"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                for c in result.choices
            ]
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": result.model,
            "choices": choices,
            "usage": self.usage(result),
            "system_fingerprint": None,
        }

    def chunk(
        self,
        model: str,
        choices: list[dict[str, Any]],
        usage: dict[str, int] | None = None,
        with_usage_field: bool = False,
    ) -> str:
        obj = "chat.completion.chunk" if self.ex.kind == "chat" else "text_completion"
        d: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if with_usage_field:
            d["usage"] = usage
        return "data: " + json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n\n"

    def choice_delta(self, index: int, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if self.ex.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}


Item = GenerationChunk | GenerationResult


async def _next_item(it: AsyncIterator[Item], deadline: float) -> Item:
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise BackendTimeout("request timeout reached")
    try:
        return await asyncio.wait_for(it.__anext__(), remaining)
    except TimeoutError:
        raise BackendTimeout("request timeout reached") from None
    except StopAsyncIteration:
        raise BackendError("the backend's stream ended without a final result") from None


async def run_exchange(
    gw: Gateway, request: Request, principal: Principal, ex: Exchange
) -> JSONResponse | StreamingResponse:
    """Serve one exchange: a JSON response, or a server-sent event stream."""
    run = _Run(gw, request, principal, ex)
    if gw.monitoring is not None:  # the policy's enforcement (403 block/review, 429 throttle) before the limits
        run.throttle = await gw.monitoring.admit(
            principal.account.id, ex.prompt_estimate + ex.generation.max_tokens * ex.generation.n
        )
    try:
        await run.reserve()
    except APIError:
        await run.settle(0)  # release the throttle's reservation
        raise
    keyring = gw.keyring
    if gw.settings.watermark:
        ex.generation.mark = MarkKeys(keyring.account_key(principal.account.id), keyring.provider_key())
    run.deadline = asyncio.get_running_loop().time() + gw.settings.request_timeout
    if ex.stream:
        return await _start_stream(run)
    try:
        result = await asyncio.wait_for(gw.backend.generate(ex.generation), gw.settings.request_timeout)
    except BaseException as exc:
        await _backend_failed(run, exc)
    await run.settle(result.prompt_tokens + result.completion_tokens)
    run.count_tokens(result)
    try:
        await run.audit(run.entry(result, 200))
    except Exception:
        raise APIError(
            500,
            "the exchange could not be recorded in the audit log, so it is not served; try again",
            code="audit_unavailable",
        ) from None
    run.verify(result)
    return JSONResponse(run.body(result))


async def _backend_failed(run: _Run, exc: BaseException) -> NoReturn:
    """Release the reservation and turn a failure before any output into the right answer (always raises).

    ``ValueError`` is the backend's word for a request it cannot serve (e.g. longer than the context): 400.
    Backend errors and timeouts are 502/504 and are audited as failed exchanges. Anything else propagates.
    """
    await run.settle(0)
    if isinstance(exc, ValueError):
        raise APIError(400, str(exc), code="invalid_value") from None
    if isinstance(exc, (BackendError, TimeoutError)):
        err = run.backend_failed(exc)
        await run.audit_quietly(run.entry(None, err.status))
        raise err from None
    raise exc


async def _start_stream(run: _Run) -> StreamingResponse:
    # The exchange is in the chain before the backend starts: no text leaves unrecorded.
    try:
        await run.audit(run.pending_entry(), observe=False)
    except Exception:
        await run.settle(0)
        raise APIError(
            503,
            "the exchange could not be recorded in the audit log, so it is not served; try again",
            code="audit_unavailable",
        ) from None
    # The first item is awaited before the response starts, so a backend that fails at once (unreachable
    # upstream, timeout) still gets a real 502/504 status instead of an error inside a 200 stream.
    try:
        it = run.gw.backend.stream(run.ex.generation)  # a local backend refuses a bad request here (ValueError)
    except BaseException as exc:
        await _backend_failed(run, exc)
    try:
        first = await _next_item(it, run.deadline)
    except BaseException as exc:
        if isinstance(exc, (BackendError, TimeoutError)):
            with suppress(Exception):
                await it.aclose()
        await _backend_failed(run, exc)
    return StreamingResponse(_sse(run, it, first), media_type="text/event-stream", headers=SSE_HEADERS)


async def _sse(run: _Run, it: AsyncGenerator[Item, None], first: Item) -> AsyncIterator[str]:
    ex, gw = run.ex, run.gw
    n = ex.generation.n
    model = gw.backend.model_id
    with_usage = ex.include_usage
    texts: dict[int, list[str]] = {i: [] for i in range(n)}
    finish: dict[int, str | None] = dict.fromkeys(range(n))
    generated = 0  # tokens the backend produced so far: what an abandoned or failed stream is charged
    done = False
    try:
        if ex.kind == "chat":
            for i in range(n):
                yield run.chunk(model, [run.choice_delta(i, "", None, role=True)], None, with_usage)
        item = first
        while not isinstance(item, GenerationResult):
            if isinstance(item, GenerationChunk):
                generated += item.tokens
                if item.text:
                    texts.setdefault(item.index, []).append(item.text)
                    yield run.chunk(model, [run.choice_delta(item.index, item.text, None)], None, with_usage)
                if item.finish_reason:
                    # held back: a choice is only reported finished once the exchange is in the audit log
                    finish[item.index] = item.finish_reason
            item = await _next_item(it, run.deadline)
        result: GenerationResult = item
        await run.settle(result.prompt_tokens + result.completion_tokens)
        run.count_tokens(result)
        try:
            await run.audit(run.entry(result, 200))
        except Exception:
            done = True
            yield _error_event(
                APIError(
                    500,
                    "the exchange could not be recorded in the audit log, so it is not served; try again",
                    code="audit_unavailable",
                )
            )
            return
        done = True
        run.verify(result)
        for c in result.choices:
            reason = c.finish_reason or finish.get(c.index) or "stop"
            yield run.chunk(result.model, [run.choice_delta(c.index, None, reason)], None, with_usage)
        if with_usage:
            yield run.chunk(result.model, [], run.usage(result), True)
        yield "data: [DONE]\n\n"
    except (BackendError, TimeoutError) as exc:
        done = True
        await run.settle(run.ex.prompt_estimate + generated if generated else 0)
        err = run.backend_failed(exc)
        await run.audit_quietly(
            run.entry(
                None,
                err.status,
                ["".join(texts[i]) for i in sorted(texts)],
                list(finish.values()),
                completion_tokens=generated,
            )
        )
        yield _error_event(err)
    finally:
        if not done:
            # The client went away (or the server is stopping): record what was already sent and charge what was
            # generated. This runs in a task of its own, since the request's task may be cancelled while we are here.
            entry = run.entry(
                None,
                CLIENT_CLOSED,
                ["".join(texts[i]) for i in sorted(texts)],
                list(finish.values()),
                completion_tokens=generated,
            )
            task = asyncio.ensure_future(_abandoned(run, entry))
            gw.background.add(task)
            task.add_done_callback(gw.background.discard)
        with suppress(Exception):
            await it.aclose()


async def _abandoned(run: _Run, entry: AuditEntry) -> None:
    used = entry.prompt_tokens + entry.completion_tokens
    await run.settle(used)
    await run.audit_quietly(entry)


def _error_event(err: APIError) -> str:
    return "data: " + json.dumps(error_body(err.message, err.type, err.param, err.code)) + "\n\n"
