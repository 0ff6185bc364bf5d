"""Shared fixtures: every test runs in an isolated environment (env=test, its own directories)."""

from __future__ import annotations

import pytest

from antidistill import settings as settings_module


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test runs in env=test with its own data and cache directories and no master key from outside."""
    for name in ("ANTIDISTILL_MASTER_KEY", "ANTIDISTILL_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTIDISTILL_ENV", "test")
    monkeypatch.setenv("ANTIDISTILL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ANTIDISTILL_CACHE_DIR", str(tmp_path / "cache"))
    settings_module.get_settings.cache_clear()
    yield tmp_path
    settings_module.get_settings.cache_clear()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory):
    """One cache directory for the whole session: the GGUF is converted once, later loads hit the cache."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tokenizer(model_cache_dir):
    """The embedded model's tokenizer (no weights are read)."""
    from antidistill.models.embedded import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(), model_cache_dir)


@pytest.fixture(scope="session")
def local_model(model_cache_dir):
    """The real embedded model, loaded once per session (slow tests only)."""
    from antidistill.models.local import LocalModel

    return LocalModel.load(None, model_cache_dir)


@pytest.fixture
def shared_cache_env(model_cache_dir, monkeypatch):
    """Point the CLI at the session's model cache, so CLI tests do not convert the GGUF again."""
    monkeypatch.setenv("ANTIDISTILL_CACHE_DIR", str(model_cache_dir))
    settings_module.get_settings.cache_clear()
    return model_cache_dir
