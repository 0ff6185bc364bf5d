"""Stage 7, Watch: the monitor and the policy, live.

The monitor is trained on simulated training traffic (the train split), then held-out traffic (benign customers
and distillation campaigns, with ground truth; other seeds, other parameter bands) goes through the real gateway
with the monitor and the shipped policy on, and the policy actions are shown as they land. Then, per persona:
who reached ``alert``, who was throttled or blocked, and the checks: every campaign caught, no benign account
blocked, an attacker throttled then refused (blocked, or held for review: the shipped policy blocks only on two
independent families of evidence), a refused account refused live with the clause, the audit log.

The helpers at the top are pure and tested on their own.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI, PermissionDeniedError

from antidistill.demo.checks import Check
from antidistill.demo.context import DemoContext, Screen, throwaway_settings
from antidistill.gateway import create_app
from antidistill.gateway.server import BackgroundServer
from antidistill.models.fake import FakeBackend
from antidistill.monitor.actions import is_action_record
from antidistill.settings import Settings
from antidistill.simulate import Scenario
from antidistill.simulate.runner import SimulationResult
from antidistill.simulate.scenario import Plan
from antidistill.store.api import VerifyResult, is_pending_record
from antidistill.store.sql import Store
from antidistill.workflows.monitor_training import train
from antidistill.workflows.simulation import run_simulation

LEVEL_RANK = {"none": 0, "watch": 1, "alert": 2, "severe": 3}
#: held-out traffic of the Watch stage; the monitor is trained on the train split (other seeds, other bands)
WATCH_TRAIN_SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)
WATCH_CALIBRATION_SEEDS = (9, 10)
WATCH_HELDOUT_SEED = 102
#: client threads of the held-out traffic
CONCURRENCY = 12


# ---- pure helpers (tested without a model) ----------------------------------------------------------------
def action_history(alerts: Iterable[Any]) -> dict[str, list[str]]:
    """Account id -> the actions taken on it, in order (alerts whose action is ``none`` skipped)."""
    out: dict[str, list[str]] = defaultdict(list)
    for a in sorted(alerts, key=lambda a: a.created_at):
        if a.action != "none":
            out[a.account_id].append(a.action)
    return dict(out)


def max_levels(alerts: Iterable[Any]) -> dict[str, str]:
    """Account id -> the highest level any alert of it reached."""
    out: dict[str, str] = {}
    for a in alerts:
        if LEVEL_RANK.get(a.level, 0) > LEVEL_RANK.get(out.get(a.account_id, "none"), 0):
            out[a.account_id] = a.level
    return out


#: the actions that refuse every request (403): a block, and a hold for review (one family of evidence)
REFUSING = ("block", "review")


def escalated(actions: Sequence[str], first: str = "throttle", then: str | Sequence[str] = "block") -> bool:
    """Whether ``first`` was taken and ``then`` (or one of them) later."""
    later = actions[actions.index(first) + 1 :] if first in actions else []
    return any(a in ((then,) if isinstance(then, str) else tuple(then)) for a in later)


def first_status(requests: Sequence[Mapping[str, Any]], account_id: str, status: int) -> int | None:
    """The 1-based number, among the account's requests in order, of the first one answered ``status``."""
    n = 0
    for r in requests:
        if r.get("account_id") != account_id:
            continue
        n += 1
        if r.get("status") == status:
            return n
    return None


