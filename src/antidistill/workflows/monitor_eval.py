"""Held-out evaluation of the monitor (``antidistill simulate eval --seed S``).

The held-out simulation (split ``heldout``: persona parameters and templates from bands and pool halves that
training never draws from, and a seed that training and calibration never used) is driven through the real
gateway (in process, fake backend, SQLite audit log); the audit log is then scanned in batch with the trained
monitor (:func:`~antidistill.monitor.pipeline.scan_records`) and the level changes are compared with the ground
truth (``labels.jsonl``):

* per persona: accounts, detection rate (share of accounts that reached ``alert`` or above; for benign personas
  this is the false-positive rate) with an exact Clopper–Pearson 95% interval, and the median number of the
  account's requests the monitor had seen when it first raised ``alert``;
* benign per-account false-positive rate over all benign accounts (hard negatives included), per level;
* what the policy (the shipped default, or the one given) would have done to each account on the level changes
  the scan reported, and, separately from the alert rate, the benign **block** rate (accounts the policy would
  block) and **hold** rate (block or review: every request refused), each with a Wilson 95% interval. A block
  needs two independent evidence families (:mod:`antidistill.monitor.policy`), so it is rarer than an alert;
* hydra cluster recall: the share of a hydra's members (that sent traffic) linked into the cluster holding most
  of them.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from antidistill.detection.stats import clopper_pearson
from antidistill.errors import InputError
from antidistill.monitor.actions import exchange_records
from antidistill.monitor.api import FAMILIES, Assessment, level_rank
from antidistill.monitor.pipeline import MANIFEST_FILE, Monitor, monitor_dir, scan_records
from antidistill.monitor.policy import Policy, action_rank
from antidistill.settings import Settings
from antidistill.simulate.runner import load_labels, load_scenario
from antidistill.simulate.scenario import Scenario
from antidistill.store.api import AuditRecord
from antidistill.store.sql import Store
from antidistill.workflows.simulation import run_simulation

#: the level that counts as "detected" (an alert)
DETECT_LEVEL = "alert"
#: the targets the evaluation is judged against
TARGETS = {
    "attacker_recall_min": 0.95,
    "single_account_median_requests_max": 200,
    "hydra_cluster_recall_min": 0.90,
    "benign_fpr_max": 0.005,
}
SINGLE_ACCOUNT = ("bulk_harvester", "stealthy_harvester", "cot_extractor", "coverage_sweeper", "release_pivot")


def _ci(k: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    lo, hi = clopper_pearson(k, n)
    return [round(lo, 5), round(hi, 5)]


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (default: 95%), which stays inside [0, 1] and is not empty
    at ``k = 0`` (Wilson 1927, "Probable inference, the law of succession, and statistical inference", JASA).

    >>> [round(v, 4) for v in wilson(0, 1349)]
    [0.0, 0.0028]
    >>> [round(v, 4) for v in wilson(5, 10)]
    [0.2366, 0.7634]
    """
    if n <= 0:
        raise InputError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise InputError(f"k must be in [0, n], got {k} of {n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(k: int, n: int) -> dict[str, Any]:
    """``k`` of ``n`` accounts as a rate with its Wilson 95% interval (``None`` for ``n == 0``)."""
    lo, hi = wilson(k, n) if n else (None, None)
    return {
        "accounts": k,
        "of": n,
        "rate": round(k / n, 5) if n else None,
        "wilson95": [round(lo, 5), round(hi, 5)] if lo is not None and hi is not None else None,
    }


def policy_outcomes(changes: Iterable[Assessment], policy: Policy) -> dict[str, Assessment]:
    """Per account, the assessment whose policy decision is the strictest (actions only escalate, so what the
    account ends under). Decided without a store: what the policy says, not what a gateway applied."""
    best: dict[str, tuple[int, Assessment]] = {}
    for a in changes:
        d = policy.decide(a)
        rank = action_rank(d.action) if d is not None else 0
        if rank and (a.account_id not in best or rank > best[a.account_id][0]):
            best[a.account_id] = (rank, a)
    return {k: v for k, (_, v) in best.items()}


def action_summary(
    labels: list[dict[str, Any]], changes: Iterable[Assessment], policy: Policy
) -> tuple[dict[str, str], dict[str, Any]]:
    """Each account's strictest action, and the benign block and hold rates (Wilson 95% intervals) beside the
    attackers' (how many are blocked, held, throttled)."""
    decided = policy_outcomes(changes, policy)
    action: dict[str, str] = {}
    for aid, a in decided.items():
        d = policy.decide(a)
        action[aid] = d.action if d is not None else "none"
    out: dict[str, Any] = {"policy": policy.name}
    for role in ("benign", "attacker"):
        ids = [r["account_id"] for r in labels if r["role"] == role]
        acts = [action.get(i, "none") for i in ids]
        out[role] = {
            "blocked": proportion(sum(x == "block" for x in acts), len(ids)),
            "held": proportion(sum(x in ("block", "review") for x in acts), len(ids)),
            "actions": dict(Counter(acts)),
        }
    out["benign_blocked"] = [
        {"account_id": r["account_id"], "persona": r["persona"], "families": _families(decided[r["account_id"]])}
        for r in labels
        if r["role"] == "benign" and action.get(r["account_id"]) == "block"
    ]
    return action, out


def _families(a: Assessment) -> list[str]:
    return [f for f in FAMILIES if f in a.families]


def evaluate_run(
    out_dir: Path, settings: Settings, *, embeddings: bool | None = None, policy: Policy | None = None
) -> dict[str, Any]:
    """Scan a finished simulation's audit log with the trained monitor and score it against its labels (the
    actions under ``policy``, default the shipped one)."""
    labels = load_labels(out_dir)
    scenario = load_scenario(out_dir)
    releases = {r["model"]: float(r["released_at"]) for r in scenario.get("releases", [])}
    monitor = Monitor.load(settings, embeddings=embeddings, releases=releases)
    store_url = scenario.get("store_url") or f"sqlite:///{(Path(out_dir) / 'antidistill.db').resolve()}"
    t0 = time.perf_counter()
    with Store.open(store_url, settings) as store:
        accounts = {a.id: dict(a.metadata or {}) for a in store.list_accounts()}
        n_records = 0

        def counted(records: Iterable[AuditRecord]) -> Iterator[AuditRecord]:
            nonlocal n_records
            for r in records:
                n_records += 1
                yield r

        changes = scan_records(counted(exchange_records(store.iter_records())), accounts, monitor)
    scan_s = time.perf_counter() - t0
    first: dict[str, Assessment] = {}
    top: dict[str, str] = {}
    for a in changes:
        if level_rank(a.level) > level_rank(top.get(a.account_id, "none")):
            top[a.account_id] = a.level
        if level_rank(a.level) >= level_rank(DETECT_LEVEL) and a.account_id not in first:
            first[a.account_id] = a
    personas: dict[str, dict[str, Any]] = {}
    by_persona: dict[str, list[dict[str, Any]]] = {}
    for row in labels:
        by_persona.setdefault(row["persona"], []).append(row)
    for name, rows in by_persona.items():
        ids = [r["account_id"] for r in rows]
        active = [r for r in rows if r.get("ok", r.get("requests", 0)) > 0]
        hit = [i for i in ids if i in first]
        reqs = [first[i].requests for i in hit]
        levels = Counter(top.get(i, "none") for i in ids)
        personas[name] = {
            "role": rows[0]["role"],
            "accounts": len(rows),
            "active_accounts": len(active),
            "detected": len(hit),
            "detection_rate": round(len(hit) / len(rows), 5) if rows else None,
            "detection_ci95": _ci(len(hit), len(rows)),
            "detection_rate_active": round(sum(r["account_id"] in first for r in active) / len(active), 5)
            if active
            else None,
            "median_requests_to_alert": statistics.median(reqs) if reqs else None,
            "levels": dict(levels),
        }
    benign = [r for r in labels if r["role"] == "benign"]
    fpr = {}
    for level in ("watch", "alert", "severe"):
        k = sum(level_rank(top.get(r["account_id"], "none")) >= level_rank(level) for r in benign)
        fpr[level] = {
            "false_positives": k,
            "accounts": len(benign),
            "rate": round(k / len(benign), 5) if benign else None,
            "ci95": _ci(k, len(benign)),
        }
    action, actions = action_summary(labels, changes, policy or Policy.default())
    for name, p in personas.items():
        p["actions"] = dict(Counter(action.get(r["account_id"], "none") for r in by_persona[name]))
    hydras = _hydra_recall(labels, monitor)
    attackers = {n: p for n, p in personas.items() if p["role"] == "attacker"}
    single = [
        p["median_requests_to_alert"]
        for n, p in personas.items()
        if n in SINGLE_ACCOUNT and p["median_requests_to_alert"] is not None
    ]
    verdict = {
        "every_attacker_type_recall_ge_95": all(
            (p["detection_rate"] or 0) >= TARGETS["attacker_recall_min"] for p in attackers.values()
        ),
        "single_account_median_requests_le_200": bool(single)
        and all(m <= TARGETS["single_account_median_requests_max"] for m in single),
        "hydra_cluster_recall_ge_90": all(h["recall"] >= TARGETS["hydra_cluster_recall_min"] for h in hydras)
        if hydras
        else None,
        "benign_fpr_le_0_5pct": fpr["alert"]["rate"] is not None and fpr["alert"]["rate"] <= TARGETS["benign_fpr_max"],
    }
    false_positives = [
        {
            "account_id": r["account_id"],
            "persona": r["persona"],
            "level": top[r["account_id"]],
            "reasons": list(first[r["account_id"]].reasons) if r["account_id"] in first else [],
        }
        for r in benign
        if level_rank(top.get(r["account_id"], "none")) >= level_rank(DETECT_LEVEL)
    ]
    return {
        "seed": scenario.get("seed"),
        "split": scenario.get("split"),
        "scale": scenario.get("scale"),
        "days": scenario.get("days"),
        "records": n_records,
        "scan_s": round(scan_s, 2),
        "scan_records_per_s": round(n_records / scan_s, 1) if scan_s > 0 else None,
        "model": monitor.scorer.manifest.get("trained_at")
        and {
            "trained_at": monitor.scorer.manifest.get("trained_at"),
            "train_seeds": monitor.scorer.manifest.get("train_seeds"),
            "calibration_seeds": monitor.scorer.manifest.get("calibration_seeds"),
            "thresholds": monitor.scorer.thresholds,
            "embeddings": monitor.scorer.embeddings,
        },
        "rules_only": not monitor.scorer.trained,
        "detect_level": DETECT_LEVEL,
        "personas": personas,
        "benign_fpr": fpr,
        "actions": actions,
        "hydra_cluster_recall": hydras,
        "targets": TARGETS,
        "verdict": verdict,
        "benign_false_positives": false_positives,
    }


def _hydra_recall(labels: list[dict[str, Any]], monitor: Monitor) -> list[dict[str, Any]]:
    out = []
    campaigns: dict[str, list[dict[str, Any]]] = {}
    for r in labels:
        if r["persona"] == "hydra":
            campaigns.setdefault(r["campaign"], []).append(r)
    lk = monitor.linker
    for campaign, rows in sorted(campaigns.items()):
        active = [r["account_id"] for r in rows if r["account_id"] in lk.parent]
        roots = Counter(lk.find(a) for a in active)
        root, n = roots.most_common(1)[0] if roots else (None, 0)
        cluster = lk.clusters.get(root) if root else None
        size = len(cluster.members) if cluster else 1
        others = size - n if cluster else 0
        out.append(
            {
                "campaign": campaign,
                "members": len(rows),
                "active_members": len(active),
                "linked": n if cluster else 0,
                "recall": round((n if cluster else 0) / len(active), 5) if active else 0.0,
                "recall_all_members": round((n if cluster else 0) / len(rows), 5),
                "cluster_id": cluster.id if cluster else None,
                "cluster_size": size,
                "non_members_in_cluster": others,
                "linked_by": lk.linked_by(cluster, 5) if cluster else [],
            }
        )
    return out


def check_heldout(seed: int, settings: Settings) -> None:
    """Refuse a seed the trained model used for training or calibration."""
    path = monitor_dir(settings) / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    used = set(manifest.get("train_seeds", [])) | set(manifest.get("calibration_seeds", []))
    if seed in used:
        raise InputError(
            f"seed {seed} was used to train or calibrate the monitor ({sorted(used)}); pick another "
            "for a held-out evaluation"
        )


def heldout_eval(
    settings: Settings,
    seed: int,
    *,
    scale: str = "default",
    days: float | None = None,
    out_dir: Path | None = None,
    embeddings: bool | None = None,
) -> dict[str, Any]:
    """Simulate held-out traffic through the in-process gateway (or reuse a finished simulation of the same seed in
    ``out_dir``), scan its audit log with the trained monitor and score it (:func:`evaluate_run`); the report has
    a ``simulation`` member saying what was run.

    Raises:
        InputError: the seed was used in training or calibration, the scale is unknown, or ``out_dir`` holds
            another simulation.
    """
    check_heldout(seed, settings)
    try:
        scenario = Scenario.from_scale(scale, seed=seed, days=days, split="heldout")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="antidistill-eval-") as tmp:
        target = out_dir if out_dir is not None else Path(tmp) / "sim"
        if (target / "labels.jsonl").is_file():
            done = load_scenario(target)
            if done.get("seed") != seed or done.get("split") != "heldout" or done.get("scale") != scale:
                raise InputError(
                    f"{target} holds another simulation (seed {done.get('seed')}, split "
                    f"{done.get('split')}, scale {done.get('scale')}); choose a new --out"
                )
            simulation = {"reused": str(target), "requests": done.get("summary", {}).get("requests")}
        else:
            t0 = time.perf_counter()
            sim = run_simulation(scenario, target)
            simulation = {
                "requests": sim.planned,
                "ok": sim.ok,
                "wall_s": round(time.perf_counter() - t0, 1),
                "gateway_requests_per_s": round(sim.requests_per_s, 1),
            }
        report = evaluate_run(target, settings, embeddings=embeddings)
    report["simulation"] = simulation
    return report
