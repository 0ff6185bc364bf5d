"""Gathering the evidence from the installation: whom the report is about, their accounts, the exchanges they
harvested (one pass over the audit log), the log's verification and checkpoints, the monitor's alerts and
actions, and the policy clauses cited; then the scans (:mod:`.scans`) and the summary in words (:mod:`.wording`).

This is the only part of the report that reads the store; everything after :func:`gather` works on the
:class:`~.evidence.Evidence` alone.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import logging
import os
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from antidistill import __version__
from antidistill.errors import ConfigError, InputError
from antidistill.forensics.report.evidence import (
    FORMAT,
    AccountRecord,
    ActionRecord,
    AlertRecord,
    ApiKeyRecord,
    AuditHead,
    AuditSection,
    CheckpointRecord,
    CitedClause,
    EnforcementRecord,
    Evidence,
    ExchangeRecord,
    ExchangeSection,
    Limits,
    MonitorSection,
    PolicySection,
    Reverify,
    Subject,
    Timeline,
    TimelineBin,
    Verification,
    iso,
    num,
    opt_str,
)
from antidistill.forensics.report.scans import scan_entry, scrub
from antidistill.forensics.report.wording import summarize
from antidistill.monitor.api import LEVELS
from antidistill.store.api import ACTION_ENDPOINT_PREFIX, AuditRecord, Storage, VerifyResult
from antidistill.store.chain import format_time

try:
    from antidistill.monitor.policy import Policy
except ImportError:  # a build without the monitor's policy module: clause texts are not shown
    Policy = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

#: endpoints of the audit records the monitor writes for its actions start so (``monitor:action``)
ACTION_PREFIX = ACTION_ENDPOINT_PREFIX
#: exchanges kept in the JSON (the count and totals always cover all of them)
MAX_JSON_EXCHANGES = 20_000

ScanInput = tuple[dict[str, Any], Mapping[str, Any]]


# ---- the subject: one account or a cluster of accounts -----------------------------------------------
def resolve_subject(store: Storage, *, account: str | None = None, cluster: str | None = None) -> Subject:
    """The report's subject from ``--account`` or ``--cluster``.

    ``cluster`` is a cluster id recorded on the monitor's alerts, a comma-separated list of account ids, or a
    file of account ids (one a line, ``#`` comments). Every account must exist.

    Raises:
        InputError: neither or both given, an unknown account or cluster, an unreadable file.
    """
    if (account is None) == (cluster is None):
        raise InputError("give exactly one of --account ID or --cluster ID")
    if account is not None:
        account = account.strip()
        if not account:
            raise InputError("--account is empty")
        if store.get_account(account) is None:
            raise InputError(f"account {account} not found")
        return Subject("account", account, (account,), "account")
    ids, source, cid = _cluster_members(store, (cluster or "").strip())
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise InputError("the cluster names no accounts")
    for a in ids:
        if store.get_account(a) is None:
            raise InputError(f"account {a} (in cluster {cid}) not found")
    return Subject("cluster", cid, tuple(ids), source)


def _cluster_members(store: Storage, cluster: str) -> tuple[list[str], str, str]:
    """``(account ids, source, cluster id)`` of a comma list, a file of ids, or a cluster the monitor named."""
    if not cluster:
        raise InputError("--cluster is empty")
    path = Path(cluster)
    if "," in cluster:
        return [s.strip() for s in cluster.split(",") if s.strip()], "list", "list"
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read cluster file {path}: {type(exc).__name__}") from None
        return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")], "file", path.name
    ids = sorted(
        {a["account_id"] for a in _alerts(store, None) if a.get("cluster_id") == cluster and a.get("account_id")}
    )
    if not ids:
        raise InputError(
            f"cluster {cluster} not found: no alert names it (give a comma list or a file of account ids instead)"
        )
    return ids, "monitor", cluster


# ---- the whole evidence --------------------------------------------------------------------------------
def gather(
    store: Storage,
    subject: Subject,
    *,
    scans: Sequence[ScanInput] = (),
    control_scans: Sequence[ScanInput] = (),
    policy: Any = None,
    database: str | None = None,
    now: datetime | None = None,
    max_exchanges: int = MAX_JSON_EXCHANGES,
) -> Evidence:
    """Everything the report shows, typed (its JSON is the content of ``report.json``).

    Args:
        store: the installation's store (accounts, audit log, and the monitor's alerts when it keeps them).
        subject: the account or cluster (:func:`resolve_subject`).
        scans: scan results of the suspect model(s), each ``(scan dict, source)`` as
            :func:`~.scans.load_scan` returns.
        control_scans: scans of models known not to have been trained on our outputs (the controls).
        policy: the policy's clauses (a policy object, a list of ``{id, title, text}``, or ``None``: the
            clause texts are not shown).
        database: the database URL as a third party should pass it to ``antidistill audit …`` (password hidden).
        now: the report's time (default: now).
        max_exchanges: exchanges listed in the JSON; counts and totals always cover all of them.
    """
    if max_exchanges < 0:
        raise ValueError(f"max_exchanges must be >= 0, got {max_exchanges}")
    checkpoints = _all_checkpoints(store)
    tally = _Tally(set(subject.account_ids), [c["seq"] for c in checkpoints], max_exchanges)
    for rec in store.iter_records():
        tally.add(rec)
    monitor = _monitor_section(store, subject, tally.actions)
    draft = Evidence(
        format=FORMAT,
        generated_at=iso(now or datetime.now(UTC)),
        antidistill_version=__version__,
        subject=subject,
        accounts=tuple(_account(store, a, tally.usage.get(a)) for a in subject.account_ids),
        exchanges=tally.section(),
        audit=_audit_section(store, store.verify_audit(), checkpoints, tally.coverage, database),
        monitor=monitor,
        scans=tuple(
            [scan_entry(s, src, "suspect", subject) for s, src in scans]
            + [scan_entry(s, src, "control", subject) for s, src in control_scans]
        ),
        policy=_policy_section(policy, monitor),
    )
    return dataclasses.replace(draft, summary=summarize(draft))


def build_evidence(store: Storage, subject: Subject, **kwargs: Any) -> dict[str, Any]:
    """The evidence as one JSON-ready dict (the contents of ``report.json``); the arguments of :func:`gather`."""
    return gather(store, subject, **kwargs).to_json()


# ---- accounts ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Usage:
    """An account's traffic, counted during the pass over the log."""

    exchanges: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_exchange: str | None = None
    last_exchange: str | None = None
    watermark_key_ids: set[str] = dataclasses.field(default_factory=set)
    unwatermarked: int = 0


