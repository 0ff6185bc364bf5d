"""``antidistill monitor …``: alerts, batch scans of the audit log, clearing accounts, checking a policy file.

A typer sub-app registered by :mod:`antidistill.cli`. Errors are :class:`~antidistill.errors.AntidistillError`
(one line, exit 2); the store and the monitor are imported only when a command runs.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

from antidistill.cli.options import DbOpt, JsonOpt, print_json
from antidistill.errors import InputError

if TYPE_CHECKING:
    from antidistill.monitor.actions import MonitorLike, Outcome
    from antidistill.store.api import Alert
    from antidistill.store.sql import Store

monitor_app = typer.Typer(
    help="The monitor: alerts, batch scans of the audit log, policy actions.", no_args_is_help=True
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="Policy file (default: ANTIDISTILL_POLICY_FILE, else the shipped policy).",
        show_default=False,
        dir_okay=False,
    ),
]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _settings():
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.settings import get_settings

    return get_settings()


def _open(database_url: str | None) -> Store:
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.store.sql import Store

    return Store.open(database_url, _settings())


def _policy(path: Path | None):
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.monitor.policy import Policy

    return Policy.load(path if path is not None else _settings().policy_file)


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """``--since``: an ISO-8601 time (UTC unless it says otherwise) or a duration back from now (``30m``, ``2h``,
    ``7d``, ``1w``).

    >>> parse_since("2h", datetime(2025, 1, 1, 12, tzinfo=UTC)).hour
    10
    """
    if value is None:
        return None
    m = _DURATION.match(value)
    if m:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"--since must be an ISO-8601 time or a duration like 30m, 2h, 7d; got {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _alert_dict(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "account_id": a.account_id,
        "cluster_id": a.cluster_id,
        "risk": a.risk,
        "level": a.level,
        "reasons": list(a.reasons),
        "scores": a.scores,
        "at": a.at.isoformat(),
        "action": a.action,
        "clause": a.clause,
        "created_at": a.created_at.isoformat(),
        "audit_seq": a.audit_seq,
    }


def _reasons(reasons: Any, n: int = 3) -> str:
    items = list(reasons)
    more = f" (+{len(items) - n})" if len(items) > n else ""
    return "; ".join(items[:n]) + more


@monitor_app.command("alerts")
def alerts(
    as_json: JsonOpt = False,
    account: Annotated[str | None, typer.Option("--account", help="Only this account's alerts.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only alerts since: an ISO time or 30m, 2h, 7d.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="The newest N alerts.")] = None,
    database_url: DbOpt = None,
) -> None:
    """The monitor's alerts, oldest first: account, cluster, risk, level, reasons and the action taken."""
    start = parse_since(since)
    with _open(database_url) as store:
        items = store.list_alerts(account_id=account, since=start, limit=limit)
    if as_json:
        print_json([_alert_dict(a) for a in items])
        return
    if not items:
        out.print("no alerts")
        return
    table = Table(
        Column("time", no_wrap=True),
        Column("account", no_wrap=True),
        Column("cluster", overflow="fold"),
        Column("risk", justify="right"),
        "level",
        Column("action", no_wrap=True),
        Column("reasons", overflow="fold"),
        box=box.SIMPLE_HEAD,
    )
    for a in items:
        action = a.action if a.action == "none" else f"{a.action} ({a.clause})" if a.clause else a.action
        table.add_row(
            a.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            a.account_id,
            a.cluster_id or "-",
            f"{a.risk:.2f}",
            a.level,
            action,
            _reasons(a.reasons),
        )
    out.print(table)


def _monitor_parts(settings: Any) -> tuple[MonitorLike, Any]:
    """The monitor and its batch entry point (``antidistill.monitor.pipeline``)."""
    try:
        # the parts load when the command runs, not for --help (see antidistill.cli)
        from antidistill.monitor.pipeline import Monitor, scan_records
    except ImportError as exc:
        raise InputError(f"the monitor cannot be loaded: {exc}") from None
    return Monitor.load(settings), scan_records


