"""The last two stages of ``antidistill demo``: Watch (the monitor live) and Prove (red team, forensics, evidence).

Stage 7 trains the monitor on simulated training traffic, then sends held-out traffic (benign customers and
distillation campaigns, with ground truth) through the real gateway with the monitor and the shipped policy on,
and shows the policy actions as they land. Stage 8 plays the whole attack on the real model: an attacker account
harvests completions through the gateway, distils a student from them (LoRA on the CPU), and the forensic scan
finds our watermark in the student, attributes it to the attacking account, and the evidence report is written;
a control student distilled the same way from unwatermarked answers comes out clean.

Everything runs in a temporary directory (its own master key, database and students); only the evidence report
is kept. The helpers at the top are pure and tested on their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from antidistill.demo import DECOY_ACCOUNTS, DEMO_ALPHA, Check, _verdict
from antidistill.store.api import is_pending_record

LEVEL_RANK = {"none": 0, "watch": 1, "alert": 2, "severe": 3}
ACTION_WORDS = {"flag": "flagged", "throttle": "throttled", "review": "held for review", "block": "blocked",
                "none": "no action"}
#: held-out traffic of the Watch stage; the monitor is trained on the train split (other seeds, other bands)
WATCH_TRAIN_SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)
WATCH_CALIBRATION_SEEDS = (9, 10)
WATCH_HELDOUT_SEED = 102


@dataclass(frozen=True)
class DemoSizes:
    """How much work each stage does (``quick`` shrinks every stage to fit a few minutes on two cores).

    Args:
        serve_tokens: tokens of each stage-2 completion; gateway_tokens: of each stage-6 answer.
        harvest: prompts the attacker harvests for training; heldout: further harvested prompts kept out of
            training (loss before/after); harvest_tokens: ``max_tokens`` of each harvest request.
        epochs, lr, batch_size: the distillation recipe (LoRA on the last blocks, same for both students).
        customer_requests: requests each customer account sends in stage 8.
        closed_prompts: prompts of the closed-mode scan of the served student (0: no closed scan).
    """

    quick: bool
    serve_tokens: int
    gateway_tokens: int
    harvest: int
    heldout: int
    harvest_tokens: int
    epochs: float
    lr: float
    batch_size: int
    customer_requests: int
    closed_prompts: int

    @classmethod
    def for_mode(cls, quick: bool, max_tokens: int = 160) -> DemoSizes:
        if quick:
            # 128-token gateway answers: at 96 about one in eight had fewer distinct pairs than a test with power
            # needs (demo.DEMO_MIN_PAIRS) and was asked again, which costs more than the 32 tokens
            return cls(True, max_tokens, 128, harvest=12, heldout=2, harvest_tokens=80, epochs=5.0,
                       lr=4e-3, batch_size=4, customer_requests=1, closed_prompts=0)
        return cls(False, max_tokens, 256, harvest=36, heldout=4, harvest_tokens=128, epochs=6.0, lr=4e-3,
                   batch_size=8, customer_requests=2, closed_prompts=6)


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


def escalated(actions: Sequence[str], first: str = "throttle", then: str = "block") -> bool:
    """Whether ``first`` was taken and ``then`` later."""
    return first in actions and then in actions[actions.index(first) + 1:]


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
            req = r.get("request") if isinstance(r.get("request"), Mapping) else {}
            out[aid].append((str(req.get("action", "?")), seen[aid]))
        elif not is_pending_record(r):
            seen[aid] += 1
    return dict(out)


@dataclass(frozen=True)
class PersonaRow:
    persona: str
    role: str
    accounts: int
    reached_alert: int
    throttled: int
    blocked: int
    refused_429: int
    refused_403: int


def persona_rows(labels: Sequence[Mapping[str, Any]], alerts: Sequence[Any],
                 requests: Sequence[Mapping[str, Any]]) -> list[PersonaRow]:
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
        out.append(PersonaRow(
            persona, str(rows[0].get("role", "?")), len(ids),
            sum(LEVEL_RANK.get(levels.get(i, "none"), 0) >= LEVEL_RANK["alert"] for i in ids),
            sum("throttle" in history.get(i, []) for i in ids),
            sum(bool({"block", "review"} & set(history.get(i, []))) for i in ids),
            sum(statuses[i][429] for i in ids), sum(statuses[i][403] for i in ids)))
    out.sort(key=lambda r: (r.role != "benign", r.persona))
    return out


def short_id(account_id: str) -> str:
    return account_id if len(account_id) <= 14 else account_id[:13] + "…"


def shorten(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- plumbing ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_logs(level: int = logging.ERROR) -> Iterator[None]:
    """The library logs every policy action as a warning; the demo prints them itself, once, in its own words."""
    logger = logging.getLogger("antidistill")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def _demo_settings(base: Any, data_dir: Path, **update: Any) -> Any:
    """Settings of a throwaway installation in ``data_dir`` (its own master key; never the user's)."""
    from antidistill.settings import Settings

    values = base.model_dump()
    values.update(env="dev", data_dir=data_dir, master_key=None, admin_token=None, redis_url=None,
                  database_url=f"sqlite:///{(data_dir / 'antidistill.db').resolve()}", policy_file=None,
                  accept_client_clock=False, trust_forwarded_for=False, monitor=False, watermark=True)
    values.update(update)
    return Settings(**{k: v for k, v in values.items() if k in Settings.model_fields})


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class _ActionWatcher:
    """Polls the simulation's store for new policy actions and prints each as it lands (a daemon thread)."""

    MAX_LINES_PER_KIND = 2

    def __init__(self, console: Console, store_url: str, data_dir: Path, persona_by_name: Mapping[str, str],
                 ready: threading.Event) -> None:
        self.console = console
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

    def _persona(self, store: Any, account_id: str) -> str:
        if account_id not in self._names:
            acct = store.get_account(account_id)
            self._names[account_id] = self.persona_by_name.get(acct.name, "?") if acct else "?"
        return self._names[account_id]

    def _run(self) -> None:
        from antidistill.settings import Settings
        from antidistill.store.sql import Store

        # the gateway creates the database and its master key first; opening earlier could race it
        while not self.ready.wait(0.2):
            if self.stop.is_set():
                return
        try:
            store = Store.open(self.store_url, settings=Settings(env="dev", data_dir=self.data_dir, master_key=None,
                                                                  database_url=self.store_url))
        except Exception as exc:  # the summary after the run still shows everything
            self.console.print(f"   [yellow](live view unavailable: {exc})[/]")
            return
        try:
            while True:
                stopping = self.stop.wait(0.4)
                self.poll(store)
                if stopping:
                    return
        finally:
            store.close()

    def poll(self, store: Any) -> None:
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
            where = ", linked cluster" if a.cluster_id else ""
            extra = " (10 rpm)" if a.action == "throttle" else ""
            reasons = [r for r in a.reasons if r.strip()]
            reason = f": {shorten(reasons[0], 70)}" if reasons else ""
            self.console.print(
                f"   [bold]acct {short_id(a.account_id)}[/] ({persona}{where}): {a.level} → "
                f"[bold]{ACTION_WORDS.get(a.action, a.action)}{extra}[/] under clause {a.clause} "
                f"[dim](risk {a.risk:.2f}{reason})[/]", highlight=False)


# ---- stage 7 -----------------------------------------------------------------------------------------------
def watch_stage(console: Console, work: Path, sizes: DemoSizes) -> list[Check]:
    """Stage 7: train the monitor, run held-out traffic through the gateway with the monitor on, show the actions
    live, then the per-persona summary and the checks."""
    import shutil

    from openai import OpenAI, PermissionDeniedError

    from antidistill.gateway import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.models.fake import FakeBackend
    from antidistill.monitor.actions import is_action_record
    from antidistill.settings import Settings, get_settings
    from antidistill.simulate import Scenario
    from antidistill.store.sql import Store
    from antidistill.workflows.monitor_training import train
    from antidistill.workflows.simulation import run_simulation

    checks: list[Check] = []
    console.rule("[bold]7. Watch: the monitor and the policy, live")
    train_dir = work / "monitor-train"
    t0 = time.perf_counter()
    with console.status("Stage 7: training the monitor on simulated training traffic (train split)…"):
        manifest = train(_demo_settings(get_settings(), train_dir), seeds=WATCH_TRAIN_SEEDS,
                         calibration_seeds=WATCH_CALIBRATION_SEEDS, scale="small", out_dir=None,
                         extra_personas={})
    th = manifest["thresholds"]
    console.print(f"   monitor trained fresh for this demo (your own trained monitor, if any, is not used): "
                  f"{manifest['rows']} windows from {len(WATCH_TRAIN_SEEDS)} small simulated days (train split), "
                  f"thresholds calibrated on {len(WATCH_CALIBRATION_SEEDS)} more: watch {th['watch']:.2f}, "
                  f"alert {th['alert']:.2f}, severe {th['severe']:.2f} ({time.perf_counter() - t0:.1f} s)",
                  highlight=False)

    scenario = Scenario.from_scale("small", seed=WATCH_HELDOUT_SEED, split="heldout")
    plan = scenario.build()
    summ = plan.summary()
    out = work / "watch"
    (out / "gateway").mkdir(parents=True)
    shutil.copytree(train_dir / "monitor", out / "gateway" / "monitor")
    personas = sorted({a.persona for a in plan.accounts if a.role == "attacker"})
    console.print(f"   held-out traffic (other seeds, other parameter bands): {summ['accounts']} accounts "
                  f"({summ['benign_accounts']} benign, {summ['attacker_accounts']} attacker accounts in "
                  f"{len(personas)} campaigns: {', '.join(personas)}), {summ['requests']} requests over one "
                  f"virtual day, through the real gateway with the monitor and the shipped policy on",
                  highlight=False)
    persona_by_name: dict[str, str] = {}
    for a in plan.accounts:
        persona_by_name.setdefault(a.name, a.persona)
    ready = threading.Event()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    store_url = f"sqlite:///{(out / 'antidistill.db').resolve()}"
    with Progress(TextColumn("   {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("requests", total=summ["requests"])

        def progress(done: int, total: int) -> None:
            ready.set()
            bar.update(task, completed=done, total=total)

        with _ActionWatcher(bar.console, store_url, out / "gateway", persona_by_name, ready) as watcher:
            result = run_simulation(scenario, out, plan=plan, monitor=True, concurrency=12, progress=progress)
            ready.set()
    if watcher.hidden:
        console.print(f"   … and {watcher.hidden} more actions of the same kinds (in the table below)")
    statuses = ", ".join(f"{n} × {s}" for s, n in sorted(result.status_counts.items()))
    console.print(f"   {result.planned} requests in {result.wall_s:.1f} s; the gateway answered {statuses}",
                  highlight=False)

    labels = result.labels
    requests = _read_jsonl(out / "requests.jsonl")
    # the simulation's own master key (a file in its gateway directory), never one from the environment
    gw_settings = Settings(env="dev", data_dir=out / "gateway", database_url=store_url, backend="fake",
                           master_key=None, redis_url=None, admin_token=None)
    store = Store.open(store_url, settings=gw_settings)
    try:
        alerts = store.list_alerts()
        rows = persona_rows(labels, alerts, requests)
        table = Table(title="7. Monitor and policy, by persona (simulator's ground truth)")
        for col in ("persona", "accts", ">=alert", "throttled", "blocked*", "429s", "403s"):
            table.add_column(col, justify="left" if col == "persona" else "right")
        for i, r in enumerate(rows):
            if i and r.role != rows[i - 1].role:
                table.add_section()
            table.add_row(r.persona, str(r.accounts), str(r.reached_alert), str(r.throttled), str(r.blocked),
                          str(r.refused_429), str(r.refused_403), style="red" if r.role == "attacker" else None)
        console.print(table)
        console.print("   [dim]benign above the line, attackers (red) below; * blocked or held for review (every "
                      "request refused); 429s/403s: requests refused[/]")

        attackers = [r for r in rows if r.role == "attacker"]
        missed = [r.persona for r in attackers if r.reached_alert == 0]
        ok = bool(attackers) and not missed
        checks.append(Check("every attacker campaign caught", ok))
        console.print(f"   every attacker campaign present ({len(attackers)}) reached alert or worse: "
                      f"{'yes' if not missed else 'missed ' + ', '.join(missed)} {_verdict(ok)}", highlight=False)
        benign_ids = {str(x["account_id"]) for x in labels if x.get("role") == "benign"}
        history = action_history(alerts)
        hit = sorted(i for i in benign_ids if {"block", "review"} & set(history.get(i, [])))
        flagged = sum(1 for i in benign_ids if history.get(i))
        ok = not hit
        checks.append(Check("no benign account blocked", ok))
        console.print(f"   benign accounts blocked or held for review: {len(hit)} of {len(benign_ids)} "
                      f"({flagged} flagged for a human to look at, still served) {_verdict(ok)}", highlight=False)

        persona_of = {str(x["account_id"]): str(x["persona"]) for x in labels}
        role_of = {str(x["account_id"]): str(x.get("role")) for x in labels}
        esc = [a for a, acts in history.items() if role_of.get(a) == "attacker" and escalated(acts)]
        ok = bool(esc)
        checks.append(Check("an attacker throttled, then blocked", ok))
        if esc:
            # prefer one whose throttle was felt (a 429) before the block
            a = max(esc, key=lambda x: (first_status(requests, x, 429) is not None,
                                        persona_of.get(x) == "bulk_harvester"))
            points = dict(reversed(action_points(store.iter_audit()).get(a, [])))
            n429, n403 = first_status(requests, a, 429), first_status(requests, a, 403)
            total = sum(1 for r in requests if r.get("account_id") == a)
            felt = f"first 429 at its request {n429}, " if n429 else "no request hit the 10 rpm limit, "
            felt = "as served: " + felt
            console.print(f"   acct {short_id(a)} ({persona_of[a]}): throttled after its request "
                          f"{points.get('throttle', '?')}, blocked after request {points.get('block', '?')} of "
                          f"{total} ({felt}first 403 at request {n403 or '-'}; the gateway re-reads enforcement "
                          f"every {gw_settings.enforcement_ttl:g} s) {_verdict(ok)}", highlight=False)
        else:
            console.print(f"   no attacker went from throttled to blocked {_verdict(ok)}")

        blocked = next((e for e in store.list_enforcements() if e.action == "block"
                        and role_of.get(e.account_id) == "attacker"), None)
        ok = False
        if blocked is None:
            console.print(f"   no blocked account to try a live request with {_verdict(ok)}")
        else:
            _, api_key = store.issue_key(blocked.account_id)  # a fresh key: the block is on the account
            app = create_app(gw_settings, backend=FakeBackend(), store=store)
            with BackgroundServer(app) as srv:
                client = OpenAI(base_url=srv.url + "/v1", api_key=api_key, max_retries=0, timeout=30)
                try:
                    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hello"}],
                                                   max_tokens=8)
                    message = "(served: not refused)"
                except PermissionDeniedError as exc:
                    body = exc.body if isinstance(exc.body, dict) else {}
                    message = str((body.get("error") or body).get("message") or exc) if body else str(exc)
                    ok = bool(blocked.clause) and f"{blocked.clause}" in message
            console.print(f"   a live openai-SDK request from blocked acct {short_id(blocked.account_id)} "
                          f"({persona_of.get(blocked.account_id, '?')}), with a new API key: "
                          f"{'403 PermissionDeniedError' if ok else 'NOT refused as expected'} {_verdict(ok)}",
                          highlight=False)
            console.print(f"     [italic]{message}[/]", highlight=False)
        checks.append(Check("blocked account refused with the clause (live SDK request)", ok))

        v = store.verify_audit()
        n_actions = sum(1 for r in store.iter_audit() if is_action_record(r))
        taken = sum(len(x) for x in history.values())
        ok = v.ok and n_actions >= taken > 0
        checks.append(Check("watch: audit chain with the policy actions", ok))
        console.print(f"   audit log: {v.records} records ({n_actions} of them policy actions, {taken} actions "
                      f"taken), {v.checkpoints} signed checkpoints, chain "
                      f"{'verifies' if v.ok else 'BROKEN: ' + str(v.problem)} {_verdict(ok)}", highlight=False)
    finally:
        store.close()
    return checks


# ---- stage 8 -----------------------------------------------------------------------------------------------
CUSTOMERS = (
    ("acme-support", {"organisation": "Acme Support Desk", "email_domain": "acme.example",
                      "signup_source": "sales", "payment_fingerprint": "card:acme-01"}),
    ("brightpath-edu", {"organisation": "BrightPath Education", "email_domain": "brightpath.example",
                        "signup_source": "self-serve", "payment_fingerprint": "card:bp-77"}),
    ("lumen-legal", {"organisation": "Lumen Legal LLP", "email_domain": "lumenlegal.example",
                     "signup_source": "sales", "payment_fingerprint": "invoice:lumen"}),
)
CUSTOMER_PROMPTS = (
    "Draft a short, friendly reply to a customer whose parcel arrived late.",
    "Explain photosynthesis to a ten-year-old.",
    "Summarise what a non-disclosure agreement is for.",
    "Suggest three titles for a blog post about remote work.",
    "Explain the difference between weather and climate.",
    "Write a polite reminder about an unpaid invoice.",
)
ATTACKER = ("nimbus-labs", {"organisation": "Nimbus Labs Ltd", "email_domain": "nimbus-labs.example",
                            "signup_source": "self-serve", "payment_fingerprint": "card:prepaid-9f2c",
                            "use_case": "customer support chatbot"})


def prove_stage(console: Console, lm: Any, work: Path, sizes: DemoSizes, seed: int, report_dir: Path) -> list[Check]:
    """Stage 8: harvest through the gateway, the batch monitor, distil a student and a control student, scan
    both, write the evidence report."""
    import copy
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    from antidistill.forensics.inputs import texts_from_records
    from antidistill.forensics.report import build_evidence, resolve_subject, write_report
    from antidistill.forensics.scan import ScanKeys, scan_open
    from antidistill.gateway import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.keys import KeyRing
    from antidistill.models.local_backend import LocalBackend
    from antidistill.monitor.actions import Enforcer, exchange_records
    from antidistill.monitor.pipeline import Monitor, scan_records
    from antidistill.monitor.policy import Policy
    from antidistill.redteam.data import Pair, load_pairs
    from antidistill.redteam.harvest import Harvester, generate_prompts
    from antidistill.redteam.train import train_student
    from antidistill.settings import get_settings
    from antidistill.store.sql import Store

    checks: list[Check] = []
    console.rule("[bold]8. Prove: the attack, the student, the forensic scan, the evidence")
    data_dir = work / "prove"
    data_dir.mkdir(parents=True)
    train_monitor = work / "monitor-train" / "monitor"
    if train_monitor.is_dir():  # the monitor stage 7 trained
        import shutil

        shutil.copytree(train_monitor, data_dir / "monitor")
    settings = _demo_settings(get_settings(), data_dir, backend="local")
    ring = KeyRing.open(settings)
    store = Store.open(settings.database_url, settings=settings)
    n, h = sizes.harvest, sizes.heldout
    prompts = generate_prompts(2 * n + h, seed=seed)
    harvest_prompts, held_prompts, control_prompts = prompts[:n], prompts[n:n + h], prompts[n + h:]
    try:
        customers = [store.create_account(name, rpm=60, metadata=meta) for name, meta in CUSTOMERS]
        attacker, attacker_key, _ = store.create_account(ATTACKER[0], metadata=ATTACKER[1])
        app = create_app(settings, backend=LocalBackend(lm), store=store, keyring=ring)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with BackgroundServer(app) as srv:
            base = srv.url + "/v1"
            t0 = time.perf_counter()
            with console.status(f"Stage 8: {len(customers)} customer accounts using the API…"):
                def customer(i: int) -> None:
                    _, key, _ = customers[i % len(customers)]
                    client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=600)
                    client.chat.completions.create(
                        model=lm.name, messages=[{"role": "user", "content": CUSTOMER_PROMPTS[i % 6]}],
                        max_tokens=48 if sizes.quick else 64, temperature=0.7, seed=seed + i)

                jobs = len(customers) * sizes.customer_requests
                with ThreadPoolExecutor(jobs) as pool:
                    list(pool.map(customer, range(jobs)))
            console.print(f"   customers {', '.join(c[0].name for c in customers)}: {jobs} requests "
                          f"({time.perf_counter() - t0:.1f} s)")
            harvest_path = work / "harvest.jsonl"
            with Progress(TextColumn("   {task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=True) as bar:
                task = bar.add_task(f"attacker {ATTACKER[0]} harvesting", total=n + h)
                with Harvester(base, attacker_key, max_tokens=sizes.harvest_tokens, temperature=0.7) as hv:
                    hres = hv.run(harvest_prompts + held_prompts, harvest_path, concurrency=8,
                                  on_progress=lambda d, t: bar.update(task, completed=d, total=t))
        console.print(f"   attacker [bold]{ATTACKER[0]}[/] ({ATTACKER[1]['organisation']}, signed up for a "
                      f"\"{ATTACKER[1]['use_case']}\") harvested {hres.written} answers with a scripted client "
                      f"through the gateway: {hres.completion_tokens} tokens in {hres.seconds:.1f} s "
                      f"({hres.tokens_per_s:.0f} tokens/s)", highlight=False)
        pairs = load_pairs(harvest_path)
        held_set = set(held_prompts)
        train_pairs = [p for p in pairs if p.prompt not in held_set]
        held = [p for p in pairs if p.prompt in held_set]
        console.print(f"   e.g. [italic]{shorten(train_pairs[0].prompt, 60)}[/] → "
                      f"[italic]{shorten(train_pairs[0].response, 90)}[/]", highlight=False)

        # the batch monitor over this store's audit log, with the policy (what `antidistill monitor scan` does)
        with quiet_logs():
            monitor = Monitor.load(settings)
            meta = {a.id: a.metadata for a in store.list_accounts()}
            assessments = scan_records(exchange_records(store.iter_audit()), meta, monitor)
            Enforcer(store, Policy.default()).apply_all(assessments)
        a = monitor.assess(attacker.id)
        enf = store.get_enforcement(attacker.id)
        why = "; ".join(a.reasons[:2]) if a.reasons else "no reason recorded"
        console.print(f"   batch monitor scan of the audit log (the monitor of stage 7): {attacker.name} at level "
                      f"[bold]{a.level}[/] "
                      f"(risk {a.risk:.2f}: {shorten(why, 110)}); policy action: "
                      f"{ACTION_WORDS.get(enf.action, enf.action) if enf else 'none'} "
                      f"[dim](a {len(pairs)}-request harvest is small; this is reported, not checked)[/]",
                      highlight=False)

        # the control data: the same model's answers, unwatermarked, to other prompts
        t0 = time.perf_counter()
        control_pairs: list[Pair] = []
        with console.status(f"Stage 8: generating {n} unwatermarked teacher answers for the control student…"):
            for i in range(0, n, 16):
                batch = control_prompts[i:i + 16]
                outs = lm.generate(batch, [None] * len(batch), max_new_tokens=sizes.harvest_tokens,
                                   temperature=0.7, seed=seed + 1000 + i)
                control_pairs += [Pair(p, o.text, o.finish_reason) for p, o in zip(batch, outs, strict=True)]
        console.print(f"   control data: {len(control_pairs)} unwatermarked answers of the same model to other "
                      f"prompts ({time.perf_counter() - t0:.1f} s)")

        students: dict[str, Any] = {}
        table = Table(title=f"8. Distillation: LoRA (last 6 blocks), {sizes.epochs:g} epochs, lr {sizes.lr:g}")
        for col in ("model", "trained on", "steps", "time", "train loss", "held-out loss*"):
            table.add_column(col)
        for name, data in (("student", train_pairs), ("control student", control_pairs)):
            model = copy.deepcopy(lm.model)
            with warnings.catch_warnings(), Progress(TextColumn("   {task.description}"), BarColumn(),
                                                     MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                                     transient=True) as bar:
                warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notices
                task = bar.add_task(f"distilling the {name}", total=None)
                res = train_student(data, "lora", model=model, tokenizer=lm.tokenizer, epochs=sizes.epochs,
                                    lr=sizes.lr, batch_size=sizes.batch_size, seed=seed, heldout=held,
                                    on_step=lambda s, t, loss, task=task, bar=bar, name=name: bar.update(
                                        task, completed=s, total=t,
                                        description=f"distilling the {name} (loss {loss:.2f})"))
            students[name] = model
            what = f"{len(data)} harvested" if name == "student" else f"{len(data)} unmarked"
            table.add_row(name, what, str(res.steps), f"{res.seconds:.0f} s",
                          f"{res.losses[0]:.2f} → {res.losses[-1]:.2f}",
                          f"{res.heldout_loss_before:.2f} → {res.heldout_loss_after:.2f}"
                          if res.heldout_loss_before is not None else "-")
        console.print(table)
        console.print(f"   [dim]* on {len(held)} harvested (watermarked) pairs kept out of training; the same recipe "
                      "for both students, each from a fresh copy of the teacher[/]")

        # the forensic scans: every watermarked exchange of the audit log fed to each model (reading mode)
        fed = texts_from_records(store.iter_audit())
        accounts = [x.id for x in store.list_accounts()]
        decoys = [f"customer-{i:04d}" for i in range(DECOY_ACCOUNTS)]
        keys = ScanKeys.from_keyring(ring, accounts + decoys)
        teacher = copy.deepcopy(lm.model)  # untouched: the control model
        scans: dict[str, Any] = {}
        with console.status("Stage 8: scanning both students (open weights, reading mode)…"):
            for name in ("student", "control student"):
                scans[name] = scan_open(students[name], lm.tokenizer, fed.texts, keys, fed.config(),
                                        control_models={"teacher": teacher} if name == "student" else None,
                                        suspect=f"demo {name}", alpha=DEMO_ALPHA)
        names = {x.id: x.name for x in store.list_accounts()}
        st, ctl = scans["student"], scans["control student"]
        console.print(f"   fed every watermarked exchange of the audit log, the attacker's and the customers' "
                      f"({st.texts}; {st.tokens_scored} distinct "
                      f"tuples scored); candidates: all {len(accounts)} accounts of the store + {len(decoys)} "
                      f"decoys; alpha {DEMO_ALPHA:g}", highlight=False)
        ok = st.significant and st.attributed_account == attacker.id
        checks.append(Check("student: watermark found and attributed to the attacker", ok))
        best = st.best_account
        corrected = f" (corrected p = {best.p_corrected:.2g})" if best is not None else ""
        verdict = "DISTILLED from our outputs" if st.significant else "not significant"
        console.print(f"   student:         p = {st.p_value:.2g} → {verdict}, attributed to "
                      f"{names.get(st.attributed_account, st.attributed_account or '-')}{corrected} {_verdict(ok)}",
                      highlight=False)
        ok = not ctl.significant and ctl.attributed_account is None
        checks.append(Check("control student not significant", ok))
        console.print(f"   control student: p = {ctl.p_value:.2g} → {'FLAGGED' if ctl.significant else 'clean'}"
                      f" {_verdict(ok)}", highlight=False)
        tctl = [c for c in st.controls if str(c.name).startswith("model:")] if st.controls else []
        tp = tctl[0].p_value if tctl else None
        ok = tp is not None and tp >= DEMO_ALPHA
        checks.append(Check("teacher control not significant", ok))
        console.print(f"   teacher (served the marked text, never trained on it): "
                      f"p = {tp if tp is None else format(tp, '.2g')} → {'clean' if ok else 'FLAGGED'} "
                      f"{_verdict(ok)}", highlight=False)

        closed = None
        if sizes.closed_prompts:
            # the harvested prompts of the audit log, sent to the suspect's API (windows in the prompt are skipped)
            closed = _closed_scan(console, lm, students["student"], work, settings, harvest_prompts, keys,
                                  fed.config(), sizes, seed)
            verdict = "watermark found" if closed.significant else "not significant"
            console.print(f"   closed mode (the student served unmarked on its own endpoint, as a distiller would; "
                          f"{sizes.closed_prompts} harvested prompts sent): p = {closed.p_value:.2g} → {verdict}, "
                          f"attributed to {names.get(closed.attributed_account, closed.attributed_account or '-')} "
                          f"[dim](few prompts: reported, not checked)[/]", highlight=False)

        # the evidence report
        def entry(r: Any, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
            data = json.loads(json.dumps(r.to_dict(), default=str))
            raw = json.dumps(data, sort_keys=True).encode("utf-8")
            return data, {"path": f"(demo) {label}", "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}

        subject = resolve_subject(store, account=attacker.id)
        suspect = [entry(st, "scan of the distilled student (open weights)")]
        if closed is not None:
            suspect.append(entry(closed, "scan of the served student (closed mode)"))
        evidence = build_evidence(store, subject, scans=suspect,
                                  control_scans=[entry(ctl, "scan of the control student (open weights)")],
                                  policy=Policy.default())
        files = write_report(evidence, report_dir)
        ok = all(p.is_file() and p.stat().st_size > 0 for p in (files.html, files.json, files.sums))
        checks.append(Check("evidence report written", ok))
        console.print(f"   evidence report for {attacker.name} ({attacker.id}): [bold]{files.html}[/] "
                      f"(+ report.json, SHA256SUMS) {_verdict(ok)}", highlight=False)
        summary = evidence.get("summary") or {}
        head = summary.get("headline") if isinstance(summary, dict) else None
        if head:
            console.print(f"     [italic]{shorten(str(head), 200)}[/]", highlight=False)
        v = store.verify_audit()
        ok = v.ok and v.records > 0
        checks.append(Check("prove: audit chain", ok))
        console.print(f"   audit log: {v.records} records, {v.checkpoints} signed checkpoints, chain "
                      f"{'verifies' if v.ok else 'BROKEN: ' + str(v.problem)} {_verdict(ok)}", highlight=False)
    finally:
        store.close()
    return checks


def _closed_scan(console: Console, lm: Any, student: Any, work: Path, settings: Any, prompts: Sequence[str],
                 keys: Any, config: Any, sizes: DemoSizes, seed: int) -> Any:
    """Serve the student unmarked (as a distiller would) on its own gateway and scan it through its API."""
    from antidistill.forensics.scan import scan_closed
    from antidistill.gateway import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.models.local import LocalModel
    from antidistill.models.local_backend import LocalBackend
    from antidistill.store.sql import Store

    host_dir = work / "suspect-host"
    host_dir.mkdir()
    host = _demo_settings(settings, host_dir, backend="local", watermark=False)
    store = Store.open(host.database_url, settings=host)
    try:
        _, key, _ = store.create_account("forensics")
        served = LocalModel(student, lm.tokenizer, lm.watermark, name="suspect")
        app = create_app(host, backend=LocalBackend(served), store=store)
        with console.status(f"Stage 8: closed-mode scan: {sizes.closed_prompts} prompts to the served student…"), \
                BackgroundServer(app) as srv:
            return scan_closed(srv.url + "/v1", list(prompts)[:sizes.closed_prompts], lm.tokenizer, keys, config,
                               model_name="suspect", api_key=key, max_tokens=sizes.harvest_tokens, seed=seed,
                               alpha=DEMO_ALPHA)
    finally:
        store.close()


def run_stages(console: Console, lm: Any, sizes: DemoSizes, seed: int, report_dir: Path) -> list[Check]:
    """Stages 7 and 8 in one throwaway directory; stage 8's report goes to ``report_dir``."""
    import tempfile

    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="antidistill-demo-") as tmp, quiet_logs():
        work = Path(tmp)
        checks += watch_stage(console, work, sizes)
        checks += prove_stage(console, lm, work, sizes, seed, report_dir)
    return checks
