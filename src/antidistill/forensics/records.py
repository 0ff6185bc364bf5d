"""Detection on audit records: every completion tested with the watermark configuration its own record names.

A deployment may change its scheme or parameters (``ANTIDISTILL_WATERMARK_*``) at any time; the audit record of
each exchange names the configuration that marked it (``watermark.config``) and the key that did
(``watermark.key_id``). Reading a record with the server's current configuration would test the wrong hypothesis
(a Gumbel-max text scored as green counts, or the other way round) and lose the mark; so a record is always read
with its own, and old records stay detectable whatever the default becomes.

Example:
    >>> reports = detect_record(record, tokenizer, ring)                        # doctest: +SKIP
    >>> reports[0].watermarked, reports[0].account, reports[0].config["scheme"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from antidistill.detection.detector import DEFAULT_ALPHA, Detector
from antidistill.detection.results import DetectionReport
from antidistill.detection.text import MIN_PAIRS, TextDetector
from antidistill.errors import InputError
from antidistill.forensics.inputs import record_config
from antidistill.keys import KeyRing
from antidistill.store.api import AuditRecord
from antidistill.watermark.config import WatermarkConfig


@dataclass(frozen=True)
class RecordDetection:
    """The detection of one audit record: its configuration and one report (or error) per completion."""

    response_id: str
    account_id: str
    key_id: str
    config: WatermarkConfig
    reports: list[DetectionReport | InputError]


def _get(rec: AuditRecord | Mapping[str, Any], name: str) -> Any:
    return getattr(rec, name) if isinstance(rec, AuditRecord) else rec.get(name)


def detect_record(
    record: AuditRecord | Mapping[str, Any],
    tokenizer: Any,
    ring: KeyRing,
    *,
    accounts: Sequence[str] | None = None,
    alpha: float = DEFAULT_ALPHA,
    vocab_size: int | None = None,
    min_pairs: int = MIN_PAIRS,
) -> RecordDetection:
    """Test every completion of ``record`` for the watermark, with the configuration the record names.

    Args:
        record: an audit record (``Store.iter_records``) or its exported dict (``Store.iter_audit``).
        tokenizer: the served model's tokenizer.
        ring: the key ring (the provider key and the accounts' keys, every version).
        accounts: candidate accounts to attribute among (default: the record's own account).
        alpha: significance level.
        vocab_size: the model's vocabulary size (default: the tokenizer's).
        min_pairs: completions with fewer distinct pairs are reported as too short (an :class:`InputError`).

    Raises:
        InputError: the record is not watermarked, or names a configuration this version cannot read.
    """
    wm = _get(record, "watermark") or {}
    config = record_config(wm)
    if config is None:
        reason = wm.get("reason") or wm.get("status") or "no key and configuration recorded"
        raise InputError(f"record {_get(record, 'response_id')} is not watermarked ({reason})")
    names = list(accounts) if accounts is not None else [str(_get(record, "account_id"))]
    try:
        candidates = [k for a in dict.fromkeys(names) for k in ring.account_keys(a)]
    except ValueError as exc:
        raise InputError(str(exc)) from None
    provider_keys = ring.provider_keys() if config.provider_fraction > 0 else []
    detector = Detector(config, vocab_size=vocab_size if vocab_size is not None else len(tokenizer))
    td = TextDetector(tokenizer, detector, provider_keys, candidates, alpha, min_pairs)
    texts = [t if isinstance(t, str) else "" for t in (_get(record, "completion") or [])]
    return RecordDetection(
        str(_get(record, "response_id")),
        str(_get(record, "account_id")),
        str(wm.get("key_id")),
        config,
        td.detect_many(texts),
    )


def detect_records(
    records: Iterable[AuditRecord | Mapping[str, Any]],
    tokenizer: Any,
    ring: KeyRing,
    **kwargs: Any,
) -> list[RecordDetection]:
    """:func:`detect_record` on every watermarked record (others are left out); keyword arguments as there."""
    out = []
    for rec in records:
        if record_config(_get(rec, "watermark") or {}) is None:
            continue
        out.append(detect_record(rec, tokenizer, ring, **kwargs))
    return out
