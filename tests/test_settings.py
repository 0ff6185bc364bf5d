"""Settings: read from ANTIDISTILL_* once, secrets hidden, placeholder master keys refused in prod."""

from __future__ import annotations

from pathlib import Path

import pytest

from antidistill.errors import ConfigError
from antidistill.settings import MIN_SECRET_CHARS, Settings, get_settings, is_placeholder
from antidistill.watermark.config import WatermarkConfig

REAL_SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_reads_the_environment(isolated_env):
    s = get_settings()
    assert s.env == "test"
    assert s.data_dir == isolated_env / "data"
    assert s.cache_dir == isolated_env / "cache"
    assert s.master_key is None
    assert s.model is None


def test_default_environment_is_prod(monkeypatch):
    monkeypatch.delenv("ANTIDISTILL_ENV")
    assert Settings().env == "prod"


def test_get_settings_is_read_once(monkeypatch):
    first = get_settings()
    monkeypatch.setenv("ANTIDISTILL_ENV", "dev")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().env == "dev"


def test_directories_expand_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings(data_dir="~/antidistill-data")
    assert s.data_dir == tmp_path / "antidistill-data"
    assert "~" not in str(s.data_dir)


def test_master_key_is_hidden_from_repr():
    s = Settings(env="prod", master_key=REAL_SECRET)
    assert s.master_key.get_secret_value() == REAL_SECRET
    assert REAL_SECRET not in repr(s)
    assert REAL_SECRET not in str(s)


@pytest.mark.parametrize(
    "value",
    ["changeme", "CHANGEME", "secret", "  test  ", "", "x" * (MIN_SECRET_CHARS - 1), "a" * 64, "ab" * 32],
)
def test_placeholders(value):
    assert is_placeholder(value)


@pytest.mark.parametrize("value", [REAL_SECRET, "correct horse battery staple, but much longer"])
def test_real_secrets_are_not_placeholders(value):
    assert not is_placeholder(value)


@pytest.mark.parametrize("value", ["changeme", "a" * 40, "short-but-real-7Qx"])
def test_placeholder_master_key_refused_in_prod(value):
    with pytest.raises(ValueError, match="ANTIDISTILL_MASTER_KEY") as exc:
        Settings(env="prod", master_key=value)
    # the refused value, which may be a real (if too short) secret, is not echoed back
    assert value not in str(exc.value)


@pytest.mark.parametrize("env", ["test", "dev"])
def test_placeholder_master_key_allowed_outside_prod(env):
    s = Settings(env=env, master_key="changeme")
    assert s.master_key.get_secret_value() == "changeme"


def test_real_master_key_accepted_in_prod():
    assert Settings(env="prod", master_key=REAL_SECRET).master_key.get_secret_value() == REAL_SECRET


