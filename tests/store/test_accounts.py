"""Accounts and API keys on SQLite and PostgreSQL: CRUD, authentication, keys stored only as hashes."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from antidistill.store.api import NotFoundError
from antidistill.store.schema import api_keys
from antidistill.store.sql import hash_api_key


def test_create_get_list(store):
    meta = {"organisation": "Acme", "payment_fingerprint": "fp_123", "signup_source": "web"}
    account, api_key, key = store.create_account("alice", rpm=60, tpm=10_000, tokens_per_day=1_000_000, metadata=meta)
    assert re.fullmatch(r"acct_[0-9a-f]{24}", account.id)
    assert re.fullmatch(r"key_[0-9a-f]{24}", key.id)
    assert re.fullmatch(r"sk-ad-[A-Za-z0-9_-]{43}", api_key)
    assert key.prefix == api_key[:12] and key.account_id == account.id and key.revoked_at is None
    assert account.enabled and (account.rpm, account.tpm, account.tokens_per_day) == (60, 10_000, 1_000_000)
    assert account.created_at.tzinfo is not None

    got = store.get_account(account.id)
    assert got == account
    assert got.metadata == meta
    bob, _, _ = store.create_account("bob")
    assert (bob.rpm, bob.tpm, bob.tokens_per_day, bob.metadata) == (None, None, None, {})
    assert [a.id for a in store.list_accounts()] == [account.id, bob.id]
    assert store.get_account("acct_missing") is None


def test_enable_disable(store):
    account, api_key, _ = store.create_account("carol")
    assert store.set_enabled(account.id, False).enabled is False
    assert store.get_account(account.id).enabled is False
    acc, _ = store.authenticate(api_key)  # a disabled account still authenticates: the gateway answers 403
    assert acc.enabled is False
    assert store.set_enabled(account.id, True).enabled is True
    with pytest.raises(NotFoundError, match="acct_nope"):
        store.set_enabled("acct_nope", False)


def test_issue_revoke_authenticate(store):
    account, first, first_info = store.create_account("dave")
    info, second = store.issue_key(account.id)
    assert second != first and info.id != first_info.id
    assert [k.id for k in store.list_keys(account.id)] == [first_info.id, info.id]

    acc, key = store.authenticate(second)
    assert acc.id == account.id and key.id == info.id and key.revoked_at is None

    revoked = store.revoke_key(info.id)
    assert revoked.revoked_at is not None
    again = store.revoke_key(info.id)  # idempotent: keeps the first revocation time
    assert again.revoked_at == revoked.revoked_at
    acc, key = store.authenticate(second)  # found, marked revoked: the gateway answers 401
    assert key.revoked_at == revoked.revoked_at
    assert store.authenticate(first)[1].revoked_at is None

    for wrong in ("", "sk-ad-", second[:-1], second + "x", "Bearer " + second, "sk-ad-\udc80", "x" * 10_000):
        assert store.authenticate(wrong) is None
    with pytest.raises(NotFoundError):
        store.issue_key("acct_nope")
    with pytest.raises(NotFoundError):
        store.revoke_key("key_nope")
    with pytest.raises(NotFoundError):
        store.list_keys("acct_nope")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "rpm": 0}, "rpm"),
        ({"name": "ok", "tpm": -5}, "tpm"),
        ({"name": "ok", "tokens_per_day": True}, "tokens_per_day"),
        ({"name": "ok", "metadata": ["not", "a", "dict"]}, "metadata"),
        ({"name": "ok", "metadata": {"x": object()}}, "metadata"),
    ],
)
def test_invalid_account_input_names_the_field(store, kwargs, field):
    with pytest.raises(ValueError, match=field):
        store.create_account(**kwargs)
    assert store.list_accounts() == []


def _all_text(store) -> str:
    """Every row of every table, as text."""
    chunks = []
    with store.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            if store.dialect == "postgresql":
                rows = conn.execute(text(f'SELECT t::text FROM "{table}" t')).scalars().all()
            else:
                rows = [repr(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{table}"')).all()]
            chunks.extend(rows)
    return "\n".join(chunks)


def test_keys_are_stored_only_as_hashes(store, db_url, caplog):
    caplog.set_level(logging.DEBUG)
    account, api_key, _ = store.create_account("erin", metadata={"organisation": "Acme"})
    _, second = store.issue_key(account.id)
    assert store.authenticate(api_key) and store.authenticate(second)

    dump = _all_text(store)
    assert account.id in dump  # the dump does see the data …
    for secret in (api_key, second):
        random_part = secret.removeprefix("sk-ad-")
        assert random_part not in dump  # … but never a key
        assert hash_api_key(secret) in dump
        assert secret not in caplog.text
    with store.engine.connect() as conn:
        hashes = conn.execute(select(api_keys.c.key_hash)).scalars().all()
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    if store.dialect == "sqlite":  # and not in the raw file bytes either (database, WAL)
        db = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert account.id.encode() in raw
        for secret in (api_key, second):
            assert secret.removeprefix("sk-ad-").encode() not in raw
