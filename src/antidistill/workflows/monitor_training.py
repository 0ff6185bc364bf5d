"""Training the monitor: simulate training-split traffic, collect feature rows, fit, calibrate, save.

The statistics and the feature rows are :mod:`antidistill.monitor.train`'s; this workflow feeds them the
simulator's plans (:mod:`antidistill.simulate`) and writes the artefacts (``data_dir/monitor/model.joblib`` and
``manifest.json``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from antidistill.errors import InputError
from antidistill.monitor.pipeline import MANIFEST_FILE, MODEL_FILE, monitor_dir
from antidistill.monitor.score import TARGET_FPR, Scorer, calibrate
from antidistill.monitor.train import (
    CALIBRATION_SEEDS,
    TRAIN_EXTRA,
    TRAIN_SEEDS,
    Rows,
    benign_max_risks,
    collect_rows,
    fit_models,
)
from antidistill.settings import Settings
from antidistill.simulate.personas import PERSONAS
from antidistill.simulate.scenario import Scenario

log = logging.getLogger(__name__)


def train(
    settings: Settings,
    *,
    seeds: Sequence[int] = TRAIN_SEEDS,
    calibration_seeds: Sequence[int] = CALIBRATION_SEEDS,
    scale: str = "default",
    days: float | None = None,
    embeddings: bool = False,
    targets: dict[str, float] | None = None,
    out_dir: Path | None = None,
    extra_personas: dict[str, int] | None = None,
    exclude_kinds: Sequence[str] = (),
    perturbed: bool = True,
) -> dict[str, Any]:
    """Simulate training traffic, fit, calibrate, save; returns the manifest.

    Args:
        settings: the settings (artefacts go to ``data_dir/monitor`` unless ``out_dir``).
        seeds: training seeds (split ``train``).
        calibration_seeds: seeds for the thresholds (split ``train``, disjoint from ``seeds``).
        scale: the simulator's scale preset; ``days`` overrides its duration.
        embeddings: train with the embedding features (slower).
        targets: per-level benign false-positive targets (default :data:`TARGET_FPR`).
        extra_personas: personas added to each training simulation (default :data:`TRAIN_EXTRA`; ``{}``: none).
        exclude_kinds: persona kinds left out of every training and calibration simulation (and of the extras):
            the leave-one-persona-out evaluation trains without a kind, then tests on it
            (``benchmarks/monitor_lopo.py``).
        perturbed: simulate every second training seed with the attackers' client-set knobs perturbed
            (``max_tokens`` 256-900, reasoning demands paraphrased from the training half of the paraphrases,
            timing jittered; :func:`antidistill.simulate.scenario.perturb_requests`), so the model cannot learn
            that long answers or stock phrases are what make a distiller. Calibration is never perturbed (the
            perturbation leaves benign traffic as it is).
    """
    excluded = check_kinds(exclude_kinds)
    if set(seeds) & set(calibration_seeds):
        raise InputError("training and calibration seeds must differ")
    if not seeds or not calibration_seeds:
        raise InputError("training needs at least one training seed and one calibration seed")
    targets = dict(targets or TARGET_FPR)
    t0 = time.perf_counter()
    embedder = None
    if embeddings:
        from antidistill.monitor.embed import Embedder  # sentence-transformers: only when asked for

        embedder = Embedder()
    all_rows = Rows()
    sims = []
    extras = TRAIN_EXTRA if extra_personas is None else extra_personas
    for i, s in enumerate(seeds):
        plan = training_scenario(scale, int(s), days, extras, excluded, perturb=perturbed and i % 2 == 1).build()
        rows, _ = collect_rows(plan, embedder)
        for k in ("X", "y", "kind", "persona"):
            getattr(all_rows, k).extend(getattr(rows, k))
        sims.append(
            {"seed": int(s), "split": "train", "purpose": "fit", "perturbed": plan.scenario.perturb, **plan.summary()}
        )
        log.info("training seed %s: %d rows", s, len(rows.X))
    t_rows = time.perf_counter() - t0
    parts = fit_models(all_rows, embeddings=embeddings)
    t_fit = time.perf_counter() - t0 - t_rows
    # calibration sees the natural combined risk: the guards map onto thresholds not set yet
    provisional = Scorer({"watch": 2.0, "alert": 2.0, "severe": 2.0}, embeddings=embeddings, guards=False, **parts)
    benign: list[float] = []
    ceiling: list[float] = []  # benign accounts not swept into an attacker's cluster
    attacker_summary = []
    for s in calibration_seeds:
        plan = training_scenario(scale, int(s), days, {}, excluded).build()
        b, c, summ = benign_max_risks(plan, provisional, embedder)
        benign += b
        ceiling += c
        attacker_summary.append(summ)
        sims.append({"seed": int(s), "split": "train", "purpose": "calibrate", **plan.summary()})
    thresholds = calibrate(benign, targets, ceiling_risks=ceiling)
    y = np.asarray(all_rows.y)
    manifest = {
        "trained_at": datetime.now(UTC).isoformat(),
        "scale": scale,
        "days": days,
        "embeddings": embeddings,
        "train_seeds": [int(s) for s in seeds],
        "calibration_seeds": [int(s) for s in calibration_seeds],
        "train_extra_personas": {k: v for k, v in extras.items() if k not in excluded},
        "excluded_kinds": sorted(excluded),
        "perturbed": perturbed,
        "split": "train",
        "simulations": sims,
        "rows": len(y),
        "positive_rows": int((y == 1).sum()),
        "cluster_rows": int(sum(k == "cluster" for k in all_rows.kind)),
        "targets": targets,
        "thresholds": thresholds,
        "calibration_benign_accounts": len(benign),
        "calibration_benign_max_risk_quantiles": {q: float(np.quantile(benign, q)) for q in (0.5, 0.9, 0.99, 1.0)},
        "calibration_max_risk_by_persona": attacker_summary,
        "calibration_benign_max_risks": sorted(round(float(r), 5) for r in benign),
        "calibration_ceiling_max_risk": round(float(max(ceiling, default=0.0)), 5),
        "seconds": {"rows": round(t_rows, 1), "fit": round(t_fit, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    scorer = Scorer(thresholds, embeddings=embeddings, manifest=manifest, **parts)
    out = out_dir or monitor_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(scorer.to_state(), out / MODEL_FILE)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_kinds(kinds: Sequence[str]) -> frozenset[str]:
    """``kinds`` as a set, each a persona name (else an :class:`InputError` naming the unknown one)."""
    unknown = sorted(set(kinds) - set(PERSONAS))
    if unknown:
        raise InputError(f"unknown persona kind(s) to exclude: {', '.join(unknown)} (known: {', '.join(PERSONAS)})")
    return frozenset(kinds)


def training_scenario(
    scale: str,
    seed: int,
    days: float | None,
    extra: Mapping[str, int],
    exclude: frozenset[str] = frozenset(),
    perturb: bool = False,
) -> Scenario:
    """The training-split scenario of ``scale`` and ``seed`` with ``extra`` personas added and the ``exclude``
    kinds left out entirely (no account of theirs in the plan); ``perturb``: the attackers' knobs perturbed."""
    base = Scenario.from_scale(scale, seed=seed, days=days, split="train", perturb=perturb)
    counts = dict(base.counts)
    for persona, n in extra.items():
        counts[persona] = counts.get(persona, 0) + n
    counts = {k: v for k, v in counts.items() if k not in exclude and v > 0}
    return replace(base, counts=counts)
