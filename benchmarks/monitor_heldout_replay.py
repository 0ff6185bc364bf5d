"""Held-out evaluation over many seeds, fast: each held-out plan replayed straight into the trained monitor.

``antidistill simulate eval`` drives a held-out simulation through the real gateway, which takes minutes a seed on
two cores; a false-positive rate of 0.5% needs thousands of benign accounts to bound. This program replays each
held-out plan (split ``heldout``: parameter bands, templates and seeds the monitor never trained or calibrated on)
as the events its audit log would hold (:func:`antidistill.monitor.train.plan_events`, the same events the
training replays) through :meth:`Monitor.observe_many`, with no HTTP, and scores the result against the plan's
ground truth exactly as ``simulate eval`` does: per persona the share of accounts that reached ``alert``, the
benign per-account false-positive rate with its exact 95% interval, the benign block and hold (block or review)
rates under the shipped policy with their Wilson 95% intervals, and the share of each hydra's active members
linked into the cluster that holds most of them. The gateway path gives the same events (fake backend, virtual
clock); ``simulate eval`` on a few seeds is the check of that.

Run: ``.venv/bin/python benchmarks/monitor_heldout_replay.py --seeds 1013-1022`` (``--per-kind 15 --days 2`` for
many accounts of every single-account attacker kind).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from antidistill.detection.stats import clopper_pearson
from antidistill.monitor.api import level_rank
from antidistill.monitor.pipeline import Monitor
from antidistill.monitor.policy import Policy
from antidistill.monitor.train import plan_events, releases_of
from antidistill.settings import get_settings
from antidistill.simulate.scenario import Scenario
from antidistill.workflows.monitor_eval import DETECT_LEVEL, action_summary, check_heldout, wilson

ATTACKERS = ("bulk_harvester", "stealthy_harvester", "cot_extractor", "coverage_sweeper", "release_pivot")


def seeds_of(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def replay(seed: int, settings, days: float | None, per_kind: int, hydras: int | None) -> dict:
    scenario = Scenario.from_scale("default", seed=seed, days=days, split="heldout")
    if per_kind:
        scenario.counts.update({k: per_kind for k in ATTACKERS})
    if hydras is not None:
        scenario.counts["hydra"] = hydras
    plan = scenario.build()
    mon = Monitor.load(settings, releases=releases_of(plan))
    t0 = time.perf_counter()
    events = list(plan_events(plan))
    changes = mon.observe_many(events) + mon.flush()
    seconds = time.perf_counter() - t0
    first: dict[str, int] = {}
    for a in changes:
        if level_rank(a.level) >= level_rank(DETECT_LEVEL) and a.account_id not in first:
            first[a.account_id] = a.requests
    personas: dict[str, dict] = {}
    for acct in plan.accounts:
        p = personas.setdefault(acct.persona, {"role": acct.role, "accounts": 0, "detected": 0, "requests": []})
        p["accounts"] += 1
        if acct.key in first:
            p["detected"] += 1
            p["requests"].append(first[acct.key])
    lk = mon.linker
    hydra = []
    for campaign in sorted({a.campaign for a in plan.accounts if a.persona == "hydra"}):
        active = [a.key for a in plan.accounts if a.campaign == campaign and a.key in mon.tracker.accounts]
        _, linked = Counter(lk.find(k) for k in active).most_common(1)[0] if active else (None, 0)
        hydra.append({"campaign": campaign, "active": len(active), "linked": linked if linked > 1 else 0})
    benign = [a for a in plan.accounts if a.role == "benign"]
    fps = [{"account": a.key, "persona": a.persona} for a in benign if a.key in first]
    labels = [{"account_id": a.key, "role": a.role, "persona": a.persona} for a in plan.accounts]
    action, _ = action_summary(labels, changes, Policy.default())
    return {
        "seed": seed,
        "events": len(events),
        "seconds": round(seconds, 2),
        "personas": personas,
        "hydra": hydra,
        "benign": len(benign),
        "false_positives": fps,
        "benign_blocked": [a.key for a in benign if action.get(a.key) == "block"],
        "benign_held": [a.key for a in benign if action.get(a.key) in ("block", "review")],
        "attacker_actions": dict(Counter(action.get(a.key, "none") for a in plan.accounts if a.role == "attacker")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1013-1022", help="held-out seeds: 1013-1022 or 1013,1015")
    ap.add_argument("--days", type=float, default=None, help="virtual days (default: the scale's week)")
    ap.add_argument("--per-kind", type=int, default=0, help="accounts of every single-account attacker kind")
    ap.add_argument("--hydras", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    settings = get_settings()
    seeds = seeds_of(args.seeds)
    for s in seeds:
        check_heldout(s, settings)
    runs = []
    for s in seeds:
        r = replay(s, settings, args.days, args.per_kind, args.hydras)
        runs.append(r)
        hy = ", ".join(f"{h['linked']}/{h['active']}" for h in r["hydra"])
        print(
            f"seed {s}: {r['events']} events in {r['seconds']} s; benign false positives "
            f"{len(r['false_positives'])}/{r['benign']}; hydra members linked {hy}",
            file=sys.stderr,
        )
    total: dict[str, dict] = {}
    for r in runs:
        for name, p in r["personas"].items():
            t = total.setdefault(name, {"role": p["role"], "accounts": 0, "detected": 0, "requests": []})
            t["accounts"] += p["accounts"]
            t["detected"] += p["detected"]
            t["requests"] += p["requests"]
    rows = []
    for name, t in total.items():
        lo, hi = clopper_pearson(t["detected"], t["accounts"])
        t["rate"], t["ci95"] = t["detected"] / t["accounts"], [lo, hi]
        t["median_requests_to_alert"] = statistics.median(t["requests"]) if t["requests"] else None
        rows.append(
            [
                name,
                t["role"],
                t["accounts"],
                t["detected"],
                f"{t['rate']:.4f}",
                f"[{lo:.4f}, {hi:.4f}]",
                "-" if t["median_requests_to_alert"] is None else t["median_requests_to_alert"],
            ]
        )
    print(table(["persona", "role", "accounts", "at alert or above", "rate", "exact 95% CI", "median requests"], rows))
    benign = sum(r["benign"] for r in runs)
    fp = sum(len(r["false_positives"]) for r in runs)
    lo, hi = clopper_pearson(fp, benign)
    hydra = [h for r in runs for h in r["hydra"]]
    worst = min((h["linked"] / h["active"] for h in hydra if h["active"]), default=None)
    linked, active = sum(h["linked"] for h in hydra), sum(h["active"] for h in hydra)
    print(
        f"benign per-account false positives at {DETECT_LEVEL}: {fp}/{benign} = {fp / benign:.4%} "
        f"(exact 95% CI {lo:.4%}-{hi:.4%}); hydra members linked {linked}/{active}"
        + (f", worst campaign {worst:.1%}" if worst is not None else "")
        + f"; seeds {args.seeds}"
    )
    blocked = sum(len(r["benign_blocked"]) for r in runs)
    held = sum(len(r["benign_held"]) for r in runs)
    (blo, bhi), (hlo, hhi) = wilson(blocked, benign), wilson(held, benign)
    att: Counter[str] = Counter()
    for r in runs:
        att.update(r["attacker_actions"])
    print(
        f"benign accounts blocked: {blocked}/{benign} = {blocked / benign:.4%} (Wilson 95% CI {blo:.4%}-{bhi:.4%}); "
        f"held (block or review): {held}/{benign} = {held / benign:.4%} (Wilson 95% CI {hlo:.4%}-{hhi:.4%}); "
        f"attacker accounts by action: {dict(att)}"
    )
    path = write_json(
        "monitor_heldout_replay",
        {
            "params": vars(args),
            "seeds": seeds,
            "personas": {k: {**v, "requests": None} for k, v in total.items()},
            "benign_false_positives": {"count": fp, "accounts": benign, "rate": fp / benign, "ci95": [lo, hi]},
            "hydra_linked": {"linked": linked, "active": active, "worst_campaign": worst},
            "benign_blocked": {"count": blocked, "accounts": benign, "rate": blocked / benign, "wilson95": [blo, bhi]},
            "benign_held": {"count": held, "accounts": benign, "rate": held / benign, "wilson95": [hlo, hhi]},
            "attacker_actions": dict(att),
            "runs": runs,
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
