"""Detection on raw text: tokenize with the model's tokenizer (no weights), score, map spans to characters."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from antidistill.detection.detector import DEFAULT_ALPHA, Detector, Pairs
from antidistill.detection.results import AttributionResult, DetectionReport
from antidistill.errors import InputError
from antidistill.keys import WatermarkKey

MIN_PAIRS = 16


class TextDetector:
    """Detects the watermark in strings.

    Args:
        tokenizer: the tokenizer of the model that generated the text (a transformers tokenizer).
        detector: the :class:`Detector` for the watermark parameters.
        provider_keys: every version of the provider key (may be empty for single-key schemes).
        candidates: account keys to attribute among.
        alpha: significance level.
        min_pairs: texts with fewer distinct scorable pairs are refused as too short.
    """

    def __init__(
        self,
        tokenizer: Any,
        detector: Detector,
        provider_keys: Sequence[WatermarkKey] = (),
        candidates: Sequence[WatermarkKey] = (),
        alpha: float = DEFAULT_ALPHA,
        min_pairs: int = MIN_PAIRS,
    ) -> None:
        self.tokenizer = tokenizer
        self.detector = detector
        self.provider_keys = list(provider_keys)
        self.candidates = list(candidates)
        self.alpha = alpha
        self.min_pairs = min_pairs

    def tokenize(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        if not texts:  # a tokenizer given no texts raises IndexError (a corpus with no text field in a batch)
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [
            (list(ids), [tuple(o) for o in offs])
            for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]

    def pair_count(self, text: str) -> int:
        """The distinct scorable (context, token) pairs of ``text``: :meth:`detect` refuses fewer than
        ``min_pairs``, and the power of its test grows with them (0 for an empty text)."""
        if not isinstance(text, str) or not text.strip():
            return 0
        ((ids, _),) = self.tokenize([text])
        return len(self.detector.pairs(ids))

    def detect_ids(self, ids: Sequence[int], offsets: Sequence[tuple[int, int]] | None = None) -> DetectionReport:
        n_pairs = len(self.detector.pairs(ids))
        if n_pairs < self.min_pairs:
            raise InputError(
                f"text too short to test: {n_pairs} distinct token pairs, at least {self.min_pairs} are needed"
            )
        report = self.detector.detect(ids, self.provider_keys, self.candidates, self.alpha)
        if report.span is not None and offsets:
            s, e = report.span.start_token, min(report.span.end_token, len(offsets)) - 1
            span = dataclasses.replace(report.span, start_char=int(offsets[s][0]), end_char=int(offsets[e][1]))
            report = dataclasses.replace(report, span=span)
        return report

    def detect(self, text: str) -> DetectionReport:
        if not isinstance(text, str) or not text.strip():
            raise InputError("text is empty")
        ((ids, offsets),) = self.tokenize([text])
        return self.detect_ids(ids, offsets)

    def attribute_texts(self, texts: Sequence[str]) -> AttributionResult:
        """The account whose key marked ``texts`` together (:meth:`Detector.attribute_many`), among the
        candidates; empty texts are refused."""
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError("text is empty")
        pairs = self.pooled_pairs(texts)
        assert pairs is not None  # texts is not empty
        return self.detector.attribute_pooled(pairs, self.candidates, self.provider_keys, self.alpha)

    def pooled_pairs(self, texts: Sequence[str], pooled: Pairs | None = None) -> Pairs | None:
        """The distinct pairs of ``texts`` (non-empty strings), pooled with ``pooled`` (:meth:`Pairs.pooled`);
        ``pooled`` itself when there are no texts."""
        parts = [self.detector.pairs(ids) for ids, _ in self.tokenize(texts)]
        if not parts:
            return pooled
        return Pairs.pooled([pooled, *parts] if pooled is not None else parts)

    def detect_many(self, texts: Iterable[str]) -> list[DetectionReport | InputError]:
        """One result per text; a bad text gives an :class:`InputError` in its place, not an exception."""
        texts = list(texts)
        out: list[DetectionReport | InputError] = [InputError("text is empty")] * len(texts)
        good = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        for i, (ids, offs) in zip(good, self.tokenize([texts[i] for i in good]), strict=True):
            try:
                out[i] = self.detect_ids(ids, offs)
            except InputError as exc:
                out[i] = exc
        return out
