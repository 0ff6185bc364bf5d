"""``accounts`` and ``audit`` sub-commands through typer's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from antidistill.cli.store import accounts_app, audit_app
from antidistill.errors import AntidistillError, InputError
from antidistill.keys import MasterKey
from antidistill.settings import get_settings
from antidistill.store.api import NotFoundError
from antidistill.store.sql import Store
from tests.store.entries import make_entry

runner = CliRunner()


@pytest.fixture
def db(db_url, monkeypatch):
    """The database URL, with a master key in the environment (as the gateway and the CLI share it)."""
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", bytes(range(32)).hex())
    monkeypatch.setenv("ANTIDISTILL_AUDIT_CHECKPOINT_EVERY", "10")
    get_settings.cache_clear()
    return db_url


def invoke(app, *args):
    return runner.invoke(app, [str(a) for a in args])


def test_accounts_lifecycle(db):
    r = invoke(
        accounts_app,
        "create",
        "alice",
        "--rpm",
        60,
        "--tpm",
        5000,
        "--tokens-per-day",
        100000,
        "--org",
        "Acme",
        "--payment-fingerprint",
        "fp_1",
        "--signup-source",
        "web",
        "--json",
        "--database-url",
        db,
    )
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    account_id, api_key = created["account_id"], created["api_key"]
    assert account_id.startswith("acct_") and api_key.startswith("sk-ad-")

    r = invoke(accounts_app, "list", "--json", "--database-url", db)
    (acc,) = json.loads(r.stdout)
    assert acc["id"] == account_id and acc["rpm"] == 60 and acc["tokens_per_day"] == 100000
    assert acc["metadata"] == {"organisation": "Acme", "payment_fingerprint": "fp_1", "signup_source": "web"}
    assert api_key not in r.stdout

    r = invoke(accounts_app, "list", "--database-url", db)
    assert r.exit_code == 0 and "alice" in r.stdout and "Acme" in r.stdout

    r = invoke(accounts_app, "disable", account_id, "--database-url", db)
    assert r.exit_code == 0 and "disabled" in r.stdout
    r = invoke(accounts_app, "enable", account_id, "--database-url", db)
    assert r.exit_code == 0 and "enabled" in r.stdout

    r = invoke(accounts_app, "keys", "issue", account_id, "--json", "--database-url", db)
    issued = json.loads(r.stdout)
    assert issued["api_key"].startswith("sk-ad-") and issued["api_key"] != api_key
    r = invoke(accounts_app, "keys", "revoke", issued["key_id"], "--database-url", db)
    assert r.exit_code == 0 and "revoked" in r.stdout
    r = invoke(accounts_app, "keys", "list", account_id, "--json", "--database-url", db)
    keys = json.loads(r.stdout)
    assert [k["revoked_at"] is not None for k in keys] == [False, True]
    assert all(api_key not in json.dumps(k) for k in keys)

    r = invoke(accounts_app, "create", "human", "--database-url", db)
    assert r.exit_code == 0 and "sk-ad-" in r.stdout and "shown only once" in r.stdout


def test_account_errors_are_antidistill_errors(db):
    r = invoke(accounts_app, "disable", "acct_missing", "--database-url", db)
    assert isinstance(r.exception, NotFoundError) and "acct_missing" in str(r.exception)
    r = invoke(accounts_app, "create", "   ", "--database-url", db)
    assert isinstance(r.exception, InputError) and "name" in str(r.exception)
    r = invoke(accounts_app, "create", "x", "--rpm", 0, "--database-url", db)
    assert r.exit_code == 2  # typer's own range check


def test_audit_verify_and_export(db, tmp_path):
    with Store.open(db, get_settings()) as store:
        for i in range(1, 26):
            store.append_audit(make_entry(i))
    r = invoke(audit_app, "verify", "--database-url", db)
    assert r.exit_code == 0, r.output
    assert "OK: 25 records, 2 signed checkpoints" in r.stdout
    assert MasterKey(bytes(range(32))).audit_public_key().hex() in r.stdout

    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"audit.{fmt}"
        r = invoke(audit_app, "export", "--format", fmt, "--output", out, "--database-url", db)
        assert r.exit_code == 0, r.output
        assert out.stat().st_size > 0
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 25
    r = invoke(audit_app, "export", "--format", "csv", "--output", tmp_path / "x", "--database-url", db)
    assert isinstance(r.exception, InputError)

    with Store.open(db, get_settings()) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET completion = '[\"edited\"]' WHERE seq = 7"))
    r = invoke(audit_app, "verify", "--database-url", db)
    assert r.exit_code == 1
    assert "FAILED at record 7 (response resp-7)" in r.stdout and "edited" in r.stdout
    r = invoke(audit_app, "verify", "--json", "--database-url", db)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["ok"] is False and d["first_bad_seq"] == 7 and d["first_bad_response_id"] == "resp-7"


def test_bad_database_url_is_a_config_error(tmp_path):
    r = invoke(accounts_app, "list", "--database-url", "mysql://u@h/db")
    assert isinstance(r.exception, AntidistillError) and "not supported" in str(r.exception)


def test_through_the_main_cli(db, monkeypatch, capsys):
    """Registered as the owner will (app.add_typer): one-line errors with exit 2, exit 1 for a failed verify."""
    import typer

    from antidistill import cli

    app = typer.Typer()
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(audit_app, name="audit")
    monkeypatch.setattr(cli, "app", app)

    def run(*argv):
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--database-url", db])
            raise SystemExit(0)
        captured = capsys.readouterr()
        return info.value.code or 0, captured.out, captured.err

    code, out, err = run("accounts", "disable", "acct_missing")
    assert code == 2 and err.strip() == "error: account acct_missing not found" and "Traceback" not in err
    code, out, _ = run("audit", "verify")
    assert code == 0 and "OK: 0 records" in out
    with Store.open(db, get_settings()) as store:
        store.append_audit(make_entry(1))
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_records"))
    code, out, _ = run("audit", "verify")
    assert code == 1 and "FAILED at record 1" in out and "deleted" in out
