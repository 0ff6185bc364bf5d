"""Request and response bodies of the HTTP API, separate from the storage models.

Requests mirror OpenAI's (unknown fields are accepted and ignored, as OpenAI does; the types are strict, so
``"max_tokens": "10"`` is a 400, not a silent conversion). Responses are built only from these classes, which
have no field for a key hash or a watermark key, so neither can reach a client by accident.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

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


def _unicode_json(v: Any) -> Any:
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
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "antidistill"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

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
