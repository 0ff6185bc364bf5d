"""Key material: one master secret, and every watermark key derived from it.

Design
------
The master secret (32 random bytes) never leaves this module. Every watermark key is derived from it with
HMAC-SHA256 over a domain-separated label, so keys need no storage, only a version number:

* **account key** ``HMAC(master, "antidistill/v1/account" || account_id || version)``: one per account and
  key version. It marks what that account received and attributes leaked text or a distilled model to it.
* **provider key** ``HMAC(master, "antidistill/v1/provider" || version)``: one for the whole service. It answers
  "was this trained on our outputs at all?" without knowing, or trying, any account.
* **audit signing key** ``HMAC(master, "antidistill/v1/audit-signing")``: the 32-byte seed of the Ed25519 key
  that signs the audit log's checkpoints. Only signatures and the public key leave this module.

Every generated token is biased by exactly one of the two keys. Which one is decided by a keyed hash of the
context under a sub-key of the provider key (see :mod:`antidistill.watermark.core`), so a detector that holds
only the provider key can tell the two kinds of positions apart:

* provider positions carry the same green lists in every account's traffic, so a campaign spread over hundreds
  of accounts still trains one consistent bias into the student (a single, strong "is it ours" test);
* account positions carry per-account green lists, so a text or model can be attributed, and a cluster of
  accounts can be tested as a pool by summing their green counts on the account positions (the counts are
  independent binomials under the null, so the pooled test stays exact).

Rotation gives an account (or the provider) a new version for new traffic; older versions stay derivable, so
text served under them stays detectable: detection simply tries every version and corrects for it.

Only the first 64 bits of each HMAC output are used as the watermark key: the green-list hash is a 64-bit
mixer, and 64 bits of key are far beyond what green-list stealing attacks recover (they estimate green lists,
not keys).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from antidistill.errors import ConfigError, InputError
from antidistill.files import FILE_MODE, check_private_dir, private_dir, tighten_file
from antidistill.settings import Settings, is_placeholder

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MASTER_KEY_FILE = "master.key"
KEYRING_FILE = "keyring.json"
_ACCOUNT_LABEL = b"antidistill/v1/account"
_PROVIDER_LABEL = b"antidistill/v1/provider"
_AUDIT_SIGNING_LABEL = b"antidistill/v1/audit-signing"


@dataclass(frozen=True)
class WatermarkKey:
    """A derived watermark key. ``value`` is secret and kept out of ``repr``.

    Args:
        key_id: public name, e.g. ``acct:alice:v1`` or ``provider:v1``; safe to log and to put in reports.
        account: the account id, or ``None`` for the provider key and for explicit integer keys.
        version: the key version (starts at 1).
        value: the 64-bit key used by the green-list hash (secret).
    """

    key_id: str
    account: str | None
    version: int
    value: int = field(repr=False)

    def __str__(self) -> str:
        return self.key_id

    @classmethod
    def explicit(cls, value: int) -> WatermarkKey:
        """A key given on the command line (``--hashing-key``), e.g. to read another implementation's marks."""
        if not 0 <= value < 2**64:
            raise InputError(f"hashing key must be in [0, 2**64), got {value}")
        return cls(key_id="explicit", account=None, version=0, value=value)


def _validate_account_id(account_id: str) -> str:
    if not isinstance(account_id, str) or not account_id or len(account_id) > 200:
        raise InputError("account id must be a non-empty string of at most 200 characters")
    if any(ord(c) < 32 for c in account_id):
        raise InputError("account id must not contain control characters")
    return account_id


def _validate_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"key version must be an integer >= 1, got {version!r}")
    return version


