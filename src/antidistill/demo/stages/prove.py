"""Stage 8, Prove: the attack, the student, the forensic scan, the evidence.

On the real model: customer accounts use the API while an attacker account harvests completions through the
gateway; the batch monitor reads the audit log; a student is distilled from the harvest (LoRA on the CPU) and a
control student the same way from the teacher's unwatermarked answers; the forensic scan (reading mode, Sander et
al. 2024, https://arxiv.org/abs/2402.14904) finds our watermark in the student and attributes it to the attacker,
while the control student and the teacher come out clean; the full run also scans the student served unmarked
through its API (closed mode); the evidence report is written and the audit log verified.

Everything runs in the context's throwaway directory (its own master key, database and students); only the
evidence report is kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

from antidistill.demo.checks import DECOY_ACCOUNTS, DEMO_ALPHA, Check
from antidistill.demo.context import DemoContext, quiet_logs, throwaway_settings
from antidistill.forensics.inputs import AuditTexts, texts_from_records
from antidistill.forensics.report import ReportFiles, build_evidence, resolve_subject, write_report
from antidistill.forensics.scan import ScanKeys, ScanReport, scan_closed, scan_open
from antidistill.gateway import create_app
from antidistill.gateway.server import BackgroundServer
from antidistill.keys import KeyRing
from antidistill.models.local import LocalModel
from antidistill.models.local_backend import LocalBackend
from antidistill.monitor.actions import Enforcer, exchange_records
from antidistill.monitor.pipeline import Monitor, scan_records
from antidistill.monitor.policy import Policy
from antidistill.redteam.data import Pair, load_pairs
from antidistill.redteam.harvest import Harvester, generate_prompts
from antidistill.redteam.train import train_student
from antidistill.settings import Settings
from antidistill.store.api import Account, VerifyResult
from antidistill.store.sql import Store

CUSTOMERS = (
    (
        "acme-support",
        {
            "organisation": "Acme Support Desk",
            "email_domain": "acme.example",
            "signup_source": "sales",
            "payment_fingerprint": "card:acme-01",
        },
    ),
    (
        "brightpath-edu",
        {
            "organisation": "BrightPath Education",
            "email_domain": "brightpath.example",
            "signup_source": "self-serve",
            "payment_fingerprint": "card:bp-77",
        },
    ),
    (
        "lumen-legal",
        {
            "organisation": "Lumen Legal LLP",
            "email_domain": "lumenlegal.example",
            "signup_source": "sales",
            "payment_fingerprint": "invoice:lumen",
        },
    ),
)
CUSTOMER_PROMPTS = (
    "Draft a short, friendly reply to a customer whose parcel arrived late.",
    "Explain photosynthesis to a ten-year-old.",
    "Summarise what a non-disclosure agreement is for.",
    "Suggest three titles for a blog post about remote work.",
    "Explain the difference between weather and climate.",
    "Write a polite reminder about an unpaid invoice.",
)
ATTACKER = (
    "nimbus-labs",
    {
        "organisation": "Nimbus Labs Ltd",
        "email_domain": "nimbus-labs.example",
        "signup_source": "self-serve",
        "payment_fingerprint": "card:prepaid-9f2c",
        "use_case": "customer support chatbot",
    },
)
#: the two students: the one distilled from the harvest, the control distilled from unmarked answers
STUDENT, CONTROL_STUDENT = "student", "control student"
#: teacher answers generated per batch for the control student's data
CONTROL_BATCH = 16
HARVEST_CONCURRENCY = 8


@dataclass(frozen=True)
class Prompts:
    """The attack's prompts: ``harvest`` (trained on), ``held`` (harvested, kept out of training), ``control``
    (answered unmarked by the teacher for the control student)."""

    harvest: list[str]
    held: list[str]
    control: list[str]

    @classmethod
    def generate(cls, n: int, held: int, seed: int) -> Prompts:
        prompts = generate_prompts(2 * n + held, seed=seed)
        return cls(prompts[:n], prompts[n : n + held], prompts[n + held :])


@dataclass(frozen=True)
class CustomerTraffic:
    """The customers' requests: account names, requests sent, seconds."""

    names: tuple[str, ...]
    requests: int
    seconds: float


