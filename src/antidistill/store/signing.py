"""What the audit log signs, and the encoding it shares with the chain (pure functions, no database).

A checkpoint signs, with Ed25519, ``b"antidistill/v1/audit-checkpoint\\n"`` followed by the canonical encoding of
``{"seq", "hash", "prev_checkpoint_seq", "created_at"}``; a signed head (every commit's, and an anchor copied out
of the database) signs ``b"antidistill/v1/audit-head\\n"`` followed by that of ``{"seq", "hash", "signed_at"}``.
:mod:`antidistill.store.chain` describes the whole format and verifies histories with these; its names are
importable from there too.

Kept apart from :mod:`.chain` so that :mod:`.api` can name these types (``Head``, ``SignedHead``, ``Checkpoint``)
in the storage protocols without an import cycle (``chain`` imports ``api``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from antidistill.errors import InputError
from antidistill.keys import MasterKey

CHECKPOINT_LABEL = b"antidistill/v1/audit-checkpoint\n"
HEAD_LABEL = b"antidistill/v1/audit-head\n"
#: the ``type`` of an anchor file
ANCHOR_TYPE = "antidistill-audit-anchor"


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
    """The canonical encoding of a JSON value (see :mod:`antidistill.store.chain`).

    Example:
        >>> canonical_json({"b": 1.5, "a": ["é", None]})
        b'{"a":["\\xc3\\xa9",null],"b":1.5}'
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def checkpoint_message(seq: int, hash_hex: str, prev_checkpoint_seq: int, created_at: datetime) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return CHECKPOINT_LABEL + canonical_json(
        {
            "seq": int(seq),
            "hash": hash_hex,
            "prev_checkpoint_seq": int(prev_checkpoint_seq),
            "created_at": format_time(created_at),
        }
    )


def head_message(seq: int, hash_hex: str, signed_at: datetime) -> bytes:
    """The bytes a signed head's signature covers (distinct from a checkpoint's, so neither stands for the other)."""
    return HEAD_LABEL + canonical_json({"seq": int(seq), "hash": hash_hex, "signed_at": format_time(signed_at)})


def ed25519_ok(public_key_hex: str | None, signature_hex: str | None, message: bytes) -> bool:
    """Whether ``signature_hex`` is a valid Ed25519 signature of ``message`` under ``public_key_hex``."""
    if not public_key_hex or not signature_hex:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class SignedHead:
    """A signed statement "the log ends at record ``seq``, whose hash is ``hash``", made at ``signed_at``.

    Written to the head row at every commit; copied out of the database it is an anchor (:meth:`to_json`).

    Example:
        >>> from antidistill.keys import MasterKey
        >>> m = MasterKey(b"k" * 32)
        >>> h = SignedHead.sign(m, 3, "ab" * 32, datetime(2025, 1, 1, tzinfo=UTC))
        >>> h.valid(), SignedHead.from_json(h.to_json()) == h
        (True, True)
    """

    seq: int
    hash: str
    signed_at: datetime
    public_key: str
    signature: str

    @classmethod
    def sign(cls, master: MasterKey, seq: int, hash_hex: str, signed_at: datetime) -> SignedHead:
        """Sign a head with ``master``."""
        signed_at = to_utc(signed_at)
        signature = master.audit_sign(head_message(seq, hash_hex, signed_at))
        return cls(seq, hash_hex, signed_at, master.audit_public_key().hex(), signature.hex())

    def valid(self) -> bool:
        """Whether the signature holds for this head under its own public key (compare the key separately)."""
        return ed25519_ok(self.public_key, self.signature, head_message(self.seq, self.hash, self.signed_at))

    def to_json(self) -> dict[str, Any]:
        return {
            "type": ANCHOR_TYPE,
            "v": 1,
            "seq": self.seq,
            "hash": self.hash,
            "signed_at": format_time(self.signed_at),
            "public_key": self.public_key,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, obj: Any) -> SignedHead:
        """Read an anchor; raises ``ValueError`` naming what is wrong."""
        if not isinstance(obj, Mapping) or obj.get("type") != ANCHOR_TYPE:
            raise InputError(f"not an antidistill audit anchor (expected type {ANCHOR_TYPE!r})")
        if obj.get("v") != 1:
            raise InputError(f"unsupported anchor version {obj.get('v')!r}")
        try:
            seq = obj["seq"]
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
                raise InputError(f"seq must be an integer in [0, {2**63 - 1}], got {seq!r}")
            hash_hex, public_key, signature = (str(obj[k]) for k in ("hash", "public_key", "signature"))
            signed_at = datetime.fromisoformat(str(obj["signed_at"]).replace("Z", "+00:00"))
        except KeyError as exc:
            raise InputError(f"the anchor has no {exc.args[0]!r}") from None
        if len(hash_hex) != 64 or any(c not in "0123456789abcdef" for c in hash_hex):
            raise InputError("the anchor's hash must be 64 lowercase hex digits")
        return cls(seq, hash_hex, to_utc(signed_at), public_key, signature)


@dataclass(frozen=True)
class Checkpoint:
    """A signed checkpoint: record ``seq`` had hash ``hash``, signed at ``created_at`` (chained to the previous
    checkpoint through ``prev_checkpoint_seq``)."""

    seq: int
    hash: str
    prev_checkpoint_seq: int
    created_at: datetime
    public_key: str
    signature: str


@dataclass(frozen=True)
class Head:
    """The head row: the last record's seq and hash, the last checkpoint, and the head's signature (``None``
    only for a log no antidistill with signed heads has written to)."""

    seq: int
    hash: str
    last_checkpoint_seq: int
    signed: SignedHead | None = None
