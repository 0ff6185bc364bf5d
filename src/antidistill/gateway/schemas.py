"""Request and response bodies of the HTTP API, separate from the storage models.

Requests mirror OpenAI's (unknown fields are accepted and ignored, as OpenAI does; the types are strict, so
``"max_tokens": "10"`` is a 400, not a silent conversion). Responses have no field for a key hash or a watermark
key, so neither can reach a client by accident: the admin API's are built from these classes, and the OpenAI
bodies and stream chunks, built as dicts for speed, are tested to be exactly these shapes (see "responses").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

#: hard ceilings of the schema; the configured cap (``max_tokens_cap``) is checked by the route.
MAX_TOKENS_CEILING = 1 << 20
MAX_MESSAGES = 2048
MAX_STOP = 4
INT64 = 2**63 - 1


def _unicode(v: str) -> str:
    # JSON can spell lone surrogates ("\\ud800"), which are no text: no tokenizer, database or UTF-8 response
    # can carry them, so they are refused at the door.
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from None
    return v


_J = TypeVar("_J")


def _unicode_json(v: _J) -> _J:
    """``v`` itself, once every string in it (keys too) is checked to be valid Unicode."""
    if isinstance(v, str):
        _unicode(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            _unicode(k)
            _unicode_json(x)
    elif isinstance(v, list):
        for x in v:
            _unicode_json(x)
    return v


Text = Annotated[str, AfterValidator(_unicode)]


class _Request(BaseModel):
    # extra="allow": kept in the audit record and passed through to an upstream backend, otherwise ignored
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"]
    text: Text


Role = Literal["system", "developer", "user", "assistant"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Role
    content: Text | list[TextPart]
    name: Text | None = Field(default=None, max_length=256)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool | None = None


StopField = Annotated[
    Text | Annotated[list[Annotated[Text, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None,
    Field(default=None, description=f"Up to {MAX_STOP} strings that end a choice."),
]


class _Sampling(_Request):
    model: Text = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=8)
    stop: StopField = None
    seed: int | None = Field(default=None, ge=-INT64 - 1, le=INT64)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: Text | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, str) and not v:
            raise ValueError("stop must not be an empty string")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (one prompt per request)."""

    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# ---- responses ------------------------------------------------------------------------------------------
# OpenAI's shapes, the one definition of what the gateway answers. The gateway builds its bodies and stream
# chunks as plain dicts on the hot path (antidistill.gateway.exchange; a model object per chunk costs measurably
# more per token), and tests/gateway/test_shapes.py checks that every body and chunk it emits is exactly one of
# these: no field missing, none added, the official SDK parses them.
class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: why a choice ended, OpenAI's values (the local and fake backends give "stop" or "length")
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
#: the legacy completions endpoint has no tools
CompletionFinishReason = Literal["stop", "length", "content_filter"]


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(_Response):
    """The body of a chat completion (``POST /v1/chat/completions`` without ``stream``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: None = None
    finish_reason: CompletionFinishReason


class Completion(_Response):
    """The body of a text completion (``POST /v1/completions`` without ``stream``)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(_Response):
    """What a chunk adds to a choice: the role (first chunk only), text, or nothing (the finishing chunk)."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Response):
    """One server-sent event of a streamed chat completion. ``usage`` is there only with
    ``stream_options.include_usage``: null on every chunk but the last, which has no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunkChoice(_Response):
    index: int
    text: str
    logprobs: None = None
    finish_reason: CompletionFinishReason | None = None


class CompletionChunk(_Response):
    """One server-sent event of a streamed text completion (``usage`` as in :class:`ChatCompletionChunk`)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class Model(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "antidistill"


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    """OpenAI's error body (also the data of a stream's error event)."""

    error: ErrorDetail


# ---- admin ----------------------------------------------------------------------------------------------
Limit = Annotated[int | None, Field(default=None, ge=1, le=10**12)]


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200)
    rpm: Limit = None
    tpm: Limit = None
    tokens_per_day: Limit = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name must not be blank")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("name must not contain control characters")
        return _unicode(v)

    @field_validator("metadata")
    @classmethod
    def _metadata_text(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _unicode_json(v)


class AccountOut(BaseModel):
    id: str
    name: str
    enabled: bool
    rpm: int | None
    tpm: int | None
    tokens_per_day: int | None
    metadata: dict[str, Any]
    created_at: datetime


class ApiKeyOut(BaseModel):
    """An API key's public facts (never the key or its hash)."""

    id: str
    account_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class AccountCreated(BaseModel):
    account: AccountOut
    key: ApiKeyOut
    api_key: str = Field(description="The new API key. Shown once: only its hash is stored.")


class KeyCreated(BaseModel):
    key: ApiKeyOut
    api_key: str = Field(description="The new API key. Shown once: only its hash is stored.")


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool
