"""The typed audit record (``Store.iter_records``) on SQLite and PostgreSQL, and the storage protocols ``Store``
satisfies."""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
from datetime import UTC, datetime

import pytest

from antidistill.store.api import (
    PENDING_STATUS,
    AccountStore,
    AuditEntry,
    AuditLog,
    AuditRecord,
    EnforcementStore,
    Storage,
    is_pending_record,
)
from antidistill.store.chain import GENESIS_HASH
from antidistill.store.sql import Store
from tests.store.entries import CHECKPOINT_EVERY, make_entry

#: request bodies as received: JSON text (v2 record, kept as UTF-8), bytes that are not UTF-8 and a body with a
#: NUL (both kept as base64), and none (a v1 record, as policy actions and older histories are)
RAW_BODIES = [b'{"model": "smollm2", "messages": []}', b"\xff\xfe\x80 not utf-8", b'{"a": "\x00"}', None]


def entries() -> list[AuditEntry]:
    out = [make_entry(i, request_raw=raw) for i, raw in enumerate(RAW_BODIES, start=1)]
    # a stream: its opening (pending) record, then the final one under the same response id
    out.append(
        make_entry(5, status=PENDING_STATUS, completion=[], watermark={"status": "pending"}, request_raw=RAW_BODIES[0])
    )
    out.append(make_entry(5, finish_reason=None, client_addr=None, user_agent=None, request_raw=RAW_BODIES[0]))
    # a policy action (no body received), and text a client may send: lone surrogates, line separators
    out.append(
        make_entry(
            7,
            endpoint="monitor:action",
            api_key_id="monitor",
            completion=[],
            prompt_tokens=0,
            completion_tokens=0,
            status=403,
            request={"kind": "antidistill.monitor.action", "action": "block", "until": None},
            watermark={"status": "not-applicable", "reason": "policy action record"},
        )
    )
    out.append(
        make_entry(
            8,
            request={"messages": [{"role": "user", "content": "\ud800 \u2028 x"}]},
            completion=["a", "", "c\x85"],
            latency_ms=0,
        )
    )
    return out


def test_records_round_trip_every_field_with_its_type(store):
    written = entries()
    for e in written:
        store.append_audit(e)
    records = list(store.iter_records(batch_size=3))  # batches that do not divide the history
    assert [r.seq for r in records] == list(range(1, len(written) + 1))
    prev = GENESIS_HASH
    for r, e in zip(records, written, strict=True):
        assert isinstance(r, AuditRecord)
        for f in dataclasses.fields(AuditEntry):
            assert getattr(r, f.name) == getattr(e, f.name), f.name
        assert r.prev_hash == prev and len(r.hash) == 64
        prev = r.hash
        assert r.created_at.tzinfo is UTC and isinstance(r.created_at, datetime)
        assert type(r.request) is dict and type(r.watermark) is dict and type(r.completion) is list
        assert type(r.latency_ms) is float and type(r.status) is int and type(r.prompt_tokens) is int
        assert r.request_raw is None or type(r.request_raw) is bytes
        assert r.v == (1 if e.request_raw is None else 2)
    assert [r.request_raw for r in records[:4]] == RAW_BODIES
    assert [r.v for r in records[:4]] == [2, 2, 2, 1]
    # the helpers: pending, action, exchange
    assert [r.seq for r in records if r.is_pending] == [5]
    assert [r.seq for r in records if r.is_action] == [7]
    assert [r.seq for r in records if r.is_exchange] == [1, 2, 3, 4, 6, 8]
    assert [is_pending_record(r) for r in records] == [r.is_pending for r in records]
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].status = 500  # type: ignore[misc]


