"""The upstream backend: a proxy to any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, …).

The request body is passed through (the model name optionally replaced), streamed answers are relayed chunk by
chunk. Watermarking is impossible here: the gateway never sees the next-token distribution, only the text, so
every completion is recorded as unwatermarked, with the reason. Limits, policy and the audit log still apply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from antidistill.models.base import (
    Backend,
    BackendError,
    BackendTimeout,
    Choice,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from antidistill.models.fake import count_tokens, render_prompt

log = logging.getLogger(__name__)

UNWATERMARKED = {"status": "unwatermarked", "reason": "upstream backend: token-level watermarking is impossible"}


_JSON_HEADERS = {"Content-Type": "application/json"}


def _json(body: dict[str, Any]) -> bytes:
    # ASCII escapes: any text the client sent (even a lone surrogate) can be encoded
    return json.dumps(body, separators=(",", ":")).encode()


class BackendRejected(BackendError):
    """The upstream server refused the request as invalid (the gateway answers 400 with its message)."""

    status_code = 400


def _base_url(url: str) -> str:
    """``http://host:port`` from ``http://host:port``, ``…/`` or ``…/v1`` (people write all three)."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        if msg:
            return str(msg)[:500]
    except (ValueError, AttributeError):
        pass
    return f"HTTP {response.status_code}"


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        msg = choice.get("message") or choice.get("delta") or {}
        return msg.get("content") or ""
    return choice.get("text") or ""


