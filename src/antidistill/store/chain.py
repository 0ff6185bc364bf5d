"""The audit hash chain: canonical encoding, hashes, checkpoint messages and verification (pure functions).

Nothing here touches a database; :mod:`antidistill.store.sql` feeds rows in. An exported JSONL file can be
checked with the same functions.

Canonical encoding (format version 1)
-------------------------------------
A record's *payload* is the JSON object::

    {"v": 1, "seq": <int>, "response_id": …, "account_id": …, "api_key_id": …, "created_at": …, "endpoint": …,
     "client_addr": …, "user_agent": …, "request": {…}, "completion": [...], "prompt_tokens": <int>,
     "completion_tokens": <int>, "finish_reason": …, "latency_ms": <float>, "watermark": {…}, "status": <int>}

encoded as JSON with keys sorted at every level, no whitespace (``","`` and ``":"``), non-ASCII characters
written as themselves (``ensure_ascii=False``) and the text encoded as UTF-8. Times are ISO-8601 in UTC with
microseconds and a ``Z`` (``2025-01-31T12:00:00.123456Z``); floats are written as Python's ``repr`` (the
shortest text that reads back to the same double; ``NaN``/``Infinity`` as Python writes them); ``null`` for
``None``. A lone surrogate (possible in a JSON request body) is encoded as its three-byte sequence
(Python's ``surrogatepass``).

The record's hash is ``SHA-256(prev_hash || payload)`` with ``prev_hash`` the previous record's 32-byte hash
(32 zero bytes before the first record); hashes are stored as lowercase hex. ``seq`` is part of the payload,
so a record moved to another position no longer matches its hash, which lets :func:`verify_chain` tell a
deletion from an edit.

A checkpoint signs, with Ed25519, ``b"antidistill/v1/audit-checkpoint\\n"`` followed by the canonical encoding
of ``{"seq", "hash", "prev_checkpoint_seq", "created_at"}``. Checkpoints are chained through
``prev_checkpoint_seq``, so deleting one is seen at the next.

Signed heads (format version 2)
-------------------------------
Every commit that moves the chain also signs its new head: ``b"antidistill/v1/audit-head\\n"`` followed by the
canonical encoding of ``{"seq", "hash", "signed_at"}`` (a *signed tree head*, as Certificate Transparency calls
it). The head row keeps only the newest one, so cutting, rewriting or resetting any suffix of the log needs the
signing key: the old signed heads are gone and a new one cannot be made. A signed head copied out of the database
(``antidistill audit anchor``) is an *anchor*; a log that is shorter than an anchor, or whose record at the
anchor's seq has another hash, is not the history the anchor saw (hash chaining makes the record's hash commit
to every record before it, so one comparison is a consistency proof). What the signatures cannot stop without
an anchor: someone with write access to the database who kept an old copy of it (or of its head row) can put
that older, genuinely signed state back. ``docs/audit-log.md`` sets out who can do what.

Records written by the gateway since format version 2 also keep the request body exactly as it was received,
``request_raw``: ``{"utf8": <text>}`` (or ``{"base64": …}`` for bytes that are not UTF-8), beside the parsed
``request``. Such a record's payload has ``"v": 2`` and the ``request_raw`` member; a record without it keeps the
version-1 payload, so older histories verify unchanged.

References: Schneier & Kelsey, "Secure audit logs to support computer forensics", ACM TISSEC 1999
(hash-chained logs); Crosby & Wallach, "Efficient data structures for tamper-evident logging", USENIX
Security 2009 (signed commitments to the head).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from antidistill.errors import InputError
from antidistill.store.api import AuditEntry, VerifyResult
from antidistill.store.api import decode_raw as decode_raw  # the raw body's JSON form lives with AuditRecord
from antidistill.store.api import encode_raw as encode_raw

# What is signed (and the encoding it shares with the chain) lives in .signing; importable from here as before.
from antidistill.store.signing import ANCHOR_TYPE as ANCHOR_TYPE
from antidistill.store.signing import CHECKPOINT_LABEL as CHECKPOINT_LABEL
from antidistill.store.signing import HEAD_LABEL as HEAD_LABEL
from antidistill.store.signing import Checkpoint as Checkpoint
from antidistill.store.signing import Head as Head
from antidistill.store.signing import SignedHead as SignedHead
from antidistill.store.signing import canonical_json as canonical_json
from antidistill.store.signing import checkpoint_message as checkpoint_message
from antidistill.store.signing import ed25519_ok as ed25519_ok
from antidistill.store.signing import format_time as format_time
from antidistill.store.signing import head_message as head_message
from antidistill.store.signing import to_utc as to_utc

FORMAT_VERSION = 1
#: the payload version of a record that keeps the raw request body
RAW_FORMAT_VERSION = 2
T = TypeVar("T")
GENESIS_HASH = "0" * 64
#: The columns of an audit record that its hash covers (besides ``seq`` and the previous hash).
RECORD_FIELDS = (
    "response_id",
    "account_id",
    "api_key_id",
    "created_at",
    "endpoint",
    "client_addr",
    "user_agent",
    "request",
    "completion",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "latency_ms",
    "watermark",
    "status",
)
_JSON_FIELDS = ("request", "completion", "watermark")
#: an optional column: the request body as received (format version 2)
RAW_FIELD = "request_raw"
#: every stored column a record's hash covers
STORED_FIELDS = (*RECORD_FIELDS, RAW_FIELD)
_MAX_INT = 2**31 - 1


# ---- encoding ---------------------------------------------------------------------------------------
def json_text(obj: Any) -> str:
    """How a JSON part of a record is stored: compact JSON, readable non-ASCII text.

    Text with a lone surrogate cannot be stored as UTF-8 (PostgreSQL refuses it), so such a value is
    stored with ``\\uXXXX`` escapes; both forms read back to the same value, and the hash is computed from
    the value, not from this text.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return text