def _account(store: Storage, account_id: str, usage: _Usage | None) -> AccountRecord:
    a = store.get_account(account_id)
    if a is None:  # resolve_subject checked; the account was deleted since
        raise InputError(f"account {account_id} not found")
    u = usage or _Usage()
    keys = tuple(
        ApiKeyRecord(id=k.id, prefix=k.prefix, created_at=iso(k.created_at), revoked_at=iso(k.revoked_at))
        for k in store.list_keys(account_id)
    )
    return AccountRecord(
        id=a.id,
        name=a.name,
        enabled=a.enabled,
        created_at=iso(a.created_at),
        limits=Limits(rpm=a.rpm, tpm=a.tpm, tokens_per_day=a.tokens_per_day),
        metadata=scrub(dict(a.metadata)),
        api_keys=keys,
        exchanges=u.exchanges,
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        first_exchange=u.first_exchange,
        last_exchange=u.last_exchange,
        watermark_key_ids=tuple(sorted(u.watermark_key_ids)),
        unwatermarked=u.unwatermarked,
    )


# ---- the audit log: one pass ---------------------------------------------------------------------------
def _all_checkpoints(store: Storage) -> list[dict[str, Any]]:
    """Every signed checkpoint, in seq order."""
    return [
        {
            "seq": c.seq,
            "hash": c.hash,
            "prev_checkpoint_seq": c.prev_checkpoint_seq,
            "created_at": iso(c.created_at),
            "public_key": c.public_key,
            "public_key_fingerprint": key_fingerprint(c.public_key),
            "signature": c.signature,
        }
        for c in store.checkpoints()
    ]


