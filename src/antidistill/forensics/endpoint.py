"""Querying a suspect's OpenAI-compatible endpoint for a closed-mode scan: many requests in flight, HTTP 429
honoured, and every answer cached on disk.

The cache is one append-only JSONL file (``answers.jsonl`` in the cache directory, mode 0600): one line per answer,
keyed by a hash of (endpoint, model, prompt, seed, temperature, max_tokens). A scan asks only what the cache does not
hold, so an interrupted scan resumes without asking again, and a finished one can be re-scored under other keys or
schemes without any query. A process killed while writing leaves at most its last line incomplete: that line is
dropped when the cache is opened. No secret goes into the file: the endpoint is stored without user info or query
string, and the API key is never written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from antidistill.errors import InputError, retry_after
from antidistill.files import private_dir, private_file
from antidistill.forensics.logprobs import RawPosition, parse_cached, parse_logprobs

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
CACHE_FILE = "answers.jsonl"
#: retries of one request answered HTTP 429 before the scan gives up with one line
DEFAULT_MAX_RETRIES = 8
#: the longest single wait on a 429, in seconds (a longer Retry-After is capped)
DEFAULT_MAX_WAIT = 60.0


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (what may be written to a cache or a report).

    Example:
        >>> public_url("https://user:secret@host:8000/v1?key=abc")
        'https://host:8000/v1'
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Ask:
    """One request of a scan: sample ``sample`` of prompt ``prompt_index``, with its own seed."""

    prompt_index: int
    sample: int
    prompt: str | Messages
    seed: int


@dataclass(frozen=True)
class Params:
    """What identifies an answer besides the prompt and seed: the endpoint, the model and the sampling."""

    endpoint: str
    model: str
    temperature: float
    max_tokens: int
    #: candidates per position asked for (``logprobs``/``top_logprobs``; 0: none)
    top_logprobs: int = 0

    def key(self, ask: Ask) -> str:
        fields: list[Any] = [self.endpoint, self.model, ask.prompt, ask.seed, self.temperature, self.max_tokens]
        if self.top_logprobs:  # answers without logprobs keep their keys
            fields.append({"top_logprobs": self.top_logprobs})
        return hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    """The suspect's completion texts for one request, and the completion tokens it counted."""

    texts: list[str]
    completion_tokens: int
    cached: bool = False
    #: per text, its positions' (token, [(candidate, logprob), ...]) when asked for and sent (``None``: not sent)
    logprobs: list[list[RawPosition] | None] | None = None


def plan_asks(prompts: Sequence[str | Messages], samples: int, seed: int) -> list[Ask]:
    """Every request of a scan in scoring order: prompt by prompt, sample ``j`` with seed ``seed + j``."""
    return [Ask(i, j, p, seed + j) for i, p in enumerate(prompts) for j in range(samples)]


class AnswerCache:
    """The append-only answer cache in ``directory`` (see the module docstring).

    Args:
        directory: created mode 0700 if missing; ``None``: an in-memory cache (nothing written).
    """

    def __init__(self, directory: Path | None) -> None:
        self.path = None if directory is None else private_dir(Path(directory)) / CACHE_FILE
        self.answers: dict[str, Answer] = {}
        if self.path is not None:
            private_file(self.path)
            self._load(self.path)

    def _load(self, path: Path) -> None:
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            log.warning(
                "%s: dropping an incomplete last line (%d bytes) left by an interrupted scan", path, len(raw) - cut
            )
            with open(path, "r+b") as f:
                f.truncate(cut)
            raw = raw[:cut]
        for i, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if line.strip():
                self._add_line(path, i, line)

    def _add_line(self, path: Path, number: int, line: str) -> None:
        try:
            rec = json.loads(line)
            lps = rec.get("logprobs")
            if lps is not None:
                lps = [parse_cached(x) for x in lps]
            self.answers[rec["key"]] = Answer(list(rec["texts"]), int(rec["completion_tokens"]), True, lps)
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path} line {number} is not a cached answer; is this a scan cache?") from None

    def get(self, params: Params, ask: Ask) -> Answer | None:
        return self.answers.get(params.key(ask))

    def put(self, params: Params, ask: Ask, answer: Answer) -> None:
        key = params.key(ask)
        self.answers[key] = answer
        if self.path is None:
            return
        rec = {"key": key, **asdict(params), "prompt": ask.prompt, "seed": ask.seed}
        rec.update(texts=answer.texts, completion_tokens=answer.completion_tokens)
        if answer.logprobs is not None:
            rec["logprobs"] = answer.logprobs
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def models(self, endpoint: str) -> list[str]:
        """The model names the cache file holds answers of for ``endpoint`` (for ``--from-cache``)."""
        if self.path is None:
            return []
        names = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("endpoint") == endpoint:
                names.append(rec.get("model"))
        return list(dict.fromkeys(n for n in names if n))


