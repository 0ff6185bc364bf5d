"""The evidence package: one self-contained HTML file a lawyer or a judge can read, and its JSON twin.

``antidistill report --account ID`` (or ``--cluster ID``) gathers what the installation knows about the
accounts in question and what the forensic scans found about a suspect model, and writes:

* ``report.json``: the machine-readable evidence (format :data:`FORMAT`): the accounts, the exchanges they
  harvested, the audit chain's verification and the signed checkpoints covering those exchanges, the monitor's
  alerts and enforcement actions, the scan p-values with their parameters, the controls, the policy clauses
  breached, and a plain-words summary;
* ``report.html``: the same evidence for people: the summary first ("What we found", "How sure we are"), then
  the evidence, a glossary and method notes, and appendices (exchanges, checkpoints, hashes). Plots are inline
  SVG images (``data:`` URIs); nothing is fetched from anywhere and no script runs;
* ``SHA256SUMS``: the hashes of both files, so a copy can be checked against the original.

The HTML is rendered from the JSON alone (:func:`render_html` takes the evidence dict and nothing else), so it
cannot claim what the JSON does not hold. Every number in it sits in a ``<span data-field="path">`` naming its
place in the JSON, with the exact value in ``data-value``; a reader (or a test) can check one against the
other.

What a p-value means here, in words: the probability that a model which never saw our outputs would score at
least this high by chance. It is not the probability that the accusation is wrong, and the report says so.

References: Kirchenbauer et al., "A Watermark for Large Language Models", ICML 2023
(https://arxiv.org/abs/2301.10226), the green-list watermark; Sander et al., "Watermarking Makes Language Models
Radioactive", NeurIPS 2024 (https://arxiv.org/abs/2402.14904), detecting that a model was trained on
watermarked text; Schneier & Kelsey, "Secure audit logs to support computer forensics", ACM TISSEC 1999, the
hash-chained log.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import shlex
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from antidistill.errors import InputError
from antidistill.store.api import is_pending_record

if TYPE_CHECKING:
    from antidistill.store.sql import Store

log = logging.getLogger(__name__)

FORMAT = "antidistill/evidence-report/v1"
#: endpoints of the audit records the monitor writes for its actions start so (``monitor:action``)
ACTION_PREFIX = "monitor:"
#: exchanges kept in the JSON (the count and totals always cover all of them)
MAX_JSON_EXCHANGES = 20_000
#: exchanges listed in the HTML appendix (the JSON holds the rest)
MAX_HTML_EXCHANGES = 500
DEFAULT_ALPHA = 1e-3
MAX_SCAN_BYTES = 64 * 1024 * 1024

# Names of fields that may hold secrets; their values never reach the report, whatever a scan file contains.
_SECRET_NAME = re.compile(r"(secret|master_?key|api_?key$|hashing_?key|private_?key|password|key_?value)", re.I)


# ---- the subject: one account or a cluster of accounts -----------------------------------------------
@dataclass(frozen=True)
class Subject:
    """Whom the report is about.

    Args:
        kind: ``"account"`` or ``"cluster"``.
        id: the account id, or the cluster id (an id the monitor recorded, or ``"list"`` for an explicit list).
        account_ids: the accounts, in a stable order.
        source: how a cluster was given: ``"monitor"`` (alerts carry its id), ``"list"`` or ``"file"``.
    """

    kind: str
    id: str
    account_ids: tuple[str, ...]
    source: str = "account"


def resolve_subject(store: Store, *, account: str | None = None, cluster: str | None = None) -> Subject:
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
    assert cluster is not None
    cluster = cluster.strip()
    if not cluster:
        raise InputError("--cluster is empty")
    path = Path(cluster)
    if "," in cluster:
        ids, source, cid = [s.strip() for s in cluster.split(",") if s.strip()], "list", "list"
    elif path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read cluster file {path}: {type(exc).__name__}") from None
        ids = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        source, cid = "file", path.name
    else:
        ids = sorted({a["account_id"] for a in _alerts(store, None) if a.get("cluster_id") == cluster
                      and a.get("account_id")})
        if not ids:
            raise InputError(f"cluster {cluster} not found: no alert names it (give a comma list or a file of "
                             f"account ids instead)")
        source, cid = "monitor", cluster
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise InputError("the cluster names no accounts")
    for a in ids:
        if store.get_account(a) is None:
            raise InputError(f"account {a} (in cluster {cid}) not found")
    return Subject("cluster", cid, tuple(ids), source)


# ---- scan files --------------------------------------------------------------------------------------
def scrub(obj: Any) -> Any:
    """``obj`` with the value of every field whose name suggests a secret replaced by ``"[withheld]"``.

    Example:
        >>> scrub({"key_id": "acct:a:v1", "hashing_key": 123, "n": [{"api_key": "sk-ad-x"}]})
        {'key_id': 'acct:a:v1', 'hashing_key': '[withheld]', 'n': [{'api_key': '[withheld]'}]}
    """
    if isinstance(obj, Mapping):
        return {str(k): ("[withheld]" if _SECRET_NAME.search(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    return obj


def load_scan(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a scan result (``ScanReport.to_dict()`` as JSON) and describe the file.

    Returns:
        ``(scan, source)`` with ``source = {"path", "sha256", "bytes"}``.

    Raises:
        InputError: the file is missing, too large, not JSON, or not a scan result.
    """
    p = Path(path)
    try:
        raw = p.read_bytes() if p.stat().st_size <= MAX_SCAN_BYTES else None
    except FileNotFoundError:
        raise InputError(f"scan file not found: {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read scan file {p}: {exc.strerror or type(exc).__name__}") from None
    if raw is None:
        raise InputError(f"scan file {p} is larger than {MAX_SCAN_BYTES // 2**20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise InputError(f"scan file {p} is not valid JSON: {msg}") from None
    check_scan(data, str(p))
    return data, {"path": str(p), "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def check_scan(data: Any, name: str = "scan") -> None:
    """Raise :class:`InputError` unless ``data`` looks like a scan result (an object with a p-value)."""
    if not isinstance(data, dict):
        raise InputError(f"{name} is not a scan result: expected a JSON object, got {type(data).__name__}")
    provider = data.get("provider")
    has_p = _is_prob(data.get("p_value")) or (isinstance(provider, dict) and _is_prob(provider.get("p_value")))
    if not has_p:
        raise InputError(f"{name} is not a scan result: no p_value (expected the JSON of antidistill scan)")
    for fld in ("accounts", "clusters", "curve", "controls"):
        if data.get(fld) is not None and not isinstance(data[fld], list):
            raise InputError(f"{name}: {fld} must be a list, got {type(data[fld]).__name__}")


def _is_prob(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def run_scan(store: Store, subject: Subject, suspect_model: str, *, settings: Any = None,
             max_texts: int | None = None, teacher_control: bool = True) -> dict[str, Any]:
    """Scan the open weights at ``suspect_model`` now on the subject's exchanges
    (:func:`antidistill.forensics.workflow.scan_open_on_audit`), and return the result as a dict, as
    ``--scan FILE`` would have held it.

    Raises:
        InputError: no such model, no watermarked exchange to feed, a different tokenizer.
        ConfigError: no master key here (the scan needs the keys the gateway marked with).
    """
    # the scan imports numpy, scipy, transformers' tokenizers and the model loader (about 2 s): only a report
    # that scans a model now pays for them
    from antidistill.forensics.workflow import scan_open_on_audit

    result = scan_open_on_audit(store, suspect_model, subject.account_ids,
                                cluster_id=subject.id if subject.kind == "cluster" else None, settings=settings,
                                max_texts=max_texts, teacher_control=teacher_control)
    data = json.loads(json.dumps(result.to_dict(), default=str))
    check_scan(data, f"scan of {suspect_model}")
    return data


def make_report(store: Store, out_dir: str | os.PathLike[str], *, account: str | None = None,
                cluster: str | None = None, scan_files: Sequence[str | os.PathLike[str]] = (),
                control_files: Sequence[str | os.PathLike[str]] = (), suspect_model: str | None = None,
                policy_file: str | os.PathLike[str] | None = None, database: str | None = None,
                now: datetime | None = None) -> tuple[ReportFiles, dict[str, Any]]:
    """What ``antidistill report`` does: check the inputs, gather the evidence, write the package.

    Every input is checked before anything is computed or written, so bad input costs nothing.

    Returns:
        the files written and the evidence dict.
    """
    subject = resolve_subject(store, account=account, cluster=cluster)
    scans = [load_scan(f) for f in scan_files]
    controls = [load_scan(f) for f in control_files]
    policy = load_policy(policy_file)
    if suspect_model is not None:
        data = run_scan(store, subject, suspect_model)
        raw = json.dumps(data, sort_keys=True).encode("utf-8")
        scans.append((data, {"path": f"(scanned now) {suspect_model}", "sha256": hashlib.sha256(raw).hexdigest(),
                             "bytes": len(raw)}))
    evidence = build_evidence(store, subject, scans=scans, control_scans=controls, policy=policy,
                              database=database, now=now)
    return write_report(evidence, out_dir), evidence


# ---- wording: p-values a non-specialist can read -------------------------------------------------------
_BIG_WORDS = ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"))


def one_in(p: float) -> tuple[float | None, str]:
    """``1/p`` rounded *down* to two significant figures (so "less than once in N" stays true), and in words.

    Example:
        >>> one_in(3e-7)
        (3300000.0, '3.3 million')
        >>> one_in(0.0004)[1]
        '2,500'
        >>> one_in(1e-40)[1]
        '10^40 (a 1 followed by 40 zeros)'
    """
    if p <= 0.0:
        return None, "10^300 (a 1 followed by 300 zeros)"
    inv = 1.0 / p
    if inv >= 1e15:
        k = math.floor(math.log10(inv) + 1e-12)
        return 10.0**k, f"10^{k} (a 1 followed by {k} zeros)"
    e = math.floor(math.log10(inv) + 1e-12)
    step = 10.0 ** max(e - 1, 0)
    n = math.floor(inv / step + 1e-9) * step
    for scale, word in _BIG_WORDS:
        if n >= scale:
            return n, f"{_trim(n / scale)} {word}"
    return n, f"{round(n):,}"


def _trim(x: float) -> str:
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def p_words(p: float) -> str:
    """A p-value as a plain sentence fragment: how often chance alone would produce a result this strong."""
    n, words = one_in(p)
    if p <= 0.0:
        return f"less than once in {words}"
    if p >= 0.5:
        return "about every other time or more often: chance explains it easily"
    # "less than once in N" only where p < 1/N holds strictly (N is rounded down, so it almost always does)
    return f"{'less than' if n is not None and n >= 10 and n * p < 1.0 - 1e-9 else 'about'} once in {words}"


def fmt_p(p: Any) -> str:
    """A p-value for reading: ``3.0 × 10^-7`` style (plain text), ``0.042`` for moderate values."""
    v = _num(p)
    if v is None:
        return "-"
    if v == 0.0:
        return "< 10^-300"
    if v >= 1e-3:
        return f"{v:.3g}"
    m, e = f"{v:.1e}".split("e")
    return f"{m} × 10^{int(e)}"


# ---- gathering the evidence --------------------------------------------------------------------------
def build_evidence(
    store: Store,
    subject: Subject,
    *,
    scans: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
    control_scans: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
    policy: Any = None,
    database: str | None = None,
    now: datetime | None = None,
    max_exchanges: int = MAX_JSON_EXCHANGES,
) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict (the contents of ``report.json``).

    Args:
        store: the installation's store (accounts, audit log, and the monitor's alerts when it keeps them).
        subject: the account or cluster (:func:`resolve_subject`).
        scans: scan results of the suspect model(s), each ``(scan dict, source)`` as :func:`load_scan` returns.
        control_scans: scans of models known not to have been trained on our outputs (the controls).
        policy: the policy's clauses (a policy object, a list of ``{id, title, text}``, or ``None``: the
            monitor's default policy file when there is one).
        database: the database URL as a third party should pass it to ``antidistill audit …`` (password hidden).
        now: the report's time (default: now).
        max_exchanges: exchanges listed in the JSON; counts and totals always cover all of them.
    """
    from antidistill import __version__

    if max_exchanges < 0:
        raise ValueError(f"max_exchanges must be >= 0, got {max_exchanges}")
    now = now or datetime.now(UTC)
    ids = set(subject.account_ids)
    accounts = [_account_dict(store, a) for a in subject.account_ids]
    checkpoints = _all_checkpoints(store)
    exchanges, actions, per_account, coverage = _collect_exchanges(store, ids, checkpoints, max_exchanges)
    for acc in accounts:
        acc.update(per_account.get(acc["id"], _empty_usage()))
    verification = store.verify_audit()
    audit = _audit_section(store, verification, checkpoints, coverage, database)
    monitor = _monitor_section(store, subject, actions)
    scan_entries = [_scan_entry(s, src, "suspect", subject) for s, src in scans]
    scan_entries += [_scan_entry(s, src, "control", subject) for s, src in control_scans]
    policy_section = _policy_section(policy, monitor)
    evidence: dict[str, Any] = {
        "format": FORMAT,
        "generated_at": _iso(now),
        "antidistill_version": __version__,
        "subject": {"kind": subject.kind, "id": subject.id, "account_ids": list(subject.account_ids),
                    "source": subject.source},
        "accounts": accounts,
        "exchanges": exchanges,
        "audit": audit,
        "monitor": monitor,
        "scans": scan_entries,
        "policy": policy_section,
    }
    evidence["summary"] = _summary(evidence)
    return scrub(evidence)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat().replace("+00:00", "Z")


def _parse_time(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, int | float) and not isinstance(v, bool):
        return datetime.fromtimestamp(v, UTC)
    if isinstance(v, str) and v:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return None


def _empty_usage() -> dict[str, Any]:
    return {"exchanges": 0, "prompt_tokens": 0, "completion_tokens": 0, "first_exchange": None,
            "last_exchange": None, "watermark_key_ids": [], "unwatermarked": 0}


def _account_dict(store: Store, account_id: str) -> dict[str, Any]:
    a = store.get_account(account_id)
    if a is None:  # resolve_subject checked; the account was deleted since
        raise InputError(f"account {account_id} not found")
    keys = [{"id": k.id, "prefix": k.prefix, "created_at": _iso(k.created_at), "revoked_at": _iso(k.revoked_at)}
            for k in store.list_keys(account_id)]
    return {"id": a.id, "name": a.name, "enabled": a.enabled, "created_at": _iso(a.created_at),
            "limits": {"rpm": a.rpm, "tpm": a.tpm, "tokens_per_day": a.tokens_per_day},
            "metadata": dict(a.metadata), "api_keys": keys}


def _all_checkpoints(store: Store) -> list[dict[str, Any]]:
    """Every signed checkpoint, in seq order (read straight from the table: the store has no listing call)."""
    from sqlalchemy import select

    from antidistill.store.schema import audit_checkpoints

    with store.engine.connect() as conn:
        rows = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq)).all()
    return [{"seq": int(r.seq), "hash": r.hash, "prev_checkpoint_seq": int(r.prev_checkpoint_seq),
             "created_at": _iso(r.created_at), "public_key": r.public_key,
             "public_key_fingerprint": key_fingerprint(r.public_key), "signature": r.signature} for r in rows]


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


def _prompt_excerpt(request: Any, limit: int = 160) -> str:
    """The last user message (or the raw prompt), shortened: enough for a reader to see what was asked."""
    text = ""
    if isinstance(request, dict):
        msgs = request.get("messages")
        if isinstance(msgs, list):
            for m in msgs:
                if isinstance(m, dict) and m.get("role") == "user":
                    c = m.get("content")
                    if isinstance(c, list):
                        c = " ".join(p.get("text", "") for p in c if isinstance(p, dict)
                                     and isinstance(p.get("text"), str))
                    text = c if isinstance(c, str) else text
        elif isinstance(request.get("prompt"), str):
            text = request["prompt"]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _collect_exchanges(store: Store, ids: set[str], checkpoints: list[dict[str, Any]], limit: int
                       ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, Any]], Counter]:
    """One pass over the audit log: the subject's exchanges, the monitor's action records about it, usage per
    account, and how many of the subject's records each checkpoint covers (``None``: not yet signed)."""
    cp_seqs = [c["seq"] for c in checkpoints]
    coverage: Counter[int | None] = Counter()
    items: list[dict[str, Any]] = []
    actions: list[dict[str, Any]] = []
    usage: dict[str, dict[str, Any]] = {}
    times: list[tuple[datetime, int, int]] = []
    endpoints: Counter[str] = Counter()
    addrs: Counter[str] = Counter()
    agents: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    total = 0
    for rec in store.iter_audit():
        if rec.get("account_id") not in ids:
            continue
        created = _parse_time(rec.get("created_at"))
        i = bisect.bisect_left(cp_seqs, rec["seq"])
        covered_by = cp_seqs[i] if i < len(cp_seqs) else None
        coverage[covered_by] += 1
        if is_pending_record(rec):  # a stream's opening record; its final record is the exchange
            continue
        if str(rec.get("endpoint") or "").startswith(ACTION_PREFIX):
            actions.append({"seq": rec["seq"], "account_id": rec["account_id"], "at": rec.get("created_at"),
                            "details": rec.get("request") or {}, "hash": rec["hash"],
                            "checkpoint_seq": covered_by})
            continue
        total += 1
        wm = rec.get("watermark") if isinstance(rec.get("watermark"), dict) else {}
        key_id = wm.get("key_id") if isinstance(wm.get("key_id"), str) else None
        u = usage.setdefault(rec["account_id"], {**_empty_usage(), "watermark_key_ids": set()})
        u["exchanges"] += 1
        u["prompt_tokens"] += int(rec.get("prompt_tokens") or 0)
        u["completion_tokens"] += int(rec.get("completion_tokens") or 0)
        u["first_exchange"] = u["first_exchange"] or rec.get("created_at")
        u["last_exchange"] = rec.get("created_at")
        if key_id:
            u["watermark_key_ids"].add(key_id)
        else:
            u["unwatermarked"] += 1
        endpoints[str(rec.get("endpoint"))] += 1
        addrs[str(rec.get("client_addr") or "-")] += 1
        agents[str(rec.get("user_agent") or "-")] += 1
        statuses[str(rec.get("status"))] += 1
        if created is not None:
            times.append((created, int(rec.get("prompt_tokens") or 0), int(rec.get("completion_tokens") or 0)))
        if len(items) < limit:
            items.append({"seq": rec["seq"], "response_id": rec.get("response_id"), "account_id": rec["account_id"],
                          "created_at": rec.get("created_at"), "endpoint": rec.get("endpoint"),
                          "status": rec.get("status"), "prompt_tokens": rec.get("prompt_tokens"),
                          "completion_tokens": rec.get("completion_tokens"),
                          "watermark_key_id": key_id, "watermark_status": None if key_id else wm.get("status"),
                          "prompt_excerpt": _prompt_excerpt(rec.get("request")), "hash": rec["hash"],
                          "checkpoint_seq": covered_by})
    for u in usage.values():
        u["watermark_key_ids"] = sorted(u["watermark_key_ids"])
    section = {
        "count": total,
        "listed": len(items),
        "truncated": total > len(items),
        "prompt_tokens": sum(u["prompt_tokens"] for u in usage.values()),
        "completion_tokens": sum(u["completion_tokens"] for u in usage.values()),
        "first": min((t for t, _, _ in times), default=None),
        "last": max((t for t, _, _ in times), default=None),
        "endpoints": dict(endpoints.most_common()),
        "client_addrs": dict(addrs.most_common(20)),
        "user_agents": dict(agents.most_common(20)),
        "statuses": dict(statuses.most_common()),
        "unwatermarked": sum(u["unwatermarked"] for u in usage.values()),
        "timeline": _timeline(times),
        "items": items,
    }
    section["first"], section["last"] = _iso(section["first"]), _iso(section["last"])
    return section, actions, usage, coverage


def _timeline(times: list[tuple[datetime, int, int]], max_bins: int = 2000) -> dict[str, Any]:
    """Exchanges and tokens per hour (a span up to three days) or per day, empty bins included."""
    if not times:
        return {"bin": None, "bins": []}
    first, last = min(t for t, _, _ in times), max(t for t, _, _ in times)
    unit = "hour" if last - first <= timedelta(days=3) else "day"
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)

    def floor(t: datetime) -> datetime:
        t = t.astimezone(UTC)
        return t.replace(minute=0, second=0, microsecond=0) if unit == "hour" else \
            t.replace(hour=0, minute=0, second=0, microsecond=0)

    start = floor(first)
    n = int((floor(last) - start) / step) + 1
    if n > max_bins:  # a long history: weeks instead of days keeps the plot readable
        unit, step, n = "week", timedelta(days=7), int((floor(last) - start) / timedelta(days=7)) + 1
    bins = [{"start": _iso(start + i * step), "exchanges": 0, "prompt_tokens": 0, "completion_tokens": 0}
            for i in range(n)]
    for t, pt, ct in times:
        b = bins[min(int((t - start) / step), n - 1)]
        b["exchanges"] += 1
        b["prompt_tokens"] += pt
        b["completion_tokens"] += ct
    return {"bin": unit, "bins": bins}


def _audit_section(store: Store, v: Any, checkpoints: list[dict[str, Any]], coverage: Counter,
                   database: str | None) -> dict[str, Any]:
    head = store.audit_head()
    listed = [{**c, "covers": [c["prev_checkpoint_seq"] + 1, c["seq"]], "subject_records": coverage[c["seq"]]}
              for c in checkpoints if c["seq"] in coverage]
    keys = sorted({c["public_key"] for c in checkpoints})
    signer = v.details.get("public_key") if isinstance(v.details, dict) else None
    db = f" --database-url {shlex.quote(database)}" if database else ""
    details = {k: v.details[k] for k in ("head_seq", "head_hash", "public_key_checked", "since_checkpoint",
                                         "last_checkpoint_seq", "kind", "rewritten_between")
               if isinstance(v.details, dict) and k in v.details}
    return {
        "verification": {"ok": v.ok, "records": v.records, "checkpoints": v.checkpoints,
                         "first_bad_seq": v.first_bad_seq, "first_bad_response_id": v.first_bad_response_id,
                         "problem": v.problem, "details": details},
        "head": {"seq": head.seq, "hash": head.hash, "last_checkpoint_seq": head.last_checkpoint_seq,
                 "signed_at": head.signed.to_json()["signed_at"] if head.signed else None,
                 "signature": head.signed.signature if head.signed else None},
        "checkpoint_every": getattr(getattr(store, "_settings", None), "audit_checkpoint_every", None),
        "public_key": signer or (keys[0] if len(keys) == 1 else None),
        "public_key_fingerprint": key_fingerprint(signer or (keys[0] if len(keys) == 1 else None)),
        "public_keys_seen": keys,
        "checkpoints_total": len(checkpoints),
        "checkpoints_covering": len(listed),
        "checkpoints": listed,
        "subject_records": sum(coverage.values()),
        "subject_records_unsigned": coverage.get(None, 0),
        "reverify": [
            {"command": f"antidistill audit verify --json{db}",
             "what": "recomputes every record's hash and checks every checkpoint's signature"},
            {"command": f"antidistill audit export --output audit.jsonl{db}",
             "what": "writes the whole log; each line holds a record, its hash and the previous record's hash, "
                     "so anyone can recompute the chain without our software"},
        ],
    }


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
        return _iso(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


def _alerts(store: Store, account_id: str | None) -> list[dict[str, Any]]:
    fn = getattr(store, "list_alerts", None)
    if not callable(fn):
        return []
    return [_jsonable(_plain(a)) for a in fn(account_id=account_id)]


def _monitor_section(store: Store, subject: Subject, actions: list[dict[str, Any]]) -> dict[str, Any]:
    has_alerts = callable(getattr(store, "list_alerts", None))
    has_enf = callable(getattr(store, "get_enforcement", None))
    alerts: list[dict[str, Any]] = []
    enforcement: dict[str, Any] = {}
    if has_alerts:
        for a in subject.account_ids:
            alerts += _alerts(store, a)
        alerts.sort(key=lambda a: (str(a.get("at") or ""), str(a.get("account_id") or "")))
    if has_enf:
        for a in subject.account_ids:
            e = store.get_enforcement(a)
            if e is not None:
                enforcement[a] = _jsonable(_plain(e))
    available = has_alerts or has_enf or bool(actions)
    levels = [str(a.get("level")) for a in alerts if a.get("level")]
    from antidistill.monitor.api import LEVELS

    top = max(levels, key=lambda lv: LEVELS.index(lv) if lv in LEVELS else -1, default=None)
    return {
        "available": available,
        "note": None if available else "no monitor data: this installation keeps no alerts or enforcement records",
        "alerts": alerts,
        "highest_level": top,
        "max_risk": max((r for a in alerts if (r := _num(a.get("risk"))) is not None), default=None),
        "enforcement": enforcement,
        "actions": [_jsonable(a) for a in actions],
    }


# ---- policy ------------------------------------------------------------------------------------------
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


def load_policy(path: str | os.PathLike[str] | None = None) -> Any:
    """The policy (its clauses are quoted in the report): the file at ``path``, else the shipped default.

    Returns ``None`` when the monitor's policy module is not part of this build and no ``path`` was given.

    Raises:
        InputError: ``path`` cannot be read or is not a valid policy.
    """
    try:
        from antidistill.monitor.policy import Policy
    except ImportError:
        if path is not None:
            raise InputError("--policy needs the monitor's policy module, which this build lacks") from None
        return None
    from antidistill.errors import ConfigError

    try:
        return Policy.load(path)
    except ConfigError as exc:
        if path is not None:
            raise InputError(str(exc)) from None
        log.warning("the default policy could not be read: %s", exc)
        return None


def _policy_section(policy: Any, monitor: dict[str, Any]) -> dict[str, Any]:
    clauses = _clauses(policy)
    by_id = {c["id"]: c for c in clauses or []}
    cited: dict[str, dict[str, Any]] = {}

    def cite(cid: Any, where: str) -> None:
        for one in (cid if isinstance(cid, list) else [cid]):
            # an action record quotes the clause itself ({id, title, text}); an alert names its id
            quoted = one if isinstance(one, dict) else {}
            key = quoted.get("id") if quoted else one
            if key is None or key == "":
                continue
            key = str(key)
            known = by_id.get(key, {})
            c = cited.setdefault(key, {"id": key, "title": known.get("title") or quoted.get("title"),
                                       "text": known.get("text") or quoted.get("text"), "cited_by": []})
            if quoted and known and quoted.get("text") and quoted.get("text") != known.get("text"):
                c["quoted_text_differs"] = True  # the policy file changed since the action was taken
            if where not in c["cited_by"]:
                c["cited_by"].append(where)

    for act in monitor["actions"]:
        d = act.get("details") if isinstance(act.get("details"), dict) else {}
        if d.get("action") not in (None, "none"):
            cite(d.get("clause"), f"{d.get('action')} of {act.get('account_id')} (audit record {act.get('seq')})")
    for a in monitor["alerts"]:
        cite(a.get("clause"), f"{a.get('level')} alert on {a.get('account_id')} at {a.get('at')}")
    for acct, e in monitor["enforcement"].items():
        if e.get("action") not in (None, "none"):
            cite(e.get("clause"), f"current enforcement of {acct}: {e.get('action')}")
    name = policy.get("name") if isinstance(policy, Mapping) else getattr(policy, "name", None)
    source = policy.get("source") if isinstance(policy, Mapping) else getattr(policy, "source", None)
    return {"available": clauses is not None, "name": name, "source": source,
            "clauses_breached": list(cited.values()),
            "clauses_total": len(clauses) if clauses is not None else None,
            "note": None if clauses is not None else "no policy file was loaded: clause texts are not shown"}


# ---- scans -------------------------------------------------------------------------------------------
def _gamma(scan: dict[str, Any]) -> float | None:
    params = scan.get("parameters") if isinstance(scan.get("parameters"), dict) else {}
    for cand in (params.get("watermark"), params.get("config"), params.get("watermark_config"), params):
        if isinstance(cand, dict) and _is_prob(cand.get("gamma")) and 0 < cand["gamma"] < 1:
            return float(cand["gamma"])
    return None


def _alpha(scan: dict[str, Any]) -> float:
    params = scan.get("parameters") if isinstance(scan.get("parameters"), dict) else {}
    for v in (params.get("alpha"), scan.get("alpha")):
        if _is_prob(v) and 0 < v < 1:
            return float(v)
    return DEFAULT_ALPHA


def _result_row(row: dict[str, Any], gamma: float | None) -> dict[str, Any]:
    green, n = _int(row.get("green")), _int(row.get("n"))
    return {"green": green, "n": n, "fraction": green / n if green is not None and n else None,
            "expected_fraction": gamma, "p_value": _num(row.get("p_value")),
            "p_corrected": _num(row.get("p_corrected")), "z": _num(row.get("z")),
            "key_id": row.get("key_id") if isinstance(row.get("key_id"), str) else None}


def _row_account(row: Any) -> str | None:
    if isinstance(row, dict):
        a = row.get("account_id", row.get("account"))
        return str(a) if a is not None else None
    return str(row) if isinstance(row, str) else None


def _subject_result(scan: dict[str, Any], subject: Subject, gamma: float | None) -> dict[str, Any] | None:
    """The scan's answer for the subject: the account's attribution row, the cluster's pooled row, or (for a
    cluster the scan did not pool) the pooled counts of its accounts, computed here with the exact binomial test."""
    accts = {_row_account(r): r for r in scan.get("accounts") or [] if isinstance(r, dict)}
    if subject.kind == "account":
        row = accts.get(subject.id)
        if row is None:
            return None
        return {"kind": "account", "id": subject.id, "computed_by": "scan", **_result_row(row, gamma)}
    want = set(subject.account_ids)
    for c in scan.get("clusters") or []:
        if isinstance(c, dict) and (c.get("cluster_id") == subject.id or set(c.get("accounts") or []) == want):
            return {"kind": "cluster", "id": subject.id, "computed_by": "scan", **_result_row(c, gamma)}
    rows = [accts[a] for a in subject.account_ids if a in accts]
    params = scan.get("parameters") if isinstance(scan.get("parameters"), dict) else {}
    # Each account row is the best of its key versions; summing such maxima is exact only when every account has
    # one version (then the rows are K independent Binomial(n, gamma) counts on the same positions).
    one_version = _int(params.get("account_keys")) is not None and params.get("account_keys") == params.get("accounts")
    if not rows or gamma is None or not one_version or any(_int(r.get("green")) is None or _int(r.get("n")) is None
                                                          for r in rows):
        return None
    from antidistill.detection.stats import binomial_sf, z_score

    green = sum(int(r["green"]) for r in rows)
    n = sum(int(r["n"]) for r in rows)
    p = float(binomial_sf(green, n, gamma)) if n else 1.0
    # The cluster was named before the scan (by the monitor or the complainant): one test, nothing to correct.
    return {"kind": "cluster", "id": subject.id,
            "computed_by": f"the report, pooling the green counts of {len(rows)} of {len(want)} accounts "
                           f"(exact binomial test)", "green": green, "n": n,
            "fraction": green / n if n else None, "expected_fraction": gamma, "p_value": p, "p_corrected": p,
            "z": z_score(green, n, gamma) if n else None, "key_id": None}


def _controls(scan: dict[str, Any], alpha: float) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The scan's controls: never-issued keys (many tests: corrected for their number, as the scanner does) and
    known-clean models (each one test). Returns the list and a summary of the keyed ones."""
    raw = [c for c in scan.get("controls") or [] if isinstance(c, dict)]
    keyed = [c for c in raw if not c.get("model")]
    out = []
    for c in raw:
        p = _num(c.get("p_value"))
        is_key = not c.get("model")
        p_corr = min(1.0, p * len(keyed)) if p is not None and is_key else p
        out.append({"name": str(c.get("name") or c.get("key") or c.get("model") or "control"),
                    "kind": "key" if is_key else "model", "model": c.get("model"), "key": c.get("key"),
                    "green": _int(c.get("green")), "tokens_scored": _int(c.get("tokens_scored")), "p_value": p,
                    "p_corrected": p_corr, "significant": p_corr is not None and p_corr <= alpha})
    summary = None
    if keyed:
        ps = [c["p_value"] for c in out if c["kind"] == "key" and c["p_value"] is not None]
        low = min(ps, default=None)
        summary = {"count": len(keyed), "min_p": low,
                   "min_p_corrected": None if low is None else min(1.0, low * len(keyed)),
                   "significant": any(c["significant"] for c in out if c["kind"] == "key")}
    return out, summary


def _curve(scan: dict[str, Any]) -> list[dict[str, Any]]:
    pts = []
    for pt in scan.get("curve") or []:
        if not isinstance(pt, dict):
            continue
        t = _int(pt.get("tokens_scored", pt.get("tokens")))
        p = _num(pt.get("provider_p", pt.get("p_value")))
        b = _num(pt.get("best_account_p"))
        if t is not None and (p is not None or b is not None):
            pts.append({"tokens": t, "p_value": p, "best_account_p": b})
    return sorted(pts, key=lambda x: x["tokens"])


def _scan_entry(scan: dict[str, Any], source: dict[str, Any], role: str, subject: Subject) -> dict[str, Any]:
    scan = scrub(scan)
    gamma = _gamma(scan)
    alpha = _alpha(scan)
    provider = scan.get("provider") if isinstance(scan.get("provider"), dict) else None
    p = _num(scan.get("p_value"))
    if p is None and provider is not None:
        p = _num(provider.get("p_value"))
    controls, key_controls = _controls(scan, alpha)
    subj = _subject_result(scan, subject, gamma)
    subj_p = None if subj is None else (subj["p_corrected"] if subj["p_corrected"] is not None else subj["p_value"])
    verdict = scan.get("verdict")
    return {
        "role": role,
        "source": source,
        "suspect": str(scan.get("suspect") or source.get("path") or "suspect model"),
        "mode": scan.get("mode"),
        "alpha": alpha,
        "gamma": gamma,
        "p_value": p,
        "significant": p is not None and p <= alpha,
        "verdict": verdict if isinstance(verdict, str) else None,
        "texts": _int(scan.get("texts")),
        "tokens_seen": _int(scan.get("tokens_seen")),
        "tokens_scored": _int(scan.get("tokens_scored")),
        "skipped": {str(k): v for k, v in scan["skipped"].items()} if isinstance(scan.get("skipped"), dict) else {},
        "provider": None if provider is None else _result_row(provider, gamma),
        "subject_result": subj,
        "subject_p": subj_p,
        "subject_significant": subj_p is not None and subj_p <= alpha,
        "best_account": _row_account(scan.get("best_account")),
        "attributed_account": scan.get("attributed_account"),
        "attributed_cluster": scan.get("attributed_cluster"),
        "accounts_tested": len(scan.get("accounts") or []),
        "controls": controls,
        "key_controls": key_controls,
        "controls_ok": scan.get("controls_ok") if isinstance(scan.get("controls_ok"), bool) else
        not any(c["significant"] for c in controls),
        "curve": _curve(scan),
        "parameters": scan.get("parameters") if isinstance(scan.get("parameters"), dict) else {},
        "raw": scan,
    }


def control_rows(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """Every control of the report, one row each (never-issued keys of a scan summarised as one row)."""
    rows = []
    for i, s in enumerate(ev["scans"]):
        if s["role"] == "control":
            rows.append({"label": s["suspect"], "where": "separate scan of a model that never saw our outputs",
                         "path": f"scans.{i}", "p_value": s["p_value"], "tokens_scored": s["tokens_scored"],
                         "significant": s["significant"]})
        for j, c in enumerate(s["controls"]):
            if c["kind"] == "model":
                rows.append({"label": c["name"], "where": f"model scanned with {s['suspect']}",
                             "path": f"scans.{i}.controls.{j}", "p_value": c["p_value"],
                             "tokens_scored": c["tokens_scored"], "significant": c["significant"]})
        if s["key_controls"]:
            k = s["key_controls"]
            rows.append({"label": f"{k['count']} keys that never marked anything",
                         "where": f"the text of {s['suspect']}, scored with random keys",
                         "path": f"scans.{i}.key_controls", "p_value": k["min_p_corrected"],
                         "tokens_scored": s["tokens_scored"], "significant": k["significant"]})
    return rows


# ---- the summary in plain words ----------------------------------------------------------------------
def _subject_words(ev: dict[str, Any]) -> str:
    s = ev["subject"]
    if s["kind"] == "account":
        name = ev["accounts"][0]["name"] if ev["accounts"] else ""
        return f"account {s['id']}" + (f" (“{name}”)" if name else "")
    return f"the group of {len(s['account_ids'])} linked accounts “{s['id']}”"


def _summary(ev: dict[str, Any]) -> dict[str, Any]:
    who = _subject_words(ev)
    ex = ev["exchanges"]
    findings: list[dict[str, str]] = []
    confidence: list[dict[str, Any]] = []
    # harvest
    if ex["count"]:
        period = f"between {ex['first'][:10]} and {ex['last'][:10]}" if ex["first"] else ""
        findings.append({"topic": "harvest", "text": (
            f"Our service answered {ex['count']:,} requests from {who} {period}, sending "
            f"{'them' if ev['subject']['kind'] == 'cluster' else 'it'} "
            f"{ex['completion_tokens']:,} tokens (pieces of words) of generated text. Every answer was "
            f"recorded in our tamper-evident log" + (
                "." if not ex["unwatermarked"] else
                f"; {ex['unwatermarked']:,} of them were not watermarked.")).replace("  ", " ")})
    else:
        findings.append({"topic": "harvest", "text": f"Our audit log holds no exchanges of {who}."})
    # the scans
    suspects = [s for s in ev["scans"] if s["role"] == "suspect"]
    if not suspects:
        findings.append({"topic": "model", "text": "No suspect model was tested for this report."})
    for s in suspects:
        prov = s["provider"]
        if prov and prov["n"]:
            frac = f"{prov['fraction']:.1%}" if prov["fraction"] is not None else "-"
            exp = f"{prov['expected_fraction']:.0%}" if prov["expected_fraction"] is not None else "a fixed share"
            findings.append({"topic": "model", "text": (
                f"We tested the suspect model “{s['suspect']}” for our service-wide watermark. Of "
                f"{prov['n']:,} distinct word choices we checked, {prov['green']:,} ({frac}) fell on our secret "
                f"lists; a model that never saw our outputs lands there about {exp} of the time. "
                + ("This is a significant excess: the model was very likely trained on our outputs."
                   if s["significant"] else
                   "This is not a significant excess: the test does not show that the model learned from "
                   "our outputs."))})
        else:
            findings.append({"topic": "model", "text": (
                f"We tested the suspect model “{s['suspect']}”: the scan's overall result is "
                + ("significant." if s["significant"] else "not significant."))})
        sr = s["subject_result"]
        plural = sr is not None and sr["kind"] == "cluster"
        if sr is not None:
            frac = f"{sr['fraction']:.1%}" if sr["fraction"] is not None else "-"
            findings.append({"topic": "attribution", "text": (
                f"Tested against the secret {'keys' if plural else 'key'} of {who}, {sr['green']:,} of "
                + (f"{sr['n']:,} checks (each word choice against each account's key, pooled)" if plural else
                   f"{sr['n']:,} checked word choices")
                + f" ({frac}) fell on {'their' if plural else 'its'} lists. "
                + (f"The model carries the mark of {who}: it was trained on text our service sent to "
                   + ("these accounts." if plural else "this account.")
                   if s["subject_significant"] else
                   f"This does not show that the model was trained on the answers sent to {who}."))})
        elif s["accounts_tested"]:
            findings.append({"topic": "attribution", "text": (
                f"The scan did not test the {'keys' if ev['subject']['kind'] == 'cluster' else 'key'} of {who}; "
                f"its best-matching account was {s['best_account'] or 'none'}.")})
        idx = ev["scans"].index(s)
        tests = []
        if s["subject_p"] is not None:
            tests.append(("subject", s["subject_p"], "on these accounts' keys" if plural else "on this account's key",
                          f"had never been trained on the answers our service sent to {who}"))
        if s["p_value"] is not None:
            tests.append(("ours", s["p_value"], "on our keys", "had never been trained on our outputs"))
        for about, p, on, null in tests:
            n, words = one_in(p)
            if p <= s["alpha"]:
                text = (f"If the suspect model “{s['suspect']}” {null}, a result this strong {on} would happen by "
                        f"chance {p_words(p)}: the p-value is {fmt_p(p)}. We call a result significant only below "
                        f"{fmt_p(s['alpha'])}, that is, when it would happen by chance less often than once in "
                        f"{one_in(s['alpha'])[1]}.")
            else:
                text = (f"Even if the suspect model “{s['suspect']}” {null}, a result at least this strong {on} "
                        f"would happen by chance {p_words(p)}: the p-value is {fmt_p(p)}. That is not rare enough: "
                        f"we call a result significant only below {fmt_p(s['alpha'])} (once in "
                        f"{one_in(s['alpha'])[1]}).")
            confidence.append({"scan": idx, "suspect": s["suspect"], "about": about, "p_value": p,
                               "alpha": s["alpha"], "one_in": n, "one_in_words": words,
                               "significant": p <= s["alpha"], "text": text})
    # controls
    ctrl = control_rows(ev)
    if ctrl:
        bad = [c["label"] for c in ctrl if c["significant"]]
        if bad:
            findings.append({"topic": "controls", "text": (
                f"Warning: {len(bad)} of {len(ctrl)} control tests came out significant ({'; '.join(bad)}), "
                f"although controls cannot carry our watermark. The test may be miscalibrated for this "
                f"material; treat the results above with caution.")})
        else:
            findings.append({"topic": "controls", "text": (
                f"All {len(ctrl)} control tests (models that never saw our outputs, and secret keys that never "
                f"marked anything, scored the same way) came out not significant, as they should: the test does "
                f"not find our watermark where it is absent.")})
    # monitor
    mon = ev["monitor"]
    if mon["alerts"] or mon["actions"] or mon["enforcement"]:
        sentences = []
        if mon["alerts"]:
            n_al = len(mon["alerts"])
            sentences.append(f"Our traffic monitor raised {n_al} alert{'s' if n_al != 1 else ''} on {who} (highest "
                             f"level: {mon['highest_level'] or '-'}).")
        acts = [a["details"].get("action") for a in mon["actions"] if isinstance(a.get("details"), dict)]
        acts = [a for a in acts if a]
        if acts:
            sentences.append(f"Under our terms of service we took {len(acts)} enforcement "
                             f"action{'s' if len(acts) != 1 else ''} ({', '.join(acts)}), each recorded in the "
                             f"audit log.")
        now_in_force = [f"{acct} is under “{e.get('action')}”" for acct, e in mon["enforcement"].items()
                        if e.get("action") not in (None, "none")]
        if now_in_force:
            sentences.append("When this report was made, " + "; ".join(now_in_force) + ".")
        clauses = [c["id"] for c in ev["policy"]["clauses_breached"]]
        if clauses:
            sentences.append(f"Clauses of the terms of service cited: {', '.join(clauses)}.")
        findings.append({"topic": "monitor", "text": " ".join(sentences)})
    elif not mon["available"]:
        findings.append({"topic": "monitor", "text": "No monitor data: this installation keeps no alerts."})
    else:
        findings.append({"topic": "monitor", "text": f"Our traffic monitor raised no alert on {who}."})
    # audit
    v = ev["audit"]["verification"]
    if v["ok"]:
        findings.append({"topic": "audit", "text": (
            f"The audit log verifies: all {v['records']:,} records match their hashes and all {v['checkpoints']:,} "
            f"signed checkpoints carry valid signatures, so the records above have not been altered since they "
            f"were signed."
            + (f" {ev['audit']['subject_records_unsigned']:,} of this report's records come after the last "
               f"signed checkpoint: the signed head of the log covers them."
               if ev["audit"]["subject_records_unsigned"] else ""))})
    else:
        findings.append({"topic": "audit", "text": (
            f"The audit log FAILED verification at record {v['first_bad_seq']}: {v['problem']}. Records from "
            f"there on cannot be relied upon as unaltered; {v['records']:,} records before it verified.")})
    controls_ok = not any(c["significant"] for c in ctrl)
    if not suspects:
        verdict = "not_tested"
    elif any(s["subject_significant"] for s in suspects):
        verdict = "attributed"
    elif any(s["significant"] for s in suspects):
        verdict = "ours_not_attributed"
    else:
        verdict = "not_shown"
    them = "these accounts" if ev["subject"]["kind"] == "cluster" else "this account"
    headline = {
        "attributed": f"The suspect model carries our watermark, and the mark of {who}: it was trained on "
                      f"outputs our service sent to {them}.",
        "ours_not_attributed": f"The suspect model carries our watermark: it was trained on outputs of our service. "
                               f"The test does not tie it to {who}.",
        "not_shown": "The tests do not show that the suspect model was trained on our outputs.",
        "not_tested": f"This report documents the activity of {who}; no suspect model was tested.",
    }[verdict]
    if suspects and not controls_ok:
        headline += (" But a control test came out significant too, so the result must be reviewed before it is "
                     "relied upon.")
    if not v["ok"]:
        headline += " The audit log failed verification (see below)."
    return {"verdict": verdict, "controls_ok": controls_ok, "headline": headline, "findings": findings,
            "confidence": confidence}


# ---- writing -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportFiles:
    """Where :func:`write_report` put the package."""

    html: Path
    json: Path
    sums: Path


def evidence_json(evidence: dict[str, Any]) -> str:
    """The JSON text of the evidence (sorted keys, readable non-ASCII, no NaN)."""
    return json.dumps(evidence, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str) + "\n"


def write_report(evidence: dict[str, Any], out_dir: str | os.PathLike[str]) -> ReportFiles:
    """Write ``report.json``, ``report.html`` and ``SHA256SUMS`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or type(exc).__name__}") from None
    files = ReportFiles(out / "report.html", out / "report.json", out / "SHA256SUMS")
    jtext = evidence_json(evidence)
    htext = render_html(json.loads(jtext))  # the HTML sees exactly what the JSON holds
    sums = "".join(f"{hashlib.sha256(t.encode('utf-8')).hexdigest()}  {name}\n"
                   for name, t in (("report.json", jtext), ("report.html", htext)))
    try:
        for path, text in ((files.json, jtext), (files.html, htext), (files.sums, sums)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write the report into {out}: {exc.strerror or type(exc).__name__}") from None
    return files


# ---- HTML --------------------------------------------------------------------------------------------
def lookup(evidence: Any, path: str) -> Any:
    """The value at a dotted ``path`` (list indices as numbers), as ``data-field`` attributes name them.

    Example:
        >>> lookup({"a": [{"b": 3}]}, "a.0.b")
        3
    """
    cur = evidence
    for part in path.split("."):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


class _Html:
    """Renders values of the evidence, each tagged with its JSON path."""

    def __init__(self, ev: dict[str, Any]) -> None:
        self.ev = ev

    def f(self, path: str, fmt: str = "text") -> str:
        value = lookup(self.ev, path)
        shown = _format(value, fmt)
        raw = json.dumps(value, ensure_ascii=False, sort_keys=True)
        return (f'<span data-field="{html.escape(path)}" data-value="{html.escape(raw)}">'
                f"{shown}</span>")


def _format(value: Any, fmt: str) -> str:
    """A JSON value as HTML text (escaped). ``fmt``: text, int, p, pct, code, time, bool."""
    if value is None:
        return "-"
    if fmt == "int" and isinstance(value, int | float):
        return f"{int(value):,}"
    if fmt == "p":
        return _p_html(value)
    if fmt == "pct" and isinstance(value, int | float):
        return f"{value:.1%}"
    if fmt == "code":
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        return f"<code>{html.escape(shown)}</code>"
    if fmt == "time" and isinstance(value, str):
        t = _parse_time(value)
        return html.escape(t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else value)
    if fmt == "bool":
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return html.escape(json.dumps(value, ensure_ascii=False, sort_keys=True))
    # powers of ten written 10^k in the JSON's sentences are set as superscripts
    return re.sub(r"10\^(-?\d+)", lambda m: f"10<sup>{m.group(1).replace('-', '−')}</sup>", html.escape(str(value)))


def _p_html(p: Any) -> str:
    v = _num(p)
    if v is None:
        return "-"
    text = fmt_p(v)
    if "10^" in text:
        base, exp = text.split("10^")
        return f"{html.escape(base)}10<sup>{exp.replace('-', '−')}</sup>"
    return html.escape(text)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str | None = None,
           cls: str = "") -> str:
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _e(s: Any) -> str:
    return html.escape("-" if s is None else str(s))


_CSS = """
:root { color-scheme: light; }
body { font-family: Georgia, 'Times New Roman', serif; line-height: 1.5; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #111; background: #fff; }
h1, h2, h3 { font-family: Helvetica, Arial, sans-serif; line-height: 1.2; }
h1 { font-size: 1.8rem; border-bottom: 3px solid #333; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; border-bottom: 1px solid #999; margin-top: 2.2rem; }
h3 { font-size: 1.1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: .8rem 0; width: 100%; font-size: .9rem; }
caption { text-align: left; font-style: italic; padding-bottom: .3rem; }
th, td { border: 1px solid #888; padding: .25rem .45rem; text-align: left; vertical-align: top; }
th { background: #eee; }
code, .mono { font-family: 'DejaVu Sans Mono', Consolas, monospace; font-size: .85em; word-break: break-all; }
.headline { font-size: 1.2rem; font-weight: bold; padding: .8rem 1rem; border: 2px solid #333; }
.ok { color: #05560f; } .bad { color: #9b0000; font-weight: bold; }
.box { border-left: 4px solid #555; padding: .2rem 1rem; background: #f6f6f6; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ccc; }
figcaption { font-size: .9rem; font-style: italic; }
dt { font-weight: bold; margin-top: .6rem; } dd { margin-left: 1.5rem; }
nav ol { columns: 2; }
.small { font-size: .85rem; color: #333; }
@media print {
  body { max-width: none; margin: 0; font-size: 10.5pt; }
  h2 { break-after: avoid; } table, figure { break-inside: avoid; }
  .appendix { break-before: page; }
  a { color: inherit; text-decoration: none; }
}
"""


def render_html(evidence: dict[str, Any]) -> str:
    """The HTML report, rendered from the evidence dict alone (see the module docstring)."""
    ev = evidence
    h = _Html(ev)
    subj = ev["subject"]
    title = f"Evidence report: {'account' if subj['kind'] == 'account' else 'cluster'} {subj['id']}"
    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add(f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>")
    add(f"<header><h1>{_e(title)}</h1>")
    add(f'<p class="small">Generated {h.f("generated_at", "time")} by antidistill '
        f'{h.f("antidistill_version")} (format {h.f("format", "code")}). The machine-readable twin of this '
        f"document is <code>report.json</code>; both files' SHA-256 hashes are in <code>SHA256SUMS</code> beside "
        f"them. Every number below is marked with its place in the JSON.</p></header>")
    add('<nav aria-label="Contents"><h2>Contents</h2><ol>'
        '<li><a href="#summary">What we found</a></li><li><a href="#sure">How sure we are</a></li>'
        '<li><a href="#accounts">The accounts</a></li><li><a href="#harvest">What was harvested</a></li>'
        '<li><a href="#scans">The test of the suspect model</a></li><li><a href="#controls">Controls</a></li>'
        '<li><a href="#monitor">Monitoring and enforcement</a></li><li><a href="#policy">Terms breached</a></li>'
        '<li><a href="#audit">Integrity of the records</a></li><li><a href="#glossary">Glossary</a></li>'
        '<li><a href="#method">How the method works</a></li><li><a href="#app-exchanges">Appendix A: '
        'exchanges</a></li><li><a href="#app-checkpoints">Appendix B: signed checkpoints</a></li>'
        '<li><a href="#app-hashes">Appendix C: hashes and inputs</a></li></ol></nav>')
    add(_summary_html(h))
    add(_accounts_html(h))
    add(_harvest_html(h))
    add(_scans_html(h))
    add(_controls_html(h))
    add(_monitor_html(h))
    add(_policy_html(h))
    add(_audit_html(h))
    add(_glossary_html(h))
    add(_method_html(h))
    add(_appendix_html(h))
    add("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_html(h: _Html) -> str:
    ev = h.ev
    s = ev["summary"]
    out = ['<section id="summary" aria-labelledby="h-summary"><h2 id="h-summary">What we found</h2>']
    out.append(f'<p class="headline">{h.f("summary.headline")}</p><ul>')
    for i, _ in enumerate(s["findings"]):
        out.append(f"<li>{h.f(f'summary.findings.{i}.text')}</li>")
    out.append("</ul></section>")
    out.append('<section id="sure" aria-labelledby="h-sure"><h2 id="h-sure">How sure we are</h2>')
    if not s["confidence"]:
        out.append("<p>No suspect model was tested, so this report makes no statistical claim about one.</p>")
    for i, c in enumerate(s["confidence"]):
        cls = "ok" if c["significant"] else ""
        out.append(f'<p class="box {cls}">{h.f(f"summary.confidence.{i}.text")}</p>')
    out.append("<p>What this number means: it is the probability that chance alone produces evidence this "
               "strong against a model that never saw our outputs; in other words, the probability that this test "
               "would accuse an innocent model this strongly (its false-accusation probability). It is not the "
               "probability that this particular conclusion is wrong, which also depends on everything else known "
               "about the case. The calculation is exact (no approximation), and it counts each repeated piece of "
               "text only once (see <a href=\"#method\">How the method works</a>).</p></section>")
    return "\n".join(out)


def _accounts_html(h: _Html) -> str:
    ev = h.ev
    out = ['<section id="accounts" aria-labelledby="h-accounts"><h2 id="h-accounts">The accounts</h2>']
    s = ev["subject"]
    if s["kind"] == "cluster":
        how = {"monitor": "linked by our traffic monitor, which recorded them under this cluster id",
               "list": "named together for this report", "file": "listed in the file given for this report"}
        out.append(f"<p>This report covers {len(s['account_ids'])} accounts {how.get(s['source'], '')}: "
                   f"{h.f('subject.id', 'code')}.</p>")
    rows = []
    for i, a in enumerate(ev["accounts"]):
        md = a["metadata"]
        rows.append([h.f(f"accounts.{i}.id", "code"), h.f(f"accounts.{i}.name"),
                     h.f(f"accounts.{i}.created_at", "time"), h.f(f"accounts.{i}.enabled", "bool"),
                     ", ".join(f"{_e(k)}: " + (h.f(f"accounts.{i}.metadata.{k}") if _path_key(k) else _e(md[k]))
                               for k in md) or "-",
                     h.f(f"accounts.{i}.exchanges", "int"), h.f(f"accounts.{i}.completion_tokens", "int"),
                     ", ".join(h.f(f"accounts.{i}.watermark_key_ids.{j}", "code")
                               for j in range(len(a["watermark_key_ids"]))) or "-"])
    out.append(_table(["Account", "Name", "Opened", "Enabled now", "Registration details", "Exchanges",
                       "Tokens received", "Watermark key ids"], rows,
                      "Accounts covered by this report (key ids name the secret keys; the keys are never shown)"))
    krows = [[h.f(f"accounts.{i}.id", "code"), h.f(f"accounts.{i}.api_keys.{j}.id", "code"),
              h.f(f"accounts.{i}.api_keys.{j}.prefix", "code"), h.f(f"accounts.{i}.api_keys.{j}.created_at", "time"),
              h.f(f"accounts.{i}.api_keys.{j}.revoked_at", "time")]
             for i, a in enumerate(ev["accounts"]) for j in range(len(a["api_keys"]))]
    if krows:
        out.append(_table(["Account", "API key id", "Key begins with", "Issued", "Revoked"], krows,
                          "API keys the accounts used (only the first characters of a key are ever stored "
                          "in readable form)"))
    out.append("</section>")
    return "\n".join(out)


def _harvest_html(h: _Html) -> str:
    ex = h.ev["exchanges"]
    out = ['<section id="harvest" aria-labelledby="h-harvest"><h2 id="h-harvest">What was harvested</h2>']
    out.append(f"<p>{h.f('exchanges.count', 'int')} exchanges (a request and our answer) between "
               f"{h.f('exchanges.first', 'time')} and {h.f('exchanges.last', 'time')}; "
               f"{h.f('exchanges.prompt_tokens', 'int')} tokens sent to us and "
               f"{h.f('exchanges.completion_tokens', 'int')} tokens of generated text received. "
               f"{h.f('exchanges.unwatermarked', 'int')} answers were not watermarked.</p>")
    svg = _plot_timeline(h.ev)
    if svg:
        out.append(_figure(svg, "Exchanges over time",
                           f"Exchanges per {ex['timeline']['bin']} (bars) and tokens received (line) for the accounts "
                           f"of this report; vertical lines mark the monitor's alerts (dashed) and enforcement "
                           f"actions (solid)."))
    for key, label in (("endpoints", "Endpoint"), ("client_addrs", "Client address"),
                       ("user_agents", "Client software")):
        rows = [[_e(k), h.f(f"exchanges.{key}.{k}", "int") if _path_key(k) else _e(n)] for k, n in ex[key].items()]
        if rows:
            out.append(_table([label, "Exchanges"], rows))
    out.append("</section>")
    return "\n".join(out)


def _path_key(k: str) -> str:
    # keys with dots cannot be addressed by a dotted path; they are shown without the data-field mark
    return k if "." not in k else ""


def _scans_html(h: _Html) -> str:
    ev = h.ev
    out = ['<section id="scans" aria-labelledby="h-scans"><h2 id="h-scans">The test of the suspect model</h2>']
    suspects = [(i, s) for i, s in enumerate(ev["scans"]) if s["role"] == "suspect"]
    if not suspects:
        out.append("<p>No suspect model was tested for this report. Run <code>antidistill scan</code> on the "
                   "suspect model and pass its JSON result with <code>--scan</code>.</p></section>")
        return "\n".join(out)
    svg = _plot_curve(ev)
    if svg:
        out.append(_figure(svg, "Strength of the evidence as more text is scored",
                           "The p-value (log scale; lower is stronger evidence) against the number of distinct word "
                           "choices scored, for the suspect model and the controls. The dashed line is the "
                           "significance threshold: a curve below it is a significant result."))
    for i, s in suspects:
        p = f"scans.{i}"
        out.append(f"<h3>Suspect model {h.f(f'{p}.suspect', 'code')}</h3>")
        rows = [["Kind of scan", h.f(f"{p}.mode")],
                ["Tokens looked at", h.f(f"{p}.tokens_seen", "int")],
                ["Distinct word choices scored", h.f(f"{p}.tokens_scored", "int")],
                ["Significance threshold (alpha)", h.f(f"{p}.alpha", "p")],
                ["Overall p-value", h.f(f"{p}.p_value", "p")],
                ["Significant", h.f(f"{p}.significant", "bool")],
                ["Best-matching account", h.f(f"{p}.best_account", "code")],
                ["Account the scanner attributes it to", h.f(f"{p}.attributed_account", "code")],
                ["Accounts tested", h.f(f"{p}.accounts_tested", "int")],
                ["Controls behaved as expected", h.f(f"{p}.controls_ok", "bool")],
                ["The scanner's conclusion", h.f(f"{p}.verdict")]]
        if s["source"].get("sha256"):
            rows.append(["Result file (SHA-256)", f"{h.f(f'{p}.source.path', 'code')}<br>"
                                                 f"{h.f(f'{p}.source.sha256', 'code')}"])
        out.append(_table(["", "Value"], rows, "The scan at a glance"))
        res = []
        if s["provider"]:
            res.append(_result_cells(h, f"{p}.provider", "Our service-wide key (was it trained on our outputs?)"))
        if s["subject_result"]:
            res.append(_result_cells(h, f"{p}.subject_result",
                                     "The account's key (did it supply the training text?)"
                                     if ev["subject"]["kind"] == "account" else
                                     "The accounts' keys, pooled (did they supply the training text?)"))
        if res:
            out.append(_table(["Test", "Word choices scored", "On the secret lists", "Share", "Expected by chance",
                               "p-value", "Corrected p-value"], res, "Results"))
        if s["subject_result"] and s["subject_result"]["computed_by"] != "scan":
            out.append(f"<p class=\"small\">The group's result was {h.f(f'{p}.subject_result.computed_by')}.</p>")
        if s["skipped"]:
            rows = [[_e(k), h.f(f"{p}.skipped.{k}", "int")] for k in s["skipped"] if _path_key(k) == k]
            out.append(_table(["Reason", "Word choices not scored"], rows,
                              "Text left out of the count, and why (see the method notes)"))
        if s["parameters"]:
            rows = [[f"<code>{_e(k)}</code>", h.f(f"{p}.parameters.{k}", "code")]
                    for k in sorted(s["parameters"]) if _path_key(k) == k]
            out.append(_table(["Parameter", "Value"], rows, "Parameters of the scan (enough to repeat it)"))
    out.append("</section>")
    return "\n".join(out)


def _result_cells(h: _Html, p: str, label: str) -> list[str]:
    return [label, h.f(f"{p}.n", "int"), h.f(f"{p}.green", "int"), h.f(f"{p}.fraction", "pct"),
            h.f(f"{p}.expected_fraction", "pct"), h.f(f"{p}.p_value", "p"), h.f(f"{p}.p_corrected", "p")]


def _controls_html(h: _Html) -> str:
    out = ['<section id="controls" aria-labelledby="h-controls"><h2 id="h-controls">Controls</h2>',
           "<p>A control is a test whose answer we know must be &ldquo;no&rdquo;: a model that never saw our outputs, "
           "or secret keys that never marked anything, scored in exactly the same way. Each should come out "
           "<em>not</em> significant; if one does not, the test is not behaving as it should on this material, "
           "and that is reported here rather than hidden.</p>"]
    rows = []
    for c in control_rows(h.ev):
        p = c["path"]
        is_keys = p.endswith("key_controls")
        rows.append([_e(c["label"]), _e(c["where"]),
                     h.f(f"{p}.tokens_scored", "int") if not is_keys else "-",
                     h.f(f"{p}.min_p_corrected" if is_keys else f"{p}.p_value", "p"),
                     _sig(h, f"{p}.significant")])
    if rows:
        out.append(_table(["Control", "What was scored", "Word choices scored",
                           "p-value (for the keys: smallest, corrected for their number)",
                           "Significant (should be no)"], rows))
    else:
        out.append("<p>No control was run for this report.</p>")
    out.append("</section>")
    return "\n".join(out)


def _sig(h: _Html, path: str) -> str:
    v = lookup(h.ev, path)
    return f'<span class="{"bad" if v else "ok"}">{h.f(path, "bool")}</span>'


def _monitor_html(h: _Html) -> str:
    mon = h.ev["monitor"]
    out = ['<section id="monitor" aria-labelledby="h-monitor"><h2 id="h-monitor">Monitoring and enforcement</h2>']
    if not mon["available"]:
        out.append(f"<p>{h.f('monitor.note')}.</p></section>")
        return "\n".join(out)
    out.append("<p>Our traffic monitor scores every account for behaviour typical of harvesting (many prompts "
               "from templates, systematic coverage of topics, long answers demanded, linked accounts) and raises "
               "an alert when the risk passes a level calibrated on ordinary customers.</p>")
    svg = _plot_risk(h.ev)
    if svg:
        out.append(_figure(svg, "Monitor risk over time", "The monitor's risk score (0 to 1) for each account at "
                                                          "each alert."))
    if mon["alerts"]:
        rows = []
        for i, a in enumerate(mon["alerts"]):
            p = f"monitor.alerts.{i}"
            reasons = a.get("reasons") or []
            rows.append([h.f(f"{p}.at", "time") if "at" in a else "-",
                         h.f(f"{p}.account_id", "code") if "account_id" in a else "-",
                         h.f(f"{p}.level") if "level" in a else "-",
                         h.f(f"{p}.risk") if "risk" in a else "-",
                         "<br>".join(h.f(f"{p}.reasons.{j}") for j in range(len(reasons)))
                         if isinstance(reasons, list) else "-",
                         h.f(f"{p}.action") if a.get("action") is not None else "-",
                         h.f(f"{p}.clause") if a.get("clause") is not None else "-"])
        out.append(_table(["When", "Account", "Level", "Risk", "Reasons", "Action", "Clause"], rows, "Alerts"))
    else:
        out.append("<p>The monitor raised no alert on these accounts.</p>")
    if mon["actions"]:
        rows = []
        for i, act in enumerate(mon["actions"]):
            p = f"monitor.actions.{i}"
            d = act.get("details") if isinstance(act.get("details"), dict) else {}
            cl = d.get("clause") if isinstance(d.get("clause"), dict) else {}
            rows.append([h.f(f"{p}.seq"), h.f(f"{p}.at", "time"), h.f(f"{p}.account_id", "code"),
                         (h.f(f"{p}.details.previous") + " → " if d.get("previous") else "")
                         + (h.f(f"{p}.details.action") if "action" in d else "-"),
                         h.f(f"{p}.details.level") if "level" in d else "-",
                         h.f(f"{p}.details.clause.id") if "id" in cl else "-",
                         h.f(f"{p}.details.set_by") if "set_by" in d else "-",
                         h.f(f"{p}.details.reason") if "reason" in d else "-"])
        out.append(_table(["Audit record", "When", "Account", "Action", "Level", "Clause", "By", "Why"], rows,
                          "Enforcement actions, as recorded in the audit log (covered by its signatures)"))
    if mon["enforcement"]:
        rows = []
        for a, e in mon["enforcement"].items():
            if not _path_key(a):
                continue
            p = f"monitor.enforcement.{a}"
            rows.append([h.f(f"{p}.account_id", "code") if "account_id" in e else _e(a),
                         *(h.f(f"{p}.{k}", fmt) if k in e else "-" for k, fmt in
                           (("action", "text"), ("level", "text"), ("clause", "text"), ("since", "time"),
                            ("until", "time"), ("set_by", "text")))])
        out.append(_table(["Account", "Current action", "Level", "Clause", "Since", "Until", "Set by"], rows,
                          "Enforcement in force when this report was made"))
    out.append("</section>")
    return "\n".join(out)


def _policy_html(h: _Html) -> str:
    pol = h.ev["policy"]
    out = ['<section id="policy" aria-labelledby="h-policy"><h2 id="h-policy">Terms of service breached</h2>']
    if not pol["clauses_breached"]:
        out.append("<p>No clause of the terms of service was cited by the monitor for these accounts.</p>")
    for i, c in enumerate(pol["clauses_breached"]):
        p = f"policy.clauses_breached.{i}"
        out.append(f"<h3>Clause {h.f(f'{p}.id')}" + (f": {h.f(f'{p}.title')}" if c.get("title") else "") + "</h3>")
        if c.get("text"):
            out.append(f"<blockquote>{h.f(f'{p}.text')}</blockquote>")
        out.append("<p class=\"small\">Cited by: " + "; ".join(h.f(f"{p}.cited_by.{j}")
                                                             for j in range(len(c["cited_by"]))) + "</p>")
    if pol["note"]:
        out.append(f"<p class=\"small\">{h.f('policy.note')}.</p>")
    out.append("</section>")
    return "\n".join(out)


def _audit_html(h: _Html) -> str:
    a = h.ev["audit"]
    v = a["verification"]
    out = ['<section id="audit" aria-labelledby="h-audit"><h2 id="h-audit">Integrity of the records</h2>',
           "<p>Every exchange is written to an audit log in which each record contains a fingerprint (SHA-256 hash) "
           "of the record before it, so changing, removing or inserting any record breaks every fingerprint after "
           "it. At regular intervals the latest fingerprint is signed with our private signing key (Ed25519); the "
           "matching public key below lets anyone check the signatures without being able to forge them.</p>"]
    if v["ok"]:
        out.append(f'<p class="box ok"><strong>Verified.</strong> {h.f("audit.verification.records", "int")} '
                   f"records checked, {h.f('audit.verification.checkpoints', 'int')} signed checkpoints valid.</p>")
    else:
        out.append(f'<p class="box bad"><strong>Verification FAILED</strong> at record '
                   f"{h.f('audit.verification.first_bad_seq')} (response "
                   f"{h.f('audit.verification.first_bad_response_id', 'code')}): "
                   f"{h.f('audit.verification.problem')}. {h.f('audit.verification.records', 'int')} records "
                   f"and {h.f('audit.verification.checkpoints', 'int')} checkpoints verified before it.</p>")
    rows = [["Records in the log (head)", h.f("audit.head.seq", "int")],
            ["Hash of the latest record", h.f("audit.head.hash", "code")],
            ["Head signed at", h.f("audit.head.signed_at", "text")],
            ["Head signature (Ed25519, hex)", h.f("audit.head.signature", "code")],
            ["Last signed checkpoint", h.f("audit.head.last_checkpoint_seq", "int")],
            ["A checkpoint is signed every", f"{h.f('audit.checkpoint_every', 'int')} records"],
            ["Signed checkpoints in the log", h.f("audit.checkpoints_total", "int")],
            ["Checkpoints covering this report's records", h.f("audit.checkpoints_covering", "int")],
            ["Records of this report (exchanges and actions)", h.f("audit.subject_records", "int")],
            ["… of which after the last checkpoint (under the signed head)",
             h.f("audit.subject_records_unsigned", "int")],
            ["Public key (Ed25519, hex)", h.f("audit.public_key", "code")],
            ["Public key fingerprint", h.f("audit.public_key_fingerprint", "code")]]
    if "public_key_checked" in v["details"]:
        rows.append(["Signer compared with this installation's key",
                     h.f("audit.verification.details.public_key_checked", "bool")])
    out.append(_table(["", "Value"], rows, "The audit log"))
    out.append("<h3>How a third party re-checks this</h3><ol>")
    for i, _ in enumerate(a["reverify"]):
        out.append(f"<li>{h.f(f'audit.reverify.{i}.command', 'code')}: {h.f(f'audit.reverify.{i}.what')}.</li>")
    out.append("<li>For each exchange in Appendix A, the record's hash (Appendix C) must appear in the export, and "
               "the checkpoint named beside it (Appendix B) must sign a later hash of the same chain.</li></ol>")
    out.append("</section>")
    return "\n".join(out)


def _glossary_html(h: _Html) -> str:
    terms = [
        ("Distillation", "Training a new model (the <em>student</em>) to imitate the answers of an existing one "
                         "(the <em>teacher</em>), here by collecting many of our service's answers."),
        ("Token", "A piece of a word; language models read and write text as a sequence of tokens."),
        ("Watermark", "A hidden statistical signal in our answers. For each context, a secret key splits the "
                      "possible next tokens into a favoured (\u201cgreen\u201d) list and the rest; our model leans "
                      "slightly towards green tokens. Readers cannot see it; the key holder can measure it."),
        ("Service-wide key / account key", "Half of the contexts use one key for the whole service (it answers "
                                            "\u201cis this ours?\u201d); the other half use a key of the account that "
                                            "received the answer (it answers \u201cwho received it?\u201d)."),
        ("Key id", "The public name of a secret key, such as <code>acct:…:v1</code>. Key ids identify keys; "
                   "the keys themselves never appear in this report."),
        ("Radioactivity", "A student trained on watermarked text inherits the lean towards green tokens, so the "
                          "watermark can be measured in the student model itself."),
        ("p-value", "The probability that chance alone gives a result at least as strong, if the suspect had "
                    "never been trained on our outputs. Small is strong evidence."),
        ("Significance threshold (alpha)", "The p-value below which we call a result significant, fixed before "
                                           "looking at the result."),
        ("Corrected p-value", "When many accounts are tested, one of them can score high by luck; the corrected "
                              "value (Bonferroni: multiplied by the number of tests) accounts for that."),
        ("Control", "A model or text known not to have seen our outputs, scored the same way, to show the test "
                    "does not find watermarks where there are none."),
        ("Audit log, hash, checkpoint", "The log of all exchanges; each record's hash is a fingerprint that "
                                        "changes if anything in it or before it changes; a checkpoint is a "
                                        "digitally signed copy of the latest fingerprint."),
        ("Cluster", "Accounts the monitor linked together (shared organisation, payment method, network or prompt "
                    "templates), treated as one actor."),
    ]
    items = "".join(f"<dt>{t}</dt><dd>{d}</dd>" for t, d in terms)
    return f'<section id="glossary" aria-labelledby="h-glossary"><h2 id="h-glossary">Glossary</h2><dl>{items}</dl>' \
           f"</section>"


def _method_html(h: _Html) -> str:
    ev = h.ev
    suspects = [i for i, s in enumerate(ev["scans"]) if s["role"] == "suspect"]
    gamma = ""
    if suspects and ev["scans"][suspects[0]]["gamma"] is not None:
        gamma = (f" In this installation the green list holds {h.f(f'scans.{suspects[0]}.gamma', 'pct')} of the "
                 f"vocabulary.")
    return f"""<section id="method" aria-labelledby="h-method"><h2 id="h-method">How the method works</h2>
<h3>The watermark</h3>
<p>When our model writes an answer, it chooses one token at a time. Before each choice, a secret key and the
preceding token together pick out a fixed share of all possible tokens as the &ldquo;green list&rdquo;, and the
model's preference for green tokens is raised a little. The text reads normally, but over hundreds of tokens the
share of green tokens rises well above the share expected by chance.{gamma} Without the key nobody can tell which
tokens are green.</p>
<h3>The test of a suspect model</h3>
<p>A model trained on our answers learns their habits, including the lean towards green tokens. We let the suspect
model write (or read) text and count how many of its token choices fall on the green lists of our keys. Under the
hypothesis that the model never saw our outputs, each choice is green with the fixed share, independently, so the
count follows a binomial distribution and the p-value is computed exactly from it (no approximation). Tested
against each account's key, the same count shows whose answers the model learned from; because several accounts
are tested, their p-values are corrected for the number tested.</p>
<h3>Why repeated text is scored once</h3>
<p>Text repeats: the same phrase or paragraph can appear many times. If each repetition were counted, a single
green phrase repeated a hundred times would look like a hundred independent green choices and make innocent text
look watermarked. So each distinct pair of (preceding token, chosen token) is counted once, however often it
occurs. A model can also repeat what it has just read without having learnt anything from us, so pairs it could
have copied are skipped too: when the model's weights are read, every pair that already appeared earlier in the
text fed to it; when a model is only queried through its API, every pair already present in the question we asked.
The counts left out for these reasons are listed with each scan.</p>
<h3>What the controls show</h3>
<p>The same test is run on models or texts that cannot have seen our outputs. They should come out not
significant at the rate the threshold promises; that they do is direct evidence that the test does not accuse
innocent models on this kind of material.</p>
<h3>The records</h3>
<p>The exchanges listed in this report come from our audit log, which is hash-chained and signed at regular
intervals (see &ldquo;Integrity of the records&rdquo;). The log is verified each time this report is made, and the
result is reported as found, including any failure.</p>
<p class="small">References: Kirchenbauer et al., &ldquo;A Watermark for Large Language Models&rdquo;, ICML 2023;
Sander et al., &ldquo;Watermarking Makes Language Models Radioactive&rdquo;, NeurIPS 2024; Schneier &amp; Kelsey,
&ldquo;Secure audit logs to support computer forensics&rdquo;, ACM TISSEC 1999.</p></section>"""


def _appendix_html(h: _Html) -> str:
    ev = h.ev
    ex = ev["exchanges"]
    out = ['<section id="app-exchanges" class="appendix" aria-labelledby="h-app-ex">'
           '<h2 id="h-app-ex">Appendix A: exchanges</h2>']
    n = min(len(ex["items"]), MAX_HTML_EXCHANGES)
    out.append(f"<p>{n:,} of {h.f('exchanges.count', 'int')} exchanges are listed here"
               + ("; the JSON twin lists " + h.f("exchanges.listed", "int") if n < ex["count"] else "")
               + ". Each is identified by its position in the audit log (seq) and its response id.</p>")
    rows = []
    for i in range(n):
        p = f"exchanges.items.{i}"
        rows.append([h.f(f"{p}.seq"), h.f(f"{p}.created_at", "time"), h.f(f"{p}.account_id", "code"),
                     h.f(f"{p}.response_id", "code"), h.f(f"{p}.prompt_tokens", "int"),
                     h.f(f"{p}.completion_tokens", "int"), h.f(f"{p}.watermark_key_id", "code"),
                     h.f(f"{p}.prompt_excerpt")])
    out.append(_table(["Seq", "When", "Account", "Response id", "Tokens in", "Tokens out", "Watermark key id",
                       "Request (start)"], rows))
    out.append("</section>")
    a = ev["audit"]
    out.append('<section id="app-checkpoints" class="appendix" aria-labelledby="h-app-cp">'
               '<h2 id="h-app-cp">Appendix B: signed checkpoints</h2>')
    out.append(f"<p>The checkpoints that cover the exchanges listed in this report. Each signs, with the public key "
               f"{h.f('audit.public_key', 'code')} (fingerprint {h.f('audit.public_key_fingerprint', 'code')}), "
               f"the text <code>antidistill/v1/audit-checkpoint</code>, a line break and the canonical JSON of "
               f"<code>{{created_at, hash, prev_checkpoint_seq, seq}}</code>.</p>")
    rows = []
    if len(a["checkpoints"]) > MAX_HTML_EXCHANGES:
        out.append(f"<p>The first {MAX_HTML_EXCHANGES:,} of {h.f('audit.checkpoints_covering', 'int')} are listed; "
                   f"the JSON twin lists them all.</p>")
    for i in range(min(len(a["checkpoints"]), MAX_HTML_EXCHANGES)):
        p = f"audit.checkpoints.{i}"
        rows.append([h.f(f"{p}.seq"), h.f(f"{p}.created_at", "time"),
                     f"{h.f(f'{p}.covers.0')}–{h.f(f'{p}.covers.1')}", h.f(f"{p}.subject_records", "int"),
                     h.f(f"{p}.hash", "code"), h.f(f"{p}.signature", "code"),
                     h.f(f"{p}.public_key_fingerprint", "code")])
    out.append(_table(["Seq", "Signed", "Covers records", "Of this report", "Hash signed", "Signature (Ed25519)",
                       "Key fingerprint"], rows) if rows else "<p>No checkpoint covers these exchanges yet.</p>")
    out.append("</section>")
    out.append('<section id="app-hashes" class="appendix" aria-labelledby="h-app-h">'
               '<h2 id="h-app-h">Appendix C: hashes and inputs</h2>')
    rows = [[h.f(f"exchanges.items.{i}.seq"), h.f(f"exchanges.items.{i}.hash", "code"),
             h.f(f"exchanges.items.{i}.checkpoint_seq")] for i in range(n)]
    out.append(_table(["Seq", "Record hash (SHA-256)", "Under checkpoint"], rows, "Hashes of the exchanges"))
    srows = [[h.f(f"scans.{i}.role"), h.f(f"scans.{i}.source.path", "code"),
              h.f(f"scans.{i}.source.sha256", "code") if s["source"].get("sha256") else "-"]
             for i, s in enumerate(ev["scans"])]
    if srows:
        out.append(_table(["Role", "Scan result", "SHA-256"], srows, "Inputs of this report"))
    out.append("</section>")
    return "\n".join(out)


# ---- plots -------------------------------------------------------------------------------------------
def _figure(svg_b64: str, title: str, caption: str) -> str:
    return (f'<figure><img src="data:image/svg+xml;base64,{svg_b64}" alt="{html.escape(title)}: '
            f'{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>')


#: plot style; text stays text in the SVG (searchable, selectable, a third of the size of outlined glyphs)
_RC = {"svg.hashsalt": "antidistill", "svg.fonttype": "none", "font.size": 9, "font.family": "sans-serif"}


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):  # savefig reads the svg.* settings
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue().decode("utf-8")
    # the RDF metadata names its vocabularies by URL; drop it so the file holds no outside address at all
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _figure_obj(width: float, height: float) -> tuple[Any, Any]:
    """A figure and its axes, made without pyplot: no global backend or figure registry is touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _styled(fn: Callable[[dict[str, Any]], str | None]) -> Callable[[dict[str, Any]], str | None]:
    """Run a plot function under :data:`_RC` (the style applies while artists are made and saved)."""

    @functools.wraps(fn)
    def run(ev: dict[str, Any]) -> str | None:
        import matplotlib

        with matplotlib.rc_context(_RC):
            return fn(ev)

    return run


def _events(ev: dict[str, Any]) -> list[tuple[datetime, str, str]]:
    out = []
    for a in ev["monitor"]["alerts"]:
        t = _parse_time(a.get("at"))
        if t is not None:
            out.append((t, "alert", str(a.get("level") or "")))
    for a in ev["monitor"]["actions"]:
        t = _parse_time(a.get("at"))
        if t is not None:
            d = a.get("details") if isinstance(a.get("details"), dict) else {}
            out.append((t, "action", str(d.get("action") or "action")))
    return out


@_styled
def _plot_timeline(ev: dict[str, Any]) -> str | None:
    tl = ev["exchanges"]["timeline"]
    if not tl["bins"]:
        return None
    import matplotlib.dates as mdates

    xs = [_parse_time(b["start"]) for b in tl["bins"]]
    width = {"hour": 1 / 24, "day": 1.0, "week": 7.0}[tl["bin"]] * 0.9
    fig, ax = _figure_obj(8, 3.2)
    ax.bar(xs, [b["exchanges"] for b in tl["bins"]], width=width, align="edge", color="#4a6fa5",
           label="exchanges")
    ax.set_ylabel(f"exchanges per {tl['bin']}")
    ax2 = ax.twinx()
    ax2.plot([x + timedelta(days=width / 2) for x in xs], [b["completion_tokens"] for b in tl["bins"]],
             color="#c0392b", linewidth=1.2, label="tokens received")
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("tokens received")
    seen = set()
    for t, kind, _what in _events(ev):
        lab = ("monitor alert" if kind == "alert" else "enforcement action") if kind not in seen else None
        seen.add(kind)
        ax.axvline(t, color="#e67e22" if kind == "alert" else "#000", linestyle="--" if kind == "alert" else "-",
                   linewidth=1, label=lab)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d\n%H:%M" if tl["bin"] == "hour" else "%Y-%m-%d"))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8, frameon=False)
    ax.set_xlabel("time (UTC)")
    return _svg(fig)


@_styled
def _plot_curve(ev: dict[str, Any]) -> str | None:
    series: list[tuple[str, dict[str, Any], list[tuple[int, float]]]] = []
    alpha = None
    suspect_style = {"color": "#c0392b", "linewidth": 2}
    for s in ev["scans"]:
        ctl = s["role"] == "control"
        if not ctl:
            alpha = alpha or s["alpha"]
        for fld, what in (("p_value", "service-wide key"), ("best_account_p", "best account's key")):
            pts = [(c["tokens"], max(c[fld], 1e-300)) for c in s["curve"] if c.get(fld) is not None]
            if pts:
                style = {"linestyle": ":", "linewidth": 1.5} if ctl else dict(suspect_style)
                if fld == "best_account_p":
                    style["linestyle"] = "--" if not ctl else "-."
                series.append((f"{'control ' if ctl else ''}{s['suspect']}: {what}", style, pts))
        for c in s["controls"]:
            if c["kind"] == "model" and c["p_value"] is not None and c["tokens_scored"]:
                series.append((f"control {c['name']}", {"linestyle": "none"},
                               [(c["tokens_scored"], max(c["p_value"], 1e-300))]))
    if not series:
        return None
    fig, ax = _figure_obj(8, 3.6)
    for label, style, pts in series:
        ax.plot([t for t, _ in pts], [p for _, p in pts], marker="o" if len(pts) == 1 else None, label=label,
                **style)
    if alpha:
        ax.axhline(alpha, color="#333", linestyle="--", linewidth=1, label=f"threshold {fmt_p(alpha)}")
    from matplotlib.ticker import LogLocator, NullLocator

    ax.set_yscale("log")
    # p-values span hundreds of decades: a few labelled powers of ten, no minor ticks (thousands of them otherwise)
    ax.yaxis.set_major_locator(LogLocator(base=10.0, numticks=8))
    ax.yaxis.set_minor_locator(NullLocator())
    lowest = min([p for _, _, pts in series for _, p in pts] + ([alpha] if alpha else []))
    ax.set_ylim(1.0, lowest / 10)  # 1 at the bottom, stronger evidence higher up
    ax.set_xlabel("distinct word choices scored")
    ax.set_ylabel("p-value (log scale, stronger upwards)")
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _svg(fig)


@_styled
def _plot_risk(ev: dict[str, Any]) -> str | None:
    pts: dict[str, list[tuple[datetime, float]]] = {}
    for a in ev["monitor"]["alerts"]:
        t, r = _parse_time(a.get("at")), _num(a.get("risk"))
        if t is not None and r is not None:
            pts.setdefault(str(a.get("account_id")), []).append((t, r))
    if not pts:
        return None
    fig, ax = _figure_obj(8, 3)
    for acct, series in sorted(pts.items()):
        series.sort()
        ax.plot([t for t, _ in series], [r for _, r in series], marker="o", label=acct)
    labelled = False
    for t, kind, _ in _events(ev):
        if kind == "action":
            ax.axvline(t, color="#000", linewidth=1, label=None if labelled else "enforcement action")
            labelled = True
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("risk")
    ax.set_xlabel("time (UTC)")
    ax.legend(fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    fig.autofmt_xdate()
    return _svg(fig)


__all__ = [
    "FORMAT",
    "ReportFiles",
    "Subject",
    "build_evidence",
    "check_scan",
    "control_rows",
    "evidence_json",
    "fmt_p",
    "key_fingerprint",
    "load_policy",
    "load_scan",
    "lookup",
    "make_report",
    "one_in",
    "p_words",
    "render_html",
    "resolve_subject",
    "run_scan",
    "scrub",
    "write_report",
]
