"""The evidence, typed: frozen dataclasses whose JSON (``to_json``) is the content of ``report.json``.

Each class is one JSON object of the report, one field per key, under the same names, so every value the HTML
shows has a JSON path (``scans.0.subject_result.p_corrected``) that :func:`lookup` resolves. ``from_json`` reads
that JSON back, and the two are exact inverses: ``Evidence.from_json(ev.to_json()) == ev`` and
``Evidence.from_json(data).to_json() == data`` for any ``report.json`` this package wrote (format :data:`FORMAT`).

Records the report quotes from elsewhere (the monitor's alerts and enforcement records, the parameters and raw
result of a scan, an account's registration details) are kept verbatim as JSON objects, with typed accessors for
what the report reads from them: evidence quotes what was recorded rather than a re-interpretation of it.

Example:
    >>> s = Subject("account", "acct_1", ("acct_1",))
    >>> s.to_json()
    {'kind': 'account', 'id': 'acct_1', 'account_ids': ['acct_1'], 'source': 'account'}
    >>> Subject.from_json(s.to_json()) == s
    True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

FORMAT = "antidistill/evidence-report/v1"


# ---- JSON values ---------------------------------------------------------------------------------------
def is_prob(v: Any) -> bool:
    """Whether ``v`` is a number in [0, 1] (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def num(v: Any) -> float | None:
    """``v`` as a finite float, or ``None`` when it is not a finite number (bools are not numbers here)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def as_int(v: Any) -> int | None:
    """``v`` as an int, or ``None`` when it is not a finite number."""
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def opt_str(v: Any) -> str | None:
    """``None`` stays ``None``; anything else becomes its string."""
    return None if v is None else str(v)


def iso(dt: datetime | None) -> str | None:
    """A time as the report writes it: ISO 8601 in UTC with a ``Z``."""
    if dt is None:
        return None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat().replace("+00:00", "Z")


def parse_time(v: Any) -> datetime | None:
    """A time from a datetime, a Unix timestamp or an ISO string (naive times are UTC); ``None`` otherwise."""
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, int | float) and not isinstance(v, bool):
        return datetime.fromtimestamp(v, UTC)
    if isinstance(v, str) and v:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return None


def lookup(evidence: Any, path: str) -> Any:
    """The value at a dotted ``path`` (list indices as numbers), as ``data-field`` attributes name them.

    Example:
        >>> lookup({"a": [{"b": 3}]}, "a.0.b")
        3
    """
    cur = evidence
    for part in path.split("."):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


# ---- the codec: one JSON key per field ------------------------------------------------------------------
def _encode(value: Any) -> Any:
    """A field's value as JSON data (records by their ``to_json``; tuples as lists; mappings copied)."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any, hint: Any) -> Any:
    """JSON data as a field of type ``hint`` (a record, ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]``)."""
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_json(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        arms = [a for a in args if a is not type(None)]
        return _decode(value, arms[0]) if len(arms) == 1 else value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in value)
        return tuple(_decode(v, a) for v, a in zip(value, args, strict=True))
    if origin is Mapping:
        return {str(k): _decode(v, args[1]) for k, v in value.items()}
    return value


class Record:
    """Base of the evidence classes: a frozen dataclass that is one JSON object, one key per field.

    Fields named in ``_omit_at_default`` are left out of the JSON while they hold their default (a key the report
    writes only when it has something to say).
    """

    _omit_at_default: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record (fresh lists and dicts; safe to modify)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self._omit_at_default and value == f.default:
                continue
            out[f.name] = _encode(value)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The record from its JSON object.

        Raises:
            ValueError: ``data`` is not an object, or lacks a key without a default.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        hints = _hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                kwargs[f.name] = _decode(data[f.name], hints[f.name])
            elif f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}: missing field {f.name!r}")
        return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Verbatim(Record):
    """A record quoted as it was written elsewhere: its JSON object is ``data``, unchanged."""

    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return _encode(self.data)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        return cls(_decode(data, Mapping[str, Any]))  # type: ignore[call-arg]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the record as written."""
        return self.data.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.data