def strongest(assessments: Any) -> list[Any]:
    """One assessment per account: its highest level (the latest at that level), in first-seen order. A batch
    scan acts once per account on where the whole log leaves it, not once per rise along the way."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.monitor.api import level_rank

    best: dict[str, Any] = {}
    for a in assessments:
        cur = best.get(a.account_id)
        if cur is None or level_rank(a.level) >= level_rank(cur.level):
            best[a.account_id] = a
    return list(best.values())


def _outcome_dict(o: Outcome) -> dict[str, Any]:
    d = o.assessment.to_dict()
    d.update(
        decision=o.decision.action if o.decision else None,
        clause=o.decision.clause.id if o.decision else None,
        applied=o.applied,
        action=o.action,
        alert_id=o.alert.id if o.alert else None,
        audit_seq=o.audit_seq,
    )
    return d


@monitor_app.command("scan")
def scan(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what the policy would do; write nothing.")
    ] = False,
    policy_file: PolicyOpt = None,
    as_json: JsonOpt = False,
    database_url: DbOpt = None,
) -> None:
    """Score the whole audit log in batch and apply the policy: alerts, enforcement and audit records.

    Action records already in the log are skipped; actions only escalate (an account already blocked stays so,
    one an admin cleared is acted on again only if its level rose above the level it was cleared at).
    """
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.monitor.actions import Enforcer, exchange_records

    settings = _settings()
    policy = _policy(policy_file)
    with _open(database_url) as store:
        accounts = {a.id: dict(a.metadata or {}) for a in store.list_accounts()}
        monitor, scan_records = _monitor_parts(settings)
        with err.status("Scanning the audit log…"):
            changes = list(scan_records(exchange_records(store.iter_audit()), accounts, monitor))
        assessments = strongest(changes)
        outcomes = Enforcer(store, policy).apply_all(assessments, dry_run=dry_run)
    flagged = [o for o in outcomes if o.assessment.level != "none"]
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "policy": policy.name,
                "accounts": len(accounts),
                "assessments": [_outcome_dict(o) for o in flagged],
            }
        )
        return
    verb = "would take" if dry_run else "took"
    if flagged:
        table = Table(
            Column("account", no_wrap=True),
            Column("cluster", overflow="fold"),
            Column("risk", justify="right"),
            "level",
            Column("action", no_wrap=True),
            Column("reasons", overflow="fold"),
            box=box.SIMPLE_HEAD,
        )
        for o in sorted(flagged, key=lambda o: -o.assessment.risk):
            a = o.assessment
            if o.applied:
                action = f"{o.decision.action} ({o.decision.clause.id})"
            else:
                action = f"- (already {o.decision.action} or stricter)" if o.decision else "-"
            table.add_row(a.account_id, a.cluster_id or "-", f"{a.risk:.2f}", a.level, action, _reasons(a.reasons))
        out.print(table)
    applied = sum(o.applied for o in outcomes)
    out.print(
        f"{len(accounts)} accounts, {len(flagged)} above 'none'; {verb} {applied} action"
        f"{'s' if applied != 1 else ''} under policy {policy.name!r}",
        markup=False,
    )


@monitor_app.command("run")
def run(
    policy_file: PolicyOpt = None,
    database_url: DbOpt = None,
    stream_url: Annotated[
        str | None,
        typer.Option(
            "--stream-url",
            help="Redis of the stream (default: ANTIDISTILL_MONITOR_STREAM_URL, else ANTIDISTILL_REDIS_URL).",
            show_default=False,
        ),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option("--stream", help="Stream key (default: ANTIDISTILL_MONITOR_STREAM).", show_default=False),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", help="Consumer group (default: ANTIDISTILL_MONITOR_GROUP).", show_default=False),
    ] = None,
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="Consumer name (default: host-pid).", show_default=False)
    ] = None,
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="Stop once the stream is consumed (batch runs, measurements).")
    ] = False,
) -> None:
    """The monitor as a service: score the gateways' exchange stream and enforce the policy for every replica.

    Gateways publish with ANTIDISTILL_MONITOR_MODE=stream. Entries are acknowledged after their effects are
    committed; after a restart the state is rebuilt from the stream and pending entries are processed again, their
    effects at most once. Runs until SIGTERM or Ctrl-C.
    """
    # the parts load when the command runs, not for --help (see antidistill.cli)
    import gc
    import signal
    import time

    from antidistill.errors import ConfigError
    from antidistill.monitor.actions import Enforcer
    from antidistill.monitor.stream import StreamMonitor, default_consumer, redis_client, safe_url

    settings = _settings()
    url = stream_url or settings.stream_url
    if not url:
        raise ConfigError("monitor run needs the stream's Redis: --stream-url or ANTIDISTILL_MONITOR_STREAM_URL")
    policy = _policy(policy_file)
    client = redis_client(url)
    try:
        client.ping()
    except Exception as exc:
        raise ConfigError(
            f"cannot reach the monitor stream's Redis at {safe_url(url)} ({type(exc).__name__})"
        ) from None
    with _open(database_url) as store:
        monitor, _ = _monitor_parts(settings)
        service = StreamMonitor(
            client,
            stream or settings.monitor_stream,
            group or settings.monitor_group,
            consumer or default_consumer(),
            monitor,
            Enforcer(store, policy),
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: service.stop())
        service.acquire()  # the group's one consumer (a second waits for the lease, then refuses)
        err.print(f"monitor consuming {service.stream} as {service.group}/{service.consumer}", markup=False)
        # the code and the model loaded so far live as long as the process: out of the collector's sweeps, which
        # otherwise walk them again at every full collection while the monitor's state grows
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        stats = service.run(exit_when_idle=exit_when_idle)
        took = time.perf_counter() - started
    client.close()
    out.print(
        f"scored {stats.events} events ({stats.replayed} replayed, {stats.malformed} malformed) in {took:.1f} s "
        f"({stats.events / max(took, 1e-9):.0f} events/s); {stats.actions} actions, {stats.alerts} alerts, "
        f"{stats.duplicates} repeated effects skipped",
        markup=False,
    )


@monitor_app.command("clear")
def clear(
    account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")],
    policy_file: PolicyOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Lift an account's flag, throttle, review or block (recorded in the audit log, set_by admin).

    Gateways pick it up within ANTIDISTILL_ENFORCEMENT_TTL seconds.
    """
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.monitor.actions import Enforcer
    from antidistill.store.api import NotFoundError

    policy = _policy(policy_file)
    with _open(database_url) as store:
        if store.get_account(account_id) is None:
            raise NotFoundError(f"account {account_id} not found")
        lifted = Enforcer(store, policy).clear(account_id, "admin")
    if lifted is None:
        out.print(f"account {account_id}: nothing to clear", markup=False)
    else:
        out.print(
            f"account {account_id}: {lifted.action} cleared (was set at level {lifted.level} under clause "
            f"{lifted.clause})",
            markup=False,
        )


