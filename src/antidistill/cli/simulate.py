"""``antidistill simulate …``: a typer sub-app registered by :mod:`antidistill.cli`.

``simulate run`` builds a scenario and drives a gateway with it (in process by default, or a running one with
``--base-url``), writing the audit log and the ground truth into ``--out``; ``simulate plan`` shows what a
scenario would send without sending it; ``simulate personas`` lists the personas; ``simulate eval`` scores the
trained monitor on held-out traffic. ``--personas FILE`` (a persona file, :mod:`antidistill.simulate.persona_file`)
replaces ``--scale`` in ``run``, ``plan`` and ``eval``; ``--perturb`` perturbs the attackers' client-set knobs.
Errors are raised as :class:`~antidistill.errors.AntidistillError` (one line, exit 2 from the main CLI). The
gateway and the SDK are imported only when a command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from antidistill.cli.options import JsonOpt, print_json
from antidistill.errors import InputError

simulate_app = typer.Typer(
    help="Simulated traffic with ground truth: benign personas and distillation campaigns.", no_args_is_help=True
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every draw (the same seed gives the same traffic).")]
DaysOpt = Annotated[
    float | None, typer.Option("--days", help="Virtual duration in days (default: the scale's).", show_default=False)
]
SplitOpt = Annotated[
    str, typer.Option("--split", help="train, or heldout: parameter bands and templates that training runs never use.")
]
ScaleOpt = Annotated[str, typer.Option("--scale", help="small (seconds), default (a week, ~500 accounts) or large.")]
PersonasOpt = Annotated[
    Path | None,
    typer.Option(
        "--personas",
        help="A persona file (YAML: kinds, counts, parameter overrides; see docs/simulate.md) instead of a "
        "--scale; its own seed, days and split apply.",
        dir_okay=False,
        show_default=False,
    ),
]
PerturbOpt = Annotated[
    bool,
    typer.Option(
        "--perturb",
        help="Perturb every attacker's client-set knobs: max_tokens 256-900, reasoning demands paraphrased, "
        "timing jittered.",
    ),
]


def _scenario(
    seed: int, days: float | None, split: str, scale: str, personas: Path | None = None, perturb: bool = False
):
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from dataclasses import replace

    from antidistill.simulate.persona_file import load_persona_file
    from antidistill.simulate.scenario import Scenario

    try:
        if personas is not None:
            scenario = load_persona_file(personas)
            return replace(scenario, perturb=True) if perturb else scenario
        return Scenario.from_scale(scale, seed=seed, days=days, split=split, perturb=perturb)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _plan(scenario):
    from antidistill.simulate.persona_file import build_plan

    return build_plan(scenario)


def _counts_table(counts: dict[str, dict[str, int]], roles: dict[str, str]) -> Table:
    table = Table("persona", "role", "accounts", "requests")
    for name, c in counts.items():
        table.add_row(name, roles[name], str(c["accounts"]), str(c["requests"]))
    return table


@simulate_app.command("run")
def run(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="New directory for the audit log (in process), labels.jsonl, requests.jsonl and scenario.json.",
            file_okay=False,
        ),
    ],
    seed: SeedOpt = 0,
    days: DaysOpt = None,
    split: SplitOpt = "train",
    scale: ScaleOpt = "default",
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="Drive this running gateway instead of one in "
            "process (it must accept the client clock and "
            "trust X-Forwarded-For).",
            show_default=False,
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="ANTIDISTILL_ADMIN_TOKEN",
            help="Admin token of the --base-url gateway (or ANTIDISTILL_ADMIN_TOKEN).",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=256, help="Client threads.")] = 12,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=0,
            max=64,
            help="Driver processes (0: threads only; default: by plan size and cores).",
            show_default=False,
        ),
    ] = None,
    with_monitor: Annotated[
        bool,
        typer.Option(
            "--with-monitor",
            help="In process: run the gateway's monitor and "
            "policy enforcement during the simulation "
            "(end-to-end evaluation).",
        ),
    ] = False,
    personas: PersonasOpt = None,
    perturb: PerturbOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Simulate a population of customers and distillation campaigns against the gateway; write the truth."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.simulate.runner import run_against_gateway
    from antidistill.workflows.simulation import run_simulation

    scenario = _scenario(seed, days, split, scale, personas, perturb)
    if with_monitor and base_url is not None:
        raise InputError("--with-monitor is for the in-process gateway; a running gateway has its own settings")
    plan = _plan(scenario)
    total = len(plan.requests)
    show = err.is_terminal and not as_json
    progress_cb = None
    prog = None
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        prog = Progress(
            TextColumn("simulating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        task = prog.add_task("requests", total=total)

        def progress_cb(done: int, _total: int) -> None:
            prog.update(task, completed=done)

        prog.start()
    try:
        if base_url is None:
            result = run_simulation(
                scenario,
                out_dir,
                concurrency=concurrency,
                processes=processes,
                progress=progress_cb,
                plan=plan,
                monitor=with_monitor,
            )
        else:
            result = run_against_gateway(
                scenario,
                out_dir,
                base_url,
                admin_token or "",
                concurrency=concurrency,
                processes=processes,
                progress=progress_cb,
                plan=plan,
            )
    finally:
        if prog is not None:
            prog.stop()
    summary = {
        "out": str(result.out_dir),
        "store_url": result.store_url,
        "planned": result.planned,
        "ok": result.ok,
        "status_counts": {str(k): v for k, v in result.status_counts.items()},
        "wall_s": round(result.wall_s, 2),
        "requests_per_s": round(result.requests_per_s, 1),
        "accounts": len(result.labels),
        **plan.summary(),
    }
    if as_json:
        print_json(summary)
        return
    out.print(_counts_table(plan.counts(), {a.persona: a.role for a in plan.accounts}))
    out.print(
        f"{result.ok} of {result.planned} requests answered 200 in {result.wall_s:.1f} s "
        f"({result.requests_per_s:.0f}/s); {len(result.labels)} accounts"
    )
    if result.ok != result.planned:
        out.print(f"statuses: {summary['status_counts']}")
    out.print(f"labels:   {result.out_dir / 'labels.jsonl'}\nscenario: {result.out_dir / 'scenario.json'}")
    if result.store_url:
        out.print(f"audit log: {result.store_url}")


@simulate_app.command("plan")
def plan_cmd(
    seed: SeedOpt = 0,
    days: DaysOpt = None,
    split: SplitOpt = "train",
    scale: ScaleOpt = "default",
    personas: PersonasOpt = None,
    perturb: PerturbOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Build a scenario and show what it would send (accounts and requests per persona), without sending."""
    # the parts load when the command runs, not for --help (see antidistill.cli)

    plan = _plan(_scenario(seed, days, split, scale, personas, perturb))
    if as_json:
        print_json(
            {
                "summary": plan.summary(),
                "counts": plan.counts(),
                "releases": plan.releases,
                "seed": plan.scenario.seed,
                "split": plan.scenario.split,
                "perturb": plan.scenario.perturb,
            }
        )
        return
    out.print(_counts_table(plan.counts(), {a.persona: a.role for a in plan.accounts}))
    s = plan.summary()
    out.print(
        f"{s['accounts']} accounts ({s['attacker_accounts']} attackers), {s['requests']} requests "
        f"({s['attacker_requests']} from attackers)"
    )


