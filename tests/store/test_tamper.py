"""The audit log as a transparency log: every way of cutting or rewriting a suffix with database access alone is
caught, on SQLite and PostgreSQL; an anchor kept outside catches the rest (a rollback to a state once signed, a
reset log); a forged head is never extended and signed over."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from antidistill.cli.store import audit_app
from antidistill.settings import get_settings
from antidistill.store.api import AuditIntegrityError
from antidistill.store.chain import GENESIS_HASH, SignedHead, entry_columns, record_hash
from antidistill.store.schema import audit_head, audit_records
from antidistill.store.sql import Store
from tests.store.entries import make_entry

LAST_CP = 20  # 25 records, checkpoints at 10 and 20: records 21-25 follow the last checkpoint


def fill(store, n: int, start: int = 1) -> None:
    for i in range(start, start + n):
        store.append_audit(make_entry(i))


def sql(store, *statements: str, **params) -> None:
    with store.engine.begin() as conn:
        for s in statements:
            conn.execute(text(s), params)


def rehash_from(store, start: int) -> None:
    """Recompute the hashes and links of records ``start``… (what an attacker without the key can do) and move
    the head's seq and hash onto the last of them."""
    with store.engine.begin() as conn:
        prev = (
            conn.execute(select(audit_records.c.hash).where(audit_records.c.seq == start - 1)).scalar() or GENESIS_HASH
        )
        rows = conn.execute(
            select(audit_records).where(audit_records.c.seq >= start).order_by(audit_records.c.seq)
        ).all()
        for r in rows:
            cols = {k: v for k, v in r._mapping.items() if k not in ("seq", "prev_hash", "hash")}
            h = record_hash(prev, r.seq, cols)
            conn.execute(audit_records.update().where(audit_records.c.seq == r.seq).values(prev_hash=prev, hash=h))
            prev = h
        last = rows[-1].seq if rows else start - 1
        conn.execute(audit_head.update().values(seq=last, hash=prev))


def cut_after(store, seq: int, *, checkpoints: bool = True) -> None:
    """Delete every record after ``seq`` (and their checkpoints) and move the head back onto ``seq``."""
    statements = ["DELETE FROM audit_records WHERE seq > :s"]
    if checkpoints:
        statements.append("DELETE FROM audit_checkpoints WHERE seq > :s")
    statements.append(
        "UPDATE audit_head SET seq = :s, hash = COALESCE((SELECT hash FROM audit_records "
        "WHERE seq = :s), :g), last_checkpoint_seq = COALESCE((SELECT max(seq) FROM "
        "audit_checkpoints), 0)"
    )
    sql(store, *statements, s=seq, g=GENESIS_HASH)


def _delete_last(store):
    cut_after(store, 24)


def _cut_after_last_checkpoint(store):
    # the shortest reproduction, as written there
    sql(
        store,
        "delete from audit_records where seq>(select max(seq) from audit_checkpoints)",
        "update audit_head set seq=(select max(seq) from audit_checkpoints), hash=(select hash from audit_records "
        "where seq=(select max(seq) from audit_checkpoints))",
    )


def _cut_after_first_checkpoint(store):
    cut_after(store, 10)


def _edit_tail_and_rehash(store):
    sql(store, "UPDATE audit_records SET completion = :c WHERE seq = 23", c='["a forged answer"]')
    rehash_from(store, 23)


def _delete_tail_record_and_renumber(store):
    sql(
        store,
        "DELETE FROM audit_records WHERE seq = 22",
        "UPDATE audit_records SET seq = -seq WHERE seq > 22",
        "UPDATE audit_records SET seq = -seq - 1 WHERE seq < 0",
    )
    rehash_from(store, 22)


def _reset(store):
    sql(
        store,
        "DELETE FROM audit_records",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_head SET seq = 0, hash = :g, last_checkpoint_seq = 0",
        g=GENESIS_HASH,
    )


TAMPERINGS = {
    "delete the last record, head moved back": _delete_last,
    "cut everything after the last checkpoint, head moved": _cut_after_last_checkpoint,
    "cut everything after the first checkpoint, later checkpoints too": _cut_after_first_checkpoint,
    "edit an unsigned-tail record and rehash the rest": _edit_tail_and_rehash,
    "delete a tail record and renumber": _delete_tail_record_and_renumber,
    "delete every record and checkpoint, reset the head": _reset,
}


