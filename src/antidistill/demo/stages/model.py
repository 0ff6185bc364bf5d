"""Stage 1, Model: load the embedded model (or the one given) with the installation's watermark configuration."""

from __future__ import annotations

from dataclasses import dataclass

from antidistill.demo.checks import Check
from antidistill.demo.context import DemoContext
from antidistill.models.local import LocalModel
from antidistill.watermark.config import WatermarkConfig


@dataclass(frozen=True)
class ModelLoaded:
    """Stage 1's result.

    Args:
        model: the loaded model (every later stage serves or copies it).
        name: its name.
        seconds: how long loading took (``None``: the loader did not say).
        from_cache: loaded from the cache rather than converted from the GGUF file.
        config: the watermark configuration it marks with.
        checks: none; a model that does not load ends the demo with its error.
    """

    model: LocalModel
    name: str
    seconds: float | None
    from_cache: bool
    config: WatermarkConfig
    checks: tuple[Check, ...] = ()


def load_model(ctx: DemoContext, model: str | None = None) -> ModelLoaded:
    """Load ``model`` (default: the settings' model, the embedded one unless configured)."""
    with ctx.screen.busy("Stage 1: loading the embedded model (the first load converts the GGUF file)…"):
        lm = LocalModel.load(model or ctx.settings.model, ctx.settings.cache_dir)
    stats = lm.load_stats
    loaded = ModelLoaded(
        lm, lm.name, stats.seconds if stats else None, bool(stats and stats.from_cache), lm.watermark.config
    )
    ctx.screen.show(loaded)
    return loaded
