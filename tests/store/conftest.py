"""Store fixtures: every test that takes ``db_url`` (or ``store``) runs on SQLite and on PostgreSQL.

PostgreSQL: ``ANTIDISTILL_TEST_POSTGRES_URL`` (default: the local server, trust auth, database ``test``). Each
test gets a fresh schema (``search_path`` set through libpq ``options``), dropped at the end of the session.
If the server is unreachable the PostgreSQL variants are skipped locally and FAIL in CI (``CI=true``).
"""

from __future__ import annotations

import functools
import os
import secrets
import tempfile
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from antidistill.keys import MasterKey
from antidistill.settings import Settings
from tests.store.entries import CHECKPOINT_EVERY

PG_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pg_base_url() -> str:
    return os.environ.get("ANTIDISTILL_TEST_POSTGRES_URL", PG_DEFAULT_URL)


def _libpq_url(url: str) -> str:
    u = make_url(url)
    return u.set(drivername="postgresql", query={}).render_as_string(hide_password=False)


@functools.cache
def pg_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    import psycopg

    try:
        with psycopg.connect(_libpq_url(pg_base_url()), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any reason at all: report it
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def require_postgres() -> None:
    reason = pg_unreachable()
    if reason is None:
        return
    msg = f"PostgreSQL at {make_url(pg_base_url()).render_as_string()} is unreachable ({reason})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + "; CI must run the PostgreSQL tests")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def _pg_schemas():
    """Schemas made by this session, dropped together at its end (one DROP is much faster than one per test)."""
    made: list[str] = []
    yield made
    if made:
        import psycopg

        with psycopg.connect(_libpq_url(pg_base_url()), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {', '.join(made)} CASCADE")


def _fresh_database(kind: str, sqlite_dir: Path, request):
    if kind == "sqlite":
        yield f"sqlite:///{sqlite_dir / 'store.db'}"
        return
    require_postgres()
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    request.getfixturevalue("_pg_schemas").append(schema)
    with psycopg.connect(_libpq_url(pg_base_url()), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = make_url(pg_base_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema.

    The SQLite file lives in RAM (/dev/shm) where there is one: the same WAL and locking, without an fsync per
    append, which would dominate the suite's time. The durability tests use :func:`disk_db_url`.
    """
    shm = Path("/dev/shm")
    if request.param == "sqlite" and shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="antidistill-test-") as d:
            yield from _fresh_database("sqlite", Path(d), request)
    else:
        yield from _fresh_database(request.param, tmp_path, request)


@pytest.fixture(params=["sqlite", "postgresql"])
def disk_db_url(request, tmp_path):
    """Like :func:`db_url`, with the SQLite file on disk (fsync and all)."""
    yield from _fresh_database(request.param, tmp_path, request)


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(bytes(range(32)))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(env="test", data_dir=tmp_path / "data", audit_checkpoint_every=CHECKPOINT_EVERY)


@pytest.fixture
def store(db_url, settings, master):
    from antidistill.store.sql import Store

    s = Store.open(db_url, settings, master=master)
    yield s
    s.close()
