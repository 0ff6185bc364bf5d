"""The SQL implementation of the store: accounts, API keys and the hash-chained audit log.

One history across threads, processes and replicas
--------------------------------------------------
Every append runs in one transaction that first takes the lock on the single ``audit_head`` row
(PostgreSQL: ``SELECT … FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``, the database's write lock, plus a
process-local mutex so threads queue instead of polling the busy handler), reads the head (last seq and
hash), inserts the record at ``seq + 1`` linked to that hash, signs a checkpoint when one is due, moves the
head and commits. Appends from any number of writers are therefore totally ordered by the lock, and the
transaction makes each one all-or-nothing: a writer killed mid-append leaves the previous head, never a
half-linked record. ``append_audit`` returns only after the commit is durable (PostgreSQL's default
``synchronous_commit``; SQLite ``synchronous=FULL``, see :mod:`antidistill.store.db`), so a response released
after it is in the log even if the process is killed the next instant.

Thread safety: a :class:`Store` is safe to share between threads (one engine, a pool of connections). Its
methods block on I/O; call them from a thread pool in async code (``starlette.concurrency.run_in_threadpool``
or plain ``def`` endpoints). After ``fork()`` open a new Store in the child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Engine, func, insert, inspect, select, text, update
from sqlalchemy.exc import OperationalError

from antidistill.errors import ConfigError, InputError
from antidistill.extras import require
from antidistill.keys import MASTER_KEY_FILE, MasterKey
from antidistill.settings import Settings, get_settings
from antidistill.store.api import (
    ENFORCEMENT_ACTIONS,
    Account,
    Alert,
    ApiKeyInfo,
    AuditEntry,
    AuditIntegrityError,
    AuditRecord,
    Enforcement,
    NotFoundError,
    Storage,
    VerifyResult,
    decode_raw,
)
from antidistill.store.chain import (
    FORMAT_VERSION,
    RAW_FORMAT_VERSION,
    STORED_FIELDS,
    ChainRecord,
    Checkpoint,
    Head,
    SignedHead,
    checkpoint_message,
    entry_columns,
    json_text,
    payload,
    record_hash,
    to_utc,
    verify_chain,
    verify_extension,
)
from antidistill.store.db import WRITE_OPTION, create_store_engine, default_url, normalize_url, safe_url
from antidistill.store.schema import (
    accounts,
    api_keys,
    audit_checkpoints,
    audit_head,
    audit_records,
    monitor_alerts,
    monitor_enforcement,
)

if TYPE_CHECKING:
    from alembic.config import Config

# alembic (about 0.25 s to import) is imported only when a schema must be migrated: an up-to-date database opens
# without it (migrate()). pyarrow only for a Parquet export (an extra of its own).

log = logging.getLogger(__name__)

API_KEY_PREFIX = "sk-ad-"
#: Characters of a key kept for display (``sk-ad-`` and 6 random characters: enough to tell keys apart).
API_KEY_DISPLAY_CHARS = 12
MAX_API_KEY_CHARS = 256
MAX_METADATA_BYTES = 64 * 1024
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: The newest migration (a test keeps it equal to the scripts' head); lets an up-to-date open skip alembic.
HEAD_REVISION = "0003"
#: the first revision whose head rows are signed (a log migrated from before it must be sealed by an operator)
SIGNED_HEAD_REVISION = "0003"
#: pg_advisory_xact_lock key serialising migrations of replicas that start together.
_MIGRATION_LOCK_KEY = 0x616E7469_64697374  # "antidist"
ExportFormat = Literal["jsonl", "parquet"]

# Line breaks JSON leaves unescaped but str.splitlines() and JavaScript split on (only ever inside strings,
# where the escape means the same).
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}

# Built once: an append is on every request's path, and building statements costs more than running them.
_LOCK_HEAD = select(audit_head).where(audit_head.c.id == 1).with_for_update()
_INSERT_RECORD = insert(audit_records)
_INSERT_CHECKPOINT = insert(audit_checkpoints)
_UPDATE_HEAD = update(audit_head).where(audit_head.c.id == 1)


def hash_api_key(api_key: str) -> str:
    """The stored form of an API key: SHA-256 of its UTF-8 text, as hex.

    A fast hash is right here (unlike for passwords): the key is 256 random bits, so there is nothing to
    guess, and ``authenticate`` runs on every request.
    """
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc_or_none(dt: datetime | None) -> datetime | None:
    return None if dt is None else to_utc(dt)


# ---- migrations ---------------------------------------------------------------------------------------
def _alembic_config() -> Config:
    from alembic.config import Config  # alembic is slow to import: only when migrating (see the imports)

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def _current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> str | None:
    """Bring the schema to the newest revision; safe when several processes start at once.

    A database already at :data:`HEAD_REVISION` costs one query (alembic is not even imported).

    Returns:
        the revision this call found before upgrading (``None``: a new database), or :data:`HEAD_REVISION` if
        there was nothing to do.
    """
    with engine.connect() as conn:
        if _current_revision(conn) == HEAD_REVISION:
            return HEAD_REVISION
    from alembic import command  # alembic is slow to import: only when migrating (see the imports)
    from alembic.util import CommandError

    cfg = _alembic_config()
    # The lock makes concurrent starters queue; the one that gets it second finds the schema at head.
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            before = _current_revision(conn)
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:  # e.g. a revision from a newer antidistill
                raise ConfigError(f"cannot migrate the database schema: {exc}") from None
            revision = _current_revision(conn)
    if revision != HEAD_REVISION:
        raise ConfigError(
            f"the database schema is at revision {revision}, this version of antidistill expects "
            f"{HEAD_REVISION}: is a newer antidistill using it?"
        )
    log.info("database schema at revision %s", revision)
    return before


# ---- conversions ---------------------------------------------------------------------------------------
def _account(row: Any) -> Account:
    return Account(
        id=row.id,
        name=row.name,
        enabled=bool(row.enabled),
        rpm=row.rpm,
        tpm=row.tpm,
        tokens_per_day=row.tokens_per_day,
        metadata=dict(row.metadata or {}),
        created_at=to_utc(row.created_at),
    )


def _key_info(row: Any) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        account_id=row.account_id,
        prefix=row.prefix,
        created_at=to_utc(row.created_at),
        revoked_at=_utc_or_none(row.revoked_at),
    )


def _alert(row: Any) -> Alert:
    return Alert(
        id=row.id,
        account_id=row.account_id,
        cluster_id=row.cluster_id,
        risk=float(row.risk),
        level=row.level,
        reasons=tuple(row.reasons or ()),
        scores=dict(row.scores or {}),
        at=to_utc(row.at),
        action=row.action,
        clause=row.clause,
        created_at=to_utc(row.created_at),
        audit_seq=row.audit_seq,
    )


def _alert_values(a: Alert) -> dict[str, Any]:
    if a.action not in ENFORCEMENT_ACTIONS:
        raise InputError(f"alert action must be one of {', '.join(ENFORCEMENT_ACTIONS)}, got {a.action!r}")
    risk = float(a.risk)
    if not math.isfinite(risk):
        raise InputError(f"alert risk must be a finite number, got {a.risk!r}")
    reasons = [str(r) for r in a.reasons]
    # a score the monitor could not compute (NaN) is left out rather than lose the alert
    scores = {str(k): float(v) for k, v in (a.scores or {}).items() if math.isfinite(float(v))}
    return {
        "id": a.id,
        "account_id": a.account_id,
        "cluster_id": a.cluster_id,
        "risk": risk,
        "level": a.level,
        "reasons": _check_metadata({"r": reasons})["r"],
        "scores": _check_metadata(scores),
        "at": to_utc(a.at),
        "action": a.action,
        "clause": a.clause,
        "created_at": to_utc(a.created_at),
        "audit_seq": a.audit_seq,
    }


def _record(row: Any) -> AuditRecord:
    """The typed record of a stored row (its JSON columns parsed, the raw body decoded); no validation: the
    values were validated on the way in, and a row edited behind the store's back is verify_audit's business."""
    raw = row.request_raw
    return AuditRecord(
        seq=row.seq,
        prev_hash=row.prev_hash,
        hash=row.hash,
        v=FORMAT_VERSION if raw is None else RAW_FORMAT_VERSION,
        response_id=row.response_id,
        account_id=row.account_id,
        api_key_id=row.api_key_id,
        created_at=to_utc(row.created_at),
        endpoint=row.endpoint,
        client_addr=row.client_addr,
        user_agent=row.user_agent,
        request=json.loads(row.request),
        completion=json.loads(row.completion),
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        finish_reason=row.finish_reason,
        latency_ms=float(row.latency_ms),
        watermark=json.loads(row.watermark),
        status=row.status,
        request_raw=None if raw is None else decode_raw(json.loads(raw)),
    )


def _enforcement(row: Any) -> Enforcement:
    return Enforcement(
        account_id=row.account_id,
        action=row.action,
        level=row.level,
        clause=row.clause,
        since=to_utc(row.since),
        until=_utc_or_none(row.until),
        rpm=row.rpm,
        tpm=row.tpm,
        reason=row.reason,
        set_by=row.set_by,
        alert_id=row.alert_id,
    )


def _enforcement_values(e: Enforcement) -> dict[str, Any]:
    if e.action not in ENFORCEMENT_ACTIONS:
        raise InputError(f"enforcement action must be one of {', '.join(ENFORCEMENT_ACTIONS)}, got {e.action!r}")
    if e.set_by not in ("monitor", "admin"):
        raise InputError(f"set_by must be 'monitor' or 'admin', got {e.set_by!r}")
    return {
        "account_id": e.account_id,
        "action": e.action,
        "level": e.level,
        "clause": e.clause,
        "since": to_utc(e.since),
        "until": _utc_or_none(e.until),
        "rpm": _check_limit("rpm", e.rpm),
        "tpm": _check_limit("tpm", e.tpm),
        "reason": str(e.reason),
        "set_by": e.set_by,
        "alert_id": e.alert_id,
        "updated_at": _now(),
    }


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError("account name must be a non-empty string")
    name = name.strip()
    if len(name) > 200:
        raise InputError(f"account name must be at most 200 characters, got {len(name)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError("account name must not contain control characters")
    return str(name)


def _check_limit(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**62:
        raise InputError(f"{field} must be a positive integer or None (unlimited), got {value!r}")
    if field != "tokens_per_day" and value > 2**31 - 1:
        raise InputError(f"{field} must be at most {2**31 - 1}, got {value}")
    return value


def _check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InputError("metadata must be a JSON object with string keys")
    try:
        text_ = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"metadata is not JSON-serialisable: {exc}") from None
    if len(text_.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise InputError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
    out: dict[str, Any] = json.loads(text_)
    return out


def _export_row(seq: int, prev_hash: str, hash_: str, cols: Mapping[str, Any]) -> dict[str, Any]:
    """A record as exported: its payload plus ``prev_hash`` and ``hash`` (so a reader can recompute the chain:
    ``hash == sha256(prev_hash || canonical(row without prev_hash and hash))``)."""
    return {**payload(seq, cols), "prev_hash": prev_hash, "hash": hash_}


class Store:
    """Accounts, API keys and the audit log in SQLite (default) or PostgreSQL.

    Args:
        engine: a configured engine (see :func:`antidistill.store.db.create_store_engine`).
        settings: the settings (checkpoint interval, data directory of the master key).
        master: the master key that signs audit checkpoints; ``None`` loads it from the settings when first
            needed (creating the key file like the key ring does).

    Use :meth:`open`, which also migrates the schema.

    Example:
        >>> store = Store.open("sqlite://")
        >>> account, api_key, key = store.create_account("alice", rpm=60, metadata={"organisation": "Acme"})
        >>> api_key.startswith("sk-ad-"), key.account_id == account.id
        (True, True)
        >>> store.authenticate(api_key)[0].name
        'alice'
        >>> store.authenticate("sk-ad-wrong") is None
        True
        >>> store.close()
    """

    def __init__(self, engine: Engine, settings: Settings, master: MasterKey | None = None) -> None:
        self._engine = engine
        self._settings = settings
        self._master = master
        self._is_sqlite = engine.dialect.name == "sqlite"
        # SQLite's busy handler polls with sleeps; threads of one process queue on this lock instead.
        self._sqlite_write_lock = threading.Lock()
        #: the last head this store signed (seq, hash, signature): found unchanged, it needs no re-verification
        self._own_head: tuple[int, str, str] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        url: str | None = None,
        settings: Settings | None = None,
        *,
        master: MasterKey | None = None,
        migrate_schema: bool = True,
    ) -> Store:
        """Connect to ``url`` (default: ``settings.database_url``, else ``antidistill.db`` in the data directory)
        and migrate the schema to the newest revision.

        Raises:
            ConfigError: the URL is not supported or the database cannot be reached.
        """
        settings = settings if settings is not None else get_settings()
        u = normalize_url(url if url is not None else default_url(settings))
        engine = create_store_engine(u)
        before: str | None = HEAD_REVISION
        try:
            if migrate_schema:
                before = migrate(engine)
            else:
                with engine.connect():
                    pass
        except OperationalError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            raise ConfigError(f"cannot open the database {safe_url(u)}: {reason}") from None
        except BaseException:
            engine.dispose()
            raise
        if before is not None and before < SIGNED_HEAD_REVISION:
            log.warning(
                "audit log upgraded to signed heads: nothing is appended to it until an operator has run "
                "`antidistill audit verify` and then `antidistill audit seal`"
            )
        return cls(engine, settings, master)

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        lock = self._sqlite_write_lock if self._is_sqlite else contextlib.nullcontext()
        with lock, self._engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self, snapshot: bool = False) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if snapshot and not self._is_sqlite:
                # One snapshot for a whole verify/export; SQLite's read transaction (WAL) is one already.
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn

    # ---- accounts -------------------------------------------------------------------------------------
    def create_account(
        self,
        name: str,
        rpm: int | None = None,
        tpm: int | None = None,
        tokens_per_day: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Account, str, ApiKeyInfo]:
        """Create an account with one API key; the key's text is returned here and never again.

        Args:
            name: display name.
            rpm, tpm, tokens_per_day: limits, ``None`` for unlimited.
            metadata: what the monitor links accounts on (``organisation``, ``payment_fingerprint``,
                ``signup_source``, …).

        Returns:
            ``(account, api_key, key_info)``.
        """
        account_id = _new_id("acct_")
        values = {
            "id": account_id,
            "name": _check_name(name),
            "enabled": True,
            "rpm": _check_limit("rpm", rpm),
            "tpm": _check_limit("tpm", tpm),
            "tokens_per_day": _check_limit("tokens_per_day", tokens_per_day),
            "metadata": _check_metadata(metadata),
            "created_at": _now(),
        }
        with self._write() as conn:
            conn.execute(insert(accounts).values(**values))
            info, plaintext = self._insert_key(conn, account_id)
        log.info("account %s created", values["id"])
        return _account(_Row(values)), plaintext, info

    def get_account(self, account_id: str) -> Account | None:
        with self._read() as conn:
            row = conn.execute(select(accounts).where(accounts.c.id == account_id)).one_or_none()
        return None if row is None else _account(row)

    def list_accounts(self) -> list[Account]:
        """Every account, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(accounts).order_by(accounts.c.created_at, accounts.c.id)).all()
        return [_account(r) for r in rows]

    def set_enabled(self, account_id: str, enabled: bool) -> Account:
        """Enable or disable an account (a disabled account's keys authenticate, and the gateway answers 403)."""
        with self._write() as conn:
            res = conn.execute(update(accounts).where(accounts.c.id == account_id).values(enabled=bool(enabled)))
            if res.rowcount == 0:
                raise NotFoundError(f"account {account_id} not found")
            row = conn.execute(select(accounts).where(accounts.c.id == account_id)).one()
        log.info("account %s %s", account_id, "enabled" if enabled else "disabled")
        return _account(row)

    # ---- API keys -------------------------------------------------------------------------------------
    def _insert_key(self, conn: Connection, account_id: str) -> tuple[ApiKeyInfo, str]:
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        values = {
            "id": _new_id("key_"),
            "account_id": account_id,
            "key_hash": hash_api_key(plaintext),
            "prefix": plaintext[:API_KEY_DISPLAY_CHARS],
            "created_at": _now(),
            "revoked_at": None,
        }
        conn.execute(insert(api_keys).values(**values))
        return _key_info(_Row(values)), plaintext

    def issue_key(self, account_id: str) -> tuple[ApiKeyInfo, str]:
        """A new API key for the account; its text is returned here and never again."""
        with self._write() as conn:
            if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
                raise NotFoundError(f"account {account_id} not found")
            info, plaintext = self._insert_key(conn, account_id)
        log.info("key %s issued for account %s", info.id, account_id)
        return info, plaintext

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key (idempotent: a revoked key keeps its first revocation time)."""
        with self._write() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
            if row is None:
                raise NotFoundError(f"API key {key_id} not found")
        log.info("key %s revoked", key_id)
        return _key_info(row)

    def list_keys(self, account_id: str) -> list[ApiKeyInfo]:
        """The account's keys (revoked ones included), oldest first."""
        with self._read() as conn:
            if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
                raise NotFoundError(f"account {account_id} not found")
            rows = conn.execute(
                select(api_keys)
                .where(api_keys.c.account_id == account_id)
                .order_by(api_keys.c.created_at, api_keys.c.id)
            ).all()
        return [_key_info(r) for r in rows]

    def authenticate(self, api_key: str) -> tuple[Account, ApiKeyInfo] | None:
        """The account and key behind an API key's text, or ``None`` if no such key exists.

        Revoked keys and disabled accounts are returned too (check ``key.revoked_at`` and
        ``account.enabled``), so the caller can answer 401 for a revoked key and 403 for a disabled account.
        """
        if not isinstance(api_key, str) or not api_key.startswith(API_KEY_PREFIX) or len(api_key) > MAX_API_KEY_CHARS:
            return None
        try:
            digest = hash_api_key(api_key)
        except UnicodeEncodeError:
            return None
        key_cols = [c.label(f"key_{c.name}") for c in api_keys.c]
        with self._read() as conn:
            row = conn.execute(
                select(accounts, *key_cols)
                .join(api_keys, api_keys.c.account_id == accounts.c.id)
                .where(api_keys.c.key_hash == digest)
            ).one_or_none()
        if row is None:
            return None
        m = row._mapping
        key = _key_info(_Row({c.name: m[f"key_{c.name}"] for c in api_keys.c}))
        return _account(row), key

    # ---- monitor: alerts and enforcement ------------------------------------------------------------------
    def record_alert(self, alert: Alert) -> Alert:
        """Store an alert (its ``id`` is kept; give ``_new_alert_id()``-style ids, ``alert_…``)."""
        values = _alert_values(alert)
        with self._write() as conn:
            conn.execute(insert(monitor_alerts).values(**values))
        return _alert(_Row(values))

    def get_alert(self, alert_id: str) -> Alert | None:
        """One alert by its id (``None``: no such alert); how the monitor service finds an effect it already
        committed."""
        with self._read() as conn:
            row = conn.execute(select(monitor_alerts).where(monitor_alerts.c.id == alert_id)).one_or_none()
        return None if row is None else _alert(row)

    def list_alerts(
        self, account_id: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[Alert]:
        """Alerts, oldest first; ``limit`` keeps the newest ``limit`` of them."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InputError(f"limit must be a positive integer, got {limit!r}")
        q = select(monitor_alerts)
        if account_id is not None:
            q = q.where(monitor_alerts.c.account_id == account_id)
        if since is not None:
            q = q.where(monitor_alerts.c.created_at >= to_utc(since))
        q = q.order_by(monitor_alerts.c.created_at.desc(), monitor_alerts.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [_alert(r) for r in reversed(rows)]

    def get_enforcement(self, account_id: str) -> Enforcement | None:
        """The account's enforcement state (``None``: never acted on). Check :meth:`Enforcement.active`."""
        with self._read() as conn:
            row = conn.execute(
                select(monitor_enforcement).where(monitor_enforcement.c.account_id == account_id)
            ).one_or_none()
        return None if row is None else _enforcement(row)

    def list_enforcements(self, active_only: bool = True) -> list[Enforcement]:
        """Enforcement states, oldest first (``active_only``: those that still restrict their account)."""
        with self._read() as conn:
            rows = conn.execute(
                select(monitor_enforcement).order_by(monitor_enforcement.c.since, monitor_enforcement.c.account_id)
            ).all()
        items = [_enforcement(r) for r in rows]
        now = _now()
        return [e for e in items if e.active(now)] if active_only else items

    def set_enforcement(
        self,
        enforcement: Enforcement,
        *,
        audit: AuditEntry | None = None,
        alert: Alert | None = None,
        only_if: Callable[[Enforcement | None], bool] | None = None,
    ) -> int | None:
        """Set an account's enforcement, with its audit record and its alert, in one transaction.

        Args:
            enforcement: the new state (replaces the account's previous one).
            audit: the action's audit record, appended to the chain in the same transaction (so an action is
                never in force without its record, nor recorded without being in force).
            alert: the alert that caused it, stored with ``audit_seq`` set to the record's seq.
            only_if: decides on the current state (read under the lock) whether to apply at all; this is how
                "actions only escalate" holds when two gateway replicas act on one account at once.

        Returns:
            the audit record's seq (0 without one), or ``None`` if ``only_if`` refused (nothing was written).
        """
        values = _enforcement_values(enforcement)
        cols = entry_columns(audit) if audit is not None else None
        master = self._signing_master() if audit is not None else None
        with self._write() as conn:
            # Every action takes the chain head's lock first: actions are rare, and one lock order (head, then
            # enforcement row) means two writers can never deadlock, nor both insert a first row for an account.
            conn.execute(_LOCK_HEAD).one()
            row = conn.execute(
                select(monitor_enforcement).where(monitor_enforcement.c.account_id == enforcement.account_id)
            ).one_or_none()
            current = None if row is None else _enforcement(row)
            if only_if is not None and not only_if(current):
                return None
            seq = self._append(conn, cols, master) if cols is not None and master is not None else 0
            if row is None:
                conn.execute(insert(monitor_enforcement).values(**values))
            else:
                conn.execute(
                    update(monitor_enforcement)
                    .where(monitor_enforcement.c.account_id == enforcement.account_id)
                    .values(**values)
                )
            if alert is not None:
                conn.execute(
                    insert(monitor_alerts).values(**_alert_values(dataclasses.replace(alert, audit_seq=seq or None)))
                )
        log.info(
            "account %s: %s (%s, by %s)",
            enforcement.account_id,
            enforcement.action,
            enforcement.level,
            enforcement.set_by,
        )
        return seq

    def clear_enforcement(
        self, account_id: str, by: str = "admin", *, reason: str = "cleared", audit: AuditEntry | None = None
    ) -> Enforcement | None:
        """Lift whatever restricts the account (the state is kept, as ``action="none"``, so the monitor knows an
        admin judged it at that level). Returns the state that was lifted, or ``None`` if there was none."""
        current = self.get_enforcement(account_id)
        if current is None or current.action == "none":
            return None
        cleared = Enforcement(
            account_id=account_id,
            action="none",
            level=current.level,
            clause=current.clause,
            since=_now(),
            until=None,
            reason=reason,
            set_by=by,
            alert_id=current.alert_id,
        )
        applied = self.set_enforcement(
            cleared, audit=audit, only_if=lambda cur: cur is not None and cur.action != "none"
        )
        return None if applied is None else current

    # ---- audit: append ----------------------------------------------------------------------------------
    def _signing_master(self) -> MasterKey:
        if self._master is None:
            self._master = MasterKey.load(self._settings)
        return self._master

    def seal_unsigned_head(self) -> Head:
        """Sign the head of a log last written before signed heads, once its whole history verifies otherwise.

        This trusts the log as it stands (someone with database access could have cut it before the upgrade), so
        it is an operator's decision (``antidistill audit seal``), never done on the way: otherwise an attacker
        could strip the signature, or fake an old schema, and have the forged head signed.

        Raises:
            AuditIntegrityError: the history fails verification for another reason, or the head changed meanwhile.
        """
        head = self.audit_head()
        if head.signed is not None or head.seq == 0:
            return head
        result = self.verify_audit()
        if result.ok or result.details.get("kind") != "head" or result.first_bad_seq != head.seq:
            raise AuditIntegrityError(
                f"the audit log does not verify at record {result.first_bad_seq}: {result.problem}; not sealed"
            )
        master = self._signing_master()
        with self._write() as conn:
            row = conn.execute(_LOCK_HEAD).one()
            if (row.seq, row.hash, row.signature) != (head.seq, head.hash, None):
                raise AuditIntegrityError("the audit log's head changed while it was being sealed; not sealed")
            signed = SignedHead.sign(master, row.seq, row.hash, _now())
            conn.execute(_UPDATE_HEAD, self._head_values(signed, row.last_checkpoint_seq))
        log.warning("audit log sealed: its unsigned head (record %d) was signed as found", head.seq)
        return Head(row.seq, row.hash, row.last_checkpoint_seq, signed)

    @staticmethod
    def _head_values(signed: SignedHead, last_checkpoint_seq: int) -> dict[str, Any]:
        return {
            "seq": signed.seq,
            "hash": signed.hash,
            "last_checkpoint_seq": last_checkpoint_seq,
            "signed_at": signed.signed_at,
            "public_key": signed.public_key,
            "signature": signed.signature,
        }

    def _check_locked_head(self, head: Any, master: MasterKey) -> None:
        """Refuse to extend a head this installation did not sign (someone moved it with database access alone)."""
        if head.signature is None:
            if head.seq == 0:
                return
            raise AuditIntegrityError(
                f"the audit log's head (record {head.seq}) is not signed: the log was last "
                "written by an antidistill older than signed heads, or the signature was "
                "removed; nothing is appended until `antidistill audit verify` passes (for "
                "an upgraded log, after `antidistill audit seal`)"
            )
        if self._own_head == (head.seq, head.hash, head.signature):
            return
        signed = _head(head).signed
        if signed is None or signed.public_key != master.audit_public_key().hex() or not signed.valid():
            raise AuditIntegrityError(
                f"the audit log's head (record {head.seq}) does not carry this "
                "installation's signature: it was changed without the signing key (or the "
                "log belongs to another master key); nothing is appended until `antidistill "
                "audit verify` has been looked at"
            )

    def append_audit(self, entry: AuditEntry) -> int:
        """Append one exchange to the chain and return its seq, after the commit is durable.

        Raises:
            InputError: a field of ``entry`` is unusable (the message names it).
            AuditIntegrityError: the stored head is not one this installation signed (nothing is written).
        """
        cols = entry_columns(entry)
        master = self._signing_master()  # a key problem shows at the first append, not the 100th
        with self._write() as conn:
            return self._append(conn, cols, master)

    def _append(self, conn: Connection, cols: Mapping[str, Any], master: MasterKey) -> int:
        """Append validated columns inside the caller's write transaction; returns the new seq."""
        every = self._settings.audit_checkpoint_every
        head = conn.execute(_LOCK_HEAD).one()
        self._check_locked_head(head, master)
        seq = int(head.seq) + 1
        digest = record_hash(head.hash, seq, cols)
        conn.execute(_INSERT_RECORD, {"seq": seq, "prev_hash": head.hash, "hash": digest, **cols})
        last_cp = head.last_checkpoint_seq
        at = _now()
        if seq % every == 0:
            signature = master.audit_sign(checkpoint_message(seq, digest, last_cp, at))
            conn.execute(
                _INSERT_CHECKPOINT,
                {
                    "seq": seq,
                    "hash": digest,
                    "prev_checkpoint_seq": last_cp,
                    "created_at": at,
                    "public_key": master.audit_public_key().hex(),
                    "signature": signature.hex(),
                },
            )
            last_cp = seq
        # The signed head: from now on, any other end of the log needs the key (chain.py, "Signed heads").
        signed = SignedHead.sign(master, seq, digest, at)
        conn.execute(_UPDATE_HEAD, self._head_values(signed, last_cp))
        self._own_head = (seq, digest, signed.signature)
        return seq

    # ---- audit: read ------------------------------------------------------------------------------------
    def audit_head(self) -> Head:
        """The chain head: last seq, its hash, the last checkpoint's seq and the head's signature."""
        with self._read() as conn:
            row = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
        return _head(row)

    def audit_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_records)).scalar_one())

    @staticmethod
    def _seq_batches(conn: Connection, table: Any, batch_size: int, start: int = 1) -> Iterator[Sequence[Any]]:
        """Rows of ``table`` from ``seq`` ``start`` on, in order, ``batch_size`` at a time (keyset pagination: no
        OFFSET scans)."""
        last = start - 1 if start > 1 else None
        while True:
            q = select(table).order_by(table.c.seq).limit(batch_size)
            if last is not None:
                q = q.where(table.c.seq > last)
            rows = conn.execute(q).all()
            if not rows:
                return
            yield rows
            last = rows[-1].seq

    @classmethod
    def _record_batches(cls, conn: Connection, batch_size: int, start: int = 1) -> Iterator[Sequence[Any]]:
        return cls._seq_batches(conn, audit_records, batch_size, start)

    def _chain_records(self, conn: Connection, batch_size: int, start: int = 1) -> Iterator[ChainRecord]:
        for rows in self._record_batches(conn, batch_size, start):
            for r in rows:
                m = r._mapping
                yield ChainRecord(r.seq, r.prev_hash, r.hash, {f: m[f] for f in STORED_FIELDS})

    @classmethod
    def _checkpoints(cls, conn: Connection, batch_size: int) -> Iterator[Checkpoint]:
        for rows in cls._seq_batches(conn, audit_checkpoints, batch_size):
            yield from map(_checkpoint, rows)

    def iter_audit(self, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every record in seq order as the exported dict (payload + ``prev_hash`` + ``hash``), streamed in
        batches from one snapshot. Holds a connection until exhausted or closed.

        This is the form the hash is computed from and ``audit export`` writes; code that reads the records
        takes :meth:`iter_records`."""
        with self._read(snapshot=True) as conn:
            for rows in self._record_batches(conn, batch_size):
                for r in rows:
                    m = r._mapping
                    yield _export_row(r.seq, r.prev_hash, r.hash, {f: m[f] for f in STORED_FIELDS})

    def iter_records(self, batch_size: int = 1000) -> Iterator[AuditRecord]:
        """Every record in seq order as an :class:`~antidistill.store.api.AuditRecord`, streamed in batches from
        one snapshot. Holds a connection until exhausted or closed.

        Example:
            >>> from antidistill.keys import MasterKey
            >>> from antidistill.settings import Settings
            >>> store = Store.open("sqlite://", Settings(env="test"), master=MasterKey(bytes(32)))
            >>> entry = AuditEntry("r1", "acct_1", "key_1", datetime(2025, 1, 1, tzinfo=UTC), "/v1/completions",
            ...                    None, None, {"prompt": "hi"}, ["hello"], 1, 1, "stop", 2.5,
            ...                    {"status": "unwatermarked"}, request_raw=b"\\xff")
            >>> store.append_audit(entry)
            1
            >>> (r,) = store.iter_records()
            >>> r.seq, r.v, r.completion, r.request_raw, r.created_at == entry.created_at
            (1, 2, ['hello'], b'\\xff', True)
            >>> store.close()
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        with self._read(snapshot=True) as conn:
            for rows in self._record_batches(conn, batch_size):
                for r in rows:
                    yield _record(r)

    def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, in seq order."""
        with self._read() as conn:
            return [c for batch in self._seq_batches(conn, audit_checkpoints, 1000) for c in map(_checkpoint, batch)]

    @property
    def checkpoint_every(self) -> int:
        """Records between two signed checkpoints (``ANTIDISTILL_AUDIT_CHECKPOINT_EVERY``)."""
        return self._settings.audit_checkpoint_every

    # ---- audit: verify ----------------------------------------------------------------------------------
    def expected_public_key(self) -> str | None:
        """This installation's audit public key, if its master key is at hand (never creates one)."""
        s = self._settings
        if self._master is None and s.master_key is None and not (s.data_dir / MASTER_KEY_FILE).exists():
            return None
        return self._signing_master().audit_public_key().hex()

    def verify_audit(self, batch_size: int = 1000, anchor: SignedHead | None = None) -> VerifyResult:
        """Recompute the whole chain from one snapshot, streaming, and check every checkpoint's signature and
        the head's; with an ``anchor`` (a signed head kept outside the database), also that the log still holds
        the history the anchor saw.

        The first record where the history was edited, deleted, inserted or reordered is named in
        ``first_bad_seq`` (and ``first_bad_response_id`` when that record still exists). Checkpoint signatures
        are checked against this installation's key when its master key is available (``details
        ["public_key_checked"]``), else against the key of the first checkpoint.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        expected = self.expected_public_key()
        with self._read(snapshot=True) as conn:
            row = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one_or_none()
            if row is None:
                return VerifyResult(
                    ok=False,
                    records=0,
                    checkpoints=0,
                    problem="the chain head row was deleted",
                    details={"kind": "head"},
                )
            head = _head(row)

            def find_seq(h: str) -> int | None:
                return conn.execute(select(audit_records.c.seq).where(audit_records.c.hash == h).limit(1)).scalar()

            result = verify_chain(
                self._chain_records(conn, batch_size),
                self._checkpoints(conn, batch_size),
                head,
                checkpoint_every=self._settings.audit_checkpoint_every,
                public_key=expected,
                find_seq=find_seq,
                anchor=anchor,
            )
            if result.first_bad_seq is not None:
                rid = conn.execute(
                    select(audit_records.c.response_id).where(audit_records.c.seq == result.first_bad_seq)
                ).scalar()
                result = dataclasses.replace(result, first_bad_response_id=rid)
        if not result.ok:
            log.warning("audit verification failed at record %s: %s", result.first_bad_seq, result.problem)
        return result

    def audit_extends(self, anchor: SignedHead, batch_size: int = 1000) -> str | None:
        """Whether the log still holds what ``anchor`` saw and only grew since (``None``), or what is wrong.

        Reads only the records from the anchor's seq on, from one snapshot (see
        :func:`~antidistill.store.chain.verify_extension`).
        """
        expected = self.expected_public_key()
        with self._read(snapshot=True) as conn:
            row = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one_or_none()
            if row is None:
                return "the chain head row was deleted"
            return verify_extension(
                anchor, self._chain_records(conn, batch_size, start=max(anchor.seq, 1)), _head(row), public_key=expected
            )

    # ---- audit: export ----------------------------------------------------------------------------------
    def export_audit(self, path: str | os.PathLike[str], fmt: ExportFormat = "jsonl", batch_size: int = 1000) -> int:
        """Write the whole log to ``path`` (``jsonl`` or ``parquet``), streaming; returns the number of records.

        JSONL keeps every record exactly (each line can be re-hashed, see :func:`_export_row`); Parquet is for
        analysis: ``request`` and ``watermark`` are JSON text, ``completion`` a list of strings, plus a
        ``watermark_key_id`` column, and text that is not valid Unicode is replaced with U+FFFD.
        The file appears only when complete (written beside it, then renamed).
        """
        if fmt not in ("jsonl", "parquet"):
            raise InputError(f"export format must be jsonl or parquet, got {fmt!r}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            n = self._export_jsonl(tmp, batch_size) if fmt == "jsonl" else self._export_parquet(tmp, batch_size)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return n

    def _export_jsonl(self, path: Path, batch_size: int) -> int:
        n = 0
        with path.open("w", encoding="utf-8") as f:
            for rec in self.iter_audit(batch_size):
                f.write(json_text(rec).translate(_LINE_BREAK_ESCAPES) + "\n")
                n += 1
        return n

    def _export_parquet(self, path: Path, batch_size: int) -> int:
        require("parquet", "exporting Parquet")
        import pyarrow as pa  # the parquet extra, and about 0.2 s to import: only for this export
        import pyarrow.parquet as pq

        schema = pa.schema(
            [
                ("seq", pa.int64()),
                ("prev_hash", pa.string()),
                ("hash", pa.string()),
                ("response_id", pa.string()),
                ("account_id", pa.string()),
                ("api_key_id", pa.string()),
                ("created_at", pa.timestamp("us", tz="UTC")),
                ("endpoint", pa.string()),
                ("client_addr", pa.string()),
                ("user_agent", pa.string()),
                ("request", pa.string()),
                ("completion", pa.list_(pa.string())),
                ("prompt_tokens", pa.int64()),
                ("completion_tokens", pa.int64()),
                ("finish_reason", pa.string()),
                ("latency_ms", pa.float64()),
                ("watermark", pa.string()),
                ("watermark_key_id", pa.string()),
                ("status", pa.int32()),
            ]
        )
        n = 0
        with pq.ParquetWriter(path, schema) as writer, self._read(snapshot=True) as conn:
            for rows in self._record_batches(conn, batch_size):
                cols: dict[str, list[Any]] = {name: [] for name in schema.names}
                for r in rows:
                    wm = json.loads(r.watermark)
                    key_id = wm.get("key_id") if isinstance(wm, dict) else None
                    values = {
                        "seq": r.seq,
                        "prev_hash": r.prev_hash,
                        "hash": r.hash,
                        "response_id": _clean(r.response_id),
                        "account_id": _clean(r.account_id),
                        "api_key_id": _clean(r.api_key_id),
                        "created_at": to_utc(r.created_at),
                        "endpoint": _clean(r.endpoint),
                        "client_addr": _clean(r.client_addr),
                        "user_agent": _clean(r.user_agent),
                        "request": r.request,
                        "completion": [_clean(c) for c in json.loads(r.completion)],
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "finish_reason": _clean(r.finish_reason),
                        "latency_ms": r.latency_ms,
                        "watermark": r.watermark,
                        "watermark_key_id": _clean(key_id) if isinstance(key_id, str) else None,
                        "status": r.status,
                    }
                    for name, value in values.items():
                        cols[name].append(value)
                writer.write_table(pa.Table.from_pydict(cols, schema=schema))
                n += len(rows)
        return n


def _checkpoint(r: Any) -> Checkpoint:
    return Checkpoint(r.seq, r.hash, r.prev_checkpoint_seq, to_utc(r.created_at), r.public_key, r.signature)


def _head(row: Any) -> Head:
    signed = None
    if row.signature is not None:
        signed = SignedHead(
            row.seq,
            row.hash,
            to_utc(row.signed_at) if row.signed_at else datetime.min.replace(tzinfo=UTC),
            row.public_key or "",
            row.signature,
        )
    return Head(row.seq, row.hash, row.last_checkpoint_seq, signed)


def _clean(s: str | None) -> str | None:
    """``s`` with lone surrogates replaced by U+FFFD (Arrow strings must be valid UTF-8)."""
    if s is None:
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in s)
    return s


class _Row:
    """Attribute access over a dict of freshly inserted values (to build the returned dataclasses)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


if TYPE_CHECKING:
    # mypy checks here that Store offers every method of the storage protocols, with compatible signatures
    def _is_storage(store: Store) -> Storage:
        return store


__all__ = ["Store", "hash_api_key", "migrate"]
