"""Training the monitor on simulated traffic: features at the label granularity, models, calibrated thresholds.

The pieces (events from a plan, feature rows, fitted models, benign risks for calibration) are here; the run
that simulates and puts them together is :func:`antidistill.workflows.monitor_training.train`.

``antidistill monitor train`` simulates *training-split* traffic (:mod:`antidistill.simulate`; seeds and persona
parameter bands that evaluation never uses), turns each planned request directly into the
:class:`~antidistill.monitor.api.ExchangeEvent` the audit log would yield for it (the fake backend's token
counts; no HTTP, so training takes seconds; evaluation goes through the real gateway), replays the events
through a :class:`~antidistill.monitor.pipeline.Monitor` to collect the feature vectors it would score
(accounts and clusters, at every checkpoint), and fits:

1. the anomaly model on benign rows only;
2. the supervised model on all rows, labelled by ground truth (an attacker account's rows are positive; hydra
   members' *own* rows are left out, since they are built to look clean, and the hydra is learned from its
   cluster's rows);
3. the thresholds, on separate *calibration* seeds: a fresh monitor with the fitted models replays them and
   each benign account's highest effective risk (its own or its cluster's) sets the levels at the target
   false-positive rates (:data:`~antidistill.monitor.score.TARGET_FPR`).

Artefacts: ``data_dir/monitor/model.joblib`` and ``manifest.json`` (seeds, scale, sizes, thresholds, timings).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from antidistill.errors import InputError
from antidistill.monitor.api import ExchangeEvent
from antidistill.monitor.features import FEATURES
from antidistill.monitor.pipeline import Monitor
from antidistill.monitor.score import Scorer, isolation_scores

log = logging.getLogger(__name__)

#: training and calibration seeds; evaluation uses others (``simulate eval`` refuses these)
TRAIN_SEEDS: tuple[int, ...] = (101, 102, 103, 104, 105, 106, 107, 108)
CALIBRATION_SEEDS: tuple[int, ...] = (201, 202, 203)
#: personas added to each *training* simulation beyond the scale's natural mix: the hard negatives (linked research
#: teams, templated RAG apps, systematic evaluation harnesses) and the quiet attackers are a few accounts among
#: hundreds, too few for the supervised model to learn their edges from; calibration keeps the natural mix
TRAIN_EXTRA: dict[str, int] = {
    "research_team": 3,
    "eval_harness": 2,
    "rag_app": 2,
    "coding_product": 1,
    "stealthy_harvester": 6,
    "bulk_harvester": 1,
    "cot_extractor": 1,
    "coverage_sweeper": 1,
    "release_pivot": 1,
}
#: features whose direction is known (+1: more of it never makes an account look less like a harvester; -1: the
#: reverse): the supervised model is held to it, so that held-out traffic outside the training ranges (slower
#: pacing, other templates) cannot land in a region where more harvesting reads as less risk
MONOTONE: dict[str, int] = {
    "log_rate_per_hour": 1,
    "template_top_share": 1,
    "template_reuse": 1,
    "cot_share": 1,
    "long_demand_share": 1,
    "single_turn_share": 1,
    "fresh_model_share": 1,
    "completion_ratio": 1,
    "mean_turns": -1,
}
#: the fake backend's word list length bounds (its completions are 8-40 words)
_FAKE_MIN, _FAKE_MAX = 8, 40


def fake_completion_tokens(prompt: str, max_tokens: int | None, key: str) -> int:
    """What the fake backend's completion would count: 8-40 words (seeded by the request), cut at max_tokens."""
    rng = random.Random(hashlib.sha256(f"{key}\x00{prompt}".encode("utf-8", "surrogatepass")).digest())
    n = rng.randint(_FAKE_MIN, _FAKE_MAX)
    return min(n, max_tokens if max_tokens is not None else 256)


def _render(messages: Sequence[dict[str, Any]] | None, prompt: str | None) -> str:
    if prompt is not None:
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content') or ''}" for m in messages or ()) + "\nassistant:"


def plan_events(plan: Any) -> Iterator[ExchangeEvent]:
    """The events the audit log would hold for a simulation plan (account ids are the plan's keys).

    Same fields as :meth:`ExchangeEvent.from_record` reads from a record; assistant turns the driver would fill
    with earlier answers count only as turns.
    """
    meta = {a.key: dict(a.metadata) for a in plan.accounts}
    for r in plan.requests:
        system, user = "", ""
        if r.messages is not None:
            system = "\n".join(
                str(m.get("content") or "") for m in r.messages if m.get("role") in ("system", "developer")
            )
            users = [m.get("content") for m in r.messages if m.get("role") == "user"]
            user = users[-1] if users and isinstance(users[-1], str) else ""
            turns = len(r.messages)
        else:
            user, turns = r.prompt or "", 1
        text = _render(r.messages, r.prompt)
        yield ExchangeEvent(
            account_id=r.account,
            ts=datetime.fromtimestamp(r.t, UTC),
            endpoint="/v1/chat/completions" if r.endpoint == "chat" else "/v1/completions",
            model=r.model,
            system=system,
            prompt=user,
            turns=turns,
            max_tokens=r.max_tokens,
            prompt_tokens=len(text.split()),
            completion_tokens=fake_completion_tokens(text, r.max_tokens, r.account),
            client_addr=r.client_addr,
            user_agent=r.user_agent,
            status=200,
            account_metadata=meta[r.account],
        )


def releases_of(plan: Any) -> dict[str, float]:
    """Model → release time (unix seconds) as the plan's world declares them (the operator knows its own)."""
    return {r["model"]: float(r["released_at"]) for r in plan.releases}


