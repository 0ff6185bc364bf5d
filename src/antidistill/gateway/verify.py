"""Checks that an engine which marks in its own process still does: a sample of completions, tested off the path.

With ``--backend vllm`` the mark is made by antidistill's plugin inside the vLLM engine
(:mod:`antidistill.engines.vllm`), out of the gateway's sight. Should the engine be restarted without the plugin
(``--logits-processors`` forgotten, a venv without antidistill) or with another master key, every completion would
leave unmarked while the audit log said otherwise. So the gateway tests a sample:

* **which:** one in ``verify_every`` completions (choices) of at least ``verify_min_tokens`` tokens, counted over
  every account (the first one is checked, so a gateway learns about its engine at once);
* **how:** in a background thread, never on the request path: the tokens the engine returned (vLLM's
  ``return_token_ids``; else the text tokenized again with the served model's tokenizer) are scored under the keys
  the gateway named for the request, with the configuration the audit record names (the greedy fallback for
  temperature 0), by the same :class:`~antidistill.detection.detector.Detector` every other test uses. A p-value
  at or below ``verify_alpha`` is *detected*, above it *missed*;
* **the alarm** (:class:`MarkAlarm`): ``verify_alarm_misses`` misses in a row raise it (an ERROR log line naming
  the engine, the key id and the last p-value, never key material, and ``antidistill_engine_mark_alarm`` 1); the
  next detection clears it. A run of misses, rather than one long unmarked text, raises it because a marked answer
  with little entropy (a list, code, a quotation) can legitimately score at chance, while a marked answer of 64
  tokens or more at ordinary entropy scores far below ``verify_alpha``: misses in a row are then rare on a marking
  engine (the miss rate to the power of the run) and certain on one that does not mark.

Metrics (the gateway's registry, ``GET /metrics``): ``antidistill_engine_mark_checked_total``,
``antidistill_engine_mark_detected_total``, ``antidistill_engine_mark_missed_total`` (checked = detected + missed),
``antidistill_engine_mark_skipped_total{reason}`` (``queue_full``, ``too_short``, ``error``),
``antidistill_engine_mark_misses_in_a_row`` and ``antidistill_engine_mark_alarm``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from antidistill.detection.detector import Detector
from antidistill.detection.text import MIN_PAIRS
from antidistill.gateway.worker import STOP, stop_worker, wait_drained
from antidistill.models.base import GenerationResult
from antidistill.settings import Settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys

log = logging.getLogger(__name__)

#: completions waiting for the check at most; beyond it they are skipped (counted), never waited for
QUEUE_SIZE = 256

Outcome = Literal["raised", "cleared"] | None


class VerifyMetrics:
    """The sample check's Prometheus metrics, in the gateway's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.checked = Counter(
            "antidistill_engine_mark_checked",
            "Sampled completions tested for the mark the engine should have made (detected + missed).",
            registry=registry,
        )
        self.detected = Counter(
            "antidistill_engine_mark_detected",
            "Sampled completions that carry their account's mark.",
            registry=registry,
        )
        self.missed = Counter(
            "antidistill_engine_mark_missed",
            "Sampled completions without their account's mark (p-value above verify_alpha).",
            registry=registry,
        )
        self.skipped = Counter(
            "antidistill_engine_mark_skipped",
            "Sampled completions not tested, by reason (queue_full, too_short, error).",
            ["reason"],
            registry=registry,
        )
        self.misses_in_a_row = Gauge(
            "antidistill_engine_mark_misses_in_a_row",
            "Sampled completions in a row without their mark (the alarm fires at verify_alarm_misses).",
            registry=registry,
        )
        self.alarm = Gauge(
            "antidistill_engine_mark_alarm",
            "1 while the sampled completions say the engine stopped marking, else 0.",
            registry=registry,
        )


class MarkAlarm:
    """Whether an engine stopped marking, from the outcomes of the sampled checks in order.

    Args:
        misses: misses in a row that raise the alarm (>= 1).

    Example:
        >>> a = MarkAlarm(misses=2)
        >>> [a.record(d) for d in (False, True, False, False, False, True)]
        [None, None, None, 'raised', None, 'cleared']
    """

    def __init__(self, misses: int) -> None:
        if isinstance(misses, bool) or not isinstance(misses, int) or misses < 1:
            raise ValueError(f"misses must be an integer >= 1, got {misses!r}")
        self.misses = misses
        self.in_a_row = 0
        self.active = False

    def record(self, detected: bool) -> Outcome:
        """Take one check's outcome; ``"raised"`` or ``"cleared"`` when the alarm changes, else ``None``."""
        if detected:
            self.in_a_row = 0
            if self.active:
                self.active = False
                return "cleared"
            return None
        self.in_a_row += 1
        if not self.active and self.in_a_row >= self.misses:
            self.active = True
            return "raised"
        return None


