"""The audit chain on SQLite and PostgreSQL: append, verify, tampering named at the right record, signed
checkpoints, concurrent writers (threads and processes), kill -9 durability, export."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import insert, select, text

from antidistill.keys import MasterKey
from antidistill.store.chain import checkpoint_message, entry_columns, record_hash
from antidistill.store.schema import audit_checkpoints, audit_records
from antidistill.store.sql import Store
from tests.store.entries import CHECKPOINT_EVERY, make_entry

APPENDER = Path(__file__).with_name("_appender.py")
N = 30  # records in a tampered history: checkpoints at 10, 20, 30


def fill(store, n: int = N) -> None:
    for i in range(1, n + 1):
        assert store.append_audit(make_entry(i)) == i


def sql(store, *statements: str, **params) -> None:
    """Raw SQL behind the Store's back."""
    with store.engine.begin() as conn:
        for s in statements:
            conn.execute(text(s), params)


def row(store, seq: int) -> dict:
    with store.engine.connect() as conn:
        return dict(conn.execute(select(audit_records).where(audit_records.c.seq == seq)).one()._mapping)


def assert_bad(store, seq: int, *words: str, response_id: str | None = "same"):
    result = store.verify_audit()
    assert not result.ok, result
    assert result.first_bad_seq == seq, result
    for w in words:
        assert w in result.problem, result
    if response_id == "same":
        response_id = f"resp-{seq}"
    assert result.first_bad_response_id == response_id, result
    return result


# ---- the honest path --------------------------------------------------------------------------------------
def test_append_and_verify(store, master):
    empty = store.verify_audit()
    assert empty.ok and empty.records == 0 and empty.checkpoints == 0
    fill(store, 25)
    result = store.verify_audit(batch_size=7)  # batches that do not divide the history
    assert result.ok, result
    assert (result.records, result.checkpoints) == (25, 2)
    assert result.details["public_key"] == master.audit_public_key().hex()
    assert result.details["public_key_checked"] is True
    assert result.details["since_checkpoint"] == 5
    head = store.audit_head()
    assert (head.seq, head.last_checkpoint_seq) == (25, 20)
    assert store.audit_count() == 25


def test_verify_without_the_master_key_checks_key_consistency(store, db_url, settings):
    fill(store, 20)
    other = Store.open(db_url, settings)  # no master given, none in the data directory: nothing is created
    try:
        result = other.verify_audit()
    finally:
        other.close()
    assert result.ok and result.details["public_key_checked"] is False
    assert not (settings.data_dir / "master.key").exists()


def test_invalid_entries_name_the_field(store):
    for field, value in [
        ("prompt_tokens", -1),
        ("latency_ms", float("nan")),
        ("request", ["x"]),
        ("completion", "not a list"),
        ("user_agent", "a\x00b"),
        ("created_at", "2025-01-01"),
        ("status", 42),
        ("client_addr", "\udc80"),
    ]:
        with pytest.raises(ValueError, match=field):
            store.append_audit(make_entry(1, **{field: value}))
    assert store.audit_count() == 0 and store.verify_audit().ok


# ---- tampering: edit, delete, insert, reorder one record ----------------------------------------------------
EDITS = [
    ("completion", '["a different answer"]'),
    ("request", '{"messages":[]}'),
    ("prompt_tokens", 999),
    ("latency_ms", 1.0),
    ("account_id", "acct_other"),
    ("watermark", '{"status":"unwatermarked"}'),
    ("created_at", "+1us"),
    ("prev_hash", "ab" * 32),
]


def test_edit_is_named(store):
    """Each column a record's hash covers, edited in turn (and put back): record 15 is named every time."""
    fill(store)
    original = row(store, 15)
    for column, value in EDITS:
        if value == "+1us":
            value = original["created_at"] + timedelta(microseconds=1)
        sql(store, f"UPDATE audit_records SET {column} = :v WHERE seq = 15", v=value)
        r = assert_bad(store, 15, "edited", response_id="resp-15")
        assert r.records == 14, column
        sql(store, f"UPDATE audit_records SET {column} = :v WHERE seq = 15", v=original[column])
        assert store.verify_audit().ok, column


def test_edit_with_recomputed_hash_is_named(store):
    fill(store)
    cols = entry_columns(make_entry(15, completion=["forged"]))
    prev = row(store, 15)["prev_hash"]
    sql(
        store,
        "UPDATE audit_records SET completion = :c, hash = :h WHERE seq = 15",
        c=cols["completion"],
        h=record_hash(prev, 15, cols),
    )
    assert_bad(store, 15, "edited", "recomputed")