def key_fingerprint(public_key_hex: str | None) -> str | None:
    """``SHA256:`` and the first 16 bytes of the SHA-256 of the raw public key, in hex groups of four.

    Example:
        >>> key_fingerprint("00" * 32)
        'SHA256:66687aad:f862bd77:6c8fc18b:8e9f8e20'
    """
    if not public_key_hex:
        return None
    try:
        raw = bytes.fromhex(public_key_hex)
    except ValueError:
        return None
    d = hashlib.sha256(raw).hexdigest()[:32]
    return "SHA256:" + ":".join(d[i : i + 8] for i in range(0, 32, 8))


def _user_text(content: Any) -> str | None:
    """The text of a message's content (a string, or a list of parts with ``text``)."""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else None


def _prompt_excerpt(request: Any, limit: int = 160) -> str:
    """The last user message (or the raw prompt), shortened: enough for a reader to see what was asked."""
    text = ""
    if isinstance(request, dict):
        msgs = request.get("messages")
        if isinstance(msgs, list):
            for m in msgs:
                if isinstance(m, dict) and m.get("role") == "user":
                    text = _user_text(m.get("content")) or text
        elif isinstance(request.get("prompt"), str):
            text = request["prompt"]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Tally:
    """One pass over the audit log: the subject's exchanges, the monitor's action records about it, usage per
    account, and how many of the subject's records each checkpoint covers (``None``: not yet signed)."""

    def __init__(self, ids: set[str], checkpoint_seqs: list[int], limit: int) -> None:
        self.ids, self.cp_seqs, self.limit = ids, checkpoint_seqs, limit
        self.coverage: Counter[int | None] = Counter()
        self.items: list[ExchangeRecord] = []
        self.actions: list[ActionRecord] = []
        self.usage: dict[str, _Usage] = {}
        self.times: list[tuple[datetime, int, int]] = []
        self.counts: dict[str, Counter[str]] = {
            k: Counter() for k in ("endpoints", "client_addrs", "user_agents", "statuses")
        }
        self.total = 0

    def add(self, rec: AuditRecord) -> None:
        """Count one record of the log (records of other accounts are passed over)."""
        if rec.account_id not in self.ids:
            return
        i = bisect.bisect_left(self.cp_seqs, rec.seq)
        covered_by = self.cp_seqs[i] if i < len(self.cp_seqs) else None
        self.coverage[covered_by] += 1
        if rec.is_pending:  # a stream's opening record; its final record is the exchange
            return
        if rec.is_action:  # the monitor writes its action records with an object as the request
            self.actions.append(
                ActionRecord(
                    seq=rec.seq,
                    account_id=rec.account_id,
                    at=format_time(rec.created_at),
                    details=scrub(_jsonable(rec.request)),
                    hash=rec.hash,
                    checkpoint_seq=covered_by,
                )
            )
            return
        self._exchange(rec, covered_by)

    def _exchange(self, rec: AuditRecord, covered_by: int | None) -> None:
        self.total += 1
        wm = rec.watermark
        key_id = wm.get("key_id") if isinstance(wm.get("key_id"), str) else None
        # the export's form of the time (what the JSONL holds and the hash covers), as the report quotes it
        created_at = format_time(rec.created_at)
        u = self.usage.setdefault(rec.account_id, _Usage())
        u.exchanges += 1
        u.prompt_tokens += rec.prompt_tokens
        u.completion_tokens += rec.completion_tokens
        u.first_exchange = u.first_exchange or created_at
        u.last_exchange = created_at
        if key_id:
            u.watermark_key_ids.add(key_id)
        else:
            u.unwatermarked += 1
        for name, value in (
            ("endpoints", rec.endpoint),
            ("client_addrs", rec.client_addr or "-"),
            ("user_agents", rec.user_agent or "-"),
            ("statuses", rec.status),
        ):
            self.counts[name][str(value)] += 1
        self.times.append((rec.created_at, rec.prompt_tokens, rec.completion_tokens))
        if len(self.items) < self.limit:
            self.items.append(
                ExchangeRecord(
                    seq=rec.seq,
                    response_id=rec.response_id,
                    account_id=rec.account_id,
                    created_at=created_at,
                    endpoint=rec.endpoint,
                    status=rec.status,
                    prompt_tokens=rec.prompt_tokens,
                    completion_tokens=rec.completion_tokens,
                    watermark_key_id=key_id,
                    watermark_status=None if key_id else wm.get("status"),
                    prompt_excerpt=_prompt_excerpt(rec.request),
                    hash=rec.hash,
                    checkpoint_seq=covered_by,
                )
            )

    def section(self) -> ExchangeSection:
        """The ``exchanges`` section: counts and totals over all the subject's exchanges, the first ones listed."""
        usage = self.usage.values()
        top = {"endpoints": None, "client_addrs": 20, "user_agents": 20, "statuses": None}
        return ExchangeSection(
            count=self.total,
            listed=len(self.items),
            truncated=self.total > len(self.items),
            prompt_tokens=sum(u.prompt_tokens for u in usage),
            completion_tokens=sum(u.completion_tokens for u in usage),
            first=iso(min((t for t, _, _ in self.times), default=None)),
            last=iso(max((t for t, _, _ in self.times), default=None)),
            **{name: dict(self.counts[name].most_common(n)) for name, n in top.items()},
            unwatermarked=sum(u.unwatermarked for u in usage),
            timeline=_timeline(self.times),
            items=tuple(self.items),
        )


