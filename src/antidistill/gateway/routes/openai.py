"""The OpenAI-compatible API: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from antidistill.gateway.deps import AuthDep, GatewayDep
from antidistill.gateway.errors import APIError
from antidistill.gateway.exchange import Exchange, run_exchange
from antidistill.gateway.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Model,
    ModelList,
)
from antidistill.models.base import GenerationRequest
from antidistill.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        400: "Invalid request body.",
        401: "Missing, unknown or revoked API key.",
        403: "Account disabled, or blocked or under review under the policy (the clause is quoted).",
        413: "Request body too large.",
        429: "Over a rate limit or a policy throttle (see Retry-After).",
        500: "The exchange could not be recorded in the audit log.",
        502: "The model backend failed.",
        504: "The model backend timed out.",
    }.items()
}
_NO_MODEL: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
_STREAM = {
    "text/event-stream": {"schema": {"type": "string", "description": "Server-sent events, ending in `data: [DONE]`."}}
}

#: tokens a chat message costs beyond its text (role, separators), as OpenAI counts them
_MESSAGE_OVERHEAD = 4


def _estimate_tokens(text: str) -> int:
    # about 4 bytes a token for English under BPE tokenizers; whitespace words bound it from below
    return max(len(text.encode("utf-8", "surrogatepass")) // 4, len(text.split()))


def _sampling(
    body: ChatCompletionRequest | CompletionRequest, settings: Settings, max_tokens: int | None
) -> dict[str, Any]:
    if max_tokens is not None and max_tokens > settings.max_tokens_cap:
        raise APIError(
            400,
            f"max_tokens is too large: {max_tokens}; this server allows at most {settings.max_tokens_cap}",
            param="max_tokens",
            code="invalid_value",
        )
    return {
        "max_tokens": max_tokens or min(settings.default_max_tokens, settings.max_tokens_cap),
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "seed": body.seed,
        "stop": body.stop_list(),
        "n": body.n or 1,
    }


def _audit_body(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_unset=True)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Create a chat completion",
    responses={200: {"content": _STREAM}, **_ERRORS},
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: AuthDep, gw: GatewayDep
) -> Response:
    """OpenAI's chat completion: the model's chat template applies; ``stream: true`` answers with server-sent
    ``chat.completion.chunk`` events (and a usage chunk with ``stream_options.include_usage``)."""
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    raw = _audit_body(body)
    gen = GenerationRequest(messages=messages, raw=raw, **_sampling(body, gw.settings, max_tokens))
    estimate = sum(_estimate_tokens(m["content"]) + _MESSAGE_OVERHEAD for m in messages)
    ex = Exchange(
        "chat",
        "/v1/chat/completions",
        raw,
        gen,
        bool(body.stream),
        body.include_usage(),
        estimate,
        raw_body=await request.body(),
    )
    return await run_exchange(gw, request, principal, ex)


@router.post(
    "/completions",
    response_model=Completion,
    summary="Create a completion",
    responses={200: {"content": _STREAM}, **_ERRORS},
)
async def completions(body: CompletionRequest, request: Request, principal: AuthDep, gw: GatewayDep) -> Response:
    """OpenAI's (legacy) text completion of a raw prompt, without a chat template."""
    raw = _audit_body(body)
    prompt = body.prompt_text()
    gen = GenerationRequest(prompt=prompt, raw=raw, **_sampling(body, gw.settings, body.max_tokens))
    ex = Exchange(
        "completion",
        "/v1/completions",
        raw,
        gen,
        bool(body.stream),
        body.include_usage(),
        _estimate_tokens(prompt),
        raw_body=await request.body(),
    )
    return await run_exchange(gw, request, principal, ex)


def _model(gw: GatewayDep) -> Model:
    return Model(id=gw.backend.model_id, created=gw.started)


@router.get(
    "/models",
    response_model=ModelList,
    summary="List models",
    responses={k: v for k, v in _ERRORS.items() if k in (401, 403)},
)
async def list_models(_: AuthDep, gw: GatewayDep) -> ModelList:
    return ModelList(data=[_model(gw)])


@router.get(
    "/models/{model}",
    response_model=Model,
    summary="Retrieve a model",
    responses={**{k: v for k, v in _ERRORS.items() if k in (401, 403)}, **_NO_MODEL},
)
async def retrieve_model(model: str, _: AuthDep, gw: GatewayDep) -> Model:
    m = _model(gw)
    if model != m.id:
        raise APIError(404, f"The model '{model[:200]}' does not exist", param="model", code="model_not_found")
    return m
