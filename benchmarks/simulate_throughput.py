"""Simulator throughput: how fast ``antidistill simulate`` pushes a scenario through the in-process gateway.

The gateway is the real one (fake backend, SQLite audit log with one durable append per exchange, client clock
and forwarded addresses trusted) under uvicorn; the clients are ``openai`` SDK clients. Compared in one run, on
the same plan: the driver as threads of the gateway's own process (``processes=0``) against driver processes
(one per spare core), as a ratio. Reported: requests planned, requests/s while sending, wall time (plan, accounts,
sending, labels).

Run: ``.venv/bin/python benchmarks/simulate_throughput.py`` (``--scale default`` for a simulated week; ``--quick``
for a smoke run of a few hundred requests).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from _common import table, write_json
from antidistill.simulate import Scenario
from antidistill.workflows.simulation import run_simulation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small", choices=("small", "default", "large"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=float, default=None)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="small scale, a quarter day")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/…)")
    args = ap.parse_args()
    days = 0.25 if args.quick else args.days
    scenario = Scenario.from_scale("small" if args.quick else args.scale, seed=args.seed, days=days)
    plan = scenario.build()
    spare = max(1, (os.cpu_count() or 1) - 1)
    rows, results = [], {}
    for name, processes in (("threads", 0), (f"processes={spare}", spare)):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_simulation(
                scenario, Path(tmp) / "sim", concurrency=args.concurrency, processes=processes, plan=plan
            )
        results[name] = {
            "planned": r.planned,
            "ok": r.ok,
            "requests_per_s": r.requests_per_s,
            "drive_s": r.drive_s,
            "wall_s": r.wall_s,
            "processes": processes,
        }
        rows.append([name, r.planned, r.ok, r.requests_per_s, r.drive_s, r.wall_s])
    first, second = results.values()
    ratio = second["requests_per_s"] / first["requests_per_s"] if first["requests_per_s"] else float("nan")
    print(table(["driver", "requests", "ok", "req/s", "send s", "wall s"], rows))
    print(f"driver processes / threads: {ratio:.2f}x requests/s")
    path = write_json(
        "simulate_throughput",
        {
            "scenario": scenario.to_dict(),
            "summary": plan.summary(),
            "results": results,
            "ratio_processes_over_threads": ratio,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