def test_delete_is_named(store):
    fill(store)
    sql(store, "DELETE FROM audit_records WHERE seq = 15")
    assert_bad(store, 15, "missing", response_id=None)


def test_delete_and_renumber_is_named(store):
    fill(store)
    sql(
        store,
        "DELETE FROM audit_records WHERE seq = 15",
        "UPDATE audit_records SET seq = -seq WHERE seq > 15",
        "UPDATE audit_records SET seq = -seq - 1 WHERE seq < 0",
        "UPDATE audit_head SET seq = seq - 1",
    )
    assert_bad(store, 15, "deleted", response_id="resp-16")


def test_delete_last_is_named(store):
    fill(store, 25)
    sql(store, "DELETE FROM audit_records WHERE seq = 25")
    assert_bad(store, 25, "deleted", response_id=None)


def test_delete_signed_last_is_named(store):
    fill(store)  # record 30 carries a checkpoint: even with the head moved back, the deletion shows
    sql(
        store,
        "DELETE FROM audit_records WHERE seq = 30",
        "UPDATE audit_head SET seq = 29, hash = (SELECT hash FROM audit_records WHERE seq = 29)",
    )
    assert_bad(store, 30, "deleted", response_id=None)


def _forged_values(store, seq: int, prev_hash: str, valid: bool) -> dict:
    cols = entry_columns(make_entry(1000, response_id="resp-forged", completion=["never said"]))
    digest = record_hash(prev_hash, seq, cols) if valid else "f" * 64
    return {"seq": seq, "prev_hash": prev_hash, "hash": digest, **cols}


@pytest.mark.parametrize("well_formed", [True, False])
def test_insert_is_named(store, well_formed):
    fill(store)
    prev = row(store, 14)["hash"]
    sql(
        store,
        "UPDATE audit_records SET seq = -seq WHERE seq >= 15",
        "UPDATE audit_records SET seq = -seq + 1 WHERE seq < 0",
        "UPDATE audit_head SET seq = seq + 1",
    )
    with store.engine.begin() as conn:
        conn.execute(insert(audit_records).values(**_forged_values(store, 15, prev, well_formed)))
    assert_bad(store, 15, "inserted", response_id="resp-forged")


def test_insert_after_head_is_named(store):
    fill(store, 25)
    with store.engine.begin() as conn:
        conn.execute(insert(audit_records).values(**_forged_values(store, 26, row(store, 25)["hash"], True)))
    assert_bad(store, 26, "inserted", response_id="resp-forged")


@pytest.mark.parametrize(("a", "b"), [(15, 16), (12, 17)])
def test_reorder_is_named(store, a, b):
    fill(store)
    sql(
        store,
        "UPDATE audit_records SET seq = -1 WHERE seq = :a",
        "UPDATE audit_records SET seq = :a WHERE seq = :b",
        "UPDATE audit_records SET seq = :b WHERE seq = -1",
        a=a,
        b=b,
    )
    assert_bad(store, a, "reordered", response_id=f"resp-{b}")


def test_rewritten_history_is_caught_by_the_checkpoint(store):
    """Someone without the signing key rewrites record 15 and recomputes every later hash and the head."""
    fill(store)
    rows = [row(store, s) for s in range(14, N + 1)]
    prev = rows[0]["hash"]
    with store.engine.begin() as conn:
        for r in rows[1:]:
            cols = {k: r[k] for k in entry_columns(make_entry(1))}
            if r["seq"] == 15:
                cols["completion"] = '["forged"]'
            digest = record_hash(prev, r["seq"], cols)
            conn.execute(
                audit_records.update()
                .where(audit_records.c.seq == r["seq"])
                .values(prev_hash=prev, hash=digest, completion=cols["completion"])
            )
            prev = digest
        conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})
    r = assert_bad(store, 20, "checkpoint", "rewritten")
    assert r.details["rewritten_between"] == [11, 20]


def test_head_edit_is_named(store):
    fill(store, 25)
    sql(store, "UPDATE audit_head SET hash = :h", h="0" * 64)
    assert_bad(store, 25, "head")


# ---- checkpoints --------------------------------------------------------------------------------------------
def _checkpoint(store, seq):
    with store.engine.connect() as conn:
        return dict(conn.execute(select(audit_checkpoints).where(audit_checkpoints.c.seq == seq)).one()._mapping)


