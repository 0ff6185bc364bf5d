"""The storage interface the gateway, the CLI and (later) the monitor use. Implemented in :mod:`.sql`.

Plain dataclasses cross this boundary, never ORM objects, so nothing secret (key hashes) can leak into a
response by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from antidistill.errors import AntidistillError


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


def is_pending_record(record: Any) -> bool:
    """Whether an audit record (a dict from ``iter_audit``, an export row or an entry) is a stream's opening record.

    Example:
        >>> is_pending_record({"status": 102}), is_pending_record({"status": 200})
        (True, False)
    """
    status = record.get("status") if isinstance(record, dict) else getattr(record, "status", None)
    return status == PENDING_STATUS


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