# ---- the subject and its accounts ----------------------------------------------------------------------
@dataclass(frozen=True)
class Subject(Record):
    """Whom the report is about.

    Args:
        kind: ``"account"`` or ``"cluster"``.
        id: the account id, or the cluster id (an id the monitor recorded, or ``"list"`` for an explicit list).
        account_ids: the accounts, in a stable order.
        source: how a cluster was given: ``"monitor"`` (alerts carry its id), ``"list"`` or ``"file"``.
    """

    kind: str
    id: str
    account_ids: tuple[str, ...]
    source: str = "account"


@dataclass(frozen=True)
class Limits(Record):
    """An account's rate limits (``None``: the installation's default)."""

    rpm: int | None
    tpm: int | None
    tokens_per_day: int | None


@dataclass(frozen=True)
class ApiKeyRecord(Record):
    """An API key an account held: its id and the first characters only (the key is never stored readable)."""

    id: str
    prefix: str
    created_at: str | None
    revoked_at: str | None


@dataclass(frozen=True)
class AccountRecord(Record):
    """An account of the subject: registration, keys, and its traffic in the audit log (``accounts.N``)."""

    id: str
    name: str
    enabled: bool
    created_at: str | None
    limits: Limits
    metadata: Mapping[str, Any]
    api_keys: tuple[ApiKeyRecord, ...]
    exchanges: int
    prompt_tokens: int
    completion_tokens: int
    first_exchange: str | None
    last_exchange: str | None
    watermark_key_ids: tuple[str, ...]
    unwatermarked: int


# ---- the exchanges -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExchangeRecord(Record):
    """One exchange of the subject, as the audit log holds it (``exchanges.items.N``)."""

    seq: int
    response_id: str | None
    account_id: str
    created_at: str | None
    endpoint: str | None
    status: Any
    prompt_tokens: int | None
    completion_tokens: int | None
    watermark_key_id: str | None
    watermark_status: Any
    prompt_excerpt: str
    hash: str
    checkpoint_seq: int | None


@dataclass(frozen=True)
class TimelineBin(Record):
    """Exchanges and tokens in one hour, day or week starting at ``start``."""

    start: str
    exchanges: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Timeline(Record):
    """The exchanges over time; ``bin`` is ``hour``, ``day`` or ``week`` (``None``: no exchange)."""

    bin: str | None
    bins: tuple[TimelineBin, ...]


@dataclass(frozen=True)
class ExchangeSection(Record):
    """What the subject harvested: counts and totals over all exchanges, the first ``listed`` of them."""

    count: int
    listed: int
    truncated: bool
    prompt_tokens: int
    completion_tokens: int
    first: str | None
    last: str | None
    endpoints: Mapping[str, int]
    client_addrs: Mapping[str, int]
    user_agents: Mapping[str, int]
    statuses: Mapping[str, int]
    unwatermarked: int
    timeline: Timeline
    items: tuple[ExchangeRecord, ...]


# ---- the audit log -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification(Record):
    """The audit log's verification when the report was made (``audit.verification``)."""

    ok: bool
    records: int
    checkpoints: int
    first_bad_seq: int | None
    first_bad_response_id: str | None
    problem: str | None
    details: Mapping[str, Any]


@dataclass(frozen=True)
class AuditHead(Record):
    """The head of the log: the last record, the last checkpoint, and the head's signature."""

    seq: int
    hash: str | None
    last_checkpoint_seq: int | None
    signed_at: str | None
    signature: str | None


@dataclass(frozen=True)
class CheckpointRecord(Record):
    """A signed checkpoint covering records ``covers[0]..covers[1]``, ``subject_records`` of them the subject's."""

    seq: int
    hash: str
    prev_checkpoint_seq: int
    created_at: str | None
    public_key: str
    public_key_fingerprint: str | None
    signature: str
    covers: tuple[int, int]
    subject_records: int


@dataclass(frozen=True)
class Reverify(Record):
    """A command a third party runs to re-check the log, and what it checks."""

    command: str
    what: str


@dataclass(frozen=True)
class AuditSection(Record):
    """The integrity of the records (``audit``)."""

    verification: Verification
    head: AuditHead
    checkpoint_every: int | None
    public_key: str | None
    public_key_fingerprint: str | None
    public_keys_seen: tuple[str, ...]
    checkpoints_total: int
    checkpoints_covering: int
    checkpoints: tuple[CheckpointRecord, ...]
    subject_records: int
    subject_records_unsigned: int
    reverify: tuple[Reverify, ...]


