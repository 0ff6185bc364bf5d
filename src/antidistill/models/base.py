"""One interface for every backend the gateway can serve from: local model, upstream server, fake.

The gateway turns an OpenAI request into a :class:`GenerationRequest`, asks the backend for a
:class:`GenerationResult` (or a stream of :class:`GenerationChunk`), and never needs to know which backend it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from antidistill.watermark.marker import MarkKeys

Messages = list[dict[str, Any]]


class BackendError(Exception):
    """The backend failed (the gateway answers 502)."""


class BackendTimeout(BackendError):
    """The backend did not answer in time (the gateway answers 504)."""


@dataclass
class GenerationRequest:
    """What to generate, independent of the API shape.

    Args:
        messages: chat messages (``/v1/chat/completions``), or ``None``.
        prompt: a raw prompt (``/v1/completions``), or ``None``.
        max_tokens: most new tokens per choice.
        temperature, top_p, seed: sampling; temperature 0 is greedy.
        stop: strings that end a choice (not included in its text).
        n: number of choices.
        mark: the keys to watermark with, or ``None`` for an unmarked completion.
        raw: the original request body (the upstream backend forwards it).
    """

    messages: Messages | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    mark: MarkKeys | None = None
    raw: dict[str, Any] | None = None


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass
class GenerationResult:
    """A finished generation.

    Args:
        choices: one per requested choice.
        prompt_tokens: tokens in the prompt.
        watermark: ``{"key_id": …, "config": {…}}`` when marked, else ``{"status": "unwatermarked",
            "reason": …}`` (e.g. the upstream backend cannot mark at token level).
        model: the model name the backend served.
        token_ids: each choice's generated token ids, when the backend knows them (``None``: only the text);
            exact watermark scoring reads them rather than tokenizing the text again.
    """

    choices: list[Choice]
    prompt_tokens: int
    watermark: dict[str, Any]
    model: str
    token_ids: list[list[int]] | None = field(default=None, repr=False)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


@dataclass
class GenerationChunk:
    """A piece of a streamed generation: new text for one choice; ``finish_reason`` set on its last chunk."""

    index: int
    text: str
    finish_reason: str | None = None
    tokens: int = 0


class Backend(ABC):
    """A source of completions.

    Attributes:
        name: ``local``, ``upstream``, ``vllm`` or ``fake``.
        model_id: the model name reported in ``/v1/models`` and responses.
        marks: whether this backend can watermark at token level.
        marks_remotely: whether the mark is made in another process (an engine's plugin), so the gateway checks a
            sample of the completions for it (:mod:`antidistill.gateway.verify`).
        url: the server a proxying backend forwards to (empty for in-process backends).
    """

    name: str = ""
    model_id: str = ""
    marks: bool = False
    marks_remotely: bool = False
    url: str = ""

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole completion."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk | GenerationResult, None]:
        """The completion as :class:`GenerationChunk` items, then exactly one :class:`GenerationResult` (the whole
        completion, with token counts and the watermark record) as the last item.

        An async generator: the gateway closes it (``aclose``) when the client goes away before the end."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models, open connections."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
