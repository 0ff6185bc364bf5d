"""Key material: HMAC derivation, secrecy in repr, the key file, the key ring and rotation."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat

import pytest

from antidistill.errors import ConfigError
from antidistill.keys import KEYRING_FILE, MASTER_KEY_FILE, KeyRing, MasterKey, WatermarkKey
from antidistill.settings import Settings

SECRET = bytes(range(32))


def reference_derive(secret: bytes, label: bytes, *parts: bytes) -> int:
    """The documented derivation, written out: HMAC-SHA256, length-prefixed parts, first 8 bytes."""
    msg = label
    for p in parts:
        msg += b"\x00" + len(p).to_bytes(4, "big") + p
    return int.from_bytes(hmac.new(secret, msg, hashlib.sha256).digest()[:8], "little")


# ---- derivation --------------------------------------------------------------------------------------------
def test_derivation_matches_the_documented_hmac():
    m = MasterKey(SECRET)
    for account, version in [("alice", 1), ("alice", 2), ("bob", 1), ("ünïcode", 7)]:
        parts = (account.encode(), str(version).encode())
        expected = reference_derive(SECRET, b"antidistill/v1/account", *parts)
        assert m.account_key(account, version).value == expected
    assert m.provider_key(3).value == reference_derive(SECRET, b"antidistill/v1/provider", b"3")


def test_frozen_test_vectors():
    # Changing the derivation would orphan every mark ever served: these values must never change.
    m = MasterKey(SECRET)
    assert m.account_key("alice", 1).value == 16108547663068109144
    assert m.account_key("alice", 2).value == 4293824515056849735
    assert m.provider_key(1).value == 15561828619768311308


def test_derivation_is_deterministic_across_instances():
    a, b = MasterKey(SECRET), MasterKey(bytes(SECRET))
    assert a.account_key("alice") == b.account_key("alice")
    assert a.provider_key() == b.provider_key()


def test_key_ids_and_fields():
    m = MasterKey(SECRET)
    k = m.account_key("alice", 3)
    assert (k.key_id, k.account, k.version) == ("acct:alice:v3", "alice", 3)
    p = m.provider_key(2)
    assert (p.key_id, p.account, p.version) == ("provider:v2", None, 2)
    assert 0 <= k.value < 2**64 and 0 <= p.value < 2**64


def test_different_inputs_give_different_keys():
    m, other = MasterKey(SECRET), MasterKey(bytes(reversed(SECRET)))
    values = [m.account_key(f"acct{i}", v).value for i in range(200) for v in (1, 2, 3)]
    values += [m.provider_key(v).value for v in (1, 2, 3)]
    values += [other.account_key(f"acct{i}", 1).value for i in range(200)] + [other.provider_key(1).value]
    assert len(set(values)) == len(values)


def test_length_prefix_separates_account_and_version():
    # without length prefixes ("ab", version 1) and ("a", "b1"...) style concatenations could collide
    m = MasterKey(SECRET)
    assert m.account_key("a1", 1).value != m.account_key("a", 11).value
    assert m.account_key("1", 1).value != m.provider_key(1).value


@pytest.mark.parametrize("bad", ["", "x" * 201, "tab\there", "nl\n", 5, None])
def test_bad_account_ids_are_refused(bad):
    with pytest.raises(ValueError, match="account id"):
        MasterKey(SECRET).account_key(bad)


@pytest.mark.parametrize("bad", [0, -1, 1.0, "1", True])
def test_bad_versions_are_refused(bad):
    m = MasterKey(SECRET)
    with pytest.raises(ValueError, match="key version"):
        m.account_key("alice", bad)
    with pytest.raises(ValueError, match="key version"):
        m.provider_key(bad)


def test_short_master_secret_is_refused():
    with pytest.raises(ConfigError, match="16 bytes"):
        MasterKey(b"x" * 15)


def test_from_text_decodes_hex_and_falls_back_to_utf8():
    assert MasterKey.from_text(SECRET.hex() + "\n").account_key("a") == MasterKey(SECRET).account_key("a")
    phrase = "not hex at all, but long enough!!"
    assert MasterKey.from_text(phrase).account_key("a") == MasterKey(phrase.encode()).account_key("a")


# ---- secrecy -----------------------------------------------------------------------------------------------
def test_key_value_never_in_repr_or_str():
    m = MasterKey(SECRET)
    for k in [m.account_key("alice"), m.provider_key(), WatermarkKey.explicit(15485863)]:
        for text in (repr(k), str(k), f"{k}", repr([k])):
            assert str(k.value) not in text
            assert hex(k.value)[2:] not in text
        assert str(k) == k.key_id


def test_master_key_never_in_repr_or_str():
    m = MasterKey(SECRET)
    for text in (repr(m), str(m)):
        assert SECRET.hex() not in text
        assert repr(SECRET) not in text
        assert "hidden" in text


def test_explicit_key_range():
    assert WatermarkKey.explicit(0).value == 0
    assert WatermarkKey.explicit(2**64 - 1).value == 2**64 - 1
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="hashing key"):
            WatermarkKey.explicit(bad)


# ---- the key file ------------------------------------------------------------------------------------------
def test_key_file_created_with_mode_0600_and_reused(tmp_path):
    settings = Settings(env="test", data_dir=tmp_path / "d")
    first = MasterKey.load(settings)
    path = tmp_path / "d" / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="ascii")
    assert len(bytes.fromhex(text.strip())) == 32
    second = MasterKey.load(settings)
    assert second.account_key("alice") == first.account_key("alice")
    assert path.read_text(encoding="ascii") == text


def test_concurrent_first_loads_all_read_the_one_whole_key(tmp_path):
    # a gateway's first concurrent requests each load the key: none may see a created but not yet written file
    from concurrent.futures import ThreadPoolExecutor

    for round_ in range(20):
        settings = Settings(env="test", data_dir=tmp_path / str(round_))
        with ThreadPoolExecutor(8) as pool:
            keys = list(pool.map(lambda s: MasterKey.load(s).account_key("alice"), [settings] * 8))
        assert len(set(keys)) == 1
        assert [p.name for p in (tmp_path / str(round_)).iterdir()] == [MASTER_KEY_FILE]  # no temporary left


def test_two_installations_get_different_master_keys(tmp_path):
    a = MasterKey.load(Settings(env="test", data_dir=tmp_path / "a"))
    b = MasterKey.load(Settings(env="test", data_dir=tmp_path / "b"))
    assert a.account_key("alice") != b.account_key("alice")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    settings = Settings(env="test", data_dir=tmp_path)
    MasterKey.load(settings)
    path = tmp_path / MASTER_KEY_FILE
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600") as exc:
        MasterKey.load(settings)
    assert path.read_text(encoding="ascii").strip() not in str(exc.value)


def test_environment_master_key_wins_over_the_file(tmp_path):
    settings = Settings(env="prod", data_dir=tmp_path, master_key=SECRET.hex())
    assert MasterKey.load(settings).account_key("alice") == MasterKey(SECRET).account_key("alice")
    assert not (tmp_path / MASTER_KEY_FILE).exists()


def test_load_refuses_a_placeholder_in_prod_even_past_the_settings(tmp_path):
    settings = Settings(env="test", data_dir=tmp_path, master_key="a" * 40)
    assert MasterKey.load(settings)  # fine in test
    prod = settings.model_copy(update={"env": "prod"})  # model_copy skips validation: the second guard
    with pytest.raises(ConfigError, match="placeholder"):
        MasterKey.load(prod)


# ---- the key ring ------------------------------------------------------------------------------------------
def test_keyring_rotation_persists_and_keeps_old_versions(tmp_path):
    m = MasterKey(SECRET)
    path = tmp_path / KEYRING_FILE
    ring = KeyRing(m, path)
    assert ring.account_key("alice").key_id == "acct:alice:v1"
    assert ring.rotate_account("alice").key_id == "acct:alice:v2"
    assert ring.rotate_account("alice").key_id == "acct:alice:v3"
    assert ring.rotate_provider().key_id == "provider:v2"

    reopened = KeyRing(m, path)
    assert reopened.account_version("alice") == 3
    assert reopened.account_version("bob") == 1
    assert reopened.provider_version == 2
    assert reopened.account_keys("alice") == [m.account_key("alice", v) for v in (1, 2, 3)]
    assert reopened.provider_keys() == [m.provider_key(1), m.provider_key(2)]
    assert reopened.account_key("alice") == m.account_key("alice", 3)
    assert reopened.known_accounts() == ["alice"]

    state = json.loads(path.read_text(encoding="utf-8"))
    assert state == {"provider": 2, "accounts": {"alice": 3}}
    raw = path.read_text(encoding="utf-8")
    for k in reopened.account_keys("alice") + reopened.provider_keys():
        assert str(k.value) not in raw  # only version numbers are stored


def test_keyring_in_memory_writes_nothing(tmp_path):
    ring = KeyRing(MasterKey(SECRET))
    ring.rotate_account("alice")
    assert ring.account_version("alice") == 2
    assert list(tmp_path.iterdir()) == []


def test_keyring_rotation_rejects_bad_account_ids():
    with pytest.raises(ValueError, match="account id"):
        KeyRing(MasterKey(SECRET)).rotate_account("")


@pytest.mark.parametrize("content", ["not json", "{}", '{"provider": "x", "accounts": {}}', "[]"])
def test_unreadable_keyring_is_a_config_error(tmp_path, content):
    path = tmp_path / KEYRING_FILE
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="unreadable"):
        KeyRing(MasterKey(SECRET), path)


def test_keyring_open_uses_the_data_directory():
    from antidistill.settings import get_settings

    settings = get_settings()
    ring = KeyRing.open(settings)
    ring.rotate_account("carol")
    assert (settings.data_dir / KEYRING_FILE).exists()
    assert (settings.data_dir / MASTER_KEY_FILE).exists()
    again = KeyRing.open(settings)
    assert again.account_key("carol") == ring.account_key("carol")
    assert again.account_key("carol").version == 2


# ---- file modes --------------------------------------------------------------------------------------------
def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    """A umask that keeps nothing private (0): the modes must come from the code, not the environment."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_keys_init_makes_a_private_data_directory(isolated_env, capsys, open_umask):
    from antidistill.cli import main

    data = isolated_env / "data"
    try:
        main(["keys", "init"])
    except SystemExit as exc:
        assert not exc.code
    assert "created" in capsys.readouterr().out
    assert _mode(data) == 0o700
    assert _mode(data / MASTER_KEY_FILE) == 0o600


def test_keyring_file_is_private(tmp_path, open_umask):
    ring = KeyRing(MasterKey(SECRET), tmp_path / "new" / KEYRING_FILE)
    ring.rotate_account("alice")
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / KEYRING_FILE) == 0o600
    path = tmp_path / "new" / KEYRING_FILE
    os.chmod(path, 0o644)  # as earlier versions wrote it
    assert KeyRing(MasterKey(SECRET), path).account_version("alice") == 2
    assert _mode(path) == 0o600


def test_an_open_data_directory_is_reported_not_changed(tmp_path, caplog):
    data = tmp_path / "open"
    data.mkdir()
    os.chmod(data, 0o755)
    with caplog.at_level("WARNING", logger="antidistill.files"):
        MasterKey.load(Settings(env="test", data_dir=data))
    assert "chmod 700" in caplog.text and str(data) in caplog.text
    assert _mode(data) == 0o755
    assert _mode(data / MASTER_KEY_FILE) == 0o600
