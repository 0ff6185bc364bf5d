"""The local backend: one worker thread runs the model with continuous batching, each row marked with its own keys.

Scheduling is iteration-level ("continuous batching", Yu et al. 2022, "Orca: A Distributed Serving System for
Transformer-Based Generative Models", OSDI '22, https://www.usenix.org/conference/osdi22/presentation/yu):
between two decode steps, finished and cancelled rows leave the batch and waiting requests join it, so a short
request never waits for a long one and a newcomer never waits for the batch to drain.

KV cache. The batch holds one ``DynamicCache`` whose rows are left-padded to a common length ``T``, an attention
mask (B, T) that zeroes the padding, and per-row position ids (the count of real tokens, so padding never shifts
RoPE positions). The requests admitted at a step are prefilled together (left-padded, grouped by length so padding
wastes little), in a separate forward pass before they join; a request's n choices share one prefill (its cache
row is repeated). Prompts that start with the chat template's head (the default system message: 24 of the 38
tokens of a short SmolLM2 chat prompt) reuse its cached keys and values and prefill only the rest ("prefix
caching"). The newcomers' cache is merged into the batch's by left-padding the narrower side with zero keys/values
(masked out). Leaving rows are index-selected away, and columns that are padding in every remaining row are
trimmed off the left, so the cache is as wide as the longest live row.

Batch invariance. Everything per row after the forward pass (watermark bias, temperature, top-p, sampling with
a per-row ``torch.Generator`` seeded from the request seed) is independent of the row's batch-mates. The forward
passes are not bit-identical to a run alone: the GEMMs see another batch size and the attention another amount of
(masked, zero-weighted) padding, so float32 sums are reordered. On the embedded model the logits differ from a run
alone by at most about 1e-4 (measured: 5e-5 to 1.1e-4 over 24 decode steps of a batch of four, 7e-5 after a padded
prefill; logits are of magnitude ~20), so greedy and seeded choices match alone and batched unless the two best
candidates (or a sampling boundary) are within that distance, which the tests do not meet.

Text. Token ids are detokenized incrementally (the prefix/read-offset method of vLLM's ``detokenize_incrementally``)
and text ending in U+FFFD (an incomplete UTF-8 sequence) is held back until the sequence completes. Stop strings
are matched on the decoded text; a suffix that could still become a stop string is held back, so a stream never
emits part of a stop string, and the stop string itself is never part of the text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from antidistill.models.base import (
    Backend,
    BackendError,
    Choice,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from antidistill.models.embedded import resolve_model
from antidistill.models.local import LocalModel
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys
from antidistill.watermark.processor import WatermarkLogitsProcessor

log = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"
_SEED_MIX = 0x9E3779B97F4A7C15
_TWO64 = 1 << 64


@dataclass
class LocalResult(GenerationResult):
    """A :class:`GenerationResult` that also carries each choice's generated token ids (end-of-sequence excluded),
    for exact watermark scoring and the audit log."""

    token_ids: list[list[int]] = field(default_factory=list, repr=False)


# ---- text: incremental detokenization and stop strings -------------------------------------------------------


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces whose concatenation is the decoded text.

    Decodes a short window (from ``prefix`` to the end) rather than the whole sequence at every token, and emits
    only text that does not end in U+FFFD, so a multi-byte character split over several byte-level tokens is
    emitted whole (the method of vLLM's ``detokenize_incrementally``).

    Args:
        decode: token ids -> text (special tokens skipped, no clean-up of spaces, so that text is append-only).

    Example:
        >>> d = IncrementalDetokenizer(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
        >>> [d.push(b) for b in "é!".encode()]  # 'é' is two bytes: nothing until both are there
        ['', 'é', '!']
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one token; the new complete text (possibly empty)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (at the end of generation, an incomplete character decodes to U+FFFD)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopFilter:
    """Cuts text at the first stop string and holds back any suffix that could still become one.

    Args:
        stops: the stop strings (empty strings are ignored).

    Example:
        >>> f = StopFilter(["END"])
        >>> f.feed("abc E"), f.feed("N"), f.feed("D tail")
        (('abc ', False), ('', False), ('', True))
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was found). After a stop, nothing more should be fed."""
        if not self.stops:
            return piece, False
        buf = self._held + piece
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return buf[:cut], True
        keep = 0
        for s in self.stops:
            for j in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:j]):
                    keep = j
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held-back text (generation ended without completing a stop string)."""
        held, self._held = self._held, ""
        return held


