"""Typed detection results. Every result carries the key id and the watermark parameters, so it can be replayed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ScoreResult:
    """One key tested on one text.

    Args:
        key_id: the public id of the key tested.
        tokens_scored: distinct (context, token) pairs scored.
        green: the summed score: how many pairs are green for a green-list scheme (an int), the sum of
            ``-log(1 - u)`` for a Gumbel-max scheme (a float; about ``tokens_scored`` for unmarked text).
        green_fraction: green / tokens_scored (the mean score).
        z: the z-score (for readers; the decision uses ``p_value``).
        p_value: exact upper tail of the scheme's null distribution (binomial, or gamma for Gumbel-max).
        gamma: the null mean of a pair's score (the green probability for a green-list scheme).
    """

    key_id: str
    tokens_scored: int
    green: int | float
    green_fraction: float
    z: float
    p_value: float
    gamma: float

    def watermarked(self, alpha: float) -> bool:
        return self.tokens_scored > 0 and self.p_value <= alpha


@dataclass(frozen=True)
class AttributionResult:
    """The best-matching account among many candidate keys.

    ``p_value_corrected`` is Bonferroni-corrected for ``keys_tested`` (every account and key version tried), so
    it bounds the probability that *any* innocent account would match this well. ``account`` is set only when
    the corrected p-value is at most alpha.
    """

    account: str | None
    key_id: str | None
    best: ScoreResult | None
    p_value_corrected: float
    keys_tested: int
    ranking: list[ScoreResult] = field(default_factory=list)


@dataclass(frozen=True)
class SpanResult:
    """The most significant window of a longer text (windowed scan), corrected for the windows tried."""

    start_token: int
    end_token: int
    tokens_scored: int
    green: int | float
    p_value: float
    p_value_corrected: float
    windows_tested: int
    watermarked: bool
    start_char: int | None = None
    end_char: int | None = None


@dataclass(frozen=True)
class DetectionReport:
    """Everything ``detect`` concludes about one text.

    Args:
        tokens_scored, green, green_fraction, z: of the primary test (provider positions under the provider key,
            or the best candidate key where there is no provider component).
        p_value: the overall p-value that the text carries our watermark (provider test combined, by Fisher's
            method, with the corrected attribution test when candidate accounts were given).
        watermarked: ``p_value <= alpha``.
        account: the attributed account (or ``None``), with ``p_value_corrected``.
        provider, attribution, span: the component results.
        config: the watermark parameters; ``alpha`` the level used.
    """

    tokens_scored: int
    green: int | float
    green_fraction: float
    z: float
    p_value: float
    watermarked: bool
    alpha: float
    account: str | None
    p_value_corrected: float | None
    provider: ScoreResult | None
    attribution: AttributionResult | None
    span: SpanResult | None
    config: dict[str, Any]
    total_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
