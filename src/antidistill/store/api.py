"""The storage interface the gateway, the monitor, forensics and the workflows use. Implemented in :mod:`.sql`.

Plain dataclasses cross this boundary, never ORM objects, so nothing secret (key hashes) can leak into a
response by accident. What a store must offer is written down as protocols, one per part
(:class:`AccountStore`, :class:`AuditLog`, :class:`EnforcementStore`) and :class:`Storage` for all three: each
names exactly the methods its users call, and mypy checks that :class:`~antidistill.store.sql.Store` satisfies
them. The audit log reads back as typed :class:`AuditRecord` objects (``Store.iter_records``) or as the exported
JSON dicts (``Store.iter_audit``, what ``audit export`` writes and the hash is computed from).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from antidistill.errors import AntidistillError, InputError

if TYPE_CHECKING:  # the protocols name them; .signing stays out of this module's (light) imports
    from antidistill.store.signing import Checkpoint, Head, SignedHead


@dataclass(frozen=True)
class Account:
    """A customer account.

    Args:
        id: stable id (``acct_…``), also the watermark key's account id.
        name: display name.
        enabled: disabled accounts get 403.
        rpm, tpm, tokens_per_day: limits (``None``: unlimited).
        metadata: what the monitor links accounts on: ``organisation``, ``payment_fingerprint``,
            ``signup_source``, … (free-form JSON object).
    """

    id: str
    name: str
    enabled: bool
    rpm: int | None
    tpm: int | None
    tokens_per_day: int | None
    metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key's public facts; the key itself is shown once at creation and stored only as a hash."""

    id: str
    account_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One exchange, as the gateway hands it to the audit log.

    ``watermark`` is ``{"key_id": …, "config": {…}}`` or ``{"status": "unwatermarked", "reason": …}``.
    ``completion`` holds the text of every choice. ``request`` is the parsed body; ``request_raw`` the body's
    bytes exactly as received (the gateway always keeps them; ``None`` for records it did not receive, such as
    policy actions). A streamed exchange has two records: one with status :data:`PENDING_STATUS` written before
    any text leaves, and the final one.
    """

    response_id: str
    account_id: str
    api_key_id: str
    created_at: datetime
    endpoint: str
    client_addr: str | None
    user_agent: str | None
    request: dict[str, Any]
    completion: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    latency_ms: float
    watermark: dict[str, Any]
    status: int = 200
    request_raw: bytes | None = None


class AuditIntegrityError(AntidistillError):
    """The audit log's stored head is not one this installation signed: it was changed with database access alone
    (or belongs to another master key). Nothing is appended to such a log."""


#: the status of a streamed exchange's first record, written before any of its text is sent (HTTP's
#: "102 Processing"); the exchange's final record follows under the same ``response_id``
PENDING_STATUS = 102


#: the endpoint of every audit record that is not an exchange starts so (the monitor's ``monitor:action``): no
#: HTTP path lacks its leading ``/``
ACTION_ENDPOINT_PREFIX = "monitor:"


def is_pending_record(record: Any) -> bool:
    """Whether an audit record (an :class:`AuditRecord`, a dict from ``iter_audit``, an export row or an entry) is
    a stream's opening record.

    Example:
        >>> is_pending_record({"status": 102}), is_pending_record({"status": 200})
        (True, False)
    """
    status = record.get("status") if isinstance(record, dict) else getattr(record, "status", None)
    return status == PENDING_STATUS


def encode_raw(raw: bytes) -> dict[str, str]:
    """The lossless JSON form of a request body, as records keep it: its UTF-8 text, or base64 for bytes that are
    not UTF-8.

    Example:
        >>> encode_raw(b'{"x": NaN}'), encode_raw(b"\\xff")
        ({'utf8': '{"x": NaN}'}, {'base64': '/w=='})
    """
    try:
        text = raw.decode("utf-8")
        if "\x00" not in text:  # PostgreSQL text cannot hold NUL
            return {"utf8": text}
    except UnicodeDecodeError:
        pass
    return {"base64": base64.b64encode(raw).decode("ascii")}


def decode_raw(value: Mapping[str, str]) -> bytes:
    """The request body bytes back from :func:`encode_raw`'s form.

    Example:
        >>> decode_raw({"base64": "/w=="}), decode_raw(encode_raw("é".encode()))
        (b'\\xff', b'\\xc3\\xa9')
    """
    if "utf8" in value:
        return value["utf8"].encode("utf-8")
    return base64.b64decode(value["base64"], validate=True)


_T = TypeVar("_T")


def _field(row: Mapping[str, Any], name: str, kind: type[_T] | tuple[type[Any], ...], *, optional: bool = False) -> Any:
    """``row[name]`` checked to be a ``kind`` (``None`` too when ``optional``); :class:`InputError` names it."""
    if name not in row:
        raise InputError(f"audit record: no field {name!r}")
    value = row[name]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):  # no field is a bool; True is an int to Python
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"audit record: {name} must be {want}, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record of the audit log as read back: its place in the chain and the exchange (or action) it holds,
    every field with its real type (what :meth:`Store.iter_records` yields).

    The fields of :class:`AuditEntry`, plus ``seq``, ``prev_hash`` and ``hash`` (hex) and ``v``, the payload's
    format version (1; 2 for a record that keeps the raw request body). ``created_at`` is in UTC;
    ``request_raw`` holds the body's bytes as received (decoded from their stored form), ``None`` for a record
    without them. :meth:`from_export` reads one back from an exported dict (``Store.iter_audit``, a line of
    ``audit export``).

    Example:
        >>> r = AuditRecord.from_export({"v": 2, "seq": 1, "prev_hash": "0" * 64, "hash": "ab" * 32,
        ...     "response_id": "chatcmpl-1", "account_id": "acct_1", "api_key_id": "key_1",
        ...     "created_at": "2025-01-31T12:00:00.000000Z", "endpoint": "/v1/completions", "client_addr": None,
        ...     "user_agent": None, "request": {"prompt": "hi"}, "completion": ["hello"], "prompt_tokens": 1,
        ...     "completion_tokens": 1, "finish_reason": "stop", "latency_ms": 3.5,
        ...     "watermark": {"status": "unwatermarked"}, "status": 200, "request_raw": {"base64": "/w=="}})
        >>> r.created_at.isoformat(), r.request_raw, r.is_pending, r.is_action
        ('2025-01-31T12:00:00+00:00', b'\\xff', False, False)
    """

    seq: int
    prev_hash: str
    hash: str
    v: int
    response_id: str
    account_id: str
    api_key_id: str
    created_at: datetime
    endpoint: str
    client_addr: str | None
    user_agent: str | None
    request: dict[str, Any]
    completion: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    latency_ms: float
    watermark: dict[str, Any]
    status: int
    request_raw: bytes | None = None

    @property
    def is_pending(self) -> bool:
        """A stream's opening record (status :data:`PENDING_STATUS`): its final record follows and is the exchange."""
        return self.status == PENDING_STATUS

    @property
    def is_action(self) -> bool:
        """A policy action (endpoint ``monitor:…``), not an exchange."""
        return self.endpoint.startswith(ACTION_ENDPOINT_PREFIX)

    @property
    def is_exchange(self) -> bool:
        """An exchange's final record: neither an action nor a stream's opening record."""
        return not (self.is_pending or self.is_action)

    @classmethod
    def from_export(cls, row: Mapping[str, Any]) -> AuditRecord:
        """The record an exported dict holds (``Store.iter_audit``, a line of an ``audit export`` JSONL file).

        Raises:
            InputError: a field is missing or has the wrong type (the message names it).
        """
        created = _field(row, "created_at", (str, datetime))
        try:
            created = created if isinstance(created, datetime) else datetime.fromisoformat(created)
        except ValueError:
            raise InputError(f"audit record: created_at is not an ISO 8601 time: {created!r}") from None
        completion = _field(row, "completion", list)
        if not all(isinstance(c, str) for c in completion):
            raise InputError("audit record: completion must be a list of strings")
        raw = row.get("request_raw")
        if raw is not None:
            if not isinstance(raw, Mapping) or not ({"utf8", "base64"} & raw.keys()):
                raise InputError('audit record: request_raw must be {"utf8": …} or {"base64": …}')
            try:
                raw = decode_raw(raw)
            except (ValueError, TypeError, AttributeError):  # binascii.Error is a ValueError
                raise InputError("audit record: request_raw does not decode") from None
        return cls(
            seq=_field(row, "seq", int),
            prev_hash=_field(row, "prev_hash", str),
            hash=_field(row, "hash", str),
            v=_field(row, "v", int),
            response_id=_field(row, "response_id", str),
            account_id=_field(row, "account_id", str),
            api_key_id=_field(row, "api_key_id", str),
            created_at=created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC),
            endpoint=_field(row, "endpoint", str),
            client_addr=_field(row, "client_addr", str, optional=True),
            user_agent=_field(row, "user_agent", str, optional=True),
            request=_field(row, "request", dict),
            completion=completion,
            prompt_tokens=_field(row, "prompt_tokens", int),
            completion_tokens=_field(row, "completion_tokens", int),
            finish_reason=_field(row, "finish_reason", str, optional=True),
            latency_ms=float(_field(row, "latency_ms", (int, float))),
            watermark=_field(row, "watermark", dict),
            status=_field(row, "status", int),
            request_raw=raw,
        )


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of ``audit verify``.

    Args:
        ok: the whole history verifies.
        records, checkpoints: how many were checked.
        first_bad_seq / first_bad_response_id: the first record where the history was edited, deleted,
            inserted or reordered.
        problem: what is wrong there, in words.
    """

    ok: bool
    records: int
    checkpoints: int
    first_bad_seq: int | None = None
    first_bad_response_id: str | None = None
    problem: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


#: what the policy can do to an account, mildest first (``none``: nothing, or cleared by an admin)
ENFORCEMENT_ACTIONS: tuple[str, ...] = ("none", "flag", "throttle", "review", "block")


@dataclass(frozen=True)
class Alert:
    """A monitor assessment that reached the policy, and the action taken on it.

    Args:
        id: ``alert_…``.
        account_id, cluster_id: whom it is about (``cluster_id`` ``None``: the account on its own).
        risk, level: the monitor's risk score in [0, 1] and its level (``watch``, ``alert``, ``severe``).
        reasons: the monitor's reasons, most important first.
        scores: the parts the risk was combined from.
        at: the (event) time of the assessment.
        action: the action taken (one of :data:`ENFORCEMENT_ACTIONS`; ``none`` when the account's enforcement
            was already as strict).
        clause: the terms-of-service clause the action was taken under.
        created_at: when the alert was recorded.
        audit_seq: the audit record of the action (``None`` when no action was taken).
    """

    id: str
    account_id: str
    cluster_id: str | None
    risk: float
    level: str
    reasons: tuple[str, ...]
    scores: dict[str, float]
    at: datetime
    action: str
    clause: str | None
    created_at: datetime
    audit_seq: int | None = None


@dataclass(frozen=True)
class Enforcement:
    """What the gateway does to an account's next requests.

    Args:
        account_id: the account.
        action: one of :data:`ENFORCEMENT_ACTIONS`.
        level: the risk level it was set at.
        clause: the terms-of-service clause it is taken under.
        since: when it was set; ``until``: when it lapses (``None``: until an admin clears it).
        rpm, tpm: the reduced limits of a ``throttle``.
        reason: in words, for the admin (never shown with a secret).
        set_by: ``monitor`` (the gateway or a scan) or ``admin``.
        alert_id: the alert that caused it.
    """

    account_id: str
    action: str
    level: str
    clause: str | None
    since: datetime
    until: datetime | None = None
    rpm: int | None = None
    tpm: int | None = None
    reason: str = ""
    set_by: str = "monitor"
    alert_id: str | None = None

    def active(self, now: datetime) -> bool:
        """Whether it still restricts the account at ``now``."""
        return self.action != "none" and (self.until is None or now < self.until)


class NotFoundError(AntidistillError, LookupError):
    """An account or API key id that does not exist (the CLI shows the message; an API answers 404)."""


# ---- what a store offers ------------------------------------------------------------------------------------
# Each protocol names exactly the methods its users call (the gateway, the monitor, forensics, the workflows);
# antidistill.store.sql.Store satisfies all of them, and mypy holds it to that (see the end of sql.py). Code that
# needs more (opening, migrating, sealing, exporting: the CLI) takes the Store itself.
class AccountStore(Protocol):
    """Accounts and API keys: the admin API, authentication, the simulator's account set-up, reports."""

    def create_account(
        self,
        name: str,
        rpm: int | None = None,
        tpm: int | None = None,
        tokens_per_day: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Account, str, ApiKeyInfo]: ...

    def get_account(self, account_id: str) -> Account | None: ...

    def list_accounts(self) -> list[Account]: ...

    def set_enabled(self, account_id: str, enabled: bool) -> Account: ...

    def issue_key(self, account_id: str) -> tuple[ApiKeyInfo, str]: ...

    def revoke_key(self, key_id: str) -> ApiKeyInfo: ...

    def list_keys(self, account_id: str) -> list[ApiKeyInfo]: ...

    def authenticate(self, api_key: str) -> tuple[Account, ApiKeyInfo] | None: ...