@dataclass(frozen=True)
class Harvest:
    """The attacker's harvest through the gateway.

    Args:
        attacker: the attacker's account.
        answers, tokens, seconds, tokens_per_s: what the harvest wrote, as the harvester counted it.
        train, held: the harvested pairs trained on and kept out of training.
    """

    attacker: Account
    answers: int
    tokens: int
    seconds: float
    tokens_per_s: float
    train: tuple[Pair, ...]
    held: tuple[Pair, ...]

    @property
    def pairs(self) -> int:
        return len(self.train) + len(self.held)


@dataclass(frozen=True)
class BatchMonitor:
    """The batch monitor over the audit log (what ``antidistill monitor scan`` does), for the attacker: its level,
    risk and reasons, and the policy action taken (``None``: none). Reported, not checked."""

    account: str
    level: str
    risk: float
    why: str
    action: str | None
    harvest_requests: int


@dataclass(frozen=True)
class ControlData:
    """The control student's data: the teacher's unwatermarked answers to other prompts."""

    pairs: tuple[Pair, ...]
    seconds: float


@dataclass(frozen=True)
class Distilled:
    """One student: trained on ``pairs`` pairs (``marked``: harvested, else unmarked), steps, seconds, training
    loss first and last, held-out loss before and after (``None``: no held-out pairs)."""

    name: str
    pairs: int
    marked: bool
    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    heldout_before: float | None
    heldout_after: float | None


@dataclass(frozen=True)
class Distillation:
    """Both students, the same recipe: ``epochs``, ``lr``; ``held``: held-out harvested pairs."""

    epochs: float
    lr: float
    held: int
    students: tuple[Distilled, ...]


@dataclass(frozen=True)
class StudentScans:
    """The open-weights scans of both students.

    Args:
        student, control: the scans' reports; accounts, decoys: candidate accounts of the store, and decoys.
        names: account id -> name; teacher_p: the teacher control's p-value (``None``: not scanned).
        found, control_clean, teacher_clean: the checks.
    """

    student: ScanReport
    control: ScanReport
    accounts: int
    decoys: int
    names: dict[str, str]
    teacher_p: float | None
    found: Check
    control_clean: Check
    teacher_clean: Check

    @property
    def checks(self) -> tuple[Check, ...]:
        return (self.found, self.control_clean, self.teacher_clean)


@dataclass(frozen=True)
class ClosedScan:
    """The closed-mode scan of the student served unmarked: its report, prompts sent, whom it attributed to."""

    report: ScanReport
    prompts: int
    attributed_name: str


@dataclass(frozen=True)
class EvidenceWritten:
    """The evidence report for the attacker: its files and headline, and the audit log's verification."""

    attacker: Account
    files: ReportFiles
    headline: str | None
    audit: VerifyResult
    written: Check
    audit_chain: Check

    @property
    def checks(self) -> tuple[Check, ...]:
        return (self.written, self.audit_chain)


@dataclass(frozen=True)
class ProveResult:
    """Stage 8's result: its steps; the checks are the scans' and the evidence's."""

    customers: CustomerTraffic
    harvest: Harvest
    batch: BatchMonitor
    control: ControlData
    distillation: Distillation
    scans: StudentScans
    closed: ClosedScan | None
    evidence: EvidenceWritten

    @property
    def checks(self) -> tuple[Check, ...]:
        return (*self.scans.checks, *self.evidence.checks)


# ---- the attack ----------------------------------------------------------------------------------------------
def customer_traffic(
    ctx: DemoContext, lm: LocalModel, base_url: str, customers: list[tuple[Account, str]]
) -> CustomerTraffic:
    """Each customer sends ``ctx.sizes.customer_requests`` requests, all at once."""

    def customer(i: int) -> None:
        _, key = customers[i % len(customers)]
        client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
        client.chat.completions.create(
            model=lm.name,
            messages=[{"role": "user", "content": CUSTOMER_PROMPTS[i % len(CUSTOMER_PROMPTS)]}],
            max_tokens=48 if ctx.sizes.quick else 64,
            temperature=0.7,
            seed=ctx.seed + i,
        )

    t0 = time.perf_counter()
    jobs = len(customers) * ctx.sizes.customer_requests
    with (
        ctx.screen.busy(f"Stage 8: {len(customers)} customer accounts using the API…"),
        ThreadPoolExecutor(jobs) as pool,
    ):
        list(pool.map(customer, range(jobs)))
    return CustomerTraffic(tuple(a.name for a, _ in customers), jobs, time.perf_counter() - t0)