class MasterKey:
    """The master secret and the HMAC derivations. ``repr`` and ``str`` never show the secret."""

    __slots__ = ("_audit_key", "_audit_public", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("master key must be at least 16 bytes")
        self._secret = bytes(secret)
        # derived on first use and kept: the audit log signs its head at every commit
        self._audit_key: Ed25519PrivateKey | None = None
        self._audit_public: bytes | None = None

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"

    def __reduce__(self) -> tuple[Any, ...]:
        # the derived key objects do not pickle; a copy derives them again
        return (MasterKey, (self._secret,))

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """Hex text (64 hex digits) is decoded; anything else is used as UTF-8 bytes."""
        t = text.strip()
        try:
            raw = bytes.fromhex(t) if len(t) >= 32 and len(t) % 2 == 0 else t.encode()
        except ValueError:
            raw = t.encode()
        return cls(raw)

    @classmethod
    def load(cls, settings: Settings, create: bool = True) -> MasterKey:
        """From ``ANTIDISTILL_MASTER_KEY`` or the key file, creating the file (mode 0600) on first use.

        With ``create=False`` a missing key is an error: a detector that made up a fresh key would test text
        against a key that never marked anything.
        """
        check_private_dir(settings.data_dir)
        if settings.master_key is not None:
            value = settings.master_key.get_secret_value()
            if settings.env == "prod" and is_placeholder(value):  # settings refuse this too; belt and braces
                raise ConfigError("ANTIDISTILL_MASTER_KEY is a placeholder")
            return cls.from_text(value)
        path = settings.data_dir / MASTER_KEY_FILE
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"no master key: {path} does not exist and ANTIDISTILL_MASTER_KEY is not set "
                    "(detection needs the key the gateway marks with)"
                )
            return cls._create_file(path)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the master key file {path}: {type(exc).__name__}") from None
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"master key file {path} is readable by others; run: chmod 600 {path}")
        return cls.from_text(text)

    @classmethod
    def _create_file(cls, path: Path) -> MasterKey:
        private_dir(path.parent)
        secret = secrets.token_bytes(32)
        # The key is written in full to a private temporary file and only then given its name, with a hard link
        # that fails if the name exists: two processes starting at once keep one key, and a thread or process that
        # finds the name always reads the whole key. (Creating the name with O_EXCL and writing afterwards let a
        # concurrent reader see an empty file: "master key must be at least 16 bytes" on a gateway's first
        # concurrent requests.)
        fd, tmp = tempfile.mkstemp(prefix=f".{MASTER_KEY_FILE}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secret.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return cls.from_text(path.read_text(encoding="ascii"))
        finally:
            os.unlink(tmp)
        return cls(secret)

    def _derive_bytes(self, label: bytes, *parts: bytes) -> bytes:
        msg = label + b"".join(b"\x00" + len(p).to_bytes(4, "big") + p for p in parts)
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def _derive(self, label: bytes, *parts: bytes) -> int:
        return int.from_bytes(self._derive_bytes(label, *parts)[:8], "little")

    def _audit_signing_key(self) -> Ed25519PrivateKey:
        if self._audit_key is None:
            # cryptography is the gateway extra's: detection (the core install) signs nothing
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            self._audit_key = Ed25519PrivateKey.from_private_bytes(self._derive_bytes(_AUDIT_SIGNING_LABEL))
        return self._audit_key

    def audit_sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of ``message`` under the audit signing key (the private key never leaves)."""
        return self._audit_signing_key().sign(message)

    def audit_public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key that verifies :meth:`audit_sign` signatures.

        Example:
            >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
            >>> m = MasterKey(b"0" * 32)
            >>> Ed25519PublicKey.from_public_bytes(m.audit_public_key()).verify(m.audit_sign(b"hi"), b"hi")
            >>> len(m.audit_public_key())
            32
        """
        if self._audit_public is None:
            from cryptography.hazmat.primitives import serialization  # as above

            self._audit_public = (
                self._audit_signing_key()
                .public_key()
                .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            )
        return self._audit_public

    def account_key(self, account_id: str, version: int = 1) -> WatermarkKey:
        """The watermark key of one account at one version."""
        _validate_account_id(account_id)
        _validate_version(version)
        value = self._derive(_ACCOUNT_LABEL, account_id.encode(), str(version).encode())
        return WatermarkKey(f"acct:{account_id}:v{version}", account_id, version, value)

    def provider_key(self, version: int = 1) -> WatermarkKey:
        """The provider-wide watermark key at one version."""
        _validate_version(version)
        value = self._derive(_PROVIDER_LABEL, str(version).encode())
        return WatermarkKey(f"provider:v{version}", None, version, value)


class KeyRing:
    """Current key versions of the provider and of each account, persisted as a small JSON file.

    Keys are derived, so the ring stores only version numbers: rotation bumps a number, and every older
    version stays derivable (and so detectable). An account never seen is at version 1.

    Args:
        master: the master key.
        path: the JSON file (``None`` keeps the ring in memory, for tests).

    Example:
        >>> ring = KeyRing(MasterKey(b"0" * 32))
        >>> ring.account_key("alice").key_id
        'acct:alice:v1'
        >>> ring.rotate_account("alice").key_id
        'acct:alice:v2'
        >>> [k.key_id for k in ring.account_keys("alice")]
        ['acct:alice:v1', 'acct:alice:v2']
    """

    def __init__(self, master: MasterKey, path: Path | None = None) -> None:
        self._master = master
        self._path = path
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"provider": 1, "accounts": {}}
        if path is not None and path.exists():
            tighten_file(path)  # rings of earlier versions were written 0644
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                self._state = {"provider": int(state["provider"]), "accounts": dict(state["accounts"])}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"key ring file {path} is unreadable: {type(exc).__name__}") from None

    @classmethod
    def open(cls, settings: Settings, create: bool = True) -> KeyRing:
        """The ring of this installation (master key from the settings, versions in the data directory)."""
        return cls(MasterKey.load(settings, create), settings.data_dir / KEYRING_FILE)

    def _save(self) -> None:
        if self._path is None:
            return
        private_dir(self._path.parent)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # a stale .tmp left by a crash keeps its old mode through O_CREAT
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(self._state, sort_keys=True, indent=1))
        os.replace(tmp, self._path)

    def account_version(self, account_id: str) -> int:
        return int(self._state["accounts"].get(_validate_account_id(account_id), 1))

    @property
    def provider_version(self) -> int:
        return int(self._state["provider"])

    def account_key(self, account_id: str) -> WatermarkKey:
        """The key new traffic of this account is marked with."""
        return self._master.account_key(account_id, self.account_version(account_id))

    def account_keys(self, account_id: str) -> list[WatermarkKey]:
        """Every version of this account's key, oldest first (all must be tried when detecting)."""
        return [self._master.account_key(account_id, v) for v in range(1, self.account_version(account_id) + 1)]

    def provider_key(self) -> WatermarkKey:
        return self._master.provider_key(self.provider_version)

    def provider_keys(self) -> list[WatermarkKey]:
        return [self._master.provider_key(v) for v in range(1, self.provider_version + 1)]

    def rotate_account(self, account_id: str) -> WatermarkKey:
        with self._lock:
            self._state["accounts"][account_id] = self.account_version(account_id) + 1
            self._save()
        return self.account_key(account_id)

    def rotate_provider(self) -> WatermarkKey:
        with self._lock:
            self._state["provider"] = self.provider_version + 1
            self._save()
        return self.provider_key()

    def known_accounts(self) -> list[str]:
        """Accounts whose key was ever rotated (others are implicit at version 1)."""
        return sorted(self._state["accounts"])