@monitor_app.command("enforcements")
def enforcements(
    show_all: Annotated[bool, typer.Option("--all", help="Include cleared and lapsed states.")] = False,
    as_json: JsonOpt = False,
    database_url: DbOpt = None,
) -> None:
    """Accounts under a policy action (flagged, throttled, under review, blocked)."""
    with _open(database_url) as store:
        items = store.list_enforcements(active_only=not show_all)
    if as_json:
        print_json(
            [
                {**e.__dict__, "since": e.since.isoformat(), "until": e.until.isoformat() if e.until else None}
                for e in items
            ]
        )
        return
    if not items:
        out.print("no account is under a policy action")
        return
    table = Table(
        Column("account", no_wrap=True),
        "action",
        "level",
        "clause",
        Column("since", no_wrap=True),
        "limits",
        "by",
        Column("reason", overflow="fold"),
        box=box.SIMPLE_HEAD,
    )
    for e in items:
        limits = f"{e.rpm or '-'} rpm / {e.tpm or '-'} tpm" if e.action == "throttle" else ""
        table.add_row(
            e.account_id,
            e.action,
            e.level,
            e.clause or "-",
            e.since.strftime("%Y-%m-%d %H:%M:%S"),
            limits,
            e.set_by,
            e.reason,
        )
    out.print(table)