@dataclass
class Rows:
    """Feature rows collected from one replay, with their labels."""

    X: list[np.ndarray] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)  # "account" or "cluster"
    persona: list[str] = field(default_factory=list)


def collect_rows(plan: Any, embedder: Any = None, scorer: Scorer | None = None) -> tuple[Rows, Monitor]:
    """Replay a plan through a monitor and keep every scored account and cluster window, labelled.

    Account rows carry the account's ground truth; hydra members' own rows are left out (they are built to look
    clean; the hydra is learned from its cluster's rows). A cluster row is positive when most of its members
    (at that moment) are attackers.
    """
    role = {a.key: a.role for a in plan.accounts}
    persona = {a.key: a.persona for a in plan.accounts}
    rows = Rows()

    def record(kind: str, key: str, members: tuple[str, ...], x: np.ndarray) -> None:
        if kind == "account":
            if persona[key] == "hydra":
                return
            rows.y.append(int(role[key] == "attacker"))
            rows.persona.append(persona[key])
        else:
            attackers = sum(role[m] == "attacker" for m in members)
            rows.y.append(int(attackers * 2 > len(members)))
            rows.persona.append("cluster:" + Counter(persona[m] for m in members).most_common(1)[0][0])
        rows.X.append(np.array(x, dtype=float))
        rows.kind.append(kind)

    mon = Monitor(scorer or Scorer.rules_only(), embedder=embedder, releases=releases_of(plan), recorder=record)
    mon.observe_many(plan_events(plan))
    mon.flush()
    return rows, mon


def fit_models(rows: Rows, *, embeddings: bool = False, seed: int = 0) -> dict[str, Any]:
    """Fit the anomaly model (benign account rows) and the supervised model (all rows); no thresholds yet."""
    from sklearn.ensemble import (  # scikit-learn (~1 s to import): only fitting needs it
        HistGradientBoostingClassifier,
        IsolationForest,
    )

    X = Scorer({"watch": 1, "alert": 1, "severe": 1}, embeddings=embeddings)._matrix(np.vstack(rows.X))
    y = np.asarray(rows.y, dtype=int)
    if len(set(y.tolist())) < 2:
        raise InputError("training rows must hold both benign and attacker examples; simulate more traffic")
    kind = np.asarray(rows.kind)
    benign = X[(y == 0) & (kind == "account")]
    X_iso = np.nan_to_num(benign, nan=0.0)
    iso = IsolationForest(n_estimators=100, max_samples=min(512, len(X_iso)), random_state=seed).fit(X_iso)
    cdf = np.sort(isolation_scores(iso, X_iso))
    # benign and attacker rows weigh the same in total, so the rare attacker kinds are not drowned out
    w = np.where(y == 1, 0.5 / max(1, int(y.sum())), 0.5 / max(1, int((y == 0).sum()))) * len(y)
    cst = [MONOTONE.get(f, 0) for f in FEATURES]
    hgb = HistGradientBoostingClassifier(
        max_iter=120,
        learning_rate=0.08,
        max_leaf_nodes=15,
        min_samples_leaf=20,
        l2_regularization=1.0,
        random_state=seed,
        monotonic_cst=cst,
    )
    hgb.fit(X, y, sample_weight=w)
    med = np.nanmedian(benign, axis=0)
    q75, q25 = np.nanpercentile(benign, 75, axis=0), np.nanpercentile(benign, 25, axis=0)
    # a feature that does not vary over benign accounts (the cluster-only ones: one account, all its own
    # requests) has no spread to measure a distance in; an infinite scale keeps it out of the reasons
    std = np.nanstd(benign, axis=0)
    scale = np.where((q75 - q25) > 1e-6, q75 - q25, np.where(std > 1e-6, std, np.inf))
    return {"supervised": hgb, "anomaly": iso, "anomaly_cdf": cdf, "benign_median": med, "benign_scale": scale}


def benign_max_risks(
    plan: Any, scorer: Scorer, embedder: Any = None
) -> tuple[list[float], list[float], dict[str, Any]]:
    """Replay a plan with ``scorer``: every benign account's highest effective risk (0 if never scored); the same
    for the benign accounts that did not end in a cluster of mostly attackers (the ceiling of
    :func:`~antidistill.monitor.score.calibrate`); and a per-persona summary of the highest risks (for the
    manifest; ``"linked_to_attackers"`` counts the benign accounts left out of the ceiling)."""
    mon = Monitor(scorer, embedder=embedder, releases=releases_of(plan))
    mon.observe_many(plan_events(plan))
    mon.flush()
    role = {a.key: a.role for a in plan.accounts}
    benign, ceiling = [], []
    for a in plan.accounts:
        if a.role != "benign":
            continue
        r = mon.max_risk.get(a.key, 0.0)
        benign.append(r)
        c = mon.linker.cluster_of(a.key)
        if c is None or 2 * sum(role.get(m) == "attacker" for m in c.members) <= len(c.members):
            ceiling.append(r)
    per: dict[str, list[float]] = {}
    for a in plan.accounts:
        per.setdefault(a.persona, []).append(mon.max_risk.get(a.key, 0.0))
    summary: dict[str, Any] = {
        p: {
            "accounts": len(v),
            "median": round(float(np.median(v)), 4),
            "min": round(min(v), 4),
            "max": round(max(v), 4),
        }
        for p, v in per.items()
    }
    summary["linked_to_attackers"] = len(benign) - len(ceiling)
    return benign, ceiling, summary
