"""The SQLite database holds every prompt and completion: its directory is 0700 and the file, its WAL and its
shared-memory file are 0600, whatever the umask, and files left looser by earlier versions are tightened."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from antidistill.settings import Settings
from antidistill.store.sql import Store
from tests.store.entries import make_entry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    """A umask that keeps nothing private (0): the modes must come from the code, not the environment."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_fresh_database_is_private(tmp_path, master, open_umask):
    data = tmp_path / "data"
    store = Store.open(settings=Settings(env="test", data_dir=data), master=master)
    try:
        store.append_audit(make_entry(1))  # the WAL and the shared-memory file exist from here on
        db = data / "antidistill.db"
        side = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
        assert all(p.exists() for p in side)
        assert mode(data) == 0o700
        assert {p.name: mode(p) for p in (db, *side)} == {p.name: 0o600 for p in (db, *side)}
    finally:
        store.close()


def test_database_outside_the_data_directory_is_private_too(tmp_path, master, open_umask):
    db = tmp_path / "elsewhere" / "deeper" / "audit.db"
    store = Store.open(f"sqlite:///{db}", Settings(env="test", data_dir=tmp_path / "data"), master=master)
    try:
        store.append_audit(make_entry(1))
        assert mode(db.parent) == 0o700
        assert mode(db) == 0o600 and mode(db.with_name("audit.db-wal")) == 0o600
    finally:
        store.close()


def test_loose_files_of_an_earlier_version_are_tightened(tmp_path, master, caplog):
    data = tmp_path / "data"
    settings = Settings(env="test", data_dir=data)
    Store.open(settings=settings, master=master).close()
    db = data / "antidistill.db"
    wal = db.with_name(db.name + "-wal")
    os.chmod(db, 0o644)
    wal.write_bytes(b"")  # as a crashed process would leave it
    os.chmod(wal, 0o644)
    with caplog.at_level(logging.WARNING, logger="antidistill.files"):
        store = Store.open(settings=settings, master=master)
    try:
        store.append_audit(make_entry(1))
        assert mode(db) == 0o600 and mode(wal) == 0o600
        assert "now 600" in caplog.text and str(db) in caplog.text
        assert [e["response_id"] for e in store.iter_audit()] == ["resp-1"]
    finally:
        store.close()


def test_an_existing_directory_keeps_its_mode(tmp_path, master):
    """A directory the operator made (or shares) is not re-moded; the files in it are private all the same."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    store = Store.open(f"sqlite:///{shared / 'audit.db'}", Settings(env="test", data_dir=tmp_path / "d"), master=master)
    try:
        store.append_audit(make_entry(1))
        assert mode(shared) == 0o755
        assert mode(shared / "audit.db") == 0o600
    finally:
        store.close()


def test_memory_database_creates_no_file(tmp_path, master, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store.open("sqlite://", Settings(env="test", data_dir=tmp_path / "data"), master=master)
    store.close()
    assert list(tmp_path.iterdir()) == []