def test_checkpoint_signature_tamper(store):
    fill(store)
    sig = _checkpoint(store, 20)["signature"]
    sql(
        store, "UPDATE audit_checkpoints SET signature = :s WHERE seq = 20", s=("0" if sig[0] != "0" else "1") + sig[1:]
    )
    assert_bad(store, 20, "signature")


def test_checkpoint_public_key_swapped(store):
    fill(store)
    other = MasterKey(b"another master key, not ours....").audit_public_key().hex()
    sql(store, "UPDATE audit_checkpoints SET public_key = :p WHERE seq = 20", p=other)
    assert_bad(store, 20, "signature")


@pytest.mark.parametrize("all_checkpoints", [False, True])
def test_checkpoint_resigned_with_another_key(store, db_url, settings, all_checkpoints):
    """An attacker signs with a key of their own: refused against this installation's key, and (for a single
    checkpoint) even by a verifier without the master key."""
    fill(store)
    attacker = MasterKey(b"the attacker's own master key!!!")
    seqs = [10, 20, 30] if all_checkpoints else [20]
    with store.engine.begin() as conn:
        for s in seqs:
            c = _checkpoint(store, s)
            sig = attacker.audit_sign(
                checkpoint_message(c["seq"], c["hash"], c["prev_checkpoint_seq"], c["created_at"])
            )
            conn.execute(
                audit_checkpoints.update()
                .where(audit_checkpoints.c.seq == s)
                .values(signature=sig.hex(), public_key=attacker.audit_public_key().hex())
            )
    assert_bad(store, seqs[0], "signed by a key other than this installation")
    without_master = Store.open(db_url, settings)
    try:
        result = without_master.verify_audit()
    finally:
        without_master.close()
    if all_checkpoints:  # the checkpoints agree with each other, but the signed head is still the real key's
        assert not result.ok and "head is signed by a key other than" in result.problem
    else:
        assert not result.ok and result.first_bad_seq == 20


def test_checkpoint_deleted(store):
    fill(store)
    sql(store, "DELETE FROM audit_checkpoints WHERE seq = 20")
    assert_bad(store, 20, "checkpoint 20 was deleted")


@pytest.mark.parametrize("fix_head", [False, True])
def test_last_checkpoint_deleted(store, fix_head):
    fill(store)
    sql(store, "DELETE FROM audit_checkpoints WHERE seq = 30")
    if fix_head:
        sql(store, "UPDATE audit_head SET last_checkpoint_seq = 20")
    assert_bad(store, 30, "checkpoint")


# ---- concurrency and durability --------------------------------------------------------------------------------
def _assert_one_chain(store, n: int) -> None:
    result = store.verify_audit()
    assert result.ok, result
    assert result.records == n and result.checkpoints == n // CHECKPOINT_EVERY
    with store.engine.connect() as conn:
        seqs = conn.execute(select(audit_records.c.seq).order_by(audit_records.c.seq)).scalars().all()
        rids = conn.execute(select(audit_records.c.response_id)).scalars().all()
    assert seqs == list(range(1, n + 1))
    assert len(set(rids)) == n