def _timeline(times: list[tuple[datetime, int, int]], max_bins: int = 2000) -> Timeline:
    """Exchanges and tokens per hour (a span up to three days) or per day, empty bins included."""
    if not times:
        return Timeline(bin=None, bins=())
    first, last = min(t for t, _, _ in times), max(t for t, _, _ in times)
    unit = "hour" if last - first <= timedelta(days=3) else "day"
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)

    def floor(t: datetime) -> datetime:
        t = t.astimezone(UTC)
        return (
            t.replace(minute=0, second=0, microsecond=0)
            if unit == "hour"
            else t.replace(hour=0, minute=0, second=0, microsecond=0)
        )

    start = floor(first)
    n = int((floor(last) - start) / step) + 1
    if n > max_bins:  # a long history: weeks instead of days keeps the plot readable
        unit, step, n = "week", timedelta(days=7), int((floor(last) - start) / timedelta(days=7)) + 1
    counts = [[0, 0, 0] for _ in range(n)]
    for t, pt, ct in times:
        b = counts[min(int((t - start) / step), n - 1)]
        b[0], b[1], b[2] = b[0] + 1, b[1] + pt, b[2] + ct
    return Timeline(
        bin=unit,
        bins=tuple(
            TimelineBin(start=iso(start + i * step) or "", exchanges=c[0], prompt_tokens=c[1], completion_tokens=c[2])
            for i, c in enumerate(counts)
        ),
    )