# ---- requests and rows ---------------------------------------------------------------------------------------


class _Job:
    """One request: its rows (choices), where its output goes, and whether its client is still there."""

    def __init__(self, request: GenerationRequest, prompt_ids: list[int], stops: list[str], streaming: bool) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.stops = stops
        self.streaming = streaming
        self.cancelled = threading.Event()
        self.finished = False  # set by the worker once the result (or an error) is sent
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[list[Any]] | None = None
        self.choices: dict[int, Choice] = {}
        self.token_ids: dict[int, list[int]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue = asyncio.Queue()

    def send(self, items: list[Any]) -> None:
        """Hand items to the client's event loop (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, items)
        except RuntimeError:  # the client's loop is closed: nobody is listening any more
            self.cancelled.set()

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.send([exc])


@dataclass
class _Row:
    """One choice being generated: one row of the batch."""

    job: _Job
    index: int
    temperature: float
    top_p: float
    generator: Any  # torch.Generator, or None for greedy rows
    detok: IncrementalDetokenizer
    stops: StopFilter
    max_tokens: int
    tokens: int = 0
    unreported: int = 0
    pieces: list[str] = field(default_factory=list)
    finish: str | None = None
    seen: set[tuple[int, ...]] = field(default_factory=set)  # contexts of the answer so far (context masking)

    @property
    def mark(self) -> MarkKeys | None:
        return self.job.request.mark


def _row_seed(seed: int | None, index: int) -> int:
    """The generator seed of choice ``index``: the request seed itself for choice 0, a distinct mix for others."""
    if seed is None:
        return secrets.randbits(63)
    return (int(seed) ^ (index * _SEED_MIX)) % _TWO64


# ---- the batch: KV cache, mask, positions ------------------------------------------------------------------


class _Batch:
    """The running batch: rows, their left-padded KV cache, attention mask, position ids and watermark contexts."""

    def __init__(self, context_width: int) -> None:

        self.h = context_width
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (B, T), 0 on padding
        self.pos = torch.zeros(0, dtype=torch.long)  # (B,) real tokens so far = the next position id
        self.last = torch.zeros(0, dtype=torch.long)  # (B,) the token to feed at the next step
        self.ctx = torch.zeros(0, context_width, dtype=torch.long)  # (B, h) the watermark context

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def decode(self, model: Any) -> Any:
        """One decode step for every row: feed ``last``, extend the cache; the next-token logits (B, V)."""

        b = len(self.rows)
        self.mask = torch.cat([self.mask, torch.ones(b, 1, dtype=torch.long)], dim=1)
        out = model(
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=self.pos[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.cache = out.cache
        self.pos = self.pos + 1
        return out.logits[:, -1, :].float()

    def add(self, cache: Any, mask: Any, pos: Any, ctx: Any, rows: list[_Row]) -> None:
        """Merge newcomers' prefilled cache (rows of width L, ``mask`` (n, L) 0 on their padding) into the batch:
        the narrower side is left-padded with zero keys/values that the mask hides."""

        if self.cache is None or not self.rows:
            self.cache, self.mask, self.pos, self.ctx, self.rows = cache, mask, pos, ctx, list(rows)
            return
        t_old, length = self.width, int(mask.shape[1])
        t = max(t_old, length)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([F.pad(mine.keys, (0, 0, t - t_old, 0)), F.pad(theirs.keys, (0, 0, t - length, 0))])
            mine.values = torch.cat(
                [F.pad(mine.values, (0, 0, t - t_old, 0)), F.pad(theirs.values, (0, 0, t - length, 0))]
            )
        self.mask = torch.cat([F.pad(self.mask, (t - t_old, 0)), F.pad(mask, (t - length, 0))])
        self.pos = torch.cat([self.pos, pos])
        self.ctx = torch.cat([self.ctx, ctx])
        self.rows.extend(rows)

    def keep(self, keep: list[int]) -> None:
        """Keep only these rows (in this order), then trim padding columns that every remaining row has."""

        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache = [], None
            self.mask = self.mask[:0, :0]
            self.pos, self.last, self.ctx = self.pos[:0], self.last[:0], self.ctx[:0]
            return
        idx = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[i] for i in keep]
        self.pos, self.last, self.ctx = self.pos[idx], self.last[idx], self.ctx[idx]
        mask = self.mask[idx]
        # Columns left of every row's first real token are padding for all: drop them. (Rows prefilled after the
        # shared template head may also have padding between head and rest; that stays, masked.)
        drop = int(mask.argmax(dim=1).min())
        self.mask = mask[:, drop:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, drop:, :]
            layer.values = layer.values[idx, :, drop:, :]


# ---- the backend ---------------------------------------------------------------------------------------------


class LocalBackend(Backend):
    """Serves a :class:`LocalModel` with continuous batching; each row is watermarked with its own account's keys.

    One worker thread owns the model. Requests reach it through a queue; between two decode steps it drops
    finished and cancelled rows and admits waiting requests (up to ``max_batch`` rows), so concurrent requests
    share every forward pass. Results travel back to each caller's event loop with ``call_soon_threadsafe``.

    Args:
        model: a loaded model; ``None`` loads ``model_path`` (the embedded model if that is ``None`` too) on
            :meth:`start`.
        model_path: a GGUF file or transformers directory (used only when ``model`` is ``None``).
        cache_dir: where converted weights are cached (default: the settings' cache directory).
        config: the watermark parameters (used only when ``model`` is ``None``; a given model brings its own).
        max_batch: the most rows (choices) decoded together.
        gather_ms: when the batch is idle, how long to wait after a first request for others to arrive with it.
        prefill_tokens: prompt tokens prefilled between two decode steps at most (at least one request is always
            admitted), which bounds how long newcomers can stall the rows already running.

    Example:
        >>> backend = LocalBackend(LocalModel.load())                                        # doctest: +SKIP
        >>> await backend.start()                                                            # doctest: +SKIP
        >>> r = await backend.generate(GenerationRequest(prompt="Hello", max_tokens=8))      # doctest: +SKIP
        >>> r.choices[0].text, r.watermark["status"]                                         # doctest: +SKIP
    """

    name = "local"
    marks = True

    def __init__(
        self,
        model: LocalModel | None = None,
        *,
        model_path: str | None = None,
        cache_dir: Path | None = None,
        config: WatermarkConfig | None = None,
        max_batch: int = 32,
        gather_ms: float = 5.0,
        prefill_tokens: int = 2048,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if gather_ms < 0:
            raise ValueError(f"gather_ms must be >= 0, got {gather_ms}")
        if prefill_tokens < 1:
            raise ValueError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
        self.model = model
        self._model_path = model_path
        self._cache_dir = cache_dir
        self._config = config
        self.max_batch = max_batch
        self.gather_s = gather_ms / 1000.0
        self.prefill_tokens = prefill_tokens
        if model is not None:
            self.model_id = model.name
        else:
            self.model_id = resolve_model(model_path).name
        self._inbox: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._tok_lock = threading.Lock()  # fast tokenizers must not be used from two threads at once
        self._closed = False
        self._active_rows = 0
        self._admitted: list[_Job] = []  # admitted at the current step (failed with the batch if the step fails)
        # counters for tests and benchmarks: decode steps, tokens sampled, largest batch, prefills, prompt tokens
        # run through the model, admitted requests, rows dropped because their client went away
        self.stats = {
            "steps": 0,
            "tokens": 0,
            "max_rows": 0,
            "prefills": 0,
            "prefill_tokens": 0,
            "requests": 0,
            "cancelled_rows": 0,
        }
        self._prefix: tuple[list[int], list[tuple[Any, Any]]] | None = None  # the chat template's head, prefilled

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model (if not given) and start the worker thread. Idempotent."""
        if self.model is None:
            self.model = await asyncio.to_thread(LocalModel.load, self._model_path, self._cache_dir, self._config)
            self.model_id = self.model.name
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        if self._closed:
            raise BackendError("the local backend is closed")
        if self.model is None:
            raise BackendError("the local backend is not started (call start() first)")
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._worker, name="antidistill-local-backend", daemon=True)
                self._thread.start()

    async def aclose(self) -> None:
        """Stop the worker: running and waiting requests fail with :class:`BackendError`."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._inbox.put(None)
            await asyncio.to_thread(thread.join)
        self._thread = None

    @property
    def active_rows(self) -> int:
        """Rows in the running batch (as of the last step)."""
        return self._active_rows

    @property
    def context_length(self) -> int:
        """The model's context (``max_position_embeddings``): prompt plus ``max_tokens`` must fit in it."""
        return int(getattr(self.model.model.config, "max_position_embeddings", 0) or 0) if self.model else 0

    # ---- requests ----------------------------------------------------------------------------------------------
    def _prepare(self, request: GenerationRequest, streaming: bool) -> _Job:
        """Validate and tokenize (in the caller, so that a bad request fails before anything is queued)."""
        if self.model is None:
            raise BackendError("the local backend is not started (call start() first)")
        if (request.messages is None) == (request.prompt is None):
            raise ValueError("exactly one of messages and prompt must be given")
        if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {request.max_tokens!r}")
        t = request.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a number >= 0, got {t!r}")
        p = request.top_p
        if not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        if isinstance(request.n, bool) or not isinstance(request.n, int) or not 1 <= request.n <= self.max_batch:
            raise ValueError(f"n must be an integer in 1..{self.max_batch}, got {request.n!r}")
        if request.seed is not None and (isinstance(request.seed, bool) or not isinstance(request.seed, int)):
            raise ValueError(f"seed must be an integer, got {request.seed!r}")
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a string or a list of strings")
        try:
            with self._tok_lock:
                if request.messages is not None:
                    ids = self.model.encode_prompt(request.messages, chat=True)
                else:
                    ids = self.model.encode_prompt(request.prompt, chat=False)
        except ValueError:
            raise
        except Exception as exc:  # e.g. a chat template that rejects the messages' shape
            raise ValueError(f"cannot encode the prompt: {exc}") from None
        if not ids:
            raise ValueError("the prompt is empty (no tokens)")
        limit = self.context_length
        if limit and len(ids) + request.max_tokens > limit:
            raise ValueError(
                f"the prompt has {len(ids)} tokens and max_tokens is {request.max_tokens}: together they exceed "
                f"the model's context of {limit} tokens (at most {max(0, limit - request.max_tokens)} prompt tokens "
                f"with this max_tokens)"
            )
        return _Job(request, ids, stops, streaming)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk | GenerationResult, None]:
        """The completion as chunks, then one :class:`LocalResult`. Raises ``ValueError`` at once for a bad request.

        Closing the iterator (client gone) or cancelling its task removes the request's rows from the batch at the
        next step.
        """
        job = self._prepare(request, streaming=True)
        return self._run(job)

    async def generate(self, request: GenerationRequest) -> LocalResult:
        """The whole completion (cancelling the awaiting task removes its rows from the batch)."""
        job = self._prepare(request, streaming=False)
        agen = self._run(job)
        result = None
        try:
            async for item in agen:
                result = item
        finally:
            await agen.aclose()
        if not isinstance(result, LocalResult):
            raise BackendError("the local backend ended a request without a result")
        return result

    async def _run(self, job: _Job) -> AsyncGenerator[GenerationChunk | GenerationResult, None]:
        job.bind(asyncio.get_running_loop())
        self._ensure_worker()
        self._inbox.put(job)
        try:
            while True:
                items = await job.queue.get()
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if isinstance(item, GenerationResult):
                        return
        finally:
            if not job.finished:
                job.cancelled.set()  # the worker drops the rows before its next step

    # ---- the worker thread -------------------------------------------------------------------------------------
    def _worker(self) -> None:

        waiting: deque[_Job] = deque()
        model = self.model
        batch = _Batch(model.watermark.config.context_width)

        processor = WatermarkLogitsProcessor(model.watermark, [])
        eos = model._eos_ids()
        pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        stopping = False
        with torch.inference_mode():
            while not stopping:
                stopping = self._collect(waiting, block=not batch.rows and not waiting)
                if stopping:
                    break
                try:
                    self._step(batch, waiting, processor, eos, pad_id)
                except Exception as exc:  # a failed step fails its rows, never the worker
                    log.exception("local backend step failed")
                    err = BackendError(f"local model failed: {type(exc).__name__}: {exc}")
                    for job in [r.job for r in batch.rows] + self._admitted:
                        job.fail(err)
                    batch.keep([])
                self._active_rows = len(batch)
        err = BackendError("the local backend is shutting down")
        for job in [r.job for r in batch.rows] + list(waiting):
            job.fail(err)
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.fail(err)
        self._active_rows = 0

    def _collect(self, waiting: deque[_Job], block: bool) -> bool:
        """Move queued requests to ``waiting``; with ``block``, wait for a first one and then ``gather_s`` more.
        True when asked to stop."""
        deadline = None
        while True:
            try:
                if block and deadline is None:
                    job = self._inbox.get()
                elif deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    job = self._inbox.get(timeout=left)
                else:
                    job = self._inbox.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            waiting.append(job)
            if block and deadline is None:
                deadline = time.monotonic() + self.gather_s

    def _admit(self, batch: _Batch, waiting: deque[_Job]) -> list[_Job]:
        """Waiting requests that join at this step: first come first served, as long as their rows fit."""
        admitted, rows, budget = [], len(batch), self.prefill_tokens
        while waiting:
            job = waiting[0]
            if job.cancelled.is_set():
                waiting.popleft()
                job.finished = True
                continue
            n = job.request.n
            if rows + n > self.max_batch or (admitted and len(job.prompt_ids) > budget):
                break
            waiting.popleft()
            admitted.append(job)
            rows += n
            budget -= len(job.prompt_ids)
        return admitted

    def _template_prefix(self) -> list[int]:
        """The token ids every single-user-message chat prompt starts with (the chat template's head, e.g. the
        default system message), or ``[]``. Found as the common prefix of two different prompts."""
        try:
            with self._tok_lock:
                a = self.model.encode_prompt([{"role": "user", "content": "Hello there."}], chat=True)
                b = self.model.encode_prompt([{"role": "user", "content": "Why?"}], chat=True)
        except Exception:  # no chat template, or one that wants other messages: no shared prefix
            return []
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]

    def _prefix_kv(self) -> tuple[int, list[tuple[Any, Any]]]:
        """(length, per-layer keys and values) of the template prefix, computed once."""
        if self._prefix is None:
            ids = self._template_prefix()
            kv: list[tuple[Any, Any]] = []
            if len(ids) >= 2:
                model = self.model.model
                out = model(
                    input_ids=torch.tensor([ids]),
                    position_ids=torch.arange(len(ids))[None, :],
                    cache=DynamicCache(config=model.config),
                    use_cache=True,
                    logits_to_keep=1,
                )
                kv = [(layer.keys, layer.values) for layer in out.cache.layers]
            self._prefix = (ids, kv)
        ids, kv = self._prefix
        return len(ids), kv

    def _prefill_start(self, job: _Job) -> int:
        """Where the prompt's own prefill starts: after the chat template's cached head if it begins with it."""
        plen, kv = self._prefix_kv()
        ids = job.prompt_ids
        return plen if kv and len(ids) > plen and ids[:plen] == self._prefix[0] else 0

    def _prefill_groups(self, jobs: list[_Job]) -> list[tuple[int, list[_Job]]]:
        """Newcomers grouped for batched prefills: same start (template head or not), and lengths close enough
        that left-padding wastes at most a quarter of the group's compute."""
        keyed = sorted(
            ((self._prefill_start(j), len(j.prompt_ids), i, j) for i, j in enumerate(jobs)),
            key=lambda x: (x[0], x[1] - x[0], x[2]),
        )
        groups: list[tuple[int, list[_Job]]] = []
        total = 0
        for start, length, _, job in keyed:
            rest = length - start
            if groups and groups[-1][0] == start and rest * (len(groups[-1][1]) + 1) <= 1.25 * (total + rest):
                groups[-1][1].append(job)
                total += rest
            else:
                groups.append((start, [job]))
                total = rest
        return groups

    def _prefill(self, start: int, jobs: list[_Job], pad_id: int) -> tuple[Any, Any, Any, Any, Any]:
        """The newcomers' prompts through the model in one batch: (cache, mask, positions, watermark contexts,
        next-token logits), each with one row per choice (the n choices of a request share its prefill).

        Prompts are left-padded to a common length. With ``start`` > 0 they all begin with the chat template's
        head, whose keys and values are cached ("prefix caching": the head is most of a short chat prompt), and
        only the rest runs through the model; the padding then sits between head and rest, hidden by the mask.
        """

        model = self.model.model
        rests = [j.prompt_ids[start:] for j in jobs]
        width = max(len(r) for r in rests)
        b = len(jobs)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rests], dtype=torch.long)
        rest_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rests], dtype=torch.long)
        cache = DynamicCache(config=model.config)
        if start:
            _, kv = self._prefix_kv()
            for layer, (k, v) in zip(cache.layers, kv, strict=True):
                layer.lazy_initialization(k, v)
                # a broadcast view: never written in place, update() concatenates into new tensors
                layer.keys, layer.values = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        mask = torch.cat([torch.ones(b, start, dtype=torch.long), rest_mask], dim=1)
        positions = start + (rest_mask.cumsum(dim=1) - 1).clamp(min=0)
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        cache = out.cache
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise BackendError(f"model {self.model_id} uses a KV cache layout the local backend cannot batch")
        logits = out.logits[:, -1, :].float()
        pos = torch.tensor([len(j.prompt_ids) for j in jobs], dtype=torch.long)
        h = self.model.watermark.config.context_width
        ctx = torch.tensor(
            [[pad_id] * max(0, h - len(j.prompt_ids)) + j.prompt_ids[-h:] for j in jobs], dtype=torch.long
        )
        counts = [j.request.n for j in jobs]
        if any(c > 1 for c in counts):
            idx = torch.repeat_interleave(torch.arange(b), torch.tensor(counts))
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[idx], layer.values[idx]
            mask, pos, ctx, logits = mask[idx], pos[idx], ctx[idx], logits[idx]
        self.stats["prefills"] += 1
        self.stats["prefill_tokens"] += sum(len(r) for r in rests)
        return cache, mask, pos, ctx, logits

    def _new_rows(self, job: _Job) -> list[_Row]:

        req = job.request
        rows = []
        for i in range(req.n):
            gen = None
            if req.temperature > 0:
                gen = torch.Generator(device="cpu")
                gen.manual_seed(_row_seed(req.seed, i))
            rows.append(
                _Row(
                    job,
                    i,
                    float(req.temperature),
                    float(req.top_p),
                    gen,
                    IncrementalDetokenizer(self._decode),
                    StopFilter(job.stops),
                    req.max_tokens,
                )
            )
        return rows

    def _decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            return self.model.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _step(self, batch: _Batch, waiting: deque[_Job], processor: Any, eos: set[int], pad_id: int) -> None:

        # 1. Rows whose client went away leave before any work is spent on them.
        before = len(batch)
        batch.keep([i for i, r in enumerate(batch.rows) if not r.job.cancelled.is_set()])
        changed = len(batch) != before
        self.stats["cancelled_rows"] += before - len(batch)
        self._active_rows = len(batch)
        # 2. One decode step for the running rows, then the newcomers' prefills, merged into the batch.
        parts = []
        if batch.rows:
            parts.append(batch.decode(self.model.model))
        self._admitted = self._admit(batch, waiting)
        for start, jobs in self._prefill_groups(self._admitted) if self._admitted else ():
            try:
                cache, mask, pos, ctx, logits = self._prefill(start, jobs, pad_id)
            except Exception as exc:
                log.exception("prefill failed")
                err = (
                    exc
                    if isinstance(exc, BackendError)
                    else BackendError(f"local model failed: {type(exc).__name__}: {exc}")
                )
                for job in jobs:
                    job.fail(err)
                continue
            self.stats["requests"] += len(jobs)
            batch.add(cache, mask, pos, ctx, [row for job in jobs for row in self._new_rows(job)])
            parts.append(logits)
            changed = True
        if not parts:
            return
        logits = torch.cat(parts) if len(parts) > 1 else parts[0]
        # 3. Per-row logits processing: the watermark (each row its own keys), then sampling.
        if changed:
            _bind_rows(processor, batch.rows)
        # a row is marked once its answer has a whole context of its own (see WatermarkLogitsProcessor)
        ready = np.array([r.tokens >= processor.watermark.config.context_width for r in batch.rows], dtype=bool)
        scores = processor.mark(batch.ctx.numpy(), logits, ready)
        tokens = _choose(scores, batch.rows)
        batch.last = tokens
        batch.ctx = torch.cat([batch.ctx[:, 1:], tokens[:, None]], dim=1)
        self.stats["steps"] += 1
        self.stats["tokens"] += len(batch)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(batch))
        # 4. Text, stop conditions and delivery; finished rows leave the batch.
        out: dict[int, tuple[_Job, list[Any]]] = {}
        for row, tok in zip(batch.rows, tokens.tolist(), strict=True):
            piece = self._advance(row, tok, eos)
            if piece or row.finish:
                job_items = out.setdefault(id(row.job), (row.job, []))[1]
                if row.job.streaming:
                    job_items.append(GenerationChunk(row.index, piece, row.finish, row.unreported))
                    row.unreported = 0
                if row.finish:
                    self._finish_row(row, job_items)
        for job, items in out.values():
            if items and not job.cancelled.is_set():
                job.send(items)
        batch.keep([i for i, r in enumerate(batch.rows) if r.finish is None])
        if len(batch) != len(tokens):
            _bind_rows(processor, batch.rows)

    def _advance(self, row: _Row, tok: int, eos: set[int]) -> str:
        """Account one new token to ``row``: the text it releases; sets ``row.finish`` when the row is done."""
        row.tokens += 1
        row.unreported += 1
        if tok in eos:
            piece = self._tail(row)
            row.finish = "stop"
        else:
            piece, stopped = row.stops.feed(row.detok.push(tok))
            if stopped:
                row.finish = "stop"
            elif row.tokens >= row.max_tokens:
                piece += self._tail(row)
                row.finish = row.finish or "length"
        if piece:
            row.pieces.append(piece)
        return piece

    @staticmethod
    def _tail(row: _Row) -> str:
        """Text held back at the end of a row (an incomplete character, a suffix that was not a stop string)."""
        piece, stopped = row.stops.feed(row.detok.flush())
        if stopped:
            row.finish = "stop"
            return piece
        return piece + row.stops.flush()

    def _finish_row(self, row: _Row, items: list[Any]) -> None:
        job = row.job
        ids = list(row.detok.ids)
        job.choices[row.index] = Choice(row.index, "".join(row.pieces), row.finish, row.tokens)
        job.token_ids[row.index] = ids
        if len(job.choices) == job.request.n:
            mark = job.request.mark
            if mark is not None:
                # greedy requests under a sampling member carry the green-list fallback: the record names it
                wm_used = self.model.watermark.greedy if job.request.temperature <= 0 else self.model.watermark
                wm = {
                    "key_id": mark.account.key_id,
                    "provider_key_id": mark.provider.key_id if mark.provider is not None else None,
                    "config": wm_used.config.to_dict(),
                }
            else:
                wm = {"status": "unwatermarked", "reason": "request not marked"}
            order = sorted(job.choices)
            items.append(
                LocalResult(
                    [job.choices[i] for i in order],
                    len(job.prompt_ids),
                    wm,
                    self.model_id,
                    [job.token_ids[i] for i in order],
                )
            )
            job.finished = True


