"""Leave-one-persona-out: for every attacker kind X, train the monitor without X and test it on held-out traffic
that holds X.

For each left-out kind the monitor is trained (``antidistill monitor train``'s workflow with
``exclude_kinds=(X,)``: no account of X in any training or calibration simulation) on training-split
simulations, then a held-out simulation (split ``heldout``: parameter bands and template halves that training
never draws from, seed >= 1028) holding ``--per-kind`` instances of every attacker kind beside the scale's benign
population is replayed through it, in process (:func:`antidistill.monitor.train.plan_events`: the events the
gateway's audit log would hold). Reported per left-out kind: the share of X's accounts that reached ``alert``, and
that the shipped policy holds (blocks, or holds for review: every request refused) and blocks (a block needs two
independent families of evidence), and the benign accounts' alert, hold and block rates, each with a Wilson 95%
interval. Two reference rows: the monitor trained on every kind, and the rules alone.

``--perturb`` replays a second held-out simulation of the same seed in which every attacker's client-set knobs
are perturbed (``max_tokens`` 256-900, stock reasoning demands paraphrased, timing jittered;
:func:`antidistill.simulate.scenario.perturb_requests`) and adds its recall columns.

Run: ``.venv/bin/python benchmarks/monitor_lopo.py --perturb`` (about 5 minutes on one core; larger:
``--train-seeds 101,102,103,104 --train-days 3 --test-days 4 --per-kind 8``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from antidistill.monitor.api import level_rank
from antidistill.monitor.pipeline import Monitor
from antidistill.monitor.policy import Policy
from antidistill.monitor.score import Scorer
from antidistill.monitor.train import TRAIN_EXTRA, plan_events, releases_of
from antidistill.settings import Settings
from antidistill.simulate.personas import ATTACKERS, BENIGN
from antidistill.simulate.scenario import Plan, Scenario
from antidistill.workflows.monitor_eval import action_summary, proportion
from antidistill.workflows.monitor_training import train

#: attacker kinds run as campaigns of many accounts: one instance already holds dozens of accounts
CAMPAIGNS = ("hydra", "conversation_farm")
#: the first held-out seed (every seed from here on is never used for training or calibration)
FIRST_HELDOUT_SEED = 1028


def heldout_scenario(seed: int, days: float, per_kind: int, campaigns: int, perturb: bool) -> Scenario:
    """The held-out scenario: the default scale's benign population, ``per_kind`` instances of every
    single-account attacker kind and ``campaigns`` of every multi-account one."""
    base = Scenario.from_scale("default", seed=seed, days=days, split="heldout", perturb=perturb)
    counts = dict(base.counts)
    for kind in ATTACKERS:
        counts[kind] = campaigns if kind in CAMPAIGNS else per_kind
    return Scenario(
        seed=seed,
        days=days,
        counts=counts,
        split="heldout",
        hydra_members=(20, 60),
        hydra_daily_budget=base.hydra_daily_budget,
        perturb=perturb,
    )


def replay(plan: Plan, scorer: Scorer) -> tuple[dict[str, str], dict[str, str]]:
    """Every account's highest level, and the strictest action the shipped policy takes on it, when ``plan``'s
    traffic is replayed through a monitor with ``scorer``."""
    mon = Monitor(scorer, releases=releases_of(plan))
    changes = mon.observe_many(plan_events(plan)) + mon.flush()
    labels = [{"account_id": a.key, "role": a.role, "persona": a.persona} for a in plan.accounts]
    action, _ = action_summary(labels, changes, Policy.default())
    return {a.key: mon.level(a.key) for a in plan.accounts}, action


def rates(plan: Plan, levels: dict[str, str], actions: dict[str, str], kind: str | None) -> dict[str, Any]:
    """Recall of ``kind`` at alert and severe and under the policy (blocked; held: blocked or held for review),
    and the same for the benign accounts, each with its Wilson 95% interval."""
    out: dict[str, Any] = {}
    groups = {"benign": [a.key for a in plan.accounts if a.role == "benign"]}
    if kind is not None:
        groups["attacker"] = [a.key for a in plan.accounts if a.persona == kind]
    for group, keys in groups.items():
        for level in ("alert", "severe"):
            reached = sum(level_rank(levels[key]) >= level_rank(level) for key in keys)
            out[f"{group}_{level}"] = proportion(reached, len(keys))
        out[f"{group}_block"] = proportion(sum(actions.get(key) == "block" for key in keys), len(keys))
        out[f"{group}_held"] = proportion(sum(actions.get(key) in ("block", "review") for key in keys), len(keys))
    if kind is not None:
        out["attacker_accounts_by_level"] = {
            lv: sum(levels[a.key] == lv for a in plan.accounts if a.persona == kind)
            for lv in ("none", "watch", "alert", "severe")
        }
    out["benign_flagged"] = sorted(
        {a.persona for a in plan.accounts if a.role == "benign" and level_rank(levels[a.key]) >= level_rank("alert")}
    )
    return out


def _fmt(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "-"
    lo, hi = r["wilson95"]
    return f"{r['accounts']}/{r['of']} {r['rate']:.2f} [{lo:.2f},{hi:.2f}]"


def print_tables(results: list[dict[str, Any]], kinds: list[str], perturb: bool) -> None:
    """The leave-one-out table, then one table per reference row."""
    headers = ["left out", "recall@alert", "held", "blocked"]
    if perturb:
        headers += ["perturbed @alert", "perturbed held"]
    headers += ["benign alert", "benign held", "benign block"]
    rows = []
    for e in results:
        if "by_kind" in e["plain"]:
            continue
        pl = e["plain"]
        row = [e["left_out"], _fmt(pl["attacker_alert"]), _fmt(pl["attacker_held"]), _fmt(pl["attacker_block"])]
        if perturb:
            row += [_fmt(e["perturbed"]["attacker_alert"]), _fmt(e["perturbed"]["attacker_held"])]
        row += [_fmt(pl["benign_alert"]), _fmt(pl["benign_held"]), _fmt(pl["benign_block"])]
        rows.append(row)
    print("\nleave-one-persona-out (recall of the left-out kind; Wilson 95% intervals)")
    print(table(headers, rows))
    for e in results:
        if "by_kind" not in e["plain"]:
            continue
        ref_rows = []
        for k in kinds:
            bk = e["plain"]["by_kind"][k]
            row = [k, _fmt(bk["attacker_alert"]), _fmt(bk["attacker_held"]), _fmt(bk["attacker_block"])]
            if perturb:
                pk = e["perturbed"]["by_kind"][k]
                row += [_fmt(pk["attacker_alert"]), _fmt(pk["attacker_held"])]
            ref_rows.append(row)
        print(
            f"\nreference {e['left_out']}: benign alert {_fmt(e['plain']['benign_alert'])}, "
            f"benign held {_fmt(e['plain']['benign_held'])}, benign block {_fmt(e['plain']['benign_block'])}"
        )
        print(table(["kind", *headers[1:-3]], ref_rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default=",".join(ATTACKERS), help="attacker kinds to leave out, comma-separated")
    ap.add_argument("--train-seeds", default="101,102,103", help="training seeds (split train)")
    ap.add_argument("--calibration-seeds", default="201,202", help="calibration seeds (split train)")
    ap.add_argument("--train-scale", default="default", help="simulator scale of the training simulations")
    ap.add_argument("--train-days", type=float, default=1.0, help="virtual days per training simulation")
    ap.add_argument("--test-seed", type=int, default=FIRST_HELDOUT_SEED, help="held-out seed (>= 1028)")
    ap.add_argument("--test-days", type=float, default=2.0, help="virtual days of the held-out simulation")
    ap.add_argument("--per-kind", type=int, default=4, help="instances of each single-account attacker kind")
    ap.add_argument("--campaigns", type=int, default=1, help="instances of each multi-account campaign kind")
    ap.add_argument("--perturb", action="store_true", help="also test on the perturbed held-out simulation")
    ap.add_argument(
        "--no-train-perturbed",
        dest="train_perturbed",
        action="store_false",
        help="train without perturbed attackers (monitor train --no-perturbed; the default perturbs every second "
        "training seed)",
    )
    ap.add_argument("--no-reference", action="store_true", help="skip the trained-on-everything and rules rows")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(ATTACKERS))
    if unknown:
        print(f"unknown attacker kind(s): {', '.join(unknown)} (known: {', '.join(ATTACKERS)})", file=sys.stderr)
        return 2
    if args.test_seed < FIRST_HELDOUT_SEED:
        print(f"--test-seed must be >= {FIRST_HELDOUT_SEED} (a held-out seed)", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.train_seeds.split(",")]
    cal = [int(s) for s in args.calibration_seeds.split(",")]
    # the small scale lacks the newer kinds; every training run holds one of each kind it is not told to leave out
    extra = {**TRAIN_EXTRA, **{k: 1 for k in (*ATTACKERS, *BENIGN) if k not in TRAIN_EXTRA and k != "described"}}

    t0 = time.perf_counter()
    shape = (args.test_seed, args.test_days, args.per_kind, args.campaigns)
    plans = {"plain": heldout_scenario(*shape, False).build()}
    if args.perturb:
        plans["perturbed"] = heldout_scenario(*shape, True).build()
    test_info = {name: {**p.summary(), "persona_counts": p.counts()} for name, p in plans.items()}
    print(
        f"held-out seed {args.test_seed}: {len(plans['plain'].requests)} requests, "
        f"{len(plans['plain'].accounts)} accounts; training on seeds {seeds}, calibrating on {cal}",
        flush=True,
    )

    runs: list[tuple[str, tuple[str, ...]]] = [(k, (k,)) for k in kinds]
    if not args.no_reference:
        runs = [("(none: trained on all)", ()), *runs, ("(rules only)", ("*rules*",))]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="monitor-lopo-") as tmp:
        for label, excluded in runs:
            t1 = time.perf_counter()
            if excluded == ("*rules*",):
                scorer, manifest = Scorer.rules_only(), None
            else:
                settings = Settings(env="test", data_dir=Path(tmp) / (label.strip("()").split(":")[0] or "all"))
                manifest = train(
                    settings,
                    seeds=seeds,
                    calibration_seeds=cal,
                    scale=args.train_scale,
                    days=args.train_days,
                    extra_personas=extra,
                    exclude_kinds=excluded,
                    perturbed=args.train_perturbed,
                )
                scorer = Monitor.load(settings).scorer
            entry: dict[str, Any] = {
                "left_out": label,
                "excluded_kinds": list(excluded) if manifest is not None else None,
                "thresholds": manifest["thresholds"] if manifest else scorer.thresholds,
                "train_rows": manifest["rows"] if manifest else 0,
            }
            for name, plan in plans.items():
                levels, actions = replay(plan, scorer)
                if excluded and manifest is not None:
                    entry[name] = rates(plan, levels, actions, excluded[0])
                else:  # the reference rows: recall of every attacker kind
                    entry[name] = {
                        "by_kind": {k: rates(plan, levels, actions, k) for k in kinds},
                        **rates(plan, levels, actions, None),
                    }
            entry["seconds"] = round(time.perf_counter() - t1, 1)
            results.append(entry)
            print(f"  {label}: {entry['seconds']:.0f} s", flush=True)

    print_tables(results, kinds, args.perturb)
    wall = time.perf_counter() - t0
    print(f"\n{wall:.0f} s in all")
    path = write_json(
        "monitor_lopo",
        {"params": vars(args), "train_extra": extra, "test": test_info, "results": results, "wall_s": round(wall, 1)},
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