def _check_text(name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InputError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{name} is not valid Unicode text (lone surrogate)") from None
    return value


def _check_int(name: str, value: Any, lo: int = 0, hi: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def entry_columns(entry: AuditEntry) -> dict[str, Any]:
    """The stored column values of ``entry`` (validated and normalised); raises ``ValueError`` naming a field."""
    if not isinstance(entry.created_at, datetime):
        raise InputError(f"created_at must be a datetime, got {type(entry.created_at).__name__}")
    if not isinstance(entry.request, Mapping):
        raise InputError("request must be a JSON object (dict)")
    if not isinstance(entry.watermark, Mapping):
        raise InputError("watermark must be a JSON object (dict)")
    if isinstance(entry.completion, str) or not all(isinstance(c, str) for c in entry.completion):
        raise InputError("completion must be a list of strings (one per choice)")
    if (
        isinstance(entry.latency_ms, bool)
        or not isinstance(entry.latency_ms, int | float)
        or not math.isfinite(entry.latency_ms)
    ):
        raise InputError(f"latency_ms must be a finite number, got {entry.latency_ms!r}")
    cols: dict[str, Any] = {
        "response_id": _check_text("response_id", entry.response_id),
        "account_id": _check_text("account_id", entry.account_id),
        "api_key_id": _check_text("api_key_id", entry.api_key_id),
        # Microseconds are what both databases keep.
        "created_at": to_utc(entry.created_at),
        "endpoint": _check_text("endpoint", entry.endpoint),
        "client_addr": _check_text("client_addr", entry.client_addr, optional=True),
        "user_agent": _check_text("user_agent", entry.user_agent, optional=True),
        "prompt_tokens": _check_int("prompt_tokens", entry.prompt_tokens),
        "completion_tokens": _check_int("completion_tokens", entry.completion_tokens),
        "finish_reason": _check_text("finish_reason", entry.finish_reason, optional=True),
        "latency_ms": float(entry.latency_ms),
        "status": _check_int("status", entry.status, 100, 999),
    }
    for name in _JSON_FIELDS:
        value = getattr(entry, name)
        try:
            cols[name] = json_text(list(value) if name == "completion" else dict(value))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} is not JSON-serialisable: {exc}") from None
    raw = entry.request_raw
    if raw is not None and not isinstance(raw, bytes | bytearray):
        raise InputError(f"request_raw must be bytes or None, got {type(raw).__name__}")
    cols[RAW_FIELD] = None if raw is None else json_text(encode_raw(bytes(raw)))
    return cols


def payload(seq: int, cols: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON payload of the record at ``seq`` built from its stored column values."""
    raw = cols.get(RAW_FIELD)
    p: dict[str, Any] = {"v": FORMAT_VERSION if raw is None else RAW_FORMAT_VERSION, "seq": int(seq)}
    if raw is not None:
        p[RAW_FIELD] = json.loads(raw)
    for name in RECORD_FIELDS:
        value = cols[name]
        if name in _JSON_FIELDS:
            value = json.loads(value)
        elif name == "created_at":
            value = format_time(value)
        elif name == "latency_ms":
            value = float(value)
        p[name] = value
    return p


def record_hash(prev_hash: str, seq: int, cols: Mapping[str, Any]) -> str:
    """``SHA-256(prev_hash || canonical(payload))`` as hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(payload(seq, cols))).hexdigest()


# ---- verification -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainRecord:
    """A stored record as verification sees it: position, links and the column values its hash covers."""

    seq: int
    prev_hash: str
    hash: str
    cols: Mapping[str, Any]

    def computed_hash(self, seq: int | None = None) -> str | None:
        try:
            return record_hash(self.prev_hash, self.seq if seq is None else seq, self.cols)
        except (ValueError, TypeError, KeyError):  # unreadable JSON or hex: the row was edited
            return None


class _Peek(Generic[T]):
    def __init__(self, it: Iterable[T]) -> None:
        self._it: Iterator[T] = iter(it)
        self._buf: list[T | None] = []

    def peek(self) -> T | None:
        if not self._buf:
            self._buf.append(next(self._it, None))
        return self._buf[0]

    def next(self) -> T | None:
        return self._buf.pop() if self._buf else next(self._it, None)


class _Bad(Exception):
    def __init__(self, seq: int, problem: str, **details: Any) -> None:
        super().__init__(problem)
        self.seq, self.problem, self.details = seq, problem, details


def _signature_ok(c: Checkpoint) -> bool:
    return ed25519_ok(c.public_key, c.signature, checkpoint_message(c.seq, c.hash, c.prev_checkpoint_seq, c.created_at))


def _classify(
    r: ChainRecord,
    p: ChainRecord | None,
    pp: ChainRecord | None,
    n1: ChainRecord | None,
    find_seq: Callable[[str], int | None],
) -> _Bad:
    """Name the first bad record around ``r``, the first record that fails its link or its hash."""
    prev_expected = p.hash if p is not None else GENESIS_HASH
    link_ok = r.prev_hash == prev_expected
    content_ok = r.computed_hash() == r.hash
    next_links_here = n1 is not None and n1.prev_hash == r.hash
    next_links_prev = n1 is not None and n1.prev_hash == prev_expected
    renumbered_from = next((r.seq + d for d in (1, -1) if r.computed_hash(r.seq + d) == r.hash), None)
    s = r.seq
    if link_ok:  # the link holds, the content does not
        if next_links_prev and not next_links_here:
            return _Bad(
                s,
                f"record {s} was inserted: it does not match its hash and the next record links past it",
                kind="inserted",
            )
        return _Bad(s, f"record {s} was edited: its content no longer matches its hash", kind="edited")
    if n1 is not None and r.prev_hash == n1.hash:
        return _Bad(
            s, f"records {s} and {n1.seq} were reordered: record {s} links to the record after it", kind="reordered"
        )
    if pp is not None and p is not None and r.prev_hash == pp.hash:
        return _Bad(p.seq, f"record {p.seq} was inserted: record {s} links to the record before it", kind="inserted")
    if next_links_prev:
        return _Bad(
            s, f"record {s} was inserted: it does not link to record {s - 1} and the next record does", kind="inserted"
        )
    j = find_seq(r.prev_hash)
    if j is not None and j > s:
        return _Bad(s, f"record {s} was reordered: it links to record {j}, which comes after it", kind="reordered")
    if j is not None and j < s - 1:
        return _Bad(j + 1, f"records {j + 1}-{s - 1} were inserted: record {s} links to record {j}", kind="inserted")
    if renumbered_from is not None and renumbered_from > s:
        return _Bad(
            s,
            f"record {s} was deleted and the later records renumbered (the record now at {s} was "
            f"written as {renumbered_from})",
            kind="deleted",
        )
    if renumbered_from is not None:
        return _Bad(
            s,
            f"a record was inserted before {s} and the later records renumbered (the record now at "
            f"{s} was written as {renumbered_from})",
            kind="inserted",
        )
    if content_ok and p is not None:
        return _Bad(
            p.seq, f"record {p.seq} was edited and its hash recomputed: record {s} no longer links to it", kind="edited"
        )
    if next_links_here:
        return _Bad(s, f"record {s} was edited: its link to the previous record was changed", kind="edited")
    return _Bad(
        s,
        f"record {s} does not link to record {s - 1} nor match its hash: the history was edited, "
        f"or records were deleted before it",
        kind="broken",
    )


def _check_head(head: Head, last: int, signer: str | None) -> None:
    """The head must be signed, by the signer, over exactly its seq and hash (an empty log may be unsigned)."""
    sh = head.signed
    if sh is None:
        if last == 0:
            return
        raise _Bad(
            last,
            f"the chain head (record {last}) carries no signature: it was removed, or the log was "
            f"last written by an antidistill older than signed heads",
            kind="head",
        )
    if (sh.seq, sh.hash) != (head.seq, head.hash):
        raise _Bad(
            last,
            f"the chain head's signature covers record {sh.seq}, not record {head.seq}: the head was "
            f"moved without the signing key",
            kind="head",
        )
    if not sh.valid():
        raise _Bad(
            last,
            f"the chain head's signature is invalid: the head (record {last}) was rewritten without the signing key",
            kind="head",
        )
    if signer is not None and sh.public_key != signer:
        raise _Bad(last, "the chain head is signed by a key other than the log's audit key", kind="head")


def _check_anchor(anchor: SignedHead, public_key: str | None) -> None:
    if not anchor.valid():
        raise _Bad(
            anchor.seq,
            "the anchor's signature is invalid: it was not written by antidistill, or it was edited",
            kind="anchor",
        )
    if public_key is not None and anchor.public_key != public_key:
        raise _Bad(anchor.seq, "the anchor is signed by a key other than this installation's audit key", kind="anchor")


def _check_position(r: ChainRecord, p: ChainRecord | None, head: Head) -> None:
    """The record must come right after the previous one, and not beyond the head."""
    expected = p.seq + 1 if p is not None else 1
    if r.seq != expected:
        if r.seq < expected:
            raise _Bad(r.seq, f"record {r.seq} is out of sequence", kind="reordered")
        missing = f"record {expected} is" if r.seq == expected + 1 else f"records {expected}-{r.seq - 1} are"
        raise _Bad(expected, f"{missing} missing (deleted)", kind="deleted")
    if r.seq > head.seq:
        raise _Bad(r.seq, f"record {r.seq} lies beyond the chain head ({head.seq}): it was inserted", kind="inserted")


def _check_checkpoint(c: Checkpoint, r: ChainRecord, last_cp: int, signer: str | None, key_known: bool) -> str:
    """Checkpoint ``c`` at record ``r``: it exists, its signature holds by the signer, it chains to the last one
    and signs the record's hash. Returns the signer (the first checkpoint's key when none was known)."""
    if c.seq != r.seq:
        raise _Bad(c.seq, f"checkpoint {c.seq} signs a record that does not exist", kind="checkpoint")
    if not _signature_ok(c):
        raise _Bad(c.seq, f"checkpoint {c.seq}: the signature is invalid", kind="checkpoint")
    if signer is not None and c.public_key != signer:
        who = "this installation's audit key" if key_known else "the key of the first checkpoint"
        raise _Bad(c.seq, f"checkpoint {c.seq} is signed by a key other than {who}", kind="checkpoint")
    if c.prev_checkpoint_seq != last_cp:
        if c.prev_checkpoint_seq > last_cp:
            raise _Bad(c.prev_checkpoint_seq, f"checkpoint {c.prev_checkpoint_seq} was deleted", kind="checkpoint")
        raise _Bad(last_cp, f"checkpoint {last_cp} was inserted", kind="checkpoint")
    if c.hash != r.hash:
        raise _Bad(
            c.seq,
            f"record {c.seq} does not match its signed checkpoint: records {last_cp + 1}-{c.seq} were "
            f"rewritten after it was signed",
            kind="rewritten",
            rewritten_between=[last_cp + 1, c.seq],
        )
    return signer or c.public_key


def _check_end(c: Checkpoint | None, p: ChainRecord | None, head: Head, anchor: SignedHead | None) -> None:
    """After the last record: no checkpoint left over, the head on it, and the log as long as the anchor saw."""
    last = p.seq if p is not None else 0
    if c is not None:
        raise _Bad(
            last + 1,
            f"checkpoint {c.seq} signs a record that does not exist: records from {last + 1} on were deleted",
            kind="deleted",
        )
    if head.seq > last:
        raise _Bad(
            last + 1,
            f"records {last + 1}-{head.seq} are missing (deleted): the chain head is at {head.seq}",
            kind="deleted",
        )
    if head.hash != (p.hash if p is not None else GENESIS_HASH):
        raise _Bad(last, f"the chain head's hash does not match record {last}", kind="head")
    if anchor is not None and last < anchor.seq:
        gone = "every record" if last == 0 else f"records {last + 1}-{anchor.seq}"
        raise _Bad(
            last + 1,
            f"the log ends at record {last}, but the anchored head signed at "
            f"{format_time(anchor.signed_at)} saw {anchor.seq}: {gone} were deleted since "
            f"(or the log was reset)",
            kind="anchor",
        )


def verify_chain(
    records: Iterable[ChainRecord],
    checkpoints: Iterable[Checkpoint],
    head: Head,
    *,
    checkpoint_every: int,
    public_key: str | None = None,
    find_seq: Callable[[str], int | None] = lambda _h: None,
    anchor: SignedHead | None = None,
) -> VerifyResult:
    """Verify a history: the records and checkpoints in ``seq`` order, and the head, all from one snapshot.

    Stops at the first problem and names the first record where the history was edited, deleted, inserted or
    reordered (``VerifyResult.first_bad_seq``).

    Args:
        records: the records in ascending ``seq`` (streamed; only three are held at a time).
        checkpoints: the checkpoints in ascending ``seq``.
        head: the stored chain head; unless the log is empty it must carry a valid signature by the signer.
        checkpoint_every: the checkpoint interval; a longer gap since the last checkpoint means one was deleted.
        public_key: the expected signer (hex); ``None``: every checkpoint and the head must be signed by the key
            of the first one (and the caller should compare that key with its own out of band).
        find_seq: the seq of the record with a given hash, or ``None``; used only to explain a failure.
        anchor: a signed head kept outside the database: the log must reach its seq with its hash there.
    """
    recs, cps = _Peek(records), _Peek(checkpoints)
    n = ncp = 0
    p = pp = None
    last_cp = 0
    signer = public_key
    details: dict[str, Any] = {"head_seq": head.seq, "public_key_checked": public_key is not None}
    if anchor is not None:
        details["anchor"] = {"seq": anchor.seq, "hash": anchor.hash, "signed_at": format_time(anchor.signed_at)}
    try:
        if anchor is not None:
            _check_anchor(anchor, public_key)
            signer = signer or anchor.public_key
        while (r := recs.next()) is not None:
            _check_position(r, p, head)
            if r.prev_hash != (p.hash if p is not None else GENESIS_HASH) or r.computed_hash() != r.hash:
                raise _classify(r, p, pp, recs.peek(), find_seq)
            while (c := cps.peek()) is not None and c.seq <= r.seq:
                cps.next()
                signer = _check_checkpoint(c, r, last_cp, signer, public_key is not None)
                last_cp = c.seq
                ncp += 1
            if anchor is not None and r.seq == anchor.seq and r.hash != anchor.hash:
                raise _Bad(
                    r.seq,
                    f"record {r.seq} does not match the anchored head signed at "
                    f"{format_time(anchor.signed_at)}: the history up to it was rewritten since",
                    kind="anchor",
                )
            n += 1
            pp, p = p, r
        last = p.seq if p is not None else 0
        _check_end(cps.next(), p, head, anchor)
        _check_head(head, last, signer)
        if signer is None and head.signed is not None:
            signer = head.signed.public_key
        if head.last_checkpoint_seq > last_cp:
            raise _Bad(
                head.last_checkpoint_seq, f"checkpoint {head.last_checkpoint_seq} was deleted", kind="checkpoint"
            )
        if last - last_cp >= checkpoint_every:
            due = last_cp + checkpoint_every
            raise _Bad(
                due,
                f"no signed checkpoint after record {last_cp} although one is due every "
                f"{checkpoint_every} records: checkpoint {due} was deleted",
                kind="checkpoint",
            )
    except _Bad as bad:
        details.update(bad.details, public_key=signer)
        return VerifyResult(
            ok=False, records=n, checkpoints=ncp, first_bad_seq=bad.seq, problem=bad.problem, details=details
        )
    details.update(
        public_key=signer,
        last_checkpoint_seq=last_cp,
        since_checkpoint=last - last_cp,
        head_hash=head.hash,
        head_signed_at=format_time(head.signed.signed_at) if head.signed is not None else None,
    )
    return VerifyResult(ok=True, records=n, checkpoints=ncp, details=details)


def verify_extension(
    anchor: SignedHead, records: Iterable[ChainRecord], head: Head, *, public_key: str | None = None
) -> str | None:
    """Whether the log still holds the history ``anchor`` saw and only grew since: ``None``, or what is wrong.

    The incremental check a witness runs at each new anchor (a consistency proof, in Certificate Transparency's
    words): the record at the anchor's seq has the anchored hash, every later record links to the one before and
    matches its hash, and the head is the last of them, signed by the log's key. Cost: the records since the
    anchor, not the whole log.

    Args:
        anchor: the earlier signed head.
        records: the records from ``anchor.seq`` on (from 1 for an anchor at 0), ascending.
        head: the stored head now.
        public_key: the expected signer; ``None``: the anchor's.
    """
    signer = public_key or anchor.public_key
    if not anchor.valid() or anchor.public_key != signer:
        return "the earlier anchor's signature is invalid, or by another key"
    prev, expected = GENESIS_HASH, 1
    it = iter(records)
    if anchor.seq > 0:
        first = next(it, None)
        if first is None or first.seq != anchor.seq:
            return f"record {anchor.seq}, the end of the anchored history, is gone: the log was cut or reset"
        if first.hash != anchor.hash or first.computed_hash() != first.hash:
            return f"record {anchor.seq} no longer matches the anchored head: the history was rewritten"
        prev, expected = first.hash, anchor.seq + 1
    for r in it:
        if r.seq != expected or r.prev_hash != prev or r.computed_hash() != r.hash:
            return f"record {expected} does not extend the anchored history (edited, deleted or inserted)"
        prev, expected = r.hash, expected + 1
    last = expected - 1
    if head.seq != last or head.hash != prev:
        return f"the head (record {head.seq}) is not the last record ({last})"
    try:
        _check_head(head, last, signer)
    except _Bad as bad:
        return bad.problem
    return None