@dataclass
class Querier:
    """Sends one request with retries on HTTP 429 only; every other failure is one :class:`InputError` line.

    Args:
        client: an ``openai.OpenAI`` client (no SDK retries; thread-safe).
        params: endpoint, model and sampling.
        max_retries, max_wait: retries of a 429 and the longest single wait.
        sleep: the wait function (tests pass a recorder).
    """

    client: Any
    params: Params
    max_retries: int = DEFAULT_MAX_RETRIES
    max_wait: float = DEFAULT_MAX_WAIT
    sleep: Callable[[float], None] = time.sleep
    retries: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def ask(self, ask: Ask) -> Answer:
        for attempt in range(self.max_retries + 1):
            try:
                return self._send(ask)
            except openai.RateLimitError as exc:
                if attempt >= self.max_retries:
                    raise InputError(
                        f"the suspect endpoint {self.params.endpoint} kept answering HTTP 429 "
                        f"({self.max_retries} retries); try a lower --concurrency"
                    ) from None
                wait_s = retry_after(exc)
                wait_s = 0.5 * 2**attempt * (0.5 + random.random()) if wait_s is None else wait_s
                with self._lock:
                    self.retries += 1
                self.sleep(min(wait_s, self.max_wait))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, ask: Ask) -> Answer:
        messages = [{"role": "user", "content": ask.prompt}] if isinstance(ask.prompt, str) else ask.prompt
        p = self.params
        try:
            extra: dict[str, Any] = {"logprobs": True, "top_logprobs": p.top_logprobs} if p.top_logprobs else {}
            r = self.client.chat.completions.create(
                model=p.model,
                messages=messages,
                max_tokens=p.max_tokens,
                temperature=p.temperature,
                seed=ask.seed,
                **extra,
            )
        except openai.APIConnectionError as exc:
            raise InputError(f"cannot reach the suspect endpoint {p.endpoint}: {exc}") from None
        except openai.RateLimitError:
            raise
        except openai.APIStatusError as exc:
            raise InputError(f"the suspect endpoint answered HTTP {exc.status_code}: {exc.message}") from None
        used = r.usage.completion_tokens if r.usage is not None and r.usage.completion_tokens is not None else 0
        lps = None
        if p.top_logprobs:
            lps = [parse_logprobs(getattr(getattr(c, "logprobs", None), "content", None)) for c in r.choices]
        return Answer([(c.message.content or "") for c in r.choices], int(used), logprobs=lps)


def answers(
    asks: Sequence[Ask], cache: AnswerCache, params: Params, querier: Querier | None, concurrency: int = 8
) -> Generator[tuple[int, Answer], None, None]:
    """``(index into asks, answer)`` for every ask, cached ones first (in order), then the others as they arrive
    (``concurrency`` in flight). Each new answer is cached before it is yielded. Closing the iterator (the caller
    stops) lets the requests in flight finish and caches them, and sends nothing more.

    ``querier`` ``None``: the cache alone; an ask it does not hold is an :class:`InputError`.
    """
    if concurrency < 1:
        raise InputError(f"concurrency must be >= 1, got {concurrency}")
    todo = []
    for i, a in enumerate(asks):
        hit = cache.get(params, a)
        if hit is not None:
            yield i, hit
        else:
            todo.append(i)
    if todo and querier is None:
        raise InputError(f"{len(todo)} of {len(asks)} answers are not in the cache (run the scan without --from-cache)")
    if todo and querier is not None:
        yield from _ask_all(asks, todo, cache, querier, concurrency)


def _ask_all(
    asks: Sequence[Ask], todo: list[int], cache: AnswerCache, querier: Querier, concurrency: int
) -> Iterator[tuple[int, Answer]]:
    pending = iter(todo)
    running: dict[Future[Answer], int] = {}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="scan-query") as pool:

        def fill() -> None:
            for i in pending:
                running[pool.submit(querier.ask, asks[i])] = i
                if len(running) >= concurrency:
                    return

        try:
            fill()
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    answer = fut.result()
                    cache.put(querier.params, asks[i], answer)
                    yield i, answer
                fill()
        finally:
            _drain(running, asks, cache, querier)


def _drain(running: dict[Future[Answer], int], asks: Sequence[Ask], cache: AnswerCache, querier: Querier) -> None:
    """Requests still in flight when the scan stops (or fails) are paid for: cache the ones that succeed."""
    for fut, i in running.items():
        try:
            cache.put(querier.params, asks[i], fut.result())
        except Exception:
            log.debug("a request in flight at the end of the scan failed", exc_info=True)
