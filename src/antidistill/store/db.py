"""Engines: the embedded SQLite file (WAL) or PostgreSQL (psycopg 3), chosen by URL.

SQLite is set up on every new connection:

* ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers.
* ``synchronous=FULL``: every commit fsyncs the WAL. ``NORMAL`` would already survive ``kill -9`` of the
  gateway (the WAL is in the OS page cache), but not a power cut or kernel crash; an audit record whose
  response was released must survive both, and one fsync per exchange is cheap next to generating it.
* ``busy_timeout``: a writer waits for another process's write lock instead of failing at once.
* ``foreign_keys=ON``: SQLite leaves them off unless asked.

The file holds every prompt and completion: before the engine exists, its directory is created 0700 if missing
and the file itself created (or tightened to) 0600; SQLite gives ``-wal`` and ``-shm`` the database file's mode
(see :mod:`antidistill.files`).

We also take transaction control away from Python's ``sqlite3`` module (which emits ``BEGIN`` lazily, only
before DML) and emit ``BEGIN`` ourselves: a write transaction that starts with a read must take the write lock
at its start (``BEGIN IMMEDIATE``), otherwise two writers that both read the audit head first would deadlock
(SQLITE_BUSY_SNAPSHOT) instead of queueing. Connections opened with the execution option
``antidistill_write=True`` get ``BEGIN IMMEDIATE``; all others a plain deferred ``BEGIN``.

PostgreSQL connections go through psycopg 3; ``synchronous_commit=off``, if the server is set so, is raised to
``on`` for our sessions (an acknowledged audit record must survive a server crash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from antidistill.errors import ConfigError
from antidistill.extras import require
from antidistill.files import private_sqlite_files
from antidistill.settings import Settings

DEFAULT_SQLITE_FILE = "antidistill.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Execution option that makes SQLite open the transaction with ``BEGIN IMMEDIATE`` (the write lock).
WRITE_OPTION = "antidistill_write"


def default_url(settings: Settings) -> str:
    """The configured database URL, or the SQLite file in the data directory."""
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{settings.data_dir / DEFAULT_SQLITE_FILE}"


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; plain ``postgresql://`` / ``postgres://`` are sent through psycopg 3.

    Raises:
        ConfigError: the URL is unparsable or names a database we do not support.

    Example:
        >>> normalize_url("postgresql://u@db:5432/x").drivername
        'postgresql+psycopg'
        >>> normalize_url("sqlite:////tmp/a.db").drivername
        'sqlite'
    """
    try:
        u = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        raise ConfigError(
            "database URL is not a valid SQLAlchemy URL (e.g. postgresql://user@host:5432/db "
            "or sqlite:////path/to/file.db)"
        ) from None
    backend, _, driver = u.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise ConfigError(f"database driver {driver!r} is not supported; use postgresql:// (psycopg 3)")
        return u.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ConfigError(f"database driver {driver!r} is not supported; use sqlite:///path")
        return u.set(drivername="sqlite")
    raise ConfigError(f"database {backend!r} is not supported; use sqlite:///path or postgresql://…")


def safe_url(url: URL) -> str:
    """The URL as text with the password hidden, for messages."""
    return url.render_as_string(hide_password=True)


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def create_store_engine(url: str | URL, **kwargs: Any) -> Engine:
    """A configured engine for ``url`` (see the module docstring for what SQLite gets)."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        return _sqlite_engine(u, **kwargs)
    require("postgres", "a PostgreSQL database")
    # pre_ping: a replica outlives database restarts and failovers without serving one error per stale connection.
    engine = create_engine(u, pool_pre_ping=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _durable_commits(dbapi_conn: Any, _record: Any) -> None:
        # An audit append returns only after its commit is durable; with synchronous_commit=off (a server or
        # role setting) PostgreSQL acknowledges commits it may still lose in a crash. "local", "on" and the
        # replica levels are kept as they are.
        with dbapi_conn.cursor() as cur:
            cur.execute("SHOW synchronous_commit")
            if cur.fetchone()[0] == "off":
                cur.execute("SET synchronous_commit = on")
        dbapi_conn.commit()

    return engine


def _sqlite_engine(u: URL, **kwargs: Any) -> Engine:
    if is_memory_sqlite(u):
        # One shared connection, or every checkout would see a different empty database (tests and examples only).
        kwargs.setdefault("poolclass", StaticPool)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    elif not u.query.get("uri"):  # a file: URI names its path (and mode) its own way: left to SQLite
        private_sqlite_files(Path(u.database or "").expanduser())
    else:
        Path(u.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not is_memory_sqlite(u):
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

    return engine