@simulate_app.command("personas")
def personas(as_json: JsonOpt = False) -> None:
    """List the personas: name, role and what they do."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.simulate.personas import PERSONAS

    rows = [{"name": n, "role": c.role, "summary": c.summary} for n, c in PERSONAS.items()]
    if as_json:
        print_json(rows)
        return
    table = Table("persona", "role", "what it does")
    for r in rows:
        table.add_row(r["name"], r["role"], r["summary"])
    out.print(table)


@simulate_app.command("eval")
def simulate_eval(
    seed: Annotated[
        int, typer.Option("--seed", help="Held-out seed (never one the monitor was trained or calibrated on).")
    ] = 1001,
    scale: Annotated[str, typer.Option("--scale", help="small, default or large.")] = "default",
    days: Annotated[
        float | None, typer.Option("--days", help="Virtual days (default: the scale's).", show_default=False)
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Keep the simulation here (default: a temporary "
            "directory); if it already holds a finished "
            "held-out simulation of this seed, scan that again.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    embeddings: Annotated[
        bool | None,
        typer.Option(
            "--embeddings/--no-embeddings", help="Force embeddings on or off (default: as trained).", show_default=False
        ),
    ] = None,
    personas: PersonasOpt = None,
    perturb: PerturbOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """Evaluate the trained monitor on held-out simulated traffic driven through the real gateway."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.settings import get_settings
    from antidistill.workflows.monitor_eval import heldout_eval

    if personas is not None or perturb:
        report = _eval_scenario(
            _scenario(seed, days, "heldout", scale, personas, perturb), out_dir, embeddings, show=not as_json
        )
    else:
        report = heldout_eval(get_settings(), seed, scale=scale, days=days, out_dir=out_dir, embeddings=embeddings)
    if as_json:
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    _print_report(report)


