"""Harvesting: an attacker account collects prompt/response pairs from an OpenAI-compatible API.

This is what a distiller does (and what the monitor must notice): many varied instruction prompts, sent with
the stock ``openai`` SDK from a few threads, every answer kept. The output is append-only JSONL, one line per
answered prompt::

    {"prompt": ..., "response": ..., "model": ..., "response_id": ..., "usage": {...}, "finish_reason": ...}

The file is the checkpoint: a second run with the same output skips every prompt already in it, so an
interrupted harvest resumes where it stopped. Lines are flushed and fsynced once per batch; a line cut short by
a crash is removed before appending resumes. Rate limits (429) and server errors (5xx) are retried, waiting
as long as the server's ``Retry-After`` asks; a refused API key stops the run with one clear error.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from antidistill.errors import InputError, retry_after

log = logging.getLogger(__name__)

# ---- prompts ------------------------------------------------------------------------------------------------
TOPICS = (
    "volcanoes",
    "the immune system",
    "compound interest",
    "black holes",
    "photosynthesis",
    "the French Revolution",
    "machine learning",
    "coffee brewing",
    "honeybees",
    "the stock market",
    "climate change",
    "the Roman Empire",
    "electric cars",
    "sleep",
    "the internet",
    "chess",
    "ocean tides",
    "vaccines",
    "jazz music",
    "bread baking",
    "renewable energy",
    "the human brain",
    "earthquakes",
    "cryptocurrency",
    "meditation",
    "the Moon landing",
    "antibiotics",
    "recycling",
    "the printing press",
    "rainforests",
    "public libraries",
    "bicycles",
    "solar panels",
    "supply and demand",
    "the water cycle",
    "dinosaurs",
    "password security",
    "gardening",
    "the Olympic Games",
    "nuclear power",
    "friendship",
    "time management",
    "ancient Egypt",
    "plate tectonics",
    "inflation",
    "remote work",
    "marathon training",
    "quantum computing",
    "the Silk Road",
    "coral reefs",
    "video games",
    "urban planning",
    "migratory birds",
    "the periodic table",
    "social media",
    "origami",
    "public speaking",
    "glaciers",
    "small businesses",
    "the violin",
)
TASKS = (
    "Explain {t} to a beginner.",
    "Write a short poem about {t}.",
    "List five interesting facts about {t}.",
    "What are common misconceptions about {t}?",
    "Give three practical tips related to {t}.",
    "Summarise the history of {t} in one paragraph.",
    "Compare {t} with something from everyday life.",
    "Write a short story in which {t} plays a central role.",
    "What questions would an expert ask about {t}?",
    "Describe {t} in three sentences.",
    "Why does {t} matter today?",
    "Write an upbeat social media post about {t}.",
    "Explain {t} to a ten-year-old.",
    "What are the pros and cons of {t}?",
    "Write a haiku about {t}.",
    "Give a step-by-step introduction to {t}.",
    "What might the future of {t} look like?",
    "Write a short dialogue between two friends discussing {t}.",
    "Suggest a lesson plan for teaching {t}.",
    "What is the most surprising thing about {t}?",
    "Write a product description inspired by {t}.",
    "How would you explain {t} using an analogy?",
    "Write a limerick about {t}.",
    "What are the key terms someone should know about {t}?",
)


def generate_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct instruction prompts (topics x tasks), shuffled with ``seed``; no model needed.

    There are ``len(TOPICS) * len(TASKS)`` (1440) distinct prompts. Different seeds give different orders, so
    two disjoint sets are ``generate_prompts(2 * n)[:n]`` and ``[n:]``.

    Example:
        >>> generate_prompts(2, seed=1) == generate_prompts(2, seed=1)
        True
        >>> len(set(generate_prompts(100)))
        100
    """
    combos = [task.format(t=topic) for topic in TOPICS for task in TASKS]
    if not 0 <= n <= len(combos):
        raise InputError(f"n must be in [0, {len(combos)}] (distinct built-in prompts), got {n}")
    random.Random(seed).shuffle(combos)
    return combos[:n]


