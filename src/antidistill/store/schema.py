"""Tables (SQLAlchemy 2 typed declarative). The migrations in ``migrations/versions`` create exactly these.

Notes on types:

* Times are stored in UTC. SQLite keeps no time zone, so every time read back from it is UTC by convention.
* The JSON parts of an audit record (request, completion, watermark) are ``TEXT`` holding JSON, not ``JSONB``:
  the chain hash is recomputed from what the database returns, and JSONB would normalise numbers
  (``1e100`` comes back as an integer) and so break verification of honest records.
* Account metadata is not hashed, so it is ``JSONB`` on PostgreSQL, where the monitor can query it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy import Text as TextType
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

GENESIS_HASH = "0" * 64
JSONType = JSON().with_variant(JSONB(), "postgresql")


# Named constraints, so that the migrations and these models agree on names on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    # ``metadata`` is taken by declarative classes; the column keeps the plain name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    """An API key, as the SHA-256 (hex) of the key; the key itself is never stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditRecordRow(Base):
    """One exchange in the hash chain. No foreign keys: evidence must outlive the accounts it names."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_account_time", "account_id", "created_at"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    response_id: Mapped[str] = mapped_column(TextType, index=True)
    account_id: Mapped[str] = mapped_column(TextType)
    api_key_id: Mapped[str] = mapped_column(TextType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    endpoint: Mapped[str] = mapped_column(TextType)
    client_addr: Mapped[str | None] = mapped_column(TextType)
    user_agent: Mapped[str | None] = mapped_column(TextType)
    request: Mapped[str] = mapped_column(TextType)
    completion: Mapped[str] = mapped_column(TextType)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(TextType)
    latency_ms: Mapped[float] = mapped_column(Double)
    watermark: Mapped[str] = mapped_column(TextType)
    status: Mapped[int] = mapped_column(Integer)
    #: the request body as received (format version 2; ``NULL`` in older records and in policy actions)
    request_raw: Mapped[str | None] = mapped_column(TextType)


class AuditCheckpointRow(Base):
    """A signed statement "record ``seq`` has hash ``hash``", chained to the checkpoint before it."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    prev_checkpoint_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    public_key: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class AuditHeadRow(Base):
    """The single row holding the chain head: the row every append locks, so appends form one history."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    last_checkpoint_seq: Mapped[int] = mapped_column(BigInteger)
    #: the head's Ed25519 signature over (seq, hash, signed_at), renewed at every commit (0003)
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    public_key: Mapped[str | None] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(String(128))


# Typed as Table (the ORM types __table__ as the wider FromClause): what insert()/update() take.
accounts = cast(Table, AccountRow.__table__)
api_keys = cast(Table, ApiKeyRow.__table__)
audit_records = cast(Table, AuditRecordRow.__table__)
audit_checkpoints = cast(Table, AuditCheckpointRow.__table__)
audit_head = cast(Table, AuditHeadRow.__table__)


class MonitorAlertRow(Base):
    """An alert: a monitor assessment that reached the policy, and the action taken. No foreign keys, like the
    audit log: alerts are evidence and outlive the accounts they name."""

    __tablename__ = "monitor_alerts"
    __table_args__ = (Index("ix_monitor_alerts_account_time", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(TextType)
    cluster_id: Mapped[str | None] = mapped_column(TextType)
    risk: Mapped[float] = mapped_column(Double)
    level: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSONType)
    scores: Mapped[dict[str, Any]] = mapped_column(JSONType)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(16))
    clause: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    audit_seq: Mapped[int | None] = mapped_column(BigInteger)


class MonitorEnforcementRow(Base):
    """The enforcement state of one account (one row per account that was ever acted on)."""

    __tablename__ = "monitor_enforcement"

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    action: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))
    clause: Mapped[str | None] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(TextType)
    set_by: Mapped[str] = mapped_column(String(16))
    alert_id: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


monitor_alerts = cast(Table, MonitorAlertRow.__table__)
monitor_enforcement = cast(Table, MonitorEnforcementRow.__table__)