def harvest(ctx: DemoContext, base_url: str, attacker: Account, api_key: str, prompts: Prompts, path: Path) -> Harvest:
    """The attacker's scripted client harvests answers to the harvest and held-out prompts into ``path``."""
    asked = prompts.harvest + prompts.held
    with (
        ctx.screen.bar(f"attacker {ATTACKER[0]} harvesting", total=len(asked)) as update,
        Harvester(base_url, api_key, max_tokens=ctx.sizes.harvest_tokens, temperature=0.7) as hv,
    ):
        res = hv.run(asked, path, concurrency=HARVEST_CONCURRENCY, on_progress=lambda d, t: update(d, t))
    held = set(prompts.held)
    pairs = load_pairs(path)
    return Harvest(
        attacker,
        res.written,
        res.completion_tokens,
        res.seconds,
        res.tokens_per_s,
        tuple(p for p in pairs if p.prompt not in held),
        tuple(p for p in pairs if p.prompt in held),
    )


def serve_the_attack(
    ctx: DemoContext, lm: LocalModel, settings: Settings, ring: KeyRing, store: Store, prompts: Prompts
) -> tuple[CustomerTraffic, Harvest]:
    """The gateway with the monitor stage 7 trained: customers use it, then the attacker harvests it."""
    customers = [
        (a, key) for a, key, _ in (store.create_account(name, rpm=60, metadata=meta) for name, meta in CUSTOMERS)
    ]
    attacker, attacker_key, _ = store.create_account(ATTACKER[0], metadata=ATTACKER[1])
    app = create_app(settings, backend=LocalBackend(lm), store=store, keyring=ring)
    with BackgroundServer(app) as srv:
        traffic = customer_traffic(ctx, lm, srv.url + "/v1", customers)
        ctx.screen.show(traffic)
        harvested = harvest(ctx, srv.url + "/v1", attacker, attacker_key, prompts, ctx.work / "harvest.jsonl")
    ctx.screen.show(harvested)
    return traffic, harvested


def batch_monitor(settings: Settings, store: Store, harvested: Harvest) -> BatchMonitor:
    """The batch monitor over the store's audit log, with the shipped policy (what ``monitor scan`` does)."""
    with quiet_logs():
        monitor = Monitor.load(settings)
        meta = {a.id: a.metadata for a in store.list_accounts()}
        assessments = scan_records(exchange_records(store.iter_audit()), meta, monitor)
        Enforcer(store, Policy.default()).apply_all(assessments)
    attacker = harvested.attacker
    a = monitor.assess(attacker.id)
    enf = store.get_enforcement(attacker.id)
    why = "; ".join(a.reasons[:2]) if a.reasons else "no reason recorded"
    return BatchMonitor(attacker.name, a.level, a.risk, why, enf.action if enf else None, harvested.pairs)


def control_data(ctx: DemoContext, lm: LocalModel, prompts: list[str]) -> ControlData:
    """The same model's answers, unwatermarked, to other prompts: the control student's data."""
    t0 = time.perf_counter()
    pairs: list[Pair] = []
    with ctx.screen.busy(f"Stage 8: generating {len(prompts)} unwatermarked teacher answers for the control student…"):
        for i in range(0, len(prompts), CONTROL_BATCH):
            batch = prompts[i : i + CONTROL_BATCH]
            outs = lm.generate(
                batch,
                [None] * len(batch),
                max_new_tokens=ctx.sizes.harvest_tokens,
                temperature=0.7,
                seed=ctx.seed + 1000 + i,
            )
            pairs += [Pair(p, o.text, o.finish_reason) for p, o in zip(batch, outs, strict=True)]
    return ControlData(tuple(pairs), time.perf_counter() - t0)


