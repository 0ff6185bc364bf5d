"""``run_demo``: the stages of ``antidistill demo`` in order, on one screen, in one throwaway directory."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

from antidistill.demo.checks import Check, Checked, demo_detector
from antidistill.demo.context import SERVE_TOKENS, DemoContext, DemoSizes, quiet_logs
from antidistill.demo.render import Renderer
from antidistill.demo.stages.controls import human_controls
from antidistill.demo.stages.detection import detect_served
from antidistill.demo.stages.gateway import gateway_stage
from antidistill.demo.stages.mixed import mixed_text
from antidistill.demo.stages.model import load_model
from antidistill.demo.stages.prove import prove
from antidistill.demo.stages.serve import PROMPTS, demo_rows, serve
from antidistill.demo.stages.watch import watch
from antidistill.keys import KeyRing
from antidistill.settings import get_settings


def run_stages(ctx: DemoContext, screen: Renderer, model: str | None, report_dir: Path) -> list[Check]:
    """Every stage in order; returns every check they made."""
    lm = load_model(ctx, model).model
    # 2-5: serve, detect and attribute, human-written controls, a marked passage in human text
    ring = KeyRing.open(ctx.settings)
    td = demo_detector(lm, ring, PROMPTS)
    served = serve(ctx, lm, ring, td, demo_rows(2, 2) if ctx.sizes.quick else demo_rows(3, 3))
    results: list[Checked] = [served, detect_served(ctx, td, served)]
    controls = human_controls(ctx, td)
    results.append(controls)
    if controls.skipped is None:
        results.append(mixed_text(ctx, td, served, controls.humans))
    results.append(gateway_stage(ctx, lm, ring))
    with quiet_logs():
        screen.heading(7)
        watched = watch(ctx)
        screen.heading(8)
        results += [watched, prove(ctx, lm, watched.trained.monitor_dir, report_dir)]
    return [c for r in results for c in r.checks]


def run_demo(
    console: Console,
    model: str | None = None,
    max_tokens: int = SERVE_TOKENS,
    seed: int = 7,
    quick: bool = False,
    report_dir: str | Path | None = None,
) -> bool:
    """Run every stage, show what happens on ``console``, and return whether every check passed.

    Args:
        model: a local transformers model directory or GGUF file (default: the settings' model, the embedded one).
        max_tokens: tokens of each stage-2 completion.
        seed: the seed of every sampled completion and of the distillation.
        quick: shrink every stage (fewer, shorter completions; a smaller harvest) to fit a few minutes.
        report_dir: where stage 8 writes the evidence report (default: ``demo-report`` in the data directory).
    """
    settings = get_settings()
    screen = Renderer(console)
    started = time.perf_counter()
    screen.title(quick)
    report = Path(report_dir) if report_dir else settings.data_dir / "demo-report"
    with tempfile.TemporaryDirectory(prefix="antidistill-demo-") as tmp:
        ctx = DemoContext(settings, DemoSizes.for_mode(quick, max_tokens), seed, Path(tmp), screen)
        checks = run_stages(ctx, screen, model, report)
    screen.summary(checks, time.perf_counter() - started)
    return all(c.ok for c in checks)