def _audit_section(
    store: Storage, v: VerifyResult, checkpoints: list[dict[str, Any]], coverage: Counter, database: str | None
) -> AuditSection:
    head = store.audit_head()
    listed = tuple(
        CheckpointRecord(**c, covers=(c["prev_checkpoint_seq"] + 1, c["seq"]), subject_records=coverage[c["seq"]])
        for c in checkpoints
        if c["seq"] in coverage
    )
    keys = sorted({c["public_key"] for c in checkpoints})
    vd = v.details
    signer = vd.get("public_key") or (keys[0] if len(keys) == 1 else None)
    db = f" --database-url {shlex.quote(database)}" if database else ""
    details = {
        k: vd[k]
        for k in (
            "head_seq",
            "head_hash",
            "public_key_checked",
            "since_checkpoint",
            "last_checkpoint_seq",
            "kind",
            "rewritten_between",
        )
        if k in vd
    }
    return AuditSection(
        verification=Verification(
            ok=v.ok,
            records=v.records,
            checkpoints=v.checkpoints,
            first_bad_seq=v.first_bad_seq,
            first_bad_response_id=v.first_bad_response_id,
            problem=v.problem,
            details=scrub(_jsonable(details)),
        ),
        head=AuditHead(
            seq=head.seq,
            hash=head.hash,
            last_checkpoint_seq=head.last_checkpoint_seq,
            signed_at=head.signed.to_json()["signed_at"] if head.signed else None,
            signature=head.signed.signature if head.signed else None,
        ),
        checkpoint_every=store.checkpoint_every,
        public_key=signer,
        public_key_fingerprint=key_fingerprint(signer),
        public_keys_seen=tuple(keys),
        checkpoints_total=len(checkpoints),
        checkpoints_covering=len(listed),
        checkpoints=listed,
        subject_records=sum(coverage.values()),
        subject_records_unsigned=coverage.get(None, 0),
        reverify=(
            Reverify(
                command=f"antidistill audit verify --json{db}",
                what="recomputes every record's hash and checks every checkpoint's signature",
            ),
            Reverify(
                command=f"antidistill audit export --output audit.jsonl{db}",
                what="writes the whole log; each line holds a record, its hash and the previous record's "
                "hash, so anyone can recompute the chain without our software",
            ),
        ),
    )