@pytest.fixture
def filled(store):
    fill(store, 25)
    return store


@pytest.mark.parametrize("tamper", list(TAMPERINGS), ids=list(range(len(TAMPERINGS))))
def test_every_suffix_tampering_is_caught(filled, tamper):
    """Without the key, none of the issue's reproductions verifies, with or without an anchor; and the Store
    refuses to append to (and so sign over) the forged history."""
    anchor = filled.audit_head().signed
    TAMPERINGS[tamper](filled)
    result = filled.verify_audit()
    assert not result.ok, (tamper, result)
    assert not filled.verify_audit(anchor=anchor).ok
    head_before = filled.audit_head()
    with pytest.raises(AuditIntegrityError):
        filled.append_audit(make_entry(99))
    assert filled.audit_head() == head_before and not filled.verify_audit().ok


def test_reset_with_the_signature_removed_needs_an_anchor(filled):
    """A wiped log looks like a new one from inside the database: only the anchor tells them apart."""
    anchor = filled.audit_head().signed
    _reset(filled)
    sql(filled, "UPDATE audit_head SET signature = NULL, public_key = NULL, signed_at = NULL")
    assert filled.verify_audit().ok  # the documented limit
    result = filled.verify_audit(anchor=anchor)
    assert not result.ok and result.details["kind"] == "anchor" and "every record" in result.problem


def test_rollback_to_a_saved_signed_state_needs_an_anchor(filled):
    """Someone who kept a copy of an earlier head row can put that genuinely signed state back: verify alone
    cannot tell (documented in docs/audit-log.md); the anchor taken later can."""
    with filled.engine.connect() as conn:
        saved = dict(conn.execute(select(audit_head)).one()._mapping)
    fill(filled, 5, start=26)
    anchor = filled.audit_head().signed
    sql(filled, "DELETE FROM audit_records WHERE seq > 25", "DELETE FROM audit_checkpoints WHERE seq > 25")
    with filled.engine.begin() as conn:
        conn.execute(audit_head.update().values(**{k: v for k, v in saved.items() if k != "id"}))
    assert filled.verify_audit().ok
    result = filled.verify_audit(anchor=anchor)
    assert not result.ok and result.first_bad_seq == 26 and "records 26-30 were deleted" in result.problem


def test_anchor_disagreeing_with_a_rewritten_prefix(filled):
    anchor = filled.audit_head().signed
    fill(filled, 3, start=26)
    sql(filled, "UPDATE audit_records SET completion = :c WHERE seq = 5", c='["forged"]')
    rehash_from(filled, 5)  # consistent chain, but the head is no longer signed over it; and the anchor disagrees
    result = filled.verify_audit(anchor=anchor)
    assert not result.ok and result.details["kind"] == "rewritten"  # the checkpoint at 10 speaks first
    sql(filled, "DELETE FROM audit_checkpoints")
    result = filled.verify_audit(anchor=anchor)
    assert not result.ok and result.first_bad_seq == 25 and result.details["kind"] == "anchor"


def test_signed_head_on_every_commit_and_extension(filled):
    head = filled.audit_head()
    assert head.seq == 25 and head.signed is not None and head.signed.valid()
    assert (head.signed.seq, head.signed.hash) == (head.seq, head.hash)
    old = head.signed
    fill(filled, 4, start=26)
    assert filled.audit_extends(old) is None
    assert filled.verify_audit(anchor=old).ok
    sql(filled, "UPDATE audit_records SET completion = :c WHERE seq = 27", c='["forged"]')
    assert "record 27" in filled.audit_extends(old)


def test_forged_anchor_is_refused(filled):
    a = filled.audit_head().signed
    forged = SignedHead(a.seq + 5, a.hash, a.signed_at, a.public_key, a.signature)
    result = filled.verify_audit(anchor=forged)
    assert not result.ok and "anchor's signature is invalid" in result.problem


def test_head_moved_without_key_is_never_extended_even_with_valid_links(filled):
    """Append a well-formed record behind the Store's back and move the head onto it: the head's signature no
    longer covers it, so verify fails and the Store will not sign over it."""
    prev = filled.audit_head().hash
    cols = entry_columns(make_entry(500, response_id="resp-forged"))
    digest = record_hash(prev, 26, cols)
    with filled.engine.begin() as conn:
        conn.execute(audit_records.insert().values(seq=26, prev_hash=prev, hash=digest, **cols))
        conn.execute(audit_head.update().values(seq=26, hash=digest))
    assert "without the signing key" in filled.verify_audit().problem
    with pytest.raises(AuditIntegrityError):
        filled.append_audit(make_entry(27))