def test_records_agree_with_the_export(store, tmp_path):
    """The typed record and the exported dict are the same record: from_export reads one into the other, from
    iter_audit and from the JSONL file alike."""
    for e in entries():
        store.append_audit(e)
    records = list(store.iter_records())
    exported = list(store.iter_audit())
    assert [AuditRecord.from_export(d) for d in exported] == records
    assert [(d["v"], d["hash"], d["prev_hash"]) for d in exported] == [(r.v, r.hash, r.prev_hash) for r in records]
    out = tmp_path / "audit.jsonl"
    store.export_audit(out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [AuditRecord.from_export(d) for d in lines] == records


def test_records_come_from_one_snapshot(store):
    for i in range(1, 6):
        store.append_audit(make_entry(i))
    it = store.iter_records(batch_size=2)
    first = next(it)
    done = threading.Event()

    def append_more() -> None:  # another writer, while the reader is between batches
        for i in range(6, 9):
            store.append_audit(make_entry(i))
        done.set()

    t = threading.Thread(target=append_more)
    t.start()
    rest = list(it)
    t.join(30)
    assert done.is_set()
    assert [first.seq, *(r.seq for r in rest)] == [1, 2, 3, 4, 5]
    assert [r.seq for r in store.iter_records()] == list(range(1, 9))


def test_checkpoints_and_interval(store):
    for i in range(1, 2 * CHECKPOINT_EVERY + 3):
        store.append_audit(make_entry(i))
    cps = store.checkpoints()
    assert [c.seq for c in cps] == [CHECKPOINT_EVERY, 2 * CHECKPOINT_EVERY]
    assert [c.prev_checkpoint_seq for c in cps] == [0, CHECKPOINT_EVERY]
    by_seq = {r.seq: r.hash for r in store.iter_records()}
    assert all(c.hash == by_seq[c.seq] and c.created_at.tzinfo is UTC for c in cps)
    assert store.checkpoint_every == CHECKPOINT_EVERY


def test_an_empty_log_and_a_bad_batch_size(store):
    assert list(store.iter_records()) == [] and store.checkpoints() == []
    with pytest.raises(ValueError, match="batch_size"):
        list(store.iter_records(batch_size=0))


# ---- from_export on its own ---------------------------------------------------------------------------------
def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "v": 1,
        "seq": 3,
        "prev_hash": "ab" * 32,
        "hash": "cd" * 32,
        "response_id": "r",
        "account_id": "a",
        "api_key_id": "k",
        "created_at": "2025-01-31T12:00:00.000001Z",
        "endpoint": "/v1/completions",
        "client_addr": None,
        "user_agent": "ua",
        "request": {"prompt": "hi"},
        "completion": ["x"],
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "finish_reason": None,
        "latency_ms": 3,
        "watermark": {},
        "status": 200,
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


def test_from_export_reads_times_and_raw_bodies():
    r = AuditRecord.from_export(_row())
    assert r.created_at == datetime(2025, 1, 31, 12, 0, 0, 1, tzinfo=UTC) and r.request_raw is None
    assert type(r.latency_ms) is float
    naive = AuditRecord.from_export(_row(created_at=datetime(2025, 1, 1)))
    assert naive.created_at == datetime(2025, 1, 1, tzinfo=UTC)
    assert AuditRecord.from_export(_row(v=2, request_raw={"base64": "AP8="})).request_raw == b"\x00\xff"
    assert AuditRecord.from_export(_row(v=2, request_raw={"utf8": "é"})).request_raw == "é".encode()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"seq": ...}, "seq"),
        ({"seq": "3"}, "seq"),
        ({"status": True}, "status"),
        ({"request": []}, "request"),
        ({"completion": "x"}, "completion"),
        ({"completion": [1]}, "completion"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": 17}, "created_at"),
        ({"client_addr": 5}, "client_addr"),
        ({"latency_ms": "1"}, "latency_ms"),
        ({"request_raw": "raw"}, "request_raw"),
        ({"request_raw": {"base64": "!"}}, "request_raw"),
        ({"watermark": None}, "watermark"),
        ({"hash": ...}, "hash"),
    ],
)
def test_from_export_names_the_bad_field(changes, named):
    with pytest.raises(ValueError, match=named):
        AuditRecord.from_export(_row(**changes))


# ---- the protocols ------------------------------------------------------------------------------------------
def _members(protocol: type) -> dict[str, object]:
    own = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object,) or not getattr(klass, "_is_protocol", False):
            continue
        own.update({k: v for k, v in vars(klass).items() if not k.startswith("_")})
    return own


@pytest.mark.parametrize("protocol", [AccountStore, AuditLog, EnforcementStore, Storage])
def test_store_offers_every_protocol_member_with_its_signature(protocol):
    """The runtime half of the check mypy makes statically (sql.py's _is_storage): same names, parameters and
    defaults, so code typed against the protocol runs against the Store."""
    members = _members(protocol)
    assert members, protocol
    for name, member in members.items():
        impl = inspect.getattr_static(Store, name)
        if isinstance(member, property):
            assert isinstance(impl, property), name
            continue
        want, got = inspect.signature(member), inspect.signature(impl)
        assert [(p.name, p.kind, p.default) for p in want.parameters.values()] == [
            (p.name, p.kind, p.default) for p in got.parameters.values()
        ], name


def test_storage_is_the_three_parts():
    assert set(_members(Storage)) == set(_members(AccountStore)) | set(_members(AuditLog)) | set(
        _members(EnforcementStore)
    ) | {"close"}