def _eval_scenario(scenario: Any, out_dir: Path | None, embeddings: bool | None, *, show: bool) -> dict[str, Any]:
    """A persona file's (or a perturbed) scenario driven through the in-process gateway, then scanned and scored
    as ``simulate eval`` scores a scale (:func:`~antidistill.workflows.monitor_eval.evaluate_run`)."""
    import tempfile
    import time

    from antidistill.settings import get_settings
    from antidistill.workflows.monitor_eval import check_heldout, evaluate_run
    from antidistill.workflows.simulation import run_simulation

    settings = get_settings()
    check_heldout(scenario.seed, settings)
    plan = _plan(scenario)
    with tempfile.TemporaryDirectory(prefix="antidistill-eval-") as tmp:
        target = out_dir if out_dir is not None else Path(tmp) / "sim"
        t0 = time.perf_counter()
        if show:
            err.print(f"simulating {len(plan.requests)} requests of {len(plan.accounts)} accounts ...")
        sim = run_simulation(scenario, target, plan=plan)
        report = evaluate_run(target, settings, embeddings=embeddings)
    report["simulation"] = {
        "requests": sim.planned,
        "ok": sim.ok,
        "wall_s": round(time.perf_counter() - t0, 1),
        "perturb": scenario.perturb,
        "counts": dict(scenario.counts),
        "overrides": {k: dict(v) for k, v in scenario.overrides.items()},
    }
    return report


def _print_report(report: dict[str, Any]) -> None:
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, soft_wrap=True)
    table = Table("persona", "role", "accounts", "detected", "rate (95% CI)", "median req. to alert")
    for name, p in report["personas"].items():
        ci = p["detection_ci95"]
        rate = f"{p['detection_rate']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        med = "-" if p["median_requests_to_alert"] is None else f"{p['median_requests_to_alert']:.0f}"
        table.add_row(name, p["role"], str(p["accounts"]), str(p["detected"]), rate, med)
    out.print(table)
    f = report["benign_fpr"]["alert"]
    ci = f["ci95"] or [0, 0]
    out.print(
        f"benign per-account FPR at alert: {f['false_positives']}/{f['accounts']} = {f['rate']:.4f} "
        f"(95% CI {ci[0]:.4f}-{ci[1]:.4f})"
    )
    acts = report.get("actions")
    if acts:
        for what in ("blocked", "held"):
            b = acts["benign"][what]
            ci = b["wilson95"] or [0, 0]
            out.print(
                f"benign accounts {what}{' (block or review)' if what == 'held' else ''} under policy "
                f"{acts['policy']!r}: {b['accounts']}/{b['of']} = {b['rate'] or 0:.4f} "
                f"(Wilson 95% CI {ci[0]:.4f}-{ci[1]:.4f})"
            )
        a = acts["attacker"]
        out.print(
            f"attacker accounts blocked {a['blocked']['accounts']}/{a['blocked']['of']}, held (block or review) "
            f"{a['held']['accounts']}/{a['held']['of']}"
        )
    for h in report["hydra_cluster_recall"]:
        out.print(
            f"hydra {h['campaign']}: {h['linked']}/{h['active_members']} active members linked "
            f"({h['recall']:.3f}); cluster of {h['cluster_size']}, linked by {', '.join(h['linked_by'])}"
        )
    out.print("verdict: " + ", ".join(f"{k}={v}" for k, v in report["verdict"].items()))