def load_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: one per line (``.txt``), or JSONL lines that are strings or objects with ``prompt``.

    Blank lines are skipped; duplicates are kept once (first occurrence), since the harvest is keyed by prompt.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the prompts file {p}: {type(exc).__name__}: {exc}") from None
    as_json = p.suffix.lower() in (".jsonl", ".json", ".ndjson")
    out: list[str] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if as_json:
            try:
                obj = json.loads(line)
            except ValueError:
                raise InputError(f"{p} line {i}: not valid JSON") from None
            text = obj.get("prompt") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise InputError(f"{p} line {i}: expected a string or an object with a string 'prompt'")
        else:
            text = line
        if text.strip():
            out.append(text)
    if not out:
        raise InputError(f"the prompts file {p} contains no prompts")
    return list(dict.fromkeys(out))


# ---- the output file ----------------------------------------------------------------------------------------
def done_prompts(path: Path) -> set[str]:
    """Prompts already answered in an output file, repairing a last line cut short by a crash.

    Only a final line without its newline is removed (it is the only one an append-only writer can leave
    incomplete); a malformed line anywhere else is an error, since it means the file is not ours.
    """
    if not path.exists():
        return set()
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        log.warning("%s: removing an incomplete last line (%d bytes) left by an interrupted run", path, len(raw) - cut)
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        raw = raw[:cut]
    done = set()
    for i, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["prompt"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path} line {i} is not a harvest record; refusing to append to it") from None
    return done


# ---- the client ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HarvestResult:
    """What a harvest run did.

    Args:
        path: the output file.
        requested: prompts given.
        skipped: prompts already in the file (answered by an earlier run).
        written: new records written by this run.
        failed: prompts given up on after all retries (not written; the next run retries them).
        retries: requests retried (429 or 5xx or a connection error).
        completion_tokens: completion tokens of the new records (as the server counted them).
        seconds: wall time of the run.
        model: the model the server reported.
    """

    path: Path
    requested: int
    skipped: int
    written: int
    failed: int
    retries: int
    completion_tokens: int
    seconds: float
    model: str | None

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class _Fatal(Exception):
    """An error no retry can fix (refused key, bad request): stops the whole harvest."""


