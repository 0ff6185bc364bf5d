"""Policy actions: turning the monitor's assessments into alerts, enforcement state and audit records.

One :class:`Enforcer` serves both users: the gateway's monitor worker (incrementally) and
``antidistill monitor scan`` (in batch). For each assessment it asks the policy for a decision, and if the decision
escalates the account's enforcement (:func:`~antidistill.monitor.policy.escalates`), it sets the new state, stores
the alert and appends the action to the audit log, all in one transaction (:meth:`Store.set_enforcement`).

Action records
--------------
Every action (and every admin clear) is an :class:`~antidistill.store.api.AuditEntry` in the same hash chain as the
exchanges, so ``audit verify`` covers it and ``audit export`` carries it::

    response_id  act_<24 hex>
    account_id   the account acted on
    api_key_id   "monitor" or "admin"
    endpoint     "monitor:action"                      (ACTION_ENDPOINT; no exchange has a path without "/")
    request      {"kind": "antidistill.monitor.action", "action": "block", "previous": "throttle",
                  "level": "severe", "clause": {"id", "title", "text"}, "rpm": …, "tpm": …, "until": …,
                  "set_by": "monitor", "policy": "<name>", "alert": {assessment + alert id} | null,
                  "reason": …, "families": ["traffic", "linking"], "fell_back": false}

``families`` are the independent evidence families the judgement named (``[]`` for an admin's clear);
``fell_back`` says the rule's own action (a block) needed more of them, or a trained monitor, and this is the milder
action taken instead (a review).
    completion   []
    status       the HTTP status the action implies (flag 200, throttle 429, review/block 403, clear 200)
    watermark    {"status": "not-applicable", "reason": "policy action record"}

Readers of the log that want exchanges only skip them with :func:`is_action_record` (the monitor does), or
:attr:`AuditRecord.is_action <antidistill.store.api.AuditRecord.is_action>` on a typed record.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from antidistill.monitor.api import Assessment, ExchangeEvent, level_rank
from antidistill.monitor.policy import ACTION_STATUS, Decision, Policy, escalates
from antidistill.store.api import (
    ACTION_ENDPOINT_PREFIX,
    Alert,
    AuditEntry,
    AuditRecord,
    Enforcement,
    EnforcementStore,
    is_pending_record,
)

log = logging.getLogger(__name__)

ACTION_ENDPOINT = ACTION_ENDPOINT_PREFIX + "action"
ACTION_KIND = "antidistill.monitor.action"
ACTION_WATERMARK = {"status": "not-applicable", "reason": "policy action record"}


@runtime_checkable
class MonitorLike(Protocol):
    """What the gateway and ``monitor scan`` need of a monitor (:class:`antidistill.monitor.pipeline.Monitor`)."""

    def observe(self, event: ExchangeEvent) -> list[Assessment]:
        """Feed one exchange; return the assessments whose level rose (cluster members too)."""

    def assess(self, account_id: str) -> Assessment:
        """The current assessment of one account."""

    def assessments(self) -> list[Assessment]:
        """The current assessment of every account seen."""


_R = TypeVar("_R", AuditRecord, Mapping[str, Any])


def is_action_record(record: AuditRecord | Mapping[str, Any]) -> bool:
    """Whether an audit record (typed, or a dict from ``iter_audit`` or an export) is a policy action, not an
    exchange."""
    if isinstance(record, AuditRecord):
        return record.is_action
    return str(record.get("endpoint", "")).startswith(ACTION_ENDPOINT_PREFIX)


def exchange_records(records: Iterable[_R]) -> Iterator[_R]:
    """The exchanges among audit records (typed, or dicts): action records and streams' opening (pending) records
    skipped."""
    return (r for r in records if _is_exchange(r))


def _is_exchange(record: AuditRecord | Mapping[str, Any]) -> bool:
    if isinstance(record, AuditRecord):
        return record.is_exchange
    return not is_action_record(record) and not is_pending_record(record)


def new_alert_id(key: str | None = None) -> str:
    """A fresh alert id, or (with ``key``) the one id of the effect keyed ``key``: the same key always gives the
    same id, which the store holds once (its primary key), so an effect applied twice is stored once."""
    if key is None:
        return "alert_" + secrets.token_hex(12)
    return "alert_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def action_entry(
    account_id: str,
    *,
    action: str,
    previous: str | None,
    level: str,
    clause: dict[str, str] | None,
    set_by: str,
    policy: str | None,
    reason: str,
    alert: dict[str, Any] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    until: datetime | None = None,
    at: datetime | None = None,
    status: int | None = None,
    families: tuple[str, ...] = (),
    fell_back: bool = False,
) -> AuditEntry:
    """The audit record of one action (see the module docstring for its shape)."""
    request = {
        "kind": ACTION_KIND,
        "action": action,
        "previous": previous,
        "level": level,
        "clause": clause,
        "rpm": rpm,
        "tpm": tpm,
        "until": until.isoformat() if until else None,
        "set_by": set_by,
        "policy": policy,
        "reason": reason,
        "alert": alert,
        "families": list(families),
        "fell_back": fell_back,
    }
    return AuditEntry(
        response_id="act_" + secrets.token_hex(12),
        account_id=account_id,
        api_key_id=set_by,
        created_at=at or datetime.now(UTC),
        endpoint=ACTION_ENDPOINT,
        client_addr=None,
        user_agent=None,
        request=request,
        completion=[],
        prompt_tokens=0,
        completion_tokens=0,
        finish_reason=None,
        latency_ms=0.0,
        watermark=dict(ACTION_WATERMARK),
        status=status if status is not None else ACTION_STATUS.get(action, 200),
    )


@dataclass(frozen=True)
class Outcome:
    """What :meth:`Enforcer.apply` did with one assessment.

    Args:
        assessment: the monitor's assessment.
        decision: the policy's decision (``None``: no rule applies).
        applied: the decision escalated the account's enforcement and is now in force.
        alert: the stored alert (``None`` for level ``none``, a dry run, or a repeat of the last alert; with a
            ``key``, the alert stored before).
        audit_seq: the action's audit record (``None`` unless applied).
        duplicate: the effect keyed so was committed before (:meth:`Enforcer.apply`'s ``key``): nothing was done.
    """

    assessment: Assessment
    decision: Decision | None
    applied: bool
    alert: Alert | None = None
    audit_seq: int | None = None
    duplicate: bool = False

    @property
    def action(self) -> str:
        return self.decision.action if self.applied and self.decision else "none"


def _reason(a: Assessment, d: Decision | None = None) -> str:
    head = "; ".join(a.reasons[:3]) if a.reasons else "no reason given"
    where = f" (cluster {a.cluster_id} of {a.cluster_size})" if a.cluster_id else ""
    fams = f" [evidence: {', '.join(a.families)}]" if a.families else " [evidence: no family]"
    held = ""
    if d and d.fell_back:
        need = f"{d.rule.min_families} families" if len(set(a.families)) < d.rule.min_families else "a trained monitor"
        held = f"; {d.rule.action} needs {need}, held for {d.action}"
    return f"risk {a.risk:.2f} ({a.level}){where}{fams}{held}: {head}"[:1000]


class Enforcer:
    """Applies a :class:`Policy` to assessments, against a store.

    Args:
        store: the alerts and enforcement states (a :class:`~antidistill.store.sql.Store`).
        policy: the policy.
        clock: the wall clock (the time actions are taken and lapse; default: now, in UTC).

    Example:
        >>> from antidistill.store.sql import Store
        >>> from antidistill.settings import Settings
        >>> from antidistill.keys import MasterKey
        >>> store = Store.open("sqlite://", Settings(env="test"), master=MasterKey(bytes(32)))
        >>> e = Enforcer(store, Policy.default())
        >>> two = ("traffic", "content")  # two independent families of evidence: the policy blocks
        >>> a = Assessment("acct_x", None, 0.99, "severe", ("harvesting",), datetime.now(UTC), families=two)
        >>> e.apply(a).action, store.get_enforcement("acct_x").action, store.verify_audit().ok
        ('block', 'block', True)
        >>> store.close()
    """

    def __init__(self, store: EnforcementStore, policy: Policy, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.policy = policy
        self._clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))

    def decide(self, assessment: Assessment) -> tuple[Decision | None, Enforcement | None, bool]:
        """The decision, the account's current state and whether the decision would escalate it (no writes)."""
        if level_rank(assessment.level) == 0:
            return None, None, False
        decision = self.policy.decide(assessment, now=self._clock())
        current = self.store.get_enforcement(assessment.account_id)
        return decision, current, decision is not None and escalates(current, decision, self._clock())

    def apply(self, assessment: Assessment, *, dry_run: bool = False, key: str | None = None) -> Outcome:
        """Decide, and (unless ``dry_run``) record the alert and escalate the enforcement with its audit record.

        ``key``: an idempotency key of this effect (the monitor service passes its stream entry's id, the account
        and the level). The alert's id derives from it, and alert, enforcement and audit record are committed in
        one transaction, so an assessment applied again with the same key (a redelivered event) does nothing and
        answers ``duplicate``, even if an admin cleared the account in between.
        """
        if level_rank(assessment.level) == 0:
            return Outcome(assessment, None, False)
        if key is not None and not dry_run:
            done = self.store.get_alert(new_alert_id(key))
            if done is not None:
                return Outcome(assessment, None, False, done, done.audit_seq, duplicate=True)
        decision, current, would = self.decide(assessment)
        if dry_run:
            return Outcome(assessment, decision, would)
        now = self._clock()
        alert = Alert(
            id=new_alert_id(key),
            account_id=assessment.account_id,
            cluster_id=assessment.cluster_id,
            risk=float(assessment.risk),
            level=assessment.level,
            reasons=tuple(assessment.reasons),
            scores=dict(assessment.scores),
            at=assessment.at,
            action="none",
            clause=decision.clause.id if decision else None,
            created_at=now,
        )
        if decision is None or not would:
            # a batch scan run again: the same judgement is not a new alert. A keyed effect is stored once by its
            # key instead: whether it "repeats" the newest alert depends on what a crashed run stored after it, so
            # a replay would decide otherwise than the first delivery did
            if key is None and self._repeats(alert):
                return Outcome(assessment, decision, False)
            return Outcome(assessment, decision, False, self.store.record_alert(alert))
        reason = _reason(assessment, decision)
        enforcement = decision.enforcement(assessment.account_id, now, reason, alert.id)
        alert = replace(alert, action=decision.action)
        entry = action_entry(
            assessment.account_id,
            action=decision.action,
            previous=current.action if current else None,
            level=assessment.level,
            clause=_clause_dict(decision),
            set_by="monitor",
            policy=self.policy.name,
            reason=reason,
            alert={"id": alert.id, **assessment.to_dict()},
            rpm=decision.rpm,
            tpm=decision.tpm,
            until=decision.until,
            at=now,
            families=decision.families,
            fell_back=decision.fell_back,
        )
        seq = self.store.set_enforcement(
            enforcement, audit=entry, alert=alert, only_if=lambda cur: escalates(cur, decision, now)
        )
        if seq is None:  # another replica escalated first, as far or further
            return Outcome(assessment, decision, False, self.store.record_alert(replace(alert, action="none")))
        log.warning(
            "policy action on account %s: %s under clause %s (%s)",
            assessment.account_id,
            decision.action,
            decision.clause.id,
            reason,
        )
        return Outcome(assessment, decision, True, replace(alert, audit_seq=seq), seq)

    def _repeats(self, alert: Alert) -> bool:
        last = self.store.list_alerts(account_id=alert.account_id, limit=1)
        return bool(last) and (last[0].level, last[0].cluster_id) == (alert.level, alert.cluster_id)

    def apply_all(self, assessments: Iterable[Assessment], *, dry_run: bool = False) -> list[Outcome]:
        return [self.apply(a, dry_run=dry_run) for a in assessments]

    def clear(
        self, account_id: str, by: str = "admin", reason: str = "cleared by an administrator"
    ) -> Enforcement | None:
        """Lift the account's enforcement, with an audit record; returns the state lifted (``None``: nothing was)."""
        current = self.store.get_enforcement(account_id)
        if current is None or current.action == "none":
            return None
        clause = self.policy.clause(current.clause)
        entry = action_entry(
            account_id,
            action="none",
            previous=current.action,
            level=current.level,
            clause={"id": clause.id, "title": clause.title, "text": clause.text} if clause else None,
            set_by=by,
            policy=self.policy.name,
            reason=reason,
            at=self._clock(),
            status=200,
        )
        return self.store.clear_enforcement(account_id, by, reason=reason, audit=entry)


def _clause_dict(d: Decision) -> dict[str, str]:
    return {"id": d.clause.id, "title": d.clause.title, "text": d.clause.text}