# ---- the monitor and the policy ------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertRecord(Verbatim):
    """An alert of the monitor, as the store recorded it (``monitor.alerts.N``)."""

    data: Mapping[str, Any]

    @property
    def at(self) -> datetime | None:
        return parse_time(self.data.get("at"))

    @property
    def account_id(self) -> str | None:
        return opt_str(self.data.get("account_id"))

    @property
    def level(self) -> str | None:
        return opt_str(self.data.get("level")) if self.data.get("level") else None

    @property
    def risk(self) -> float | None:
        return num(self.data.get("risk"))

    @property
    def reason_count(self) -> int | None:
        """How many reasons the alert lists (``None``: its reasons are not a list)."""
        reasons = self.data.get("reasons") or []
        return len(reasons) if isinstance(reasons, list) else None


@dataclass(frozen=True)
class EnforcementRecord(Verbatim):
    """An account's enforcement in force when the report was made, as the store holds it."""

    data: Mapping[str, Any]

    @property
    def action(self) -> Any:
        return self.data.get("action")

    @property
    def in_force(self) -> bool:
        """Whether it restricts the account (an action other than ``none``)."""
        return self.action not in (None, "none")


@dataclass(frozen=True)
class ActionRecord(Record):
    """An enforcement action the monitor took, from its record in the audit log (``monitor.actions.N``)."""

    seq: int
    account_id: str
    at: Any
    details: Mapping[str, Any]
    hash: str
    checkpoint_seq: int | None

    @property
    def action(self) -> Any:
        return self.details.get("action")

    @property
    def clause(self) -> Mapping[str, Any]:
        """The clause the action record quotes (``{id, title, text}``; empty when it quotes none)."""
        c = self.details.get("clause")
        return c if isinstance(c, Mapping) else {}


@dataclass(frozen=True)
class MonitorSection(Record):
    """The monitor's alerts and actions about the subject (``monitor``)."""

    available: bool
    note: str | None
    alerts: tuple[AlertRecord, ...]
    highest_level: str | None
    max_risk: float | None
    enforcement: Mapping[str, EnforcementRecord]
    actions: tuple[ActionRecord, ...]


@dataclass(frozen=True)
class CitedClause(Record):
    """A clause of the terms of service the monitor cited, and where (``quoted_text_differs``: an action record
    quotes another text than the policy file's, which changed since)."""

    _omit_at_default: ClassVar[frozenset[str]] = frozenset({"quoted_text_differs"})

    id: str
    title: str | None
    text: str | None
    cited_by: tuple[str, ...]
    quoted_text_differs: bool = False


@dataclass(frozen=True)
class PolicySection(Record):
    """The policy the clauses come from and the clauses cited (``policy``)."""

    available: bool
    name: str | None
    source: str | None
    clauses_breached: tuple[CitedClause, ...]
    clauses_total: int | None
    note: str | None


# ---- the scans -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanSource(Record):
    """Where a scan result came from, and the SHA-256 of the file as read."""

    path: str
    sha256: str | None
    bytes: int | None


@dataclass(frozen=True)
class TestResult(Record):
    """One test of a key (or pooled keys): ``green`` of ``n`` distinct word choices fell on its green lists."""

    __test__ = False  # not a pytest class

    green: int | None
    n: int | None
    fraction: float | None
    expected_fraction: float | None
    p_value: float | None
    p_corrected: float | None
    z: float | None
    key_id: str | None


@dataclass(frozen=True)
class SubjectResult(TestResult):
    """The test of the subject's key(s); ``computed_by`` is ``scan`` or says how the report pooled it."""

    kind: str
    id: str
    computed_by: str


@dataclass(frozen=True)
class ControlEntry(Record):
    """A control of a scan: a never-issued key (``kind`` ``key``) or a model that never saw our outputs."""

    name: str
    kind: str
    model: str | None
    key: str | None
    green: int | None
    tokens_scored: int | None
    p_value: float | None
    p_corrected: float | None
    significant: bool


@dataclass(frozen=True)
class KeyControls(Record):
    """The never-issued keys of a scan, summarised (``min_p_corrected``: the smallest p times their number)."""

    count: int
    min_p: float | None
    min_p_corrected: float | None
    significant: bool


