"""``antidistill monitor train``: the training command (registered on M3's ``monitor`` sub-app by
:mod:`antidistill.cli`). Light at import: the simulator, scikit-learn and the models load only when it runs."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from antidistill.errors import InputError


def _seeds(value: str, name: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.replace(" ", "").split(",") if s]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got {value!r}") from None
    if not seeds:
        raise InputError(f"{name} must name at least one seed")
    return seeds


def monitor_train(
    seeds: Annotated[str, typer.Option("--seeds", help="Training seeds, comma-separated (split train).")
                     ] = "101,102,103,104,105,106,107,108",
    calibration_seeds: Annotated[str, typer.Option("--calibration-seeds", help="Seeds for the thresholds, "
                                                   "comma-separated (split train, not among --seeds).")
                                 ] = "201,202,203",
    scale: Annotated[str, typer.Option("--scale", help="Simulator scale: small, default or large.")] = "default",
    days: Annotated[float | None, typer.Option("--days", help="Virtual days per simulation (default: the "
                                               "scale's).", show_default=False)] = None,
    embeddings: Annotated[bool, typer.Option("--embeddings", help="Train with sentence-embedding topic "
                                             "features (slower).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Train the monitor on simulated training traffic, calibrate its thresholds on benign traffic, and save it
    under DATA_DIR/monitor (model.joblib + manifest.json)."""
    from antidistill.settings import get_settings
    from antidistill.workflows.monitor_training import train

    settings = get_settings()
    try:
        manifest = train(settings, seeds=_seeds(seeds, "--seeds"),
                         calibration_seeds=_seeds(calibration_seeds, "--calibration-seeds"), scale=scale, days=days,
                         embeddings=embeddings)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(manifest, default=str) + "\n")
        return
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    t = manifest["thresholds"]
    out.print(f"trained on seeds {manifest['train_seeds']} ({manifest['rows']} rows, {manifest['positive_rows']} "
              f"attacker), calibrated on {manifest['calibration_seeds']} ({manifest['calibration_benign_accounts']} "
              f"benign accounts) in {manifest['seconds']['total']:.0f} s")
    out.print(f"thresholds: watch {t['watch']:.3f}, alert {t['alert']:.3f}, severe {t['severe']:.3f} "
              f"(targets {manifest['targets']})")
    out.print(f"saved to {settings.data_dir / 'monitor'}")
