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
from datetime import UTC, datetime
from typing import Any

from antidistill.store.api import AuditEntry, VerifyResult

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
CHECKPOINT_LABEL = b"antidistill/v1/audit-checkpoint\n"
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
_MAX_INT = 2**31 - 1


# ---- encoding ---------------------------------------------------------------------------------------
def to_utc(dt: datetime) -> datetime:
    """``dt`` in UTC; a naive time is taken to be UTC already (that is how SQLite hands them back)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def format_time(dt: datetime) -> str:
    """ISO-8601, UTC, microseconds, ``Z``.

    Example:
        >>> format_time(datetime(2025, 1, 31, 12, 0, tzinfo=UTC))
        '2025-01-31T12:00:00.000000Z'
    """
    return to_utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding of a JSON value (see the module docstring).

    Example:
        >>> canonical_json({"b": 1.5, "a": ["é", None]})
        b'{"a":["\\xc3\\xa9",null],"b":1.5}'
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


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
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text (lone surrogate)") from None
    return value


def _check_int(name: str, value: Any, lo: int = 0, hi: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def entry_columns(entry: AuditEntry) -> dict[str, Any]:
    """The stored column values of ``entry`` (validated and normalised); raises ``ValueError`` naming a field."""
    if not isinstance(entry.created_at, datetime):
        raise ValueError(f"created_at must be a datetime, got {type(entry.created_at).__name__}")
    if not isinstance(entry.request, Mapping):
        raise ValueError("request must be a JSON object (dict)")
    if not isinstance(entry.watermark, Mapping):
        raise ValueError("watermark must be a JSON object (dict)")
    if isinstance(entry.completion, str) or not all(isinstance(c, str) for c in entry.completion):
        raise ValueError("completion must be a list of strings (one per choice)")
    if (isinstance(entry.latency_ms, bool) or not isinstance(entry.latency_ms, int | float)
            or not math.isfinite(entry.latency_ms)):
        raise ValueError(f"latency_ms must be a finite number, got {entry.latency_ms!r}")
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
            raise ValueError(f"{name} is not JSON-serialisable: {exc}") from None
    return cols


def payload(seq: int, cols: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON payload of the record at ``seq`` built from its stored column values."""
    p: dict[str, Any] = {"v": FORMAT_VERSION, "seq": int(seq)}
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


def checkpoint_message(seq: int, hash_hex: str, prev_checkpoint_seq: int, created_at: datetime) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return CHECKPOINT_LABEL + canonical_json(
        {"seq": int(seq), "hash": hash_hex, "prev_checkpoint_seq": int(prev_checkpoint_seq),
         "created_at": format_time(created_at)}
    )


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


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    prev_checkpoint_seq: int
    created_at: datetime
    public_key: str
    signature: str


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    last_checkpoint_seq: int


class _Peek:
    def __init__(self, it: Iterable) -> None:
        self._it: Iterator = iter(it)
        self._buf: list = []

    def peek(self):
        if not self._buf:
            self._buf.append(next(self._it, None))
        return self._buf[0]

    def next(self):
        return self._buf.pop() if self._buf else next(self._it, None)


class _Bad(Exception):
    def __init__(self, seq: int, problem: str, **details: Any) -> None:
        super().__init__(problem)
        self.seq, self.problem, self.details = seq, problem, details


def _signature_ok(c: Checkpoint) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(c.public_key))
        key.verify(bytes.fromhex(c.signature), checkpoint_message(c.seq, c.hash, c.prev_checkpoint_seq,
                                                                  c.created_at))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _classify(r: ChainRecord, p: ChainRecord | None, pp: ChainRecord | None, n1: ChainRecord | None,
              find_seq: Callable[[str], int | None]) -> _Bad:
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
            return _Bad(s, f"record {s} was inserted: it does not match its hash and the next record links "
                           f"past it", kind="inserted")
        return _Bad(s, f"record {s} was edited: its content no longer matches its hash", kind="edited")
    if n1 is not None and r.prev_hash == n1.hash:
        return _Bad(s, f"records {s} and {n1.seq} were reordered: record {s} links to the record after it",
                    kind="reordered")
    if pp is not None and p is not None and r.prev_hash == pp.hash:
        return _Bad(p.seq, f"record {p.seq} was inserted: record {s} links to the record before it",
                    kind="inserted")
    if next_links_prev:
        return _Bad(s, f"record {s} was inserted: it does not link to record {s - 1} and the next record does",
                    kind="inserted")
    j = find_seq(r.prev_hash)
    if j is not None and j > s:
        return _Bad(s, f"record {s} was reordered: it links to record {j}, which comes after it", kind="reordered")
    if j is not None and j < s - 1:
        return _Bad(j + 1, f"records {j + 1}-{s - 1} were inserted: record {s} links to record {j}",
                    kind="inserted")
    if renumbered_from is not None and renumbered_from > s:
        return _Bad(s, f"record {s} was deleted and the later records renumbered (the record now at {s} was "
                       f"written as {renumbered_from})", kind="deleted")
    if renumbered_from is not None:
        return _Bad(s, f"a record was inserted before {s} and the later records renumbered (the record now at "
                       f"{s} was written as {renumbered_from})", kind="inserted")
    if content_ok and p is not None:
        return _Bad(p.seq, f"record {p.seq} was edited and its hash recomputed: record {s} no longer links to it",
                    kind="edited")
    if next_links_here:
        return _Bad(s, f"record {s} was edited: its link to the previous record was changed", kind="edited")
    return _Bad(s, f"record {s} does not link to record {s - 1} nor match its hash: the history was edited, "
                   f"or records were deleted before it", kind="broken")


