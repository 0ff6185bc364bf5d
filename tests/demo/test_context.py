"""The demo's sizes: quick shrinks every stage."""

from __future__ import annotations

from antidistill.demo.context import DemoSizes


def test_sizes_quick_is_smaller_everywhere():
    full, quick = DemoSizes.for_mode(False), DemoSizes.for_mode(True)
    assert quick.quick and not full.quick
    for f in ("serve_tokens", "gateway_tokens", "harvest", "harvest_tokens", "customer_requests", "closed_prompts"):
        assert getattr(quick, f) <= getattr(full, f), f
    assert quick.harvest * quick.epochs < full.harvest * full.epochs
    assert quick.closed_prompts == 0 < full.closed_prompts
    assert DemoSizes.for_mode(False, max_tokens=64).serve_tokens == 64
    assert DemoSizes.for_mode(True, max_tokens=32).serve_tokens == 32


def test_throwaway_settings_ignore_the_environments_gateway_settings(tmp_path, monkeypatch):
    # stage 6's gateway (and 7-8's) must mark, run no monitor and touch no Redis, whatever the environment says
    from antidistill.demo.context import throwaway_settings
    from antidistill.settings import get_settings

    for name, value in (
        ("WATERMARK", "false"),
        ("MONITOR", "true"),
        ("REDIS_URL", "redis://127.0.0.1:1/0"),
        ("DATABASE_URL", "sqlite:////nonexistent/x.db"),
        ("MASTER_KEY", "m" * 16 + "n" * 16),
    ):
        monkeypatch.setenv(f"ANTIDISTILL_{name}", value)
    get_settings.cache_clear()
    s = throwaway_settings(get_settings(), tmp_path, backend="local")
    assert s.watermark and not s.monitor and s.redis_url is None and s.master_key is None
    assert s.data_dir == tmp_path and s.database_url == f"sqlite:///{(tmp_path / 'antidistill.db').resolve()}"
    get_settings.cache_clear()