@dataclass(frozen=True)
class Sample:
    """One completion picked for the check: what the engine returned and what the gateway recorded for it."""

    response_id: str
    choice: int
    keys: MarkKeys
    config: dict[str, Any]
    text: str
    token_ids: list[int] | None


@dataclass(frozen=True)
class CheckResult:
    """The test of one sample.

    Args:
        response_id, choice: which completion.
        key_id: the key pair tested (account + provider), public.
        tokens: the tokens scored from; ``pairs``: the distinct (context, token) pairs among them.
        p_value: exact, of the mark under the account's key (and the provider's at its positions).
        detected: ``p_value <= alpha``.
        source: ``token_ids`` (the engine's) or ``text`` (tokenized again).
    """

    response_id: str
    choice: int
    key_id: str
    tokens: int
    pairs: int
    p_value: float
    detected: bool
    source: str


class TooShort(ValueError):
    """A sample with too few distinct pairs to test."""


class MarkVerifier:
    """Tests a sample of an engine's completions for their account's mark, in one background thread.

    Args:
        metrics: where to count (:class:`VerifyMetrics`).
        tokenizer: returns the served model's tokenizer (called once, in the worker, at the first check): its
            vocabulary size, and the text's tokens when the engine did not return them.
        every: one in ``every`` eligible completions is tested (>= 1).
        min_tokens: completions shorter than this are not eligible.
        alpha: a p-value above it is a miss.
        alarm_misses: misses in a row that raise the alarm.
        engine: how the log names the engine (its URL).
        queue_size: samples waiting at most.
    """

    def __init__(
        self,
        metrics: VerifyMetrics,
        tokenizer: Callable[[], Any],
        *,
        every: int = 8,
        min_tokens: int = 64,
        alpha: float = 1e-3,
        alarm_misses: int = 3,
        engine: str = "the engine",
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.metrics = metrics
        self.every = every
        self.min_tokens = min_tokens
        self.alpha = alpha
        self.engine = engine
        self.alarm = MarkAlarm(alarm_misses)
        self.results: list[CheckResult] = []  # the latest checks, newest last (bounded)
        self._tokenizer_loader = tokenizer
        self._tokenizer: Any = None
        self._tokenizer_error: Exception | None = None
        self._detectors: dict[str, Detector] = {}
        self._eligible = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="antidistill-verify", daemon=True)

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: CollectorRegistry, engine: str, tokenizer: Callable[[], Any] | None = None
    ) -> MarkVerifier:
        """The check the settings describe (``ANTIDISTILL_VERIFY_*``); the tokenizer of ``ANTIDISTILL_MODEL``
        (default: the embedded model, which ``antidistill model export`` gives the engine)."""

        def load() -> Any:
            from antidistill.models.embedded import load_tokenizer, resolve_model

            return load_tokenizer(resolve_model(settings.model), settings.cache_dir)

        return cls(
            VerifyMetrics(registry),
            tokenizer or load,
            every=settings.verify_every,
            min_tokens=settings.verify_min_tokens,
            alpha=settings.verify_alpha,
            alarm_misses=settings.verify_alarm_misses,
            engine=engine,
        )

    # ---- the request path: pick, never wait ------------------------------------------------------------
    def offer(self, response_id: str, result: GenerationResult, keys: MarkKeys | None) -> int:
        """Pick this exchange's eligible completions that are due for a check and queue them (never blocks).
        Returns how many were queued."""
        wm = result.watermark
        config = wm.get("config")
        if keys is None or not wm.get("key_id") or not isinstance(config, dict):
            return 0  # not marked: nothing to check
        queued = 0
        for i, choice in enumerate(result.choices):
            ids = result.token_ids[i] if result.token_ids is not None and i < len(result.token_ids) else None
            tokens = len(ids) if ids is not None else choice.completion_tokens
            if tokens < self.min_tokens:
                continue
            with self._lock:
                due = self._eligible % self.every == 0
                self._eligible += 1
            if not due:
                continue
            try:
                self._queue.put_nowait(Sample(response_id, choice.index, keys, config, choice.text, ids))
                queued += 1
            except queue.Full:
                self.metrics.skipped.labels("queue_full").inc()
        return queued

    # ---- the worker --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is STOP:
                    return
                self._process(item)
            finally:
                self._queue.task_done()

    def _process(self, sample: Sample) -> None:
        try:
            result = self.check(sample)
        except TooShort:
            self.metrics.skipped.labels("too_short").inc()
            return
        except Exception:  # a failed check must never take the worker down
            self.metrics.skipped.labels("error").inc()
            if self._tokenizer_error is None:  # that one is logged once, where it happened
                log.warning("the mark check of %s failed", sample.response_id, exc_info=True)
            return
        self._count(result)

    def _detector(self, config: dict[str, Any]) -> Detector:
        name = json.dumps(config, sort_keys=True)
        detector = self._detectors.get(name)
        if detector is None:
            # the record's own configuration, read as forensics reads it (a record names its scheme)
            parsed = WatermarkConfig.from_dict({"scheme": "antidistill-v1", **config})
            detector = Detector(parsed, vocab_size=len(self.tokenizer()))
            self._detectors[name] = detector
        return detector

    def tokenizer(self) -> Any:
        """The served model's tokenizer, loaded at the first call; a failure is logged once and raised again."""
        if self._tokenizer is None:
            if self._tokenizer_error is not None:
                raise self._tokenizer_error
            try:
                self._tokenizer = self._tokenizer_loader()
            except Exception as exc:
                self._tokenizer_error = exc
                log.error(
                    "the mark check of %s cannot run: the served model's tokenizer did not load (%s); set "
                    "ANTIDISTILL_MODEL to the model the engine serves",
                    self.engine,
                    exc,
                )
                raise
        return self._tokenizer

    def check(self, sample: Sample) -> CheckResult:
        """Test one sample (the worker calls this; tests may too). Raises :class:`TooShort`."""
        detector = self._detector(sample.config)
        source = "token_ids"
        ids: Sequence[int] | None = sample.token_ids
        if ids is None:
            source = "text"
            ids = list(self.tokenizer()(sample.text, add_special_tokens=False)["input_ids"])
        pairs = len(detector.pairs(ids))
        if pairs < MIN_PAIRS:
            raise TooShort(f"{pairs} distinct pairs")
        score = detector.score(ids, sample.keys.account, sample.keys.provider)
        return CheckResult(
            sample.response_id,
            sample.choice,
            score.key_id,
            len(ids),
            pairs,
            score.p_value,
            score.p_value <= self.alpha,
            source,
        )

    def _count(self, r: CheckResult) -> None:
        m = self.metrics
        m.checked.inc()
        (m.detected if r.detected else m.missed).inc()
        self.results = [*self.results[-99:], r]
        change = self.alarm.record(r.detected)
        m.misses_in_a_row.set(self.alarm.in_a_row)
        m.alarm.set(1 if self.alarm.active else 0)
        if not r.detected:
            log.warning(
                "sampled completion %s (choice %d) carries no mark of %s: p = %.3g over %d distinct pairs "
                "(%d misses in a row)",
                r.response_id,
                r.choice,
                r.key_id,
                r.p_value,
                r.pairs,
                self.alarm.in_a_row,
            )
        if change == "raised":
            log.error(
                "ALARM: %s has stopped marking: %d sampled completions in a row carry no mark of their account's "
                "key (last: %s, key %s, p = %.3g over %d distinct pairs). Was it restarted without the antidistill "
                "plugin (--logits-processors antidistill.engines.vllm:AntidistillLogitsProcessor) or with another "
                "ANTIDISTILL_MASTER_KEY than the gateway's? Completions served now are recorded as marked.",
                self.engine,
                self.alarm.in_a_row,
                r.response_id,
                r.key_id,
                r.p_value,
                r.pairs,
            )
        elif change == "cleared":
            log.warning(
                "%s marks again: sampled completion %s carries its mark (p = %.3g)",
                self.engine,
                r.response_id,
                r.p_value,
            )

    # ---- shutdown and tests ------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued sample was checked; ``False`` on timeout."""
        return wait_drained(self._queue, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Check what is queued (up to ``timeout``), then end the thread."""
        stop_worker(self._queue, self._thread, timeout)