def _split_tokens(texts: list[str], total: int | None) -> list[int]:
    """Per-choice completion tokens: the upstream reports only the total, so split it by estimated length."""
    est = [count_tokens(t) for t in texts]
    if total is None:
        return est
    if len(texts) == 1:
        return [total]
    weight = sum(est) or len(est)
    out = [total * (e if sum(est) else 1) // weight for e in est]
    out[0] += total - sum(out)
    return out


class UpstreamBackend(Backend):
    """Forwards to ``{url}/v1/chat/completions`` and ``{url}/v1/completions``.

    Args:
        url: the upstream server's base URL (with or without ``/v1``).
        api_key: sent as ``Authorization: Bearer`` to the upstream (never to clients, never logged).
        model: a model name to send instead of the client's (default: the client's).
        timeout: seconds for connecting and for each read (an exceeded timeout is a 504).
        transport: an httpx transport (tests).

    Example:
        >>> UpstreamBackend("http://127.0.0.1:8000/v1").url
        'http://127.0.0.1:8000'
    """

    name = "upstream"
    marks = False

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"upstream url must start with http:// or https://, got {url!r}")
        self.url = _base_url(url)
        self._api_key = api_key
        self.model_override = model
        self.model_id = model or "upstream"
        self.timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is not None:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            limits=limits,
            transport=self._transport,
        )
        self._announce()
        if self.model_override is None:
            self.model_id = await self._first_model() or self.model_id

    def _announce(self) -> None:
        log.warning(
            "backend=upstream (%s): completions are NOT watermarked; token-level watermarking is "
            "impossible through an upstream server (rate limits, policy and audit still apply)",
            self.url,
        )

    def _watermark(self, request: GenerationRequest) -> dict[str, Any]:
        """The audit record's ``watermark`` of a completion served for ``request``."""
        return dict(UNWATERMARKED)

    async def _first_model(self) -> str | None:
        try:
            r = await self._client.get("/v1/models", timeout=min(self.timeout, 5.0))
            data = r.json().get("data") or []
            return str(data[0]["id"]) if data else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _body(self, request: GenerationRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        chat = request.messages is not None
        body: dict[str, Any] = dict(request.raw or {})
        body.update(
            max_tokens=request.max_tokens,
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            stream=stream,
        )
        body.pop("max_completion_tokens", None)  # one of the two, and every server knows max_tokens
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if chat:
            body["messages"] = request.messages
        else:
            body["prompt"] = request.prompt
        if self.model_override is not None or "model" not in body:
            body["model"] = self.model_id
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        return ("/v1/chat/completions" if chat else "/v1/completions"), body

    def _client_or_fail(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError("upstream backend is not started")
        return self._client

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        msg = _error_message(response)
        if response.status_code in (400, 422):
            raise BackendRejected(f"upstream rejected the request: {msg}")
        raise BackendError(f"upstream answered {response.status_code}: {msg}")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        path, body = self._body(request, stream=False)
        try:
            r = await self._client_or_fail().post(path, content=_json(body), headers=_JSON_HEADERS)
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"upstream timed out after {self.timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream unreachable: {type(exc).__name__}") from exc
        self._raise_for_status(r)
        try:
            data = r.json()
            raw_choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [_choice_text(c, request.messages is not None) for c in raw_choices]
            token_ids = _token_ids([c.get("token_ids") for c in raw_choices])
            usage = data.get("usage") or {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError("upstream answered with a body that is not an OpenAI completion") from exc
        tokens = _split_tokens(texts, usage.get("completion_tokens"))
        choices = [
            Choice(index=i, text=t, finish_reason=c.get("finish_reason") or "stop", completion_tokens=k)
            for i, (c, t, k) in enumerate(zip(raw_choices, texts, tokens, strict=True))
        ]
        prompt_tokens = usage.get("prompt_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = count_tokens(render_prompt(request))
        return GenerationResult(
            choices=choices,
            prompt_tokens=prompt_tokens,
            watermark=self._watermark(request),
            model=str(data.get("model") or self.model_id),
            token_ids=token_ids,
        )

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk | GenerationResult, None]:
        path, body = self._body(request, stream=True)
        client = self._client_or_fail()
        relay = _Relay(request.n, request.messages is not None, self.model_id)
        try:
            async with client.stream("POST", path, content=_json(body), headers=_JSON_HEADERS) as r:
                if r.status_code >= 400:
                    await r.aread()
                    self._raise_for_status(r)
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        event = json.loads(payload)
                    except ValueError as exc:
                        raise BackendError("upstream sent an event that is not JSON") from exc
                    if isinstance(event, dict):
                        for chunk in relay.take(event):
                            yield chunk
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"upstream timed out after {self.timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream unreachable: {type(exc).__name__}") from exc
        yield relay.result(request, self._watermark(request))


class _Relay:
    """What a relayed stream has sent so far: each choice's text, finish reason and token ids (while the server
    sends them: vLLM's ``return_token_ids`` puts each chunk's in it, even for tokens whose text it holds back)."""

    def __init__(self, n: int, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.texts: dict[int, list[str]] = {i: [] for i in range(n)}
        self.ids: dict[int, list[Any]] | None = {i: [] for i in range(n)}  # None: text came without them
        self.finish: dict[int, str] = {}
        self.usage: dict[str, Any] = {}

    def take(self, event: dict[str, Any]) -> list[GenerationChunk]:
        """The chunks of one server-sent event."""
        if "error" in event:
            # vLLM refuses a streamed request it cannot serve (its validation, a logits processor's
            # validate_params) with an error event in a 200 stream, carrying the status it would have answered
            err = event.get("error")
            if isinstance(err, dict) and str(err.get("code")) in ("400", "422"):
                raise BackendRejected(f"upstream rejected the request: {_error_message_from(event)}")
            raise BackendError(f"upstream failed mid-stream: {_error_message_from(event)}")
        self.model = str(event.get("model") or self.model)
        if event.get("usage"):
            self.usage = event["usage"]
        out = []
        for c in event.get("choices") or []:
            idx = int(c.get("index", 0))
            text = _choice_text(c, self.chat)
            reason = c.get("finish_reason")
            piece = c.get("token_ids") if isinstance(c.get("token_ids"), list) else None
            if self.ids is not None:
                if piece is not None:
                    self.ids.setdefault(idx, []).extend(piece)
                elif text:
                    self.ids = None
            if text or reason or piece:
                self.texts.setdefault(idx, []).append(text)
                if reason:
                    self.finish[idx] = reason
                count = len(piece) if piece is not None else 1 if text else 0
                out.append(GenerationChunk(index=idx, text=text, finish_reason=reason, tokens=count))
        return out

    def result(self, request: GenerationRequest, watermark: dict[str, Any]) -> GenerationResult:
        """The whole completion, once the stream has ended."""
        order = sorted(self.texts)
        joined = ["".join(self.texts[i]) for i in order]
        tokens = _split_tokens(joined, self.usage.get("completion_tokens"))
        choices = [
            Choice(index=i, text=t, finish_reason=self.finish.get(i, "stop"), completion_tokens=k)
            for i, (t, k) in enumerate(zip(joined, tokens, strict=True))
        ]
        prompt_tokens = self.usage.get("prompt_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = count_tokens(render_prompt(request))
        ids = self.ids
        return GenerationResult(
            choices=choices,
            prompt_tokens=prompt_tokens,
            watermark=watermark,
            model=self.model,
            token_ids=_token_ids([ids.get(i) for i in order]) if ids is not None else None,
        )


def _token_ids(per_choice: list[Any]) -> list[list[int]] | None:
    """Each choice's token ids as the server returned them; ``None`` unless every choice has a list of ints."""
    out = []
    for ids in per_choice:
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            return None
        out.append(ids)
    return out


def _error_message_from(event: dict[str, Any]) -> str:
    err = event.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or "error")[:500]
    return str(err)[:500]