def action_points(records: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    """Account id -> ``(action, exchanges of the account logged before it)`` for each policy action, in log order:
    after which of its requests each action landed."""
    seen: Counter[str] = Counter()
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in records:
        aid = str(r.get("account_id", ""))
        if str(r.get("endpoint", "")).startswith("monitor:"):
            req = r.get("request")
            req = req if isinstance(req, Mapping) else {}
            out[aid].append((str(req.get("action", "?")), seen[aid]))
        elif not is_pending_record(r):
            seen[aid] += 1
    return dict(out)


@dataclass(frozen=True)
class PersonaRow:
    """One persona of the held-out traffic: its accounts, how many reached ``alert`` or worse, were throttled,
    blocked (or held for review), and the requests refused 429 / 403."""

    persona: str
    role: str
    accounts: int
    reached_alert: int
    throttled: int
    blocked: int
    refused_429: int
    refused_403: int


def persona_rows(
    labels: Sequence[Mapping[str, Any]], alerts: Sequence[Any], requests: Sequence[Mapping[str, Any]]
) -> list[PersonaRow]:
    """One row per persona: accounts, how many reached ``alert`` or worse, were throttled or blocked (held for
    review counts as blocked: every request is refused), and the requests refused 429 / 403."""
    levels, history = max_levels(alerts), action_history(alerts)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    for r in requests:
        statuses[str(r.get("account_id"))][int(r.get("status") or 0)] += 1
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in labels:
        groups[str(row["persona"])].append(row)
    out = []
    for persona, rows in groups.items():
        ids = [str(r["account_id"]) for r in rows]
        out.append(
            PersonaRow(
                persona,
                str(rows[0].get("role", "?")),
                len(ids),
                sum(LEVEL_RANK.get(levels.get(i, "none"), 0) >= LEVEL_RANK["alert"] for i in ids),
                sum("throttle" in history.get(i, []) for i in ids),
                sum(bool({"block", "review"} & set(history.get(i, []))) for i in ids),
                sum(statuses[i][429] for i in ids),
                sum(statuses[i][403] for i in ids),
            )
        )
    out.sort(key=lambda r: (r.role != "benign", r.persona))
    return out


# ---- what the stage shows, step by step ----------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorTrained:
    """The monitor trained for this demo.

    Args:
        windows: training rows (account windows); train_days, calibration_days: small simulated days used.
        thresholds: risk thresholds of ``watch``, ``alert``, ``severe``; seconds: how long training took.
        monitor_dir: the trained monitor's files (the gateways of stages 7 and 8 load it).
    """

    windows: int
    train_days: int
    calibration_days: int
    thresholds: dict[str, float]
    seconds: float
    monitor_dir: Path


@dataclass(frozen=True)
class HeldOut:
    """The held-out traffic: accounts (benign, attacker), the attacker campaigns (personas), requests."""

    accounts: int
    benign: int
    attackers: int
    campaigns: tuple[str, ...]
    requests: int


@dataclass(frozen=True)
class ActionSeen:
    """A policy action, as it lands during the held-out traffic (``linked``: taken on a linked cluster;
    ``reason``: the monitor's first reason, if any)."""

    account_id: str
    persona: str
    linked: bool
    level: str
    action: str
    clause: str | None
    risk: float
    reason: str | None


@dataclass(frozen=True)
class LiveViewUnavailable:
    """The live view of the actions could not open the simulation's store (the summary still shows all)."""

    reason: str


@dataclass(frozen=True)
class TrafficSent:
    """How the held-out traffic went: requests, seconds, the gateway's answers by status, and the live actions
    not shown (more than two of one persona and action)."""

    requests: int
    seconds: float
    status_counts: dict[int, int]
    hidden: int


@dataclass(frozen=True)
class Escalation:
    """An attacker account throttled, then refused: blocked, or held for review (``account_id`` ``None``: none
    was).

    Args:
        check: whether one was.
        throttled_after, blocked_after: the account's exchanges logged before each action (``None``: unknown).
        refused_as: ``block`` or ``review``.
        requests: its requests; first_429, first_403: the number of its first request refused so.
        enforcement_ttl: how often the gateway re-reads enforcement (seconds).
    """

    check: Check
    account_id: str | None = None
    persona: str = "?"
    throttled_after: int | None = None
    blocked_after: int | None = None
    requests: int = 0
    first_429: int | None = None
    first_403: int | None = None
    enforcement_ttl: float = 0.0
    refused_as: str = "block"


@dataclass(frozen=True)
class LiveRefusal:
    """A live SDK request, with a fresh API key, from a blocked (or, failing one, held) attacker account
    (``account_id`` ``None``: none was); ``check``: refused (403) quoting the clause; ``message``: what the gateway
    said; ``action``: ``block`` or ``review``."""

    check: Check
    account_id: str | None = None
    persona: str = "?"
    message: str = ""
    action: str = "block"


@dataclass(frozen=True)
class WatchAssessment:
    """What the monitor and the policy did to each persona, and the stage's checks.

    Args:
        personas: one row per persona, benign first.
        missed: attacker campaigns that never reached ``alert``.
        benign, benign_blocked, benign_flagged: benign accounts; of them blocked or held for review; flagged.
        escalation, refusal: see :class:`Escalation`, :class:`LiveRefusal`.
        audit, action_records, actions_taken: the audit log's verification, its policy-action records, and the
            actions the alerts say were taken.
        caught, benign_served, audit_chain: checks.
    """

    personas: tuple[PersonaRow, ...]
    missed: tuple[str, ...]
    benign: int
    benign_blocked: int
    benign_flagged: int
    escalation: Escalation
    refusal: LiveRefusal
    audit: VerifyResult
    action_records: int
    actions_taken: int
    caught: Check
    benign_served: Check
    audit_chain: Check

    @property
    def campaigns(self) -> int:
        """Attacker campaigns (personas) present."""
        return sum(r.role == "attacker" for r in self.personas)

    @property
    def checks(self) -> tuple[Check, ...]:
        return (self.caught, self.benign_served, self.escalation.check, self.refusal.check, self.audit_chain)


@dataclass(frozen=True)
class WatchResult:
    """Stage 7's result: its steps, and the checks of the assessment."""

    trained: MonitorTrained
    heldout: HeldOut
    traffic: TrafficSent
    assessment: WatchAssessment

    @property
    def checks(self) -> tuple[Check, ...]:
        return self.assessment.checks


# ---- plumbing ------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _store_url(out: Path) -> str:
    return f"sqlite:///{(out / 'antidistill.db').resolve()}"


class _ActionWatcher:
    """Polls the simulation's store for new policy actions and shows each as it lands (a daemon thread)."""

    MAX_LINES_PER_KIND = 2

    def __init__(
        self, screen: Screen, store_url: str, data_dir: Path, persona_by_name: Mapping[str, str], ready: threading.Event
    ) -> None:
        self.screen = screen
        self.store_url = store_url
        self.data_dir = data_dir
        self.persona_by_name = persona_by_name
        self.ready = ready
        self.stop = threading.Event()
        self.seen: set[str] = set()
        self.shown: Counter[tuple[str, str]] = Counter()
        self.hidden = 0
        self._names: dict[str, str] = {}
        self.thread = threading.Thread(target=self._run, name="demo-watch", daemon=True)

    def __enter__(self) -> _ActionWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _persona(self, store: Store, account_id: str) -> str:
        if account_id not in self._names:
            acct = store.get_account(account_id)
            self._names[account_id] = self.persona_by_name.get(acct.name, "?") if acct else "?"
        return self._names[account_id]

    def _run(self) -> None:
        # the gateway creates the database and its master key first; opening earlier could race it
        while not self.ready.wait(0.2):
            if self.stop.is_set():
                return
        try:
            store = Store.open(
                self.store_url,
                settings=Settings(env="dev", data_dir=self.data_dir, master_key=None, database_url=self.store_url),
            )
        except Exception as exc:  # the summary after the run still shows everything
            self.screen.show(LiveViewUnavailable(str(exc)))
            return
        try:
            while True:
                stopping = self.stop.wait(0.4)
                self.poll(store)
                if stopping:
                    return
        finally:
            store.close()

    def poll(self, store: Store) -> None:
        """Show the actions that landed since the last poll (at most two lines per persona and action)."""
        for a in store.list_alerts():
            if a.id in self.seen or a.action == "none":
                self.seen.add(a.id)
                continue
            self.seen.add(a.id)
            persona = self._persona(store, a.account_id)
            kind = (persona, a.action)
            self.shown[kind] += 1
            if self.shown[kind] > self.MAX_LINES_PER_KIND:
                self.hidden += 1
                continue
            reasons = [r for r in a.reasons if r.strip()]
            self.screen.show(
                ActionSeen(
                    a.account_id,
                    persona,
                    bool(a.cluster_id),
                    a.level,
                    a.action,
                    a.clause,
                    a.risk,
                    reasons[0] if reasons else None,
                )
            )


# ---- the steps -----------------------------------------------------------------------------------------------
def train_monitor(ctx: DemoContext) -> MonitorTrained:
    """Train a fresh monitor on small simulated training days (the user's own trained monitor is not used)."""
    train_dir = ctx.work / "monitor-train"
    t0 = time.perf_counter()
    with ctx.screen.busy("Stage 7: training the monitor on simulated training traffic (train split)…"):
        manifest = train(
            throwaway_settings(ctx.settings, train_dir),
            seeds=WATCH_TRAIN_SEEDS,
            calibration_seeds=WATCH_CALIBRATION_SEEDS,
            scale="small",
            out_dir=None,
            extra_personas={},
        )
    th = manifest["thresholds"]
    return MonitorTrained(
        manifest["rows"],
        len(WATCH_TRAIN_SEEDS),
        len(WATCH_CALIBRATION_SEEDS),
        {k: th[k] for k in ("watch", "alert", "severe")},
        time.perf_counter() - t0,
        train_dir / "monitor",
    )


def plan_heldout() -> tuple[Scenario, Plan, HeldOut]:
    """The held-out traffic: one small virtual day, the held-out split."""
    scenario = Scenario.from_scale("small", seed=WATCH_HELDOUT_SEED, split="heldout")
    plan = scenario.build()
    summ = plan.summary()
    campaigns = tuple(sorted({a.persona for a in plan.accounts if a.role == "attacker"}))
    return (
        scenario,
        plan,
        HeldOut(summ["accounts"], summ["benign_accounts"], summ["attacker_accounts"], campaigns, summ["requests"]),
    )


def send_heldout(
    ctx: DemoContext, scenario: Scenario, plan: Plan, monitor_dir: Path, out: Path
) -> tuple[SimulationResult, TrafficSent]:
    """Send the held-out traffic through a gateway with ``monitor_dir``'s monitor on; actions shown live."""
    (out / "gateway").mkdir(parents=True)
    shutil.copytree(monitor_dir, out / "gateway" / "monitor")
    persona_by_name: dict[str, str] = {}
    for a in plan.accounts:
        persona_by_name.setdefault(a.name, a.persona)
    ready = threading.Event()
    with ctx.screen.bar("requests", total=len(plan.requests)) as update:

        def progress(done: int, total: int) -> None:
            ready.set()
            update(done, total)

        with _ActionWatcher(ctx.screen, _store_url(out), out / "gateway", persona_by_name, ready) as watcher:
            result = run_simulation(scenario, out, plan=plan, monitor=True, concurrency=CONCURRENCY, progress=progress)
            ready.set()
    return result, TrafficSent(result.planned, result.wall_s, dict(result.status_counts), watcher.hidden)


def _escalation(
    store: Store,
    history: Mapping[str, list[str]],
    requests: Sequence[Mapping[str, Any]],
    persona_of: Mapping[str, str],
    role_of: Mapping[str, str],
    ttl: float,
) -> Escalation:
    esc = [a for a, acts in history.items() if role_of.get(a) == "attacker" and escalated(acts, then=REFUSING)]
    check = Check("an attacker throttled, then blocked or held for review", bool(esc))
    if not esc:
        return Escalation(check)
    # prefer a block, then one whose throttle was felt (a 429) before it
    a = max(
        esc,
        key=lambda x: (
            escalated(history[x]),
            first_status(requests, x, 429) is not None,
            persona_of.get(x) == "bulk_harvester",
        ),
    )
    refused_as = "block" if escalated(history[a]) else "review"
    points = dict(reversed(action_points(store.iter_audit()).get(a, [])))
    return Escalation(
        check,
        a,
        persona_of[a],
        points.get("throttle"),
        points.get(refused_as),
        sum(1 for r in requests if r.get("account_id") == a),
        first_status(requests, a, 429),
        first_status(requests, a, 403),
        ttl,
        refused_as,
    )


def _live_refusal(
    store: Store, settings: Settings, persona_of: Mapping[str, str], role_of: Mapping[str, str]
) -> LiveRefusal:
    label = "blocked or held account refused with the clause (live SDK request)"
    refused = [e for e in store.list_enforcements() if e.action in REFUSING and role_of.get(e.account_id) == "attacker"]
    blocked = min(refused, key=lambda e: REFUSING.index(e.action), default=None)  # a block if there is one
    if blocked is None:
        return LiveRefusal(Check(label, False))
    _, api_key = store.issue_key(blocked.account_id)  # a fresh key: the block is on the account
    ok = False
    with BackgroundServer(create_app(settings, backend=FakeBackend(), store=store)) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key=api_key, max_retries=0, timeout=30)
        try:
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
            message = "(served: not refused)"
        except PermissionDeniedError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            message = str((body.get("error") or body).get("message") or exc) if body else str(exc)
            ok = bool(blocked.clause) and f"{blocked.clause}" in message
    return LiveRefusal(
        Check(label, ok), blocked.account_id, persona_of.get(blocked.account_id, "?"), message, blocked.action
    )


