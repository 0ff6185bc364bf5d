"""The chain's pure core: the canonical encoding (pinned by a golden vector) and how verification names the
first bad record, on synthetic histories (no database)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from antidistill.keys import MasterKey
from antidistill.store.api import AuditEntry
from antidistill.store.chain import (
    GENESIS_HASH,
    ChainRecord,
    Checkpoint,
    Head,
    SignedHead,
    canonical_json,
    checkpoint_message,
    entry_columns,
    format_time,
    payload,
    record_hash,
    verify_chain,
)

ENTRY = AuditEntry(
    response_id="chatcmpl-1",
    account_id="acct_0001",
    api_key_id="key_0001",
    created_at=datetime(2025, 1, 31, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1))),
    endpoint="/v1/chat/completions",
    client_addr="198.51.100.1",
    user_agent="curl/8",
    request={"messages": [{"role": "user", "content": "Grüße"}], "temperature": 1e-05},
    completion=["Hallo ✓"],
    prompt_tokens=3,
    completion_tokens=2,
    finish_reason="stop",
    latency_ms=12,
    watermark={"status": "unwatermarked", "reason": "policy"},
)
GOLDEN_PAYLOAD = (
    '{"account_id":"acct_0001","api_key_id":"key_0001","client_addr":"198.51.100.1","completion":["Hallo ✓"],'
    '"completion_tokens":2,"created_at":"2025-01-31T12:00:00.000005Z","endpoint":"/v1/chat/completions",'
    '"finish_reason":"stop","latency_ms":12.0,"prompt_tokens":3,"request":{"messages":[{"content":"Grüße",'
    '"role":"user"}],"temperature":1e-05},"response_id":"chatcmpl-1","seq":1,"status":200,"user_agent":"curl/8",'
    '"v":1,"watermark":{"reason":"policy","status":"unwatermarked"}}'
)
GOLDEN_HASH = "59f0d1d92f9103895437f28ccba5c33901621ef218d03af60c7babc124c94db7"


def test_golden_vector():
    """The documented encoding, pinned: changing it would orphan every stored history."""
    cols = entry_columns(ENTRY)
    data = canonical_json(payload(1, cols))
    assert data == GOLDEN_PAYLOAD.encode("utf-8")
    assert hashlib.sha256(bytes(32) + GOLDEN_PAYLOAD.encode("utf-8")).hexdigest() == GOLDEN_HASH
    assert record_hash(GENESIS_HASH, 1, cols) == GOLDEN_HASH


def test_encoding_details():
    assert format_time(datetime(2025, 1, 1)) == "2025-01-01T00:00:00.000000Z"  # naive means UTC
    assert canonical_json({"x": float("inf"), "y": -0.0, "z": 0.1}) == b'{"x":Infinity,"y":-0.0,"z":0.1}'
    assert canonical_json("\ud800") == b'"\xed\xa0\x80"'  # lone surrogate: surrogatepass
    assert canonical_json({"b": {"d": 1, "c": 2}, "a": []}) == b'{"a":[],"b":{"c":2,"d":1}}'


# ---- synthetic histories ---------------------------------------------------------------------------------
MASTER = MasterKey(b"k" * 32)
T = datetime(2025, 1, 1, tzinfo=UTC)


def history(n: int, every: int = 5):
    recs, cps = [], []
    prev, last_cp = GENESIS_HASH, 0
    for s in range(1, n + 1):
        cols = entry_columns(ENTRY.__class__(**{**ENTRY.__dict__, "response_id": f"r{s}"}))
        h = record_hash(prev, s, cols)
        recs.append(ChainRecord(s, prev, h, cols))
        if s % every == 0:
            sig = MASTER.audit_sign(checkpoint_message(s, h, last_cp, T))
            cps.append(Checkpoint(s, h, last_cp, T, MASTER.audit_public_key().hex(), sig.hex()))
            last_cp = s
        prev = h
    return recs, cps, Head(n, prev, last_cp, SignedHead.sign(MASTER, n, prev, T) if n else None)


def run(recs, cps, head, every=5):
    by_hash = {r.hash: r.seq for r in recs}
    return verify_chain(
        iter(recs),
        iter(cps),
        head,
        checkpoint_every=every,
        public_key=MASTER.audit_public_key().hex(),
        find_seq=by_hash.get,
    )


def renumber(recs, start, delta):
    return [ChainRecord(r.seq + delta, r.prev_hash, r.hash, r.cols) if r.seq >= start else r for r in recs]


def test_intact():
    result = run(*history(23))
    assert result.ok and result.records == 23 and result.checkpoints == 4 and result.details["since_checkpoint"] == 3


def test_several_deleted_records():
    recs, cps, head = history(12)
    result = run([r for r in recs if r.seq not in (6, 7, 8)], cps, head)
    assert (result.first_bad_seq, result.problem) == (6, "records 6-8 are missing (deleted)")


def test_record_moved_far_ahead():
    recs, _, _ = history(12)
    moved = [r for r in recs if r.seq != 3] + [recs[2]]  # record 3 moved to the end, the rest renumbered
    moved = [ChainRecord(i, r.prev_hash, r.hash, r.cols) for i, r in enumerate(moved, start=1)]
    result = run(moved, [], Head(12, moved[-1].hash, 0), every=100)
    assert result.first_bad_seq == 3 and "reordered" in result.problem


def test_inserted_then_renumbered_without_a_valid_link():
    recs, _, _ = history(12)
    foreign = ChainRecord(4, "ab" * 32, "cd" * 32, recs[0].cols)
    result = run([*recs[:3], foreign, *renumber(recs[3:], 4, 1)], [], Head(13, "x", 0), every=100)
    assert result.first_bad_seq == 4 and "inserted" in result.problem


def test_checkpoint_for_a_missing_tail():
    recs, cps, _ = history(10)
    result = run(recs[:7], cps, Head(7, recs[6].hash, 5))
    assert result.first_bad_seq == 8 and "deleted" in result.problem


@pytest.mark.parametrize("every", [1, 3])
def test_every_interval(every):
    result = run(*history(9, every=every), every=every)
    assert result.ok and result.checkpoints == 9 // every