def test_get_settings_turns_a_refusal_into_one_config_error(monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_ENV", "prod")
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", "changeme")
    with pytest.raises(ConfigError) as exc:
        get_settings()
    msg = str(exc.value)
    assert msg.startswith("ANTIDISTILL_MASTER_KEY is a placeholder")
    assert "changeme" not in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_get_settings_reports_a_bad_environment_name(monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_ENV", "staging")
    with pytest.raises(ConfigError, match="prod"):
        get_settings()


def test_model_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTIDISTILL_MODEL", str(tmp_path / "m.gguf"))
    assert Path(get_settings().model) == tmp_path / "m.gguf"


# ---- the admin token -------------------------------------------------------------------------------------
@pytest.mark.parametrize("env", ["prod", "dev", "test"])
@pytest.mark.parametrize("value", ["", " ", "\t\n  "])
def test_blank_admin_token_is_refused_in_every_environment(env, value):
    """An empty token would match an empty Authorization header: it must never configure the admin API."""
    with pytest.raises(ValueError, match="ANTIDISTILL_ADMIN_TOKEN is set but empty"):
        Settings(env=env, admin_token=value)


def test_blank_admin_token_from_the_environment_is_one_config_error(monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_ENV", "dev")
    monkeypatch.setenv("ANTIDISTILL_ADMIN_TOKEN", "")
    with pytest.raises(ConfigError, match="ANTIDISTILL_ADMIN_TOKEN is set but empty"):
        get_settings()


def test_admin_token_loses_surrounding_whitespace():
    # HTTP drops it from a header value: a token that kept it could never be sent
    assert Settings(env="prod", admin_token=f"  {REAL_SECRET}\n").admin_token.get_secret_value() == REAL_SECRET
    assert Settings(env="test", admin_token=" dev ").admin_token.get_secret_value() == "dev"


# ---- connection limits -----------------------------------------------------------------------------------
def test_connection_limit_defaults():
    s = Settings()
    assert (s.max_header_bytes, s.header_timeout, s.body_timeout, s.max_connections) == (64 * 1024, 10.0, 30.0, 1000)
    assert s.api_docs is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_header_bytes", 100),
        ("max_header_bytes", 2**30),
        ("header_timeout", 0),
        ("body_timeout", -1),
        ("max_connections", 0),
    ],
)
def test_connection_limits_are_validated(name, value):
    with pytest.raises(ValueError, match=name):
        Settings(**{name: value})


def test_connection_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_MAX_HEADER_BYTES", "8192")
    monkeypatch.setenv("ANTIDISTILL_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("ANTIDISTILL_MAX_CONNECTIONS", "50")
    s = get_settings()
    assert (s.max_header_bytes, s.header_timeout, s.max_connections) == (8192, 2.5, 50)


@pytest.mark.parametrize(
    ("env", "scheme", "provider_fraction"),
    [
        ({"ANTIDISTILL_WATERMARK_SCHEME": "gumbel"}, "gumbel", 0.5),
        ({"ANTIDISTILL_WATERMARK_SCHEME": "gumbel-dual"}, "gumbel-dual", 0.5),
        ({"ANTIDISTILL_WATERMARK_SCHEME": "markllm-exp"}, "markllm-exp", 0.0),
        ({"ANTIDISTILL_WATERMARK_SCHEME": "hf-lefthash"}, "hf-lefthash", 0.0),
        (
            {"ANTIDISTILL_WATERMARK_SCHEME": "kgw-entropy", "ANTIDISTILL_WATERMARK_ENTROPY_THRESHOLD": "2.5"},
            "kgw-entropy",
            0.5,
        ),
        ({}, WatermarkConfig().scheme, 0.5),
    ],
)
def test_watermark_scheme_from_the_environment(monkeypatch, env, scheme, provider_fraction):
    from antidistill.settings import get_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    config = get_settings().watermark_config()
    assert config.scheme == scheme and config.provider_fraction == provider_fraction
    if scheme == "kgw-entropy":
        assert config.entropy_threshold == 2.5


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ANTIDISTILL_WATERMARK_SCHEME": "nope"}, "ANTIDISTILL_WATERMARK_SCHEME must be one of"),
        ({"ANTIDISTILL_WATERMARK_ENTROPY_THRESHOLD": "1"}, "applies to scheme kgw-entropy only"),
        ({"ANTIDISTILL_WATERMARK_GAMMA": "1.5"}, "gamma must be in (0, 1)"),
        (
            {"ANTIDISTILL_WATERMARK_SCHEME": "markllm-exp", "ANTIDISTILL_WATERMARK_PROVIDER_FRACTION": "0.5"},
            "single-key",
        ),
        # the vLLM members only read vLLM's marks: a server cannot mark with them
        ({"ANTIDISTILL_WATERMARK_SCHEME": "vllm-gumbel"}, "read-only interoperability member"),
        ({"ANTIDISTILL_WATERMARK_SCHEME": "vllm-dual-gumbel"}, "read-only interoperability member"),
    ],
)
def test_bad_watermark_settings_are_refused_at_startup(monkeypatch, env, needle):
    from antidistill.errors import ConfigError
    from antidistill.settings import get_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as exc:
        get_settings()
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_the_local_backend_marks_with_the_settings_scheme(tmp_path):
    pytest.importorskip("torch")
    from antidistill.gateway.app import make_backend
    from antidistill.settings import Settings

    backend = make_backend(Settings(env="test", data_dir=tmp_path, backend="local", watermark_scheme="gumbel"))
    assert backend._config is not None and backend._config.scheme == "gumbel"  # used when the model is loaded