def verify_chain(
    records: Iterable[ChainRecord],
    checkpoints: Iterable[Checkpoint],
    head: Head,
    *,
    checkpoint_every: int,
    public_key: str | None = None,
    find_seq: Callable[[str], int | None] = lambda _h: None,
) -> VerifyResult:
    """Verify a history: the records and checkpoints in ``seq`` order, and the head, all from one snapshot.

    Stops at the first problem and names the first record where the history was edited, deleted, inserted or
    reordered (``VerifyResult.first_bad_seq``).

    Args:
        records: the records in ascending ``seq`` (streamed; only three are held at a time).
        checkpoints: the checkpoints in ascending ``seq``.
        head: the stored chain head.
        checkpoint_every: the checkpoint interval; a longer unsigned tail means a checkpoint was deleted.
        public_key: the expected signer (hex); ``None``: every checkpoint must be signed by the key of the
            first one (and the caller should compare that key with its own out of band).
        find_seq: the seq of the record with a given hash, or ``None``; used only to explain a failure.
    """
    recs, cps = _Peek(records), _Peek(checkpoints)
    n = ncp = 0
    p = pp = None
    last_cp = 0
    signer = public_key
    details: dict[str, Any] = {"head_seq": head.seq, "public_key_checked": public_key is not None}
    try:
        while (r := recs.next()) is not None:
            expected = p.seq + 1 if p is not None else 1
            if r.seq != expected:
                if r.seq < expected:
                    raise _Bad(r.seq, f"record {r.seq} is out of sequence", kind="reordered")
                missing = f"record {expected} is" if r.seq == expected + 1 else f"records {expected}-{r.seq - 1} are"
                raise _Bad(expected, f"{missing} missing (deleted)", kind="deleted")
            if r.seq > head.seq:
                raise _Bad(r.seq, f"record {r.seq} lies beyond the chain head ({head.seq}): it was inserted",
                           kind="inserted")
            if r.prev_hash != (p.hash if p is not None else GENESIS_HASH) or r.computed_hash() != r.hash:
                raise _classify(r, p, pp, recs.peek(), find_seq)
            while (c := cps.peek()) is not None and c.seq <= r.seq:
                cps.next()
                if c.seq != r.seq:
                    raise _Bad(c.seq, f"checkpoint {c.seq} signs a record that does not exist", kind="checkpoint")
                if not _signature_ok(c):
                    raise _Bad(c.seq, f"checkpoint {c.seq}: the signature is invalid", kind="checkpoint")
                if signer is None:
                    signer = c.public_key
                elif c.public_key != signer:
                    who = "this installation's audit key" if public_key else "the key of the first checkpoint"
                    raise _Bad(c.seq, f"checkpoint {c.seq} is signed by a key other than {who}", kind="checkpoint")
                if c.prev_checkpoint_seq != last_cp:
                    if c.prev_checkpoint_seq > last_cp:
                        raise _Bad(c.prev_checkpoint_seq, f"checkpoint {c.prev_checkpoint_seq} was deleted",
                                   kind="checkpoint")
                    raise _Bad(last_cp, f"checkpoint {last_cp} was inserted", kind="checkpoint")
                if c.hash != r.hash:
                    raise _Bad(c.seq, f"record {c.seq} does not match its signed checkpoint: records "
                                      f"{last_cp + 1}-{c.seq} were rewritten after it was signed",
                               kind="rewritten", rewritten_between=[last_cp + 1, c.seq])
                last_cp = c.seq
                ncp += 1
            n += 1
            pp, p = p, r
        last = p.seq if p is not None else 0
        if (c := cps.next()) is not None:
            raise _Bad(last + 1, f"checkpoint {c.seq} signs a record that does not exist: records from {last + 1} "
                                 f"on were deleted", kind="deleted")
        if head.seq > last:
            raise _Bad(last + 1, f"records {last + 1}-{head.seq} are missing (deleted): the chain head is at "
                                 f"{head.seq}", kind="deleted")
        if head.hash != (p.hash if p is not None else GENESIS_HASH):
            raise _Bad(last, f"the chain head's hash does not match record {last}", kind="head")
        if head.last_checkpoint_seq > last_cp:
            raise _Bad(head.last_checkpoint_seq, f"checkpoint {head.last_checkpoint_seq} was deleted",
                       kind="checkpoint")
        if last - last_cp >= checkpoint_every:
            due = last_cp + checkpoint_every
            raise _Bad(due, f"no signed checkpoint after record {last_cp} although one is due every "
                            f"{checkpoint_every} records: checkpoint {due} was deleted", kind="checkpoint")
    except _Bad as bad:
        details.update(bad.details, public_key=signer)
        return VerifyResult(ok=False, records=n, checkpoints=ncp, first_bad_seq=bad.seq, problem=bad.problem,
                            details=details)
    details.update(public_key=signer, last_checkpoint_seq=last_cp, unsigned_tail=last - last_cp,
                   head_hash=head.hash)
    return VerifyResult(ok=True, records=n, checkpoints=ncp, details=details)

