"""Monitor throughput: exchanges per second through ``Monitor.observe`` per core, against the code of an earlier
revision (the peer) in the same run.

The traffic is a training-split simulation (scale ``default``: about 51,000 exchanges from ~500 accounts over a
virtual week) turned into the events the audit log would yield (:func:`antidistill.monitor.train.plan_events`),
built once before timing and handed to both codes (pickled), so both see the same events. Each code runs in its own
process with BLAS, OpenMP and torch held to one thread; the input is frozen out of the garbage collector's sweeps
(``gc.freeze``), since a worker's events are transient and the benchmark's list of 51,000 of them is not part of the
monitor's cost. Timed: every event through :meth:`Monitor.observe` plus the final :meth:`Monitor.flush`, i.e.
encoding (templates, reasoning markers), sliding windows, linking, and batched scoring with the trained models
(rules only if no model is trained in ``--data-dir``). Once the model is loaded and the code warmed up, that too is
frozen out of the collector, as ``antidistill monitor run`` does before it consumes (``--no-freeze``: not).

**Per core** (every row, embeddings too) is events over the process's CPU seconds (``time.process_time``: on a
shared machine the wall clock also counts other processes' turns); the wall-clock rate is reported next to it.
Without embeddings the whole simulation is timed (target >= 20,000 exchanges/s per core in worker batches) two ways:

* **one by one**: ``observe`` per event, scores flushed every ten minutes of event time, as ``monitor scan``
  replays a week (1,000 flushes of a few windows each: the models' per-batch cost is paid 1,000 times);
* **worker batches**: ``observe_many`` on batches of ``--batch`` events, as the gateway's monitor worker drains
  its queue under load, with the flush on ``batch_size`` due windows only. At 20,000 exchanges/s ten minutes
  of event time hold 12 million exchanges, so under that load the size trigger is the one that fires; replaying a
  quiet week at full speed would otherwise flush a few windows every ten virtual minutes, which a loaded gateway
  never does.

With embeddings (the all-MiniLM-L6-v2 forward pass dominates) the first ``--embed-events`` events, one by one
(the peer: ``--peer-embed-events``, as the old path is slow).

The two codes' child processes alternate ``--repeat`` times (new, old, new, old, …) and each row reports the median
run, with the range over the runs: on a shared virtual machine the host's speed drifts by 10% or more within
minutes, so one run of each code, one after the other, can tilt the ratio either way.

The peer is the monitor at ``--peer-rev`` (default: the revision before the vectorised hot path and the sampled,
cached embeddings), extracted with ``git archive``; ``--peer-rev ''`` runs without one.

Run: ``.venv/bin/python benchmarks/monitor_throughput.py [--data-dir DIR] [--quick]``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import table, write_json  # noqa: E402

TARGET = 20_000.0
EMBED_TARGET = 1_000.0
ROOT = Path(__file__).resolve().parent.parent
#: the monitor before this benchmark's speed work (issue 14): per-event encoding, ipaddress objects, every
#: prompt embedded one flush at a time
PEER_REV = "0e5af90"


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
    w0, c0 = time.perf_counter(), time.process_time()
    rises = 0
    if batch:
        for i in range(0, len(events), batch):
            rises += len(mon.observe_many(events[i : i + batch]))
    else:
        for ev in events:
            rises += len(mon.observe(ev))
    rises += len(mon.flush())
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "events": len(events),
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "events_per_s": len(events) / wall,
        "events_per_core_s": len(events) / cpu,
        "level_rises": rises,
        "accounts": len(mon.tracker.accounts),
        "clusters": len(mon.linker.clusters),
    }


def measure(spec: dict) -> dict:
    """One code's rows (runs in a child process whose ``sys.path`` holds that code)."""
    import gc

    import torch

    torch.set_num_threads(1)
    with open(spec["events"], "rb") as f:
        events, releases = pickle.load(f)
    gc.collect()
    gc.freeze()  # the input list is the benchmark's, not the monitor's: keep it out of the collector's sweeps
    scorer, kind = _scorer(spec["data_dir"], embeddings=False)
    rows: dict = {}
    run(events[:2000], releases, scorer)  # warm up: imports, caches
    if spec.get("freeze", True):  # as `monitor run` does once its model is loaded
        gc.collect()
        gc.freeze()
    rows["one by one"] = run(events, releases, scorer)
    rows["worker batches"] = run(events, releases, scorer, batch=spec["batch"])
    if spec["embed_events"]:
        from antidistill.monitor.embed import Embedder

        emb = Embedder(batch_size=64, threads=1)
        emb.embed(["warm up"])
        escorer, _ = _scorer(spec["data_dir"], embeddings=True)
        sub = events[: spec["embed_events"]]
        rows["embeddings, one by one"] = run(sub, releases, escorer, emb)
    return {"scorer": kind, "rows": rows}