def assess(out: Path, sim: SimulationResult) -> WatchAssessment:
    """Read the simulation's store and ground truth in ``out``: the per-persona table and the checks."""
    labels = sim.labels
    requests = _read_jsonl(out / "requests.jsonl")
    persona_of = {str(x["account_id"]): str(x["persona"]) for x in labels}
    role_of = {str(x["account_id"]): str(x.get("role")) for x in labels}
    # the simulation's own master key (a file in its gateway directory), never one from the environment
    settings = Settings(
        env="dev",
        data_dir=out / "gateway",
        database_url=_store_url(out),
        backend="fake",
        master_key=None,
        redis_url=None,
        admin_token=None,
    )
    store = Store.open(settings.database_url, settings=settings)
    try:
        alerts = store.list_alerts()
        rows = persona_rows(labels, alerts, requests)
        history = action_history(alerts)
        missed = tuple(r.persona for r in rows if r.role == "attacker" and r.reached_alert == 0)
        benign_ids = {i for i, role in role_of.items() if role == "benign"}
        hit = sorted(i for i in benign_ids if {"block", "review"} & set(history.get(i, [])))
        escalation = _escalation(store, history, requests, persona_of, role_of, settings.enforcement_ttl)
        refusal = _live_refusal(store, settings, persona_of, role_of)
        v = store.verify_audit()
        n_actions = sum(1 for r in store.iter_audit() if is_action_record(r))
    finally:
        store.close()
    taken = sum(len(x) for x in history.values())
    return WatchAssessment(
        tuple(rows),
        missed,
        len(benign_ids),
        len(hit),
        sum(1 for i in benign_ids if history.get(i)),
        escalation,
        refusal,
        v,
        n_actions,
        taken,
        Check("every attacker campaign caught", any(r.role == "attacker" for r in rows) and not missed),
        Check("no benign account blocked", not hit),
        Check("watch: audit chain with the policy actions", v.ok and n_actions >= taken > 0),
    )


def watch(ctx: DemoContext) -> WatchResult:
    """Stage 7: train the monitor, send held-out traffic through the gateway with it on, show the actions live,
    then the per-persona summary and the checks."""
    trained = train_monitor(ctx)
    ctx.screen.show(trained)
    scenario, plan, heldout = plan_heldout()
    ctx.screen.show(heldout)
    out = ctx.work / "watch"
    sim, traffic = send_heldout(ctx, scenario, plan, trained.monitor_dir, out)
    ctx.screen.show(traffic)
    assessment = assess(out, sim)
    ctx.screen.show(assessment)
    return WatchResult(trained, heldout, traffic, assessment)