def _bind_rows(processor: WatermarkLogitsProcessor, rows: Sequence[_Row]) -> None:
    """Tell the watermark processor the batch's rows: their keys, and (for sampling members) how each samples."""
    processor.set_row_keys([r.mark for r in rows], [r.seen for r in rows])
    processor.set_row_sampling([r.temperature for r in rows], [r.top_p for r in rows], [r.generator for r in rows])


def _choose(scores: Any, rows: Sequence[_Row]) -> Any:
    """The next token of every row: argmax for temperature 0, else temperature + top-p sampling with the row's
    own generator (one uniform draw per token, inverse CDF), so a row's draws never depend on its batch-mates."""

    b = len(rows)
    out = torch.empty(b, dtype=torch.long)
    greedy = [i for i, r in enumerate(rows) if r.generator is None]
    if greedy:
        out[greedy] = scores[greedy].argmax(dim=-1) if len(greedy) < b else scores.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if r.generator is not None]
    if not sampled:
        return out
    temps = torch.tensor([rows[i].temperature for i in sampled], dtype=torch.float32)[:, None]
    probs = torch.softmax(scores[sampled] / temps, dim=-1)
    u = torch.tensor(
        [float(torch.rand((), generator=rows[i].generator, dtype=torch.float64)) for i in sampled], dtype=torch.float64
    )
    full = [j for j, i in enumerate(sampled) if rows[i].top_p >= 1.0]
    if full:
        cdf = torch.cumsum(probs[full].double(), dim=-1)
        k = torch.searchsorted(cdf, (u[full] * cdf[:, -1])[:, None], right=True)[:, 0]
        out[[sampled[j] for j in full]] = k.clamp_(max=probs.shape[1] - 1)
    for j, i in enumerate(sampled):
        if rows[i].top_p < 1.0:
            out[i] = _nucleus_draw(probs[j], rows[i].top_p, float(u[j]))
    return out


def _nucleus_draw(p: Any, top_p: float, u: float) -> int:
    """Top-p sampling (Holtzman et al. 2020, https://arxiv.org/abs/1904.09751) from probabilities ``p``.

    Keeps the highest-probability tokens while the mass ranked above them is below ``top_p``. Sorting the whole
    vocabulary costs milliseconds per row; the kept tokens are all above some probability, so only tokens above
    a threshold are sorted, lowered until their mass reaches ``top_p``: the same sorted prefix, hence the same
    choice, as a full (stable) sort.
    """

    thr = float(p.max()) * 0.05
    while True:
        cand = torch.nonzero(p >= thr).squeeze(1) if thr > 0 else torch.arange(p.shape[0])
        sp, order = torch.sort(p[cand], descending=True, stable=True)
        cum = torch.cumsum(sp, 0)
        if float(cum[-1]) >= top_p or thr == 0:
            break
        thr = thr * 0.05 if thr > 1e-30 else 0.0
    n_keep = max(1, int(((cum - sp) < top_p).sum()))
    cdf = torch.cumsum(sp[:n_keep].double(), 0)
    k = int(torch.searchsorted(cdf, u * float(cdf[-1]), right=True))
    return int(cand[order[min(k, n_keep - 1)]])