def test_concurrent_threads(store):
    threads, per = 8, 50
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(per):
                store.append_audit(make_entry(t * 1000 + i, response_id=f"t{t}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    _assert_one_chain(store, threads * per)


def _appender(db_url, tag, count, tmp_path, master_hex):
    env = {
        **os.environ,
        "ANTIDISTILL_MASTER_KEY": master_hex,
        "ANTIDISTILL_DATA_DIR": str(tmp_path / "data"),
        "ANTIDISTILL_AUDIT_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
    }
    return subprocess.Popen(
        [sys.executable, str(APPENDER), db_url, tag, str(count)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_processes(disk_db_url, settings, master, tmp_path):
    """Three processes (replicas) append to one fresh database at once; they also race on the migration."""
    db_url = disk_db_url
    procs = [_appender(db_url, f"p{i}", 40, tmp_path, bytes(range(32)).hex()) for i in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert len(out.split()) == 2 * 40
    with Store.open(db_url, settings, master=master) as store:
        _assert_one_chain(store, 120)


def test_kill_minus_9_mid_load(disk_db_url, settings, master, tmp_path):
    """Writers killed with SIGKILL in the middle of appending: every append that returned is in the log, and
    the history still verifies (a half-done append rolls back)."""
    db_url = disk_db_url
    with Store.open(db_url, settings, master=master):
        pass  # migrate first so that the writers start appending at once
    procs = [_appender(db_url, f"k{i}", 1_000_000, tmp_path, bytes(range(32)).hex()) for i in range(2)]
    acknowledged: list[str] = []
    for p in procs:
        for _ in range(25):
            line = p.stdout.readline()
            assert line, p.stderr.read()
            acknowledged.append(line.split()[1])
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)
        acknowledged.extend(ln.split()[1] for ln in p.stdout.read().splitlines() if len(ln.split()) == 2)
        p.stdout.close()
        p.stderr.close()
    with Store.open(db_url, settings, master=master) as store:
        result = store.verify_audit()
        assert result.ok, result
        with store.engine.connect() as conn:
            stored = set(conn.execute(select(audit_records.c.response_id)).scalars())
    assert set(acknowledged) <= stored
    assert result.records >= len(acknowledged) >= 50


# ---- export -----------------------------------------------------------------------------------------------------
def _canonical(obj) -> bytes:
    # Written from the documented encoding, independently of antidistill.store.chain.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def test_export_jsonl_can_be_rehashed(store, tmp_path):
    fill(store, 22)
    odd = ["line\u2028separators\x85 and a lone \ud800 surrogate"]
    store.append_audit(make_entry(23, completion=odd))
    out = tmp_path / "audit.jsonl"
    assert store.export_audit(out, "jsonl", batch_size=5) == 23
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 23
    prev = "0" * 64
    for i, line in enumerate(lines, start=1):
        rec = json.loads(line)
        assert rec["seq"] == i and rec["response_id"] == f"resp-{i}" and rec["prev_hash"] == prev
        assert rec["completion"] == (odd if i == 23 else [f"answer {i} ✓"]) and rec["request"]["temperature"] == 0.7
        body = {k: v for k, v in rec.items() if k not in ("prev_hash", "hash")}
        assert hashlib.sha256(bytes.fromhex(prev) + _canonical(body)).hexdigest() == rec["hash"]
        prev = rec["hash"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_parquet(store, tmp_path):
    import pyarrow.parquet as pq

    fill(store, 23)
    store.append_audit(
        make_entry(
            24,
            watermark={"status": "unwatermarked", "reason": "policy"},
            completion=["a", "b"],
            client_addr=None,
            finish_reason=None,
        )
    )
    out = tmp_path / "audit.parquet"
    assert store.export_audit(out, "parquet", batch_size=10) == 24
    table = pq.read_table(out)
    assert table.num_rows == 24
    rows = table.to_pylist()
    assert [r["seq"] for r in rows] == list(range(1, 25))
    first, last = rows[0], rows[-1]
    assert first["response_id"] == "resp-1" and first["completion"] == ["answer 1 ✓"]
    assert first["prompt_tokens"] == 11 and first["watermark_key_id"] == "acct:acct_test:v1"
    assert first["created_at"] == make_entry(1).created_at
    assert json.loads(first["request"])["max_tokens"] == 64
    assert last["completion"] == ["a", "b"] and last["watermark_key_id"] is None and last["client_addr"] is None


def test_export_empty_and_bad_format(store, tmp_path):
    assert store.export_audit(tmp_path / "e.jsonl") == 0
    assert (tmp_path / "e.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="format"):
        store.export_audit(tmp_path / "x.csv", "csv")


# ---- any content round-trips through the database and verifies --------------------------------------------------
_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
# Lone surrogates and NULs included: a JSON request body may carry them ("\ud800", "\u0000").
_any_text = st.text(st.characters(exclude_categories=()), max_size=12)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=12,
)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(_any_text, _json, max_size=4),
    completion=st.lists(_any_text, max_size=3),
    user_agent=st.none() | _text,
    latency=st.floats(0, 1e9),
    micros=st.integers(0, 999_999),
)
def test_any_content_verifies_and_exports(store, tmp_path, body, completion, user_agent, latency, micros):
    seq = store.audit_head().seq + 1
    entry = replace(
        make_entry(seq),
        request=body,
        completion=completion,
        user_agent=user_agent,
        latency_ms=latency,
        created_at=make_entry(0).created_at.replace(microsecond=micros),
    )
    assert store.append_audit(entry) == seq
    result = store.verify_audit()
    assert result.ok, result
    assert store.export_audit(tmp_path / "a.jsonl") == seq
    rec = json.loads((tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()[-1])  # any splitter works
    body_ = {k: v for k, v in rec.items() if k not in ("prev_hash", "hash")}
    assert hashlib.sha256(bytes.fromhex(rec["prev_hash"]) + _canonical(body_)).hexdigest() == rec["hash"]
    assert store.export_audit(tmp_path / "a.parquet", "parquet") == seq
