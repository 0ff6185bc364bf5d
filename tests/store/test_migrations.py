"""Schema and engines: migrations on an empty database, idempotent reopen, models == migrations, URLs."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from antidistill.errors import ConfigError
from antidistill.settings import Settings, get_settings
from antidistill.store.db import normalize_url
from antidistill.store.schema import Base, audit_head
from antidistill.store.sql import HEAD_REVISION, MIGRATIONS_DIR, Store
from tests.store.entries import make_entry

TABLES = {
    "accounts",
    "api_keys",
    "audit_records",
    "audit_checkpoints",
    "audit_head",
    "alembic_version",
    "monitor_alerts",
    "monitor_enforcement",
}


def test_migrates_an_empty_database_and_reopens(db_url, settings, master):
    with Store.open(db_url, settings, master=master) as store:
        with store.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES
            assert MigrationContext.configure(conn).get_current_revision() == HEAD_REVISION
            assert conn.execute(select(audit_head)).one()._tuple() == (1, 0, "0" * 64, 0, None, None, None)
        account, api_key, _ = store.create_account("alice")
        store.append_audit(make_entry(1))
    for _ in range(2):  # reopening runs nothing and loses nothing
        with Store.open(db_url, settings, master=master) as store:
            assert store.authenticate(api_key)[0].id == account.id
            assert store.verify_audit().records == 1
            with store.engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(audit_head)).scalar() == 1


def test_models_match_migrations(db_url, settings, master):
    with Store.open(db_url, settings, master=master) as store, store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_default_is_a_wal_sqlite_file_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTIDISTILL_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    with Store.open() as store:
        assert store.dialect == "sqlite"
        assert (tmp_path / "data" / "antidistill.db").exists()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_database_url_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    get_settings.cache_clear()
    with Store.open() as store:
        store.create_account("x")
    assert (tmp_path / "elsewhere.db").exists()
    assert not (tmp_path / "data" / "antidistill.db").exists()


def test_postgres_urls_use_psycopg():
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    for bad in ("mysql://u@h/db", "postgresql+psycopg2://u@h/db", "not a url"):
        with pytest.raises(ConfigError):
            normalize_url(bad)


def test_unreachable_database_is_one_clear_error_without_the_password(tmp_path):
    with pytest.raises(ConfigError) as info:
        Store.open(
            "postgresql://user:hunter2secret@127.0.0.1:1/db?connect_timeout=2", Settings(env="test", data_dir=tmp_path)
        )
    assert "cannot open the database" in str(info.value)
    assert "hunter2secret" not in str(info.value)


def test_in_memory_sqlite(settings, master):
    with Store.open("sqlite://", settings, master=master) as store:
        store.create_account("mem")
        assert len(store.list_accounts()) == 1
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM accounts")).scalar() == 1


def test_head_revision_constant_matches_the_scripts():
    from alembic.script import ScriptDirectory

    from antidistill.store.sql import _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == HEAD_REVISION
    assert (MIGRATIONS_DIR / "env.py").is_file()


def test_schema_from_a_newer_version_is_refused(db_url, settings, master):
    with Store.open(db_url, settings, master=master) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="9999"):
        Store.open(db_url, settings, master=master)


def test_commits_are_durable_even_if_the_server_says_otherwise(db_url, settings, master):
    """SQLite fsyncs every commit (synchronous=FULL); PostgreSQL's synchronous_commit=off is raised to on."""
    if db_url.startswith("sqlite"):
        with Store.open(db_url, settings, master=master) as store, store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        return
    url = db_url.replace("options=", "options=-csynchronous_commit%3Doff%20")
    with Store.open(url, settings, master=master) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW search_path").scalar().startswith("t_")
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
