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
