"""The fake backend: deterministic, instant completions for tests and overhead benchmarks.

The text of each choice is drawn from a small word list by a generator seeded with a hash of the prompt, the
seed and the choice index, so the same request always gets the same answer; a token is a whitespace-separated
word. Replies can also be queued (like simonw/llm's ``MockModel``): queued texts are served first, in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import deque
from collections.abc import AsyncGenerator

from antidistill.models.base import (
    Backend,
    Choice,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)

UNWATERMARKED = {"status": "unwatermarked", "reason": "fake backend"}

_VOCABULARY = (
    "the a of to and in that it is was for on are as with his they at be this from have or by one had not but "
    "what all were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would other into has more her two like him see time could no make than first been its "
    "who now people my made over did down only way find use may water long little very after words called just "
    "where most know get through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well such here take "
    "why things help put years different away again off went old number great tell men say small every found "
    "still between name should home big give air line set own under read last never us left end along while "
    "might next sound below saw something thought both few those always looked show large often together asked "
    "house world going want school important until form food keep children feet land side without boy once "
    "animals life enough took"
)
_WORDS = tuple(_VOCABULARY.split())


def render_prompt(request: GenerationRequest) -> str:
    """The prompt as one string: raw prompts as they are, chat messages as ``role: content`` lines."""
    if request.prompt is not None:
        return request.prompt
    lines = []
    for m in request.messages or []:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append(f"{m.get('role', 'user')}: {content or ''}")
    return "\n".join(lines) + "\nassistant:"


def count_tokens(text: str) -> int:
    """Whitespace tokens: the fake backend's (and the gateway's estimate's) unit of length."""
    return len(text.split())


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class FakeBackend(Backend):
    """Deterministic and instant: the same request (prompt, seed, choice index) always gets the same text.

    Args:
        model_id: the model name it reports.
        replies: texts to serve first, one per choice, in order (then the generated ones).
        latency: seconds to wait before answering (0: instant), to simulate a slow model.
        fail: if set, every request raises this exception (to test the gateway's error paths).

    Example:
        >>> import asyncio
        >>> fb = FakeBackend()
        >>> r = asyncio.run(fb.generate(GenerationRequest(prompt="hi", max_tokens=5)))
        >>> r.choices[0].completion_tokens <= 5, r.watermark["status"]
        (True, 'unwatermarked')
    """

    name = "fake"
    marks = False

    def __init__(
        self,
        model_id: str = "antidistill-fake",
        replies: list[str] | None = None,
        latency: float = 0.0,
        fail: Exception | None = None,
    ) -> None:
        self.model_id = model_id
        self._replies: deque[str] = deque(replies or [])
        self.latency = latency
        self.fail = fail
        self.requests: list[GenerationRequest] = []

    def queue(self, *texts: str) -> None:
        """Serve these texts next, one per choice."""
        self._replies.extend(texts)

    def _text(self, request: GenerationRequest, prompt: str, index: int) -> str:
        if self._replies:
            return self._replies.popleft()
        material = json.dumps([prompt, request.seed, index, request.temperature > 0], ensure_ascii=False)
        rng = random.Random(hashlib.sha256(material.encode()).digest())
        n = rng.randint(8, 40)
        words = [rng.choice(_WORDS) for _ in range(n)]
        return (" ".join(words)).capitalize() + "."

    def _choice(self, request: GenerationRequest, prompt: str, index: int) -> Choice:
        words = self._text(request, prompt, index).split(" ")
        finish = "stop"
        if len(words) > request.max_tokens:
            words, finish = words[: request.max_tokens], "length"
        text, stopped = _cut_at_stop(" ".join(words), request.stop)
        if stopped:
            finish = "stop"
        return Choice(index=index, text=text, finish_reason=finish, completion_tokens=count_tokens(text))

    async def _result(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if self.fail is not None:
            raise self.fail
        prompt = render_prompt(request)
        choices = [self._choice(request, prompt, i) for i in range(request.n)]
        return GenerationResult(
            choices=choices, prompt_tokens=count_tokens(prompt), watermark=dict(UNWATERMARKED), model=self.model_id
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await self._result(request)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk | GenerationResult, None]:
        result = await self._result(request)
        for c in result.choices:
            words = c.text.split(" ") if c.text else []
            for j, w in enumerate(words):
                last = j == len(words) - 1
                yield GenerationChunk(
                    index=c.index,
                    text=w if j == 0 else " " + w,
                    finish_reason=c.finish_reason if last else None,
                    tokens=1 if w else 0,
                )
            if not words:
                yield GenerationChunk(index=c.index, text="", finish_reason=c.finish_reason)
        yield result