# ---- the monitor's alerts and actions ------------------------------------------------------------------
def _plain(obj: Any) -> dict[str, Any]:
    """An alert or enforcement record (dataclass, object with ``to_dict``, mapping) as a plain dict."""
    if obj is None:
        return {}
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else {}


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return iso(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


def _alerts(store: Storage, account_id: str | None) -> list[dict[str, Any]]:
    fn = getattr(store, "list_alerts", None)
    if not callable(fn):
        return []
    return [scrub(_jsonable(_plain(a))) for a in fn(account_id=account_id)]


def _monitor_section(store: Storage, subject: Subject, actions: Iterable[ActionRecord]) -> MonitorSection:
    actions = tuple(actions)
    has_alerts = callable(getattr(store, "list_alerts", None))
    has_enf = callable(getattr(store, "get_enforcement", None))
    alerts = [a for acct in subject.account_ids for a in _alerts(store, acct)] if has_alerts else []
    alerts.sort(key=lambda a: (str(a.get("at") or ""), str(a.get("account_id") or "")))
    enforcement = {}
    for acct in subject.account_ids if has_enf else ():
        e = store.get_enforcement(acct)
        if e is not None:
            enforcement[acct] = EnforcementRecord(scrub(_jsonable(_plain(e))))
    available = has_alerts or has_enf or bool(actions)
    levels = [str(a.get("level")) for a in alerts if a.get("level")]
    return MonitorSection(
        available=available,
        note=None if available else "no monitor data: this installation keeps no alerts or enforcement records",
        alerts=tuple(AlertRecord(a) for a in alerts),
        highest_level=max(levels, key=lambda lv: LEVELS.index(lv) if lv in LEVELS else -1, default=None),
        max_risk=max((r for a in alerts if (r := num(a.get("risk"))) is not None), default=None),
        enforcement=enforcement,
        actions=actions,
    )


# ---- policy ------------------------------------------------------------------------------------------
def load_policy(path: str | os.PathLike[str] | None = None) -> Any:
    """The policy (its clauses are quoted in the report): the file at ``path``, else the shipped default.

    Returns ``None`` when the monitor's policy module is not part of this build and no ``path`` was given.

    Raises:
        InputError: ``path`` cannot be read or is not a valid policy.
    """
    if Policy is None:
        if path is not None:
            raise InputError("--policy needs the monitor's policy module, which this build lacks")
        return None
    try:
        return Policy.load(path)
    except ConfigError as exc:
        if path is not None:
            raise InputError(str(exc)) from None
        log.warning("the default policy could not be read: %s", exc)
        return None


def _clauses(policy: Any) -> list[dict[str, Any]] | None:
    """The policy's clauses as ``{id, title, text}`` dicts, from whatever the monitor's policy module returns."""
    if policy is None:
        return None
    raw = policy.get("clauses") if isinstance(policy, Mapping) else getattr(policy, "clauses", policy)
    if isinstance(raw, Mapping):
        raw = [{"id": k, **(_plain(v) if not isinstance(v, str) else {"text": v})} for k, v in raw.items()]
    out = []
    for c in raw or []:
        d = _plain(c) if not isinstance(c, Mapping) else dict(c)
        if d.get("id") is not None:
            out.append({"id": str(d["id"]), "title": str(d.get("title") or ""), "text": str(d.get("text") or "")})
    return out


class _Citations:
    """The clauses cited by the monitor's actions, alerts and enforcement, in order of first citation."""

    def __init__(self, clauses: list[dict[str, Any]] | None) -> None:
        self.by_id = {c["id"]: c for c in clauses or []}
        self.cited: dict[str, dict[str, Any]] = {}

    def cite(self, cid: Any, where: str) -> None:
        """Record that ``where`` cites ``cid`` (a clause id, a quoted ``{id, title, text}``, or a list of them)."""
        for one in cid if isinstance(cid, list) else [cid]:
            # an action record quotes the clause itself ({id, title, text}); an alert names its id
            quoted = one if isinstance(one, dict) else {}
            key = quoted.get("id") if quoted else one
            if key is None or key == "":
                continue
            key = str(key)
            known = self.by_id.get(key, {})
            c = self.cited.setdefault(
                key,
                {
                    "id": key,
                    "title": known.get("title") or quoted.get("title"),
                    "text": known.get("text") or quoted.get("text"),
                    "cited_by": [],
                },
            )
            if quoted and known and quoted.get("text") and quoted.get("text") != known.get("text"):
                c["quoted_text_differs"] = True  # the policy file changed since the action was taken
            if where not in c["cited_by"]:
                c["cited_by"].append(where)

    def clauses(self) -> tuple[CitedClause, ...]:
        return tuple(
            CitedClause(
                id=c["id"],
                title=opt_str(c["title"]),
                text=opt_str(c["text"]),
                cited_by=tuple(c["cited_by"]),
                quoted_text_differs=c.get("quoted_text_differs", False),
            )
            for c in self.cited.values()
        )


def _policy_section(policy: Any, monitor: MonitorSection) -> PolicySection:
    clauses = _clauses(policy)
    cites = _Citations(clauses)
    for act in monitor.actions:
        if act.action not in (None, "none"):
            cites.cite(act.details.get("clause"), f"{act.action} of {act.account_id} (audit record {act.seq})")
    for a in monitor.alerts:
        cites.cite(a.get("clause"), f"{a.get('level')} alert on {a.get('account_id')} at {a.get('at')}")
    for acct, e in monitor.enforcement.items():
        if e.in_force:
            cites.cite(e.get("clause"), f"current enforcement of {acct}: {e.action}")
    name = policy.get("name") if isinstance(policy, Mapping) else getattr(policy, "name", None)
    source = policy.get("source") if isinstance(policy, Mapping) else getattr(policy, "source", None)
    return PolicySection(
        available=clauses is not None,
        name=opt_str(name),
        source=opt_str(source),
        clauses_breached=cites.clauses(),
        clauses_total=len(clauses) if clauses is not None else None,
        note=None if clauses is not None else "no policy file was loaded: clause texts are not shown",
    )


__all__ = [
    "ACTION_PREFIX",
    "MAX_JSON_EXCHANGES",
    "build_evidence",
    "gather",
    "key_fingerprint",
    "load_policy",
    "resolve_subject",
]