class Harvester:
    """Asks an OpenAI-compatible chat endpoint for completions of many prompts, with retries.

    Args:
        base_url: the API's base URL, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: the attacker account's API key.
        model: the model name to ask for (``None``: the first one ``GET /models`` lists).
        max_tokens: ``max_tokens`` of each request.
        temperature: sampling temperature of each request.
        max_retries: retries of one prompt on 429, 5xx and connection errors before giving up on it.
        max_wait: the longest single wait between retries, in seconds (a longer ``Retry-After`` is capped).
        timeout: seconds per request.
        sleep: the wait function (tests pass a recorder).

    Example:
        >>> h = Harvester("http://127.0.0.1:8000/v1", "sk-...", model="m")  # doctest: +SKIP
        >>> h.run(generate_prompts(100), Path("pairs.jsonl"), concurrency=4)  # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str | None = None,
        max_tokens: int = 128,
        temperature: float = 0.7,
        max_retries: int = 6,
        max_wait: float = 60.0,
        timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:

        if max_tokens < 1:
            raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
        if temperature < 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")
        if max_retries < 0:
            raise InputError(f"max_retries must be >= 0, got {max_retries}")
        if not api_key:
            raise InputError("an API key is needed (--api-key or OPENAI_API_KEY)")
        # The SDK's own retries are off: ours count the retries and honour any Retry-After up to max_wait.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.base_url = base_url
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.sleep = sleep
        self._retries = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Harvester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with retries; refused keys and bad requests raise :class:`_Fatal` at once."""

        attempt = 0
        while True:
            try:
                return fn()
            except openai.AuthenticationError as exc:
                raise _Fatal(f"the API at {self.base_url} refused the API key (401): {_message(exc)}") from None
            except openai.PermissionDeniedError as exc:
                raise _Fatal(f"the API at {self.base_url} refused this account (403): {_message(exc)}") from None
            except openai.NotFoundError as exc:
                raise _Fatal(f"not found at {self.base_url} (404): {_message(exc)}") from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                if attempt >= self.max_retries:
                    raise
                wait_s = retry_after(exc)
                if wait_s is None:  # exponential backoff with jitter: 0.5, 1, 2, 4 ... s
                    wait_s = 0.5 * 2**attempt * (0.5 + random.random())
                attempt += 1
                with self._lock:
                    self._retries += 1
                log.info("retry %d after %s: waiting %.2f s", attempt, type(exc).__name__, wait_s)
                self.sleep(min(wait_s, self.max_wait))
            except openai.BadRequestError as exc:
                raise _Fatal(f"the API at {self.base_url} rejected the request (400): {_message(exc)}") from None

    def resolve_model(self) -> str:
        """The model to ask for: the one given, else the first the server lists."""
        if self.model is None:
            models = self._call(lambda: self.client.models.list())
            ids = [m.id for m in models.data]
            if not ids:
                raise _Fatal(f"the API at {self.base_url} lists no models; pass --model")
            self.model = ids[0]
        return self.model

    def ask(self, prompt: str) -> dict[str, Any]:
        """One prompt → one record (the JSONL line as a dict)."""
        model = self.resolve_model()
        r = self._call(
            lambda: self.client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
        )
        choice = r.choices[0]
        usage = r.usage.model_dump() if r.usage is not None else None
        if usage is not None:
            usage = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}
        return {
            "prompt": prompt,
            "response": choice.message.content or "",
            "model": r.model,
            "response_id": r.id,
            "usage": usage,
            "finish_reason": choice.finish_reason,
        }

    def run(  # noqa: C901
        self,
        prompts: Iterable[str],
        out: str | os.PathLike,
        concurrency: int = 4,
        batch_size: int = 16,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> HarvestResult:
        """Answer every prompt not yet in ``out`` and append the records to it.

        Args:
            prompts: the prompts (duplicates are asked once).
            out: the JSONL output file (created with its directory; appended to).
            concurrency: requests in flight at once (threads).
            batch_size: records between two fsyncs of the output file.
            on_progress: called as ``on_progress(done, total)`` after each record; ``total`` counts only the
                prompts this run asks. An exception it raises stops the run, records so far are kept.

        Raises:
            InputError: the API refused the key or the request (the message is one line).
        """

        if concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {concurrency}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        unique = list(dict.fromkeys(prompts))
        done = done_prompts(path)
        todo = [p for p in unique if p not in done]
        t0 = time.perf_counter()
        written = failed = tokens = unsynced = 0
        if todo:
            try:
                self.resolve_model()
            except _Fatal as exc:
                raise InputError(str(exc)) from None
        if on_progress is not None:
            on_progress(0, len(todo))
        with open(path, "a", encoding="utf-8") as f, ThreadPoolExecutor(concurrency, "harvest") as pool:
            pending: set[Future] = set()
            queue = iter(todo)
            try:
                while True:
                    # keep a bounded window in flight, so an interrupted run has little work thrown away
                    while len(pending) < 2 * concurrency:
                        prompt = next(queue, None)
                        if prompt is None:
                            break
                        pending.add(pool.submit(self.ask, prompt))
                    if not pending:
                        break
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        try:
                            rec = fut.result()
                        except _Fatal as exc:
                            raise InputError(str(exc)) from None
                        except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                            failed += 1
                            log.warning("gave up on a prompt after %d retries: %s", self.max_retries, _message(exc))
                            continue
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        written += 1
                        unsynced += 1
                        tokens += int((rec.get("usage") or {}).get("completion_tokens") or 0)
                        if unsynced >= batch_size:
                            _sync(f)
                            unsynced = 0
                        if on_progress is not None:
                            on_progress(written + failed, len(todo))
            finally:
                for fut in pending:
                    fut.cancel()
                _sync(f)
        return HarvestResult(
            path,
            len(unique),
            len(unique) - len(todo),
            written,
            failed,
            self._retries,
            tokens,
            time.perf_counter() - t0,
            self.model,
        )


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(exc, "message", None) or exc).splitlines()[0]


def harvest(
    prompts: Sequence[str],
    out: str | os.PathLike,
    *,
    base_url: str,
    api_key: str,
    model: str | None = None,
    max_tokens: int = 128,
    temperature: float = 0.7,
    concurrency: int = 4,
    max_retries: int = 6,
    on_progress: Callable[[int, int], None] | None = None,
) -> HarvestResult:
    """Harvest ``prompts`` from the API at ``base_url`` into the JSONL file ``out`` (see :class:`Harvester`)."""
    with Harvester(base_url, api_key, model, max_tokens, temperature, max_retries) as h:
        return h.run(prompts, out, concurrency=concurrency, on_progress=on_progress)