def test_upgraded_log_is_sealed_only_by_an_operator(db_url, settings, master):
    """A log from before signed heads (unsigned head) takes no appends until an operator seals it; faking an old
    schema therefore gets an attacker nothing signed."""
    with Store.open(db_url, settings, master=master) as store:
        fill(store, 3)
        sql(
            store,
            "UPDATE audit_head SET signature = NULL, public_key = NULL, signed_at = NULL",
            "UPDATE alembic_version SET version_num = '0002'",
            "ALTER TABLE audit_records DROP COLUMN request_raw",
        )
        with store.engine.begin() as conn:  # undo 0003's head columns too: a genuine 0002 schema
            for c in ("signed_at", "public_key", "signature"):
                conn.execute(text(f"ALTER TABLE audit_head DROP COLUMN {c}"))
    with Store.open(db_url, settings, master=master) as store:
        assert store.audit_head().signed is None
        assert "carries no signature" in store.verify_audit().problem
        with pytest.raises(AuditIntegrityError):
            store.append_audit(make_entry(4))
        assert store.seal_unsigned_head().signed.valid()
        assert store.verify_audit().ok
        fill(store, 2, start=4)
        assert store.verify_audit().ok and store.audit_head().seq == 5
        sql(
            store,
            "UPDATE audit_records SET completion = :c WHERE seq = 2",
            "UPDATE audit_head SET signature = NULL",
            c='["forged"]',
        )
        with pytest.raises(AuditIntegrityError, match="record 2"):  # sealing trusts only an otherwise clean log
            store.seal_unsigned_head()


# ---- the two command lines outside checks run ---------------------------------------------------------------
runner = CliRunner()


@pytest.fixture
def env_db(db_url, monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", bytes(range(32)).hex())
    monkeypatch.setenv("ANTIDISTILL_AUDIT_CHECKPOINT_EVERY", "10")
    get_settings.cache_clear()
    yield db_url
    get_settings.cache_clear()


def test_cli_anchor_and_verify(env_db, tmp_path):
    with Store.open(env_db, get_settings()) as store:
        fill(store, 25)
    anchor = tmp_path / "anchor.json"
    r = runner.invoke(audit_app, ["anchor", "--output", str(anchor), "--database-url", env_db])
    assert r.exit_code == 0, r.output
    data = json.loads(anchor.read_text())
    assert data["seq"] == 25 and data["type"] == "antidistill-audit-anchor"
    assert bytes(range(32)).hex() not in anchor.read_text()  # the master key never leaves
    r = runner.invoke(audit_app, ["anchor", "--output", "-", "--database-url", env_db])
    assert r.exit_code == 0 and json.loads(r.stdout)["seq"] == 25
    with Store.open(env_db, get_settings()) as store:
        fill(store, 2, start=26)
    r = runner.invoke(audit_app, ["verify", "--anchor", str(anchor), "--database-url", env_db])
    assert r.exit_code == 0, r.output
    assert runner.invoke(audit_app, ["anchor", "--output", str(anchor), "--database-url", env_db]).exit_code == 0
    assert json.loads(anchor.read_text())["seq"] == 27
    with Store.open(env_db, get_settings()) as store:
        _cut_after_last_checkpoint(store)
    r = runner.invoke(audit_app, ["verify", "--anchor", str(anchor), "--database-url", env_db])
    assert r.exit_code == 1 and "FAILED" in r.output
    # the next scheduled anchor refuses too, and keeps the witness's file as it was
    r = runner.invoke(audit_app, ["anchor", "--output", str(anchor), "--database-url", env_db])
    assert r.exit_code == 1 and json.loads(anchor.read_text())["seq"] == 27


def test_cli_bad_anchor_is_one_line(env_db, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for where in (str(bad), str(tmp_path / "missing.json")):
        r = runner.invoke(audit_app, ["verify", "--anchor", where, "--database-url", env_db])
        assert r.exit_code != 0 and isinstance(r.exception, Exception | SystemExit)
    r = runner.invoke(audit_app, ["anchor", "--output", str(tmp_path / "a.json"), "--database-url", env_db])
    assert r.exit_code != 0  # an empty log has nothing to anchor