class AuditLog(Protocol):
    """The hash-chained audit log: the gateway appends, the monitor and forensics read and verify."""

    def append_audit(self, entry: AuditEntry) -> int: ...

    def audit_head(self) -> Head: ...

    def iter_records(self, batch_size: int = 1000) -> Iterator[AuditRecord]: ...

    def iter_audit(self, batch_size: int = 1000) -> Iterator[dict[str, Any]]: ...

    def verify_audit(self, batch_size: int = 1000, anchor: SignedHead | None = None) -> VerifyResult: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    @property
    def checkpoint_every(self) -> int: ...


class EnforcementStore(Protocol):
    """The monitor's alerts and each account's enforcement state (an action's audit record in the same
    transaction)."""

    def record_alert(self, alert: Alert) -> Alert: ...

    def get_alert(self, alert_id: str) -> Alert | None: ...

    def list_alerts(
        self, account_id: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[Alert]: ...

    def get_enforcement(self, account_id: str) -> Enforcement | None: ...

    def list_enforcements(self, active_only: bool = True) -> list[Enforcement]: ...

    def set_enforcement(
        self,
        enforcement: Enforcement,
        *,
        audit: AuditEntry | None = None,
        alert: Alert | None = None,
        only_if: Callable[[Enforcement | None], bool] | None = None,
    ) -> int | None: ...

    def clear_enforcement(
        self, account_id: str, by: str = "admin", *, reason: str = "cleared", audit: AuditEntry | None = None
    ) -> Enforcement | None: ...


class Storage(AccountStore, AuditLog, EnforcementStore, Protocol):
    """Everything the gateway (and a report) uses of one store; ``close`` releases its connections."""

    def close(self) -> None: ...