@dataclass(frozen=True)
class CurvePoint(Record):
    """The p-values after the first ``tokens`` distinct word choices."""

    tokens: int
    p_value: float | None
    best_account_p: float | None


@dataclass(frozen=True)
class ScanEntry(Record):
    """A scan of a suspect model (``role`` ``suspect``) or of a control model (``control``) (``scans.N``).

    ``score_kind``: ``green`` (a green-list scheme: its tests count word choices on the key's lists) or ``mean``
    (a sampling scheme: its tests hold the mean score of a word choice, against that mean under the null).
    """

    _omit_at_default: ClassVar[frozenset[str]] = frozenset({"score_kind"})

    role: str
    source: ScanSource
    suspect: str
    mode: str | None
    alpha: float
    gamma: float | None
    p_value: float | None
    significant: bool
    verdict: str | None
    texts: int | None
    tokens_seen: int | None
    tokens_scored: int | None
    skipped: Mapping[str, Any]
    provider: TestResult | None
    subject_result: SubjectResult | None
    subject_p: float | None
    subject_significant: bool
    best_account: str | None
    attributed_account: str | None
    attributed_cluster: str | None
    accounts_tested: int
    controls: tuple[ControlEntry, ...]
    key_controls: KeyControls | None
    controls_ok: bool
    curve: tuple[CurvePoint, ...]
    parameters: Mapping[str, Any]
    raw: Mapping[str, Any]
    score_kind: str = "green"


# ---- the summary ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding(Record):
    """One sentence group of "What we found", on one ``topic``."""

    topic: str
    text: str


@dataclass(frozen=True)
class Confidence(Record):
    """One test of a suspect in words: ``about`` is ``subject`` (the subject's keys) or ``ours`` (any of ours)."""

    scan: int
    suspect: str
    about: str
    p_value: float
    alpha: float
    one_in: float | None
    one_in_words: str
    significant: bool
    text: str


@dataclass(frozen=True)
class Summary(Record):
    """The plain-words summary: the verdict, a headline, the findings and how sure we are (``summary``)."""

    verdict: str
    controls_ok: bool
    headline: str
    findings: tuple[Finding, ...]
    confidence: tuple[Confidence, ...]


@dataclass(frozen=True)
class Evidence(Record):
    """Everything the report shows: the content of ``report.json``.

    ``summary`` is ``None`` only while the evidence is being gathered (the wording is made from the rest).
    """

    _omit_at_default: ClassVar[frozenset[str]] = frozenset({"summary"})

    format: str
    generated_at: str | None
    antidistill_version: str
    subject: Subject
    accounts: tuple[AccountRecord, ...]
    exchanges: ExchangeSection
    audit: AuditSection
    monitor: MonitorSection
    scans: tuple[ScanEntry, ...]
    policy: PolicySection
    summary: Summary | None = None

    @property
    def suspects(self) -> tuple[ScanEntry, ...]:
        """The scans of suspect models (not the control scans)."""
        return tuple(s for s in self.scans if s.role == "suspect")

    @property
    def suspect_indices(self) -> tuple[int, ...]:
        """Where the scans of suspect models are in ``scans`` (their JSON paths are ``scans.N``)."""
        return tuple(i for i, s in enumerate(self.scans) if s.role == "suspect")


__all__ = [
    "FORMAT",
    "AccountRecord",
    "ActionRecord",
    "AlertRecord",
    "ApiKeyRecord",
    "AuditHead",
    "AuditSection",
    "CheckpointRecord",
    "CitedClause",
    "Confidence",
    "ControlEntry",
    "CurvePoint",
    "EnforcementRecord",
    "Evidence",
    "ExchangeRecord",
    "ExchangeSection",
    "Finding",
    "KeyControls",
    "Limits",
    "MonitorSection",
    "PolicySection",
    "Record",
    "Reverify",
    "ScanEntry",
    "ScanSource",
    "Subject",
    "SubjectResult",
    "Summary",
    "TestResult",
    "Timeline",
    "TimelineBin",
    "Verification",
    "as_int",
    "iso",
    "lookup",
    "num",
    "opt_str",
    "parse_time",
]
