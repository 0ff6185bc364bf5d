"""Monitor throughput: exchanges per second through ``Monitor.observe`` on one core.

The traffic is a training-split simulation (scale ``default``: about 44,000 exchanges from ~600 accounts over a
virtual week) turned into the events the audit log would yield (:func:`antidistill.monitor.train.plan_events`),
built before timing. Timed: every event through :meth:`Monitor.observe` plus the final :meth:`Monitor.flush`,
i.e. encoding (templates, reasoning markers), sliding windows, linking, and batched scoring with the trained
models (rules only if no model is trained in ``--data-dir``). BLAS, OpenMP and torch are held to one thread.

Without embeddings the whole simulation is timed (target >= 20,000 exchanges/s) two ways:

* **one by one**: ``observe`` per event, scores flushed every ten minutes of event time, as ``monitor scan``
  replays a week (1,000 flushes of a few windows each: the models' per-batch cost is paid 1,000 times);
* **worker batches**: ``observe_many`` on batches of ``--batch`` events, as the gateway's monitor worker drains
  its queue under load, with the flush on ``batch_size`` due windows only. At 20,000 exchanges/s ten minutes
  of event time hold 12 million exchanges, so under that load the size trigger is the one that fires; replaying a
  quiet week at full speed would otherwise flush a few windows every ten virtual minutes, which a loaded gateway
  never does.

With embeddings (the all-MiniLM-L6-v2 forward pass dominates) the first ``--embed-events`` events, one by one.

Run: ``.venv/bin/python benchmarks/monitor_throughput.py [--data-dir DIR] [--quick]``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import table, write_json  # noqa: E402

TARGET = 20_000.0


def _scorer(data_dir: str | None, embeddings: bool):
    from antidistill.monitor.pipeline import MODEL_FILE, Monitor
    from antidistill.monitor.score import Scorer

    if data_dir and (Path(data_dir) / "monitor" / MODEL_FILE).is_file():
        from antidistill.settings import Settings

        m = Monitor.load(Settings(env="test", data_dir=Path(data_dir)), embeddings=False)
        scorer = m.scorer
        scorer.embeddings = embeddings and scorer.embeddings
        return scorer, "trained"
    return Scorer.rules_only(), "rules only"


def run(events, releases, scorer, embedder=None, batch: int = 0) -> dict:
    from antidistill.monitor.pipeline import Monitor

    mon = Monitor(scorer, embedder=embedder, releases=releases, flush_s=float("inf") if batch else 600.0)
    t0 = time.perf_counter()
    rises = 0
    if batch:
        for i in range(0, len(events), batch):
            rises += len(mon.observe_many(events[i : i + batch]))
    else:
        for ev in events:
            rises += len(mon.observe(ev))
    rises += len(mon.flush())
    dt = time.perf_counter() - t0
    return {
        "events": len(events),
        "seconds": round(dt, 3),
        "events_per_s": len(events) / dt,
        "level_rises": rises,
        "accounts": len(mon.tracker.accounts),
        "clusters": len(mon.linker.clusters),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=301, help="simulation seed (train split)")
    ap.add_argument("--scale", default="default")
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("ANTIDISTILL_DATA_DIR"),
        help="where the trained monitor lives (DATA_DIR/monitor); rules only without one",
    )
    ap.add_argument("--embed-events", type=int, default=3000, help="events timed with embeddings")
    ap.add_argument("--batch", type=int, default=256, help="events per worker batch")
    ap.add_argument("--quick", action="store_true", help="scale small, 500 embedded events")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.scale, args.embed_events = "small", 500

    import torch

    torch.set_num_threads(1)
    from antidistill.monitor.train import plan_events, releases_of
    from antidistill.simulate.scenario import Scenario

    plan = Scenario.from_scale(args.scale, seed=args.seed, split="train").build()
    events = list(plan_events(plan))
    releases = releases_of(plan)
    print(
        f"{len(events):,} events from {len(plan.accounts)} accounts (scale {args.scale}, seed {args.seed})",
        file=sys.stderr,
    )
    scorer, kind = _scorer(args.data_dir, embeddings=False)
    rows = {}
    run(events[:2000], releases, scorer)  # warm up: imports, caches
    rows["one by one"] = run(events, releases, scorer)
    rows["worker batches"] = run(events, releases, scorer, batch=args.batch)
    from antidistill.monitor.embed import Embedder

    emb = Embedder(batch_size=64, threads=1)
    emb.embed(["warm up"])
    escorer, _ = _scorer(args.data_dir, embeddings=True)
    sub = events[: args.embed_events]
    rows["embeddings, one by one"] = run(sub, releases, escorer, emb)
    t0 = time.perf_counter()
    emb.embed([e.prompt for e in sub])
    rows["embeddings, one by one"]["embedding_only_per_s"] = len(sub) / (time.perf_counter() - t0)
    print(
        table(
            ["pipeline", "events", "seconds", "events/s", "level rises"],
            [[k, r["events"], r["seconds"], r["events_per_s"], r["level_rises"]] for k, r in rows.items()],
        )
    )
    met = max(rows["one by one"]["events_per_s"], rows["worker batches"]["events_per_s"]) >= TARGET
    print(
        f"scorer: {kind}; target >= {TARGET:,.0f}/s without embeddings: {'met' if met else 'NOT met'} "
        f"(one by one {rows['one by one']['events_per_s']:,.0f}/s, worker batches "
        f"{rows['worker batches']['events_per_s']:,.0f}/s); "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    path = write_json(
        "monitor_throughput",
        {"args": vars(args), "scorer": kind, "rows": rows, "target": TARGET, "meets_target": met},
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
