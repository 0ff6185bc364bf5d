"""cot_share (share of an account's window demanding the reasoning) by persona, from a simulation's audit log.

Reads the output directory of ``antidistill simulate run --out DIR`` (its SQLite audit log and ``labels.jsonl``),
turns every audited exchange into the monitor's event, computes each account's features with
:func:`antidistill.monitor.features.batch_features` and prints the mean and maximum ``cot_share`` per role and
persona. It measures whichever antidistill is importable, so running it with ``PYTHONPATH`` pointing at an older
source tree gives the figures before a change on the very same traffic.

Run::

    antidistill simulate run --scale small --seed 1031 --split heldout --out /tmp/sim
    .venv/bin/python benchmarks/cot_share_by_persona.py /tmp/sim
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sim_dir", help="the --out directory of `antidistill simulate run`")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import antidistill
    from antidistill.monitor.api import ExchangeEvent
    from antidistill.monitor.features import INDEX, batch_features
    from antidistill.store.sql import Store

    sim = Path(args.sim_dir)
    labels = [json.loads(line) for line in (sim / "labels.jsonl").read_text(encoding="utf-8").splitlines() if line]
    who = {lab["account_id"]: (lab["role"], lab["persona"]) for lab in labels}
    store = Store.open(f"sqlite:///{sim / 'antidistill.db'}")
    events = [
        ExchangeEvent.from_record(r, None) for r in store.iter_records() if not r.is_pending and r.account_id in who
    ]
    shares: dict[tuple[str, str], list[float]] = defaultdict(list)
    for account, x in batch_features(events).items():
        shares[who[account]].append(float(x[INDEX["cot_share"]]))
    rows = {
        f"{role}:{persona}": {"accounts": len(v), "mean": statistics.mean(v), "max": max(v)}
        for (role, persona), v in sorted(shares.items())
    }
    source = str(Path(antidistill.__file__).resolve().parent)
    print(f"{len(events):,} exchanges from {sim}; antidistill from {source}")
    print(
        table(
            ["role:persona", "accounts", "mean cot_share", "max cot_share"],
            [[k, v["accounts"], v["mean"], v["max"]] for k, v in rows.items()],
        )
    )
    path = write_json("cot_share_by_persona", {"sim_dir": str(sim), "antidistill": source, "rows": rows}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
