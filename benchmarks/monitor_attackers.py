"""Attacker recall with enough attackers to measure it: a held-out simulation with many accounts of every kind.

The default scale holds one to three accounts of each single-account attacker kind per seed, too few to bound a
recall of 95% from below. This program runs a held-out scenario (a seed and parameter bands never used for training
or thresholds) with ``--per-kind`` accounts of every single-account attacker kind and ``--hydras`` hydra
campaigns beside the default benign population, through the real gateway (in process, SQLite), then scans its audit
log with the trained monitor (``antidistill monitor train``) exactly as ``antidistill simulate eval`` does.

Run: ``.venv/bin/python benchmarks/monitor_attackers.py --seed 1007`` (``--per-kind 15 --days 2``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from antidistill.settings import get_settings
from antidistill.simulate import Scenario
from antidistill.simulate.runner import load_scenario
from antidistill.workflows.monitor_eval import check_heldout, evaluate_run
from antidistill.workflows.simulation import run_simulation

ATTACKERS = ("bulk_harvester", "stealthy_harvester", "cot_extractor", "coverage_sweeper", "release_pivot")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1007)
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--per-kind", type=int, default=15)
    ap.add_argument("--hydras", type=int, default=2)
    ap.add_argument(
        "--sim-dir",
        default=None,
        help="keep the simulation here; if it already holds this one (same seed, days and counts), scan it again",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    settings = get_settings()
    check_heldout(args.seed, settings)
    scenario = Scenario.from_scale("default", seed=args.seed, days=args.days, split="heldout")
    scenario.counts.update({k: args.per_kind for k in ATTACKERS})
    scenario.counts["hydra"] = args.hydras
    with tempfile.TemporaryDirectory(prefix="monitor-attackers-") as tmp:
        target = Path(args.sim_dir) if args.sim_dir else Path(tmp)
        if (target / "labels.jsonl").is_file():
            done = load_scenario(target)
            if done.get("seed") != args.seed or done.get("counts") != dict(scenario.counts):
                print(f"{target} holds another simulation; choose a new --sim-dir", file=sys.stderr)
                return 2
            simulated = f"the simulation in {target} scanned again"
        else:
            sim = run_simulation(scenario, target)
            simulated = f"{sim.planned} requests simulated in {sim.wall_s:.0f} s"
        report = evaluate_run(target, settings)
    rows = []
    for name, p in report["personas"].items():
        ci = p.get("detection_ci95") or [None, None]
        rows.append(
            [
                name,
                p["role"],
                p["accounts"],
                p["detected"],
                f"{p['detection_rate']:.3f}",
                f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else "-",
                p["median_requests_to_alert"] if p["median_requests_to_alert"] is not None else "-",
            ]
        )
    print(table(["persona", "role", "accounts", "at alert or above", "rate", "exact 95% CI", "median requests"], rows))
    fpr = report["benign_fpr"]["alert"]
    print(
        f"benign false positives at alert: {fpr['false_positives']}/{fpr['accounts']} = {fpr['rate']:.2%}; {simulated}"
    )
    path = write_json("monitor_attackers", {"params": vars(args), "report": report}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