def distil(
    ctx: DemoContext, lm: LocalModel, name: str, data: tuple[Pair, ...], held: tuple[Pair, ...]
) -> tuple[Any, Distilled]:
    """Distil a student from ``data`` (LoRA on the last blocks of a fresh copy of the teacher); returns the
    student and what training did."""
    model = copy.deepcopy(lm.model)
    sizes = ctx.sizes
    with warnings.catch_warnings(), ctx.screen.bar(f"distilling the {name}") as update:
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notices
        res = train_student(
            list(data),
            "lora",
            model=model,
            tokenizer=lm.tokenizer,
            epochs=sizes.epochs,
            lr=sizes.lr,
            batch_size=sizes.batch_size,
            seed=ctx.seed,
            heldout=list(held),
            on_step=lambda s, t, loss: update(s, t, f"distilling the {name} (loss {loss:.2f})"),
        )
    return model, Distilled(
        name,
        len(data),
        name == STUDENT,
        res.steps,
        res.seconds,
        res.losses[0],
        res.losses[-1],
        res.heldout_loss_before,
        res.heldout_loss_after,
    )


# ---- the forensics -------------------------------------------------------------------------------------------
def scan_students(
    ctx: DemoContext,
    lm: LocalModel,
    students: dict[str, Any],
    fed: AuditTexts,
    keys: ScanKeys,
    store: Store,
    attacker: Account,
) -> StudentScans:
    """Feed every watermarked exchange of the audit log to each student (reading mode); the teacher, untouched,
    is the student's control model."""
    teacher = copy.deepcopy(lm.model)
    scans: dict[str, ScanReport] = {}
    with ctx.screen.busy("Stage 8: scanning both students (open weights, reading mode)…"):
        for name in (STUDENT, CONTROL_STUDENT):
            scans[name] = scan_open(
                students[name],
                lm.tokenizer,
                fed.texts,
                keys,
                fed.config(),
                control_models={"teacher": teacher} if name == STUDENT else None,
                suspect=f"demo {name}",
                alpha=DEMO_ALPHA,
            )
    accounts = store.list_accounts()
    st, ctl = scans[STUDENT], scans[CONTROL_STUDENT]
    tctl = [c for c in st.controls if str(c.name).startswith("model:")] if st.controls else []
    tp = tctl[0].p_value if tctl else None
    return StudentScans(
        st,
        ctl,
        len(accounts),
        len(DECOY_ACCOUNTS),
        {x.id: x.name for x in accounts},
        tp,
        Check(
            "student: watermark found and attributed to the attacker",
            st.significant and st.attributed_account == attacker.id,
        ),
        Check("control student not significant", not ctl.significant and ctl.attributed_account is None),
        Check("teacher control not significant", tp is not None and tp >= DEMO_ALPHA),
    )


def closed_scan(
    ctx: DemoContext,
    lm: LocalModel,
    student: Any,
    settings: Settings,
    prompts: list[str],
    keys: ScanKeys,
    fed: AuditTexts,
    names: dict[str, str],
) -> ClosedScan:
    """Serve the student unmarked (as a distiller would) on its own gateway and scan it through its API with
    the harvested prompts (windows in the prompt are skipped)."""
    host_dir = ctx.work / "suspect-host"
    host_dir.mkdir()
    host = throwaway_settings(settings, host_dir, backend="local", watermark=False)
    store = Store.open(host.database_url, settings=host)
    n = ctx.sizes.closed_prompts
    try:
        _, key, _ = store.create_account("forensics")
        served = LocalModel(student, lm.tokenizer, lm.watermark, name="suspect")
        app = create_app(host, backend=LocalBackend(served), store=store)
        with (
            ctx.screen.busy(f"Stage 8: closed-mode scan: {n} prompts to the served student…"),
            BackgroundServer(app) as srv,
        ):
            report = scan_closed(
                srv.url + "/v1",
                prompts[:n],
                lm.tokenizer,
                keys,
                fed.config(),
                model_name="suspect",
                api_key=key,
                max_tokens=ctx.sizes.harvest_tokens,
                seed=ctx.seed,
                alpha=DEMO_ALPHA,
            )
    finally:
        store.close()
    who = report.attributed_account
    return ClosedScan(report, n, names.get(who, who) if who else "-")