def _peer_tree(rev: str, into: Path) -> Path | None:
    """The ``src`` tree of ``rev`` extracted under ``into`` (``None``: not a git checkout, or no such revision)."""
    try:
        blob = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no peer: cannot extract revision {rev!r} ({exc})", file=sys.stderr)
        return None
    tar = into / "peer.tar"
    tar.write_bytes(blob)
    with tarfile.open(tar) as tf:
        tf.extractall(into, filter="data")
    return into / "src"


def _median_rows(runs: list[dict]) -> dict:
    """Each path's run with the median rate per core over ``runs`` (children's results), with the range."""
    out = {}
    for path in runs[0]["rows"]:
        rows = sorted((r["rows"][path] for r in runs), key=lambda r: r["events_per_core_s"])
        mid = dict(rows[(len(rows) - 1) // 2])
        lo, hi = rows[0]["events_per_core_s"], rows[-1]["events_per_core_s"]
        mid["range"] = f"{lo:,.0f}-{hi:,.0f}"
        out[path] = mid
    return out


def _child(src: Path, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(Path(__file__).resolve().parent)]))
    out = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(spec)], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    ap.add_argument("--peer-embed-events", type=int, default=300, help="events timed with embeddings (peer)")
    ap.add_argument("--batch", type=int, default=256, help="events per worker batch")
    ap.add_argument("--peer-rev", default=PEER_REV, help="git revision of the peer ('' for none)")
    ap.add_argument("--no-freeze", action="store_true", help="leave the loaded model in the collector's sweeps")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each code, alternating (median reported)")
    ap.add_argument("--quick", action="store_true", help="scale small, 500 embedded events")
    ap.add_argument("--out", default=None)
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure)), default=float))
        return 0
    if args.quick:
        args.scale, args.embed_events, args.peer_embed_events, args.repeat = "small", 500, 100, 1

    from antidistill.monitor.train import plan_events, releases_of
    from antidistill.simulate.scenario import Scenario

    plan = Scenario.from_scale(args.scale, seed=args.seed, split="train").build()
    events = list(plan_events(plan))
    releases = releases_of(plan)
    print(
        f"{len(events):,} events from {len(plan.accounts)} accounts (scale {args.scale}, seed {args.seed})",
        file=sys.stderr,
    )
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ev_path = Path(tmp) / "events.pkl"
        ev_path.write_bytes(pickle.dumps((events, releases)))
        spec = {"events": str(ev_path), "data_dir": args.data_dir, "batch": args.batch, "freeze": not args.no_freeze}
        peer_src = _peer_tree(args.peer_rev, Path(tmp)) if args.peer_rev else None
        runs: dict[str, list[dict]] = {"new": [], "old": []}
        for _ in range(args.repeat):  # alternate the codes: the machine's speed drifts between runs
            runs["new"].append(_child(ROOT / "src", {**spec, "embed_events": args.embed_events}))
            if peer_src is not None:
                runs["old"].append(_child(peer_src, {**spec, "embed_events": args.peer_embed_events}))
    results = {code: {"scorer": rs[0]["scorer"], "rows": _median_rows(rs)} for code, rs in runs.items() if rs}
    new, old = results["new"]["rows"], results.get("old", {}).get("rows", {})
    lines = []
    for path, r in new.items():
        o = old.get(path)
        ratio = r["events_per_core_s"] / o["events_per_core_s"] if o else None
        lines.append([path, "new", r["events"], r["cpu_seconds"], r["events_per_core_s"], r["range"], ratio])
        if o:
            lines.append([path, "old", o["events"], o["cpu_seconds"], o["events_per_core_s"], o["range"], 1.0])
    print(
        table(
            ["pipeline", "code", "events", "CPU s", "events/s per core (median)", "range over runs", "new/old"],
            lines,
        )
    )
    batched = new["worker batches"]["events_per_core_s"]
    met = batched >= TARGET
    emb_row = new.get("embeddings, one by one", {})
    emb, emb_wall = emb_row.get("events_per_core_s"), emb_row.get("events_per_s")
    print(
        f"scorer: {results['new']['scorer']}; peer: {args.peer_rev or 'none'}; target >= {TARGET:,.0f}/s per core in "
        f"worker batches: {'met' if met else 'NOT met'} ({batched:,.0f}/s; one by one "
        f"{new['one by one']['events_per_core_s']:,.0f}/s); embeddings "
        + (f"{emb:,.0f} events/s per core, {emb_wall:,.0f} wall (target {EMBED_TARGET:,.0f})" if emb else "not run")
        + f"; load average at start {load:.1f} on {os.cpu_count()} cores"
    )
    path = write_json(
        "monitor_throughput",
        {
            "args": vars(args),
            "scorer": results["new"]["scorer"],
            "rows": new,
            "peer": {"rev": args.peer_rev, "rows": old} if old else None,
            "runs": runs,
            "target": TARGET,
            "meets_target": met,
            "embed_target": EMBED_TARGET,
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