@monitor_app.command("policy")
def policy(
    path: Annotated[
        Path | None,
        typer.Argument(help="Policy file to check (default: the configured one).", dir_okay=False, show_default=False),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a policy file and show its clauses and rules."""
    p = _policy(path)
    if as_json:
        print_json(p.to_dict())
        return
    out.print(
        f"policy {p.name!r} ({p.source or 'built in'}): {len(p.clauses)} clauses, {len(p.rules)} rules", markup=False
    )
    for r in p.rules:
        scope = f" in a cluster of >= {r.min_cluster_size}" if r.scope == "cluster" else ""
        limits = f" to {r.rpm or '-'} rpm / {r.tpm or '-'} tpm" if "throttle" in (r.action, r.otherwise) else ""
        fams = f" on >= {r.min_families} evidence families, else {r.otherwise}" if r.min_families else ""
        out.print(
            f"  {r.level}{scope} -> {r.action}{fams}{limits} under clause {r.clause} ({p.clauses[r.clause].title})",
            markup=False,
        )


def _seeds(value: str, name: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.replace(" ", "").split(",") if s]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got {value!r}") from None
    if not seeds:
        raise InputError(f"{name} must name at least one seed")
    return seeds


@monitor_app.command("train")
def monitor_train(
    seeds: Annotated[
        str, typer.Option("--seeds", help="Training seeds, comma-separated (split train).")
    ] = "101,102,103,104,105,106,107,108",
    calibration_seeds: Annotated[
        str,
        typer.Option(
            "--calibration-seeds", help="Seeds for the thresholds, comma-separated (split train, not among --seeds)."
        ),
    ] = "201,202,203",
    scale: Annotated[str, typer.Option("--scale", help="Simulator scale: small, default or large.")] = "default",
    days: Annotated[
        float | None,
        typer.Option("--days", help="Virtual days per simulation (default: the scale's).", show_default=False),
    ] = None,
    embeddings: Annotated[
        bool, typer.Option("--embeddings", help="Train with sentence-embedding topic features (slower).")
    ] = False,
    exclude_kind: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-kind",
            help="Leave this persona kind out of the training and calibration traffic (repeatable); "
            "for leave-one-persona-out evaluation.",
            show_default=False,
        ),
    ] = None,
    perturbed: Annotated[
        bool,
        typer.Option(
            "--perturbed/--no-perturbed",
            help="Simulate every second training seed with the attackers' client-set knobs perturbed (max_tokens, "
            "reasoning demands reworded, timing jittered), so no verdict is learnt from a knob the client sets.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Train the monitor on simulated training traffic, calibrate its thresholds on benign traffic, and save it
    under DATA_DIR/monitor (model.joblib + manifest.json)."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.settings import get_settings  # lazy, like every part here (module docstring)
    from antidistill.workflows.monitor_training import train

    settings = get_settings()
    try:
        manifest = train(
            settings,
            seeds=_seeds(seeds, "--seeds"),
            calibration_seeds=_seeds(calibration_seeds, "--calibration-seeds"),
            scale=scale,
            days=days,
            embeddings=embeddings,
            exclude_kinds=tuple(exclude_kind or ()),
            perturbed=perturbed,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(manifest, default=str) + "\n")
        return
    t = manifest["thresholds"]
    out.print(
        f"trained on seeds {manifest['train_seeds']} ({manifest['rows']} rows, {manifest['positive_rows']} "
        f"attacker), calibrated on {manifest['calibration_seeds']} ({manifest['calibration_benign_accounts']} "
        f"benign accounts) in {manifest['seconds']['total']:.0f} s"
    )
    out.print(
        f"thresholds: watch {t['watch']:.3f}, alert {t['alert']:.3f}, severe {t['severe']:.3f} "
        f"(targets {manifest['targets']})"
    )
    if manifest.get("excluded_kinds"):
        out.print(f"left out of training and calibration: {', '.join(manifest['excluded_kinds'])}")
    out.print(f"saved to {settings.data_dir / 'monitor'}")