def _scan_entry(report: ScanReport, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A scan as the evidence quotes it: its JSON, and where it came from (with the JSON's hash)."""
    data = json.loads(json.dumps(report.to_dict(), default=str))
    raw = json.dumps(data, sort_keys=True).encode("utf-8")
    return data, {"path": f"(demo) {label}", "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def write_evidence(
    store: Store, attacker: Account, scans: StudentScans, closed: ClosedScan | None, report_dir: Path
) -> EvidenceWritten:
    """The evidence report on the attacker, with the scans (the control student's as the control), and the
    audit log verified."""
    suspect = [_scan_entry(scans.student, "scan of the distilled student (open weights)")]
    if closed is not None:
        suspect.append(_scan_entry(closed.report, "scan of the served student (closed mode)"))
    evidence = build_evidence(
        store,
        resolve_subject(store, account=attacker.id),
        scans=suspect,
        control_scans=[_scan_entry(scans.control, "scan of the control student (open weights)")],
        policy=Policy.default(),
    )
    files = write_report(evidence, report_dir)
    summary = evidence.get("summary") or {}
    head = summary.get("headline") if isinstance(summary, dict) else None
    v = store.verify_audit()
    return EvidenceWritten(
        attacker,
        files,
        str(head) if head else None,
        v,
        Check(
            "evidence report written",
            all(p.is_file() and p.stat().st_size > 0 for p in (files.html, files.json, files.sums)),
        ),
        Check("prove: audit chain", v.ok and v.records > 0),
    )


def _prove_in(
    ctx: DemoContext, lm: LocalModel, settings: Settings, ring: KeyRing, store: Store, report_dir: Path
) -> ProveResult:
    """Stage 8's steps, in the throwaway installation ``settings``/``ring``/``store``."""
    prompts = Prompts.generate(ctx.sizes.harvest, ctx.sizes.heldout, ctx.seed)
    customers, harvested = serve_the_attack(ctx, lm, settings, ring, store, prompts)
    batch = batch_monitor(settings, store, harvested)
    ctx.screen.show(batch)
    control = control_data(ctx, lm, prompts.control)
    ctx.screen.show(control)
    students: dict[str, Any] = {}
    distilled = []
    for name, data in ((STUDENT, harvested.train), (CONTROL_STUDENT, control.pairs)):
        students[name], done = distil(ctx, lm, name, data, harvested.held)
        distilled.append(done)
    distillation = Distillation(ctx.sizes.epochs, ctx.sizes.lr, len(harvested.held), tuple(distilled))
    ctx.screen.show(distillation)
    # the forensic scans: every watermarked exchange of the audit log, the attacker's and the customers'
    fed = texts_from_records(store.iter_audit())
    keys = ScanKeys.from_keyring(ring, [x.id for x in store.list_accounts()] + list(DECOY_ACCOUNTS))
    scans = scan_students(ctx, lm, students, fed, keys, store, harvested.attacker)
    ctx.screen.show(scans)
    closed = None
    if ctx.sizes.closed_prompts:
        closed = closed_scan(ctx, lm, students[STUDENT], settings, prompts.harvest, keys, fed, scans.names)
        ctx.screen.show(closed)
    evidence = write_evidence(store, harvested.attacker, scans, closed, report_dir)
    ctx.screen.show(evidence)
    return ProveResult(customers, harvested, batch, control, distillation, scans, closed, evidence)


def prove(ctx: DemoContext, lm: LocalModel, monitor_dir: Path | None, report_dir: Path) -> ProveResult:
    """Stage 8 in a throwaway installation whose gateway runs ``monitor_dir``'s monitor (stage 7's); the evidence
    report goes to ``report_dir``."""
    data_dir = ctx.work / "prove"
    data_dir.mkdir(parents=True)
    if monitor_dir is not None and monitor_dir.is_dir():  # the monitor stage 7 trained
        shutil.copytree(monitor_dir, data_dir / "monitor")
    settings = throwaway_settings(ctx.settings, data_dir, backend="local")
    ring = KeyRing.open(settings)
    store = Store.open(settings.database_url, settings=settings)
    try:
        return _prove_in(ctx, lm, settings, ring, store, report_dir)
    finally:
        store.close()
