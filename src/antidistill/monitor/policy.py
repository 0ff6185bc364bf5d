"""The enforcement policy: the terms of service, made machine-readable, and the rules that map risk to action.

A policy file (YAML) names the clauses of the terms of service and maps the monitor's risk levels to what the
gateway does on an account's next request::

    version: 1
    name: Model API Terms of Service
    clauses:
      - id: "4.2"
        title: No automated bulk extraction
        text: You may not extract outputs from the Services in bulk by automated means …
    throttle: {rpm: 10, tpm: 20000}        # defaults of throttle rules that name none
    rules:
      - {level: watch,  action: flag,     clause: "4.2"}
      - {level: alert,  action: throttle, clause: "4.2", rpm: 6}
      - {level: severe, action: block,    clause: "4.1", min_families: 2, otherwise: review}
      - {level: alert,  action: review,   clause: "4.3", scope: cluster, min_cluster_size: 3}

Actions, mildest first: ``flag`` (serve, record), ``throttle`` (serve under a reduced rpm/tpm, 429 beyond it),
``review`` (403 until an admin clears the account), ``block`` (403 quoting the clause). A rule applies at its
level and above; ``scope: cluster`` rules apply only to accounts the monitor linked into a cluster of at least
``min_cluster_size`` accounts. Of the rules that apply, the strictest action wins (the first such rule in the
file names the clause). Optional ``duration`` (seconds) makes an action lapse on its own.

A block needs independent evidence. Each assessment names the families of evidence it rests on
(:data:`~antidistill.monitor.api.FAMILIES`: ``traffic`` shape, ``content``, ``linking``, ``release`` pivot; the
client's ``max_tokens`` is none of them). A rule with ``min_families: N`` takes its action only when the assessment
has at least N families, and otherwise takes its ``otherwise`` action (``none``: the rule does not apply). A
``block`` rule demands two families and falls back to ``review`` unless it says otherwise (``min_families: 2,
otherwise: review``), so one family of evidence, however strong, at most holds an account until a person looks;
other actions demand none. ``min_families: 0`` turns the requirement off. The decision and the audit record of the
action name the families.

A block also needs a calibrated judgement. The untrained monitor (rules only, before ``antidistill monitor train``)
has fixed thresholds that were never set on the deployment's benign traffic, so where a rule would block on its
judgement, the account is held for review instead (or the rule's ``otherwise``, where that is milder), whatever
``min_families`` says.

Actions only escalate on their own (:func:`escalates`): the monitor never loosens what it or an admin set, and
after an admin cleared an account it acts again only when the account's level rises above the level it was
cleared at. The shipped default is ``default_policy.yaml`` next to this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from antidistill.errors import ConfigError, InputError
from antidistill.monitor.api import FAMILIES, LEVELS, Assessment, level_rank
from antidistill.store.api import ENFORCEMENT_ACTIONS, Enforcement

DEFAULT_POLICY_FILE = Path(__file__).with_name("default_policy.yaml")
#: the actions a rule may name (``none`` is only a state: nothing done, or cleared)
RULE_ACTIONS: tuple[str, ...] = ENFORCEMENT_ACTIONS[1:]
SCOPES = ("account", "cluster")
#: the HTTP status each action implies for the account's requests (recorded in the action's audit record)
ACTION_STATUS = {"none": 200, "flag": 200, "throttle": 429, "review": 403, "block": 403}
_MAX_CLAUSE_TEXT = 4000


def action_rank(action: str) -> int:
    """``ENFORCEMENT_ACTIONS.index(action)`` with a clear error.

    >>> action_rank("block") > action_rank("throttle")
    True
    """
    try:
        return ENFORCEMENT_ACTIONS.index(action)
    except ValueError:
        raise InputError(f"unknown action {action!r} (expected one of {', '.join(RULE_ACTIONS)})") from None


@dataclass(frozen=True)
class Clause:
    """One clause of the terms of service.

    Args:
        id: how the terms number it (``"4.2"``).
        title: a short title.
        text: the clause, as it is quoted to a blocked client.
    """

    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Rule:
    """Risk level (and optionally cluster size) → action.

    Args:
        level: the lowest level the rule applies at.
        action: ``flag``, ``throttle``, ``review`` or ``block``.
        clause: the id of the clause the action is taken under.
        scope: ``account`` (every assessment) or ``cluster`` (only accounts in a cluster of at least
            ``min_cluster_size``).
        rpm, tpm: a throttle's reduced limits (default: the policy's ``throttle`` section).
        duration_s: seconds after which the action lapses (``None``: until an admin clears it).
        min_families: the independent evidence families the assessment must name for ``action`` (default: 2 for
            ``block``, 0 for the others).
        otherwise: the action taken when it names fewer (``none``: the rule does not apply; default ``review``
            for ``block``).
    """

    level: str
    action: str
    clause: str
    scope: str = "account"
    min_cluster_size: int = 2
    rpm: int | None = None
    tpm: int | None = None
    duration_s: float | None = None
    min_families: int = 0
    otherwise: str = "none"

    def action_for(self, a: Assessment) -> str:
        """The action the rule takes on a matching assessment: ``action``, or ``otherwise`` when the assessment
        names fewer than ``min_families`` families; a ``block`` on an uncalibrated judgement (the untrained,
        rules-only monitor) is ``review``, or the rule's ``otherwise`` where that is milder."""
        if len(set(a.families)) < self.min_families:
            return self.otherwise
        if self.action == "block" and not a.calibrated:
            return min(self.otherwise, "review", key=action_rank)
        return self.action

    def matches(self, a: Assessment) -> bool:
        if level_rank(a.level) < level_rank(self.level):
            return False
        if self.scope == "cluster":
            return a.cluster_id is not None and a.cluster_size >= self.min_cluster_size
        return True


@dataclass(frozen=True)
class Decision:
    """What the policy says to do about one assessment.

    Args:
        action: the action; ``clause``: the clause it is taken under; ``rule``: the rule that chose it.
        level: the assessment's level.
        rpm, tpm: a throttle's limits.
        until: when the action lapses (``None``: until an admin clears it).
        families: the evidence families the assessment named.
        fell_back: the rule's own action needed more families (``action`` is its ``otherwise``) or, a block, a
            calibrated judgement (``action`` is ``review``).
    """

    action: str
    level: str
    clause: Clause
    rule: Rule
    rpm: int | None = None
    tpm: int | None = None
    until: datetime | None = None
    families: tuple[str, ...] = ()
    fell_back: bool = False

    @property
    def status(self) -> int:
        return ACTION_STATUS[self.action]

    def enforcement(
        self, account_id: str, since: datetime, reason: str, alert_id: str | None = None, set_by: str = "monitor"
    ) -> Enforcement:
        return Enforcement(
            account_id=account_id,
            action=self.action,
            level=self.level,
            clause=self.clause.id,
            since=since,
            until=self.until,
            rpm=self.rpm,
            tpm=self.tpm,
            reason=reason,
            set_by=set_by,
            alert_id=alert_id,
        )


@dataclass(frozen=True)
class Policy:
    """A validated policy: clauses by id, and rules.

    Args:
        name: the policy's name (shown in the CLI and the audit records).
        clauses: the clauses by id, in file order.
        rules: the rules, in file order.
        throttle_rpm, throttle_tpm: defaults of throttle rules that name no limits.
        source: the file it was read from (``None``: built in code).

    Example:
        >>> from datetime import UTC, datetime
        >>> p = Policy.default()
        >>> at = datetime(2025, 1, 1, tzinfo=UTC)
        >>> a = Assessment("acct_1", None, 0.97, "severe", ("bulk harvesting",), at, families=("traffic", "content"))
        >>> d = p.decide(a)
        >>> d.action, d.clause.id
        ('block', '4.1')
        >>> p.decide(Assessment("acct_2", None, 0.97, "severe", ("one template",), at, families=("content",))).action
        'review'
        >>> untrained = Assessment("acct_3", None, 0.97, "severe", (), at, ("traffic", "content"), calibrated=False)
        >>> p.decide(untrained).action
        'review'
    """

    name: str
    clauses: dict[str, Clause]
    rules: tuple[Rule, ...]
    throttle_rpm: int | None = 10
    throttle_tpm: int | None = None
    source: str | None = field(default=None, compare=False)

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> Policy:
        """The shipped policy (``default_policy.yaml``)."""
        return cls.load(DEFAULT_POLICY_FILE)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        """Read and validate a policy file (``None``: the shipped default).

        Raises:
            ConfigError: one line naming the file and what is wrong in it.
        """
        path = Path(path) if path is not None else DEFAULT_POLICY_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"policy file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read policy file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str | None = None) -> Policy:
        """Parse and validate policy YAML (raises :class:`ConfigError` with one clear line)."""

        where = f"policy {source}" if source else "policy"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
        try:
            return cls.from_dict(data, source=source)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Policy:
        """Validate a parsed policy; raises ``ValueError`` naming the field at fault."""
        if not isinstance(data, dict):
            raise InputError("the policy must be a mapping with 'clauses' and 'rules'")
        unknown = set(data) - {"version", "name", "clauses", "rules", "throttle"}
        if unknown:
            raise InputError(f"unknown top-level field(s): {', '.join(sorted(map(str, unknown)))}")
        version = data.get("version", 1)
        if version != 1:
            raise InputError(f"version must be 1, got {version!r}")
        name = data.get("name", "Terms of Service")
        if not isinstance(name, str) or not name.strip():
            raise InputError("name must be a non-empty string")
        clauses = _clauses(data.get("clauses"))
        throttle = data.get("throttle") or {}
        if not isinstance(throttle, dict) or set(throttle) - {"rpm", "tpm"}:
            raise InputError("throttle must be a mapping with rpm and/or tpm")
        t_rpm = _positive("throttle.rpm", throttle.get("rpm"))
        t_tpm = _positive("throttle.tpm", throttle.get("tpm"))
        raw_rules = data.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise InputError("rules must be a non-empty list")
        rules = tuple(_rule(i, r, clauses, t_rpm, t_tpm) for i, r in enumerate(raw_rules))
        return cls(
            name=name.strip(), clauses=clauses, rules=rules, throttle_rpm=t_rpm, throttle_tpm=t_tpm, source=source
        )

    # ---- deciding -----------------------------------------------------------------------------------
    def decide(self, assessment: Assessment, now: datetime | None = None) -> Decision | None:
        """The strictest action of the rules that apply to ``assessment`` (``None``: none applies); a rule whose
        ``min_families`` the assessment does not meet offers its ``otherwise`` action instead."""
        best: Rule | None = None
        best_action = "none"
        for rule in self.rules:
            if not rule.matches(assessment):
                continue
            action = rule.action_for(assessment)
            if action != "none" and (best is None or action_rank(action) > action_rank(best_action)):
                best, best_action = rule, action
        if best is None:
            return None
        until = None
        if best.duration_s is not None:
            until = (now or assessment.at) + timedelta(seconds=best.duration_s)
        rpm = tpm = None
        if best_action == "throttle":
            rpm, tpm = best.rpm, best.tpm
        return Decision(
            action=best_action,
            level=assessment.level,
            clause=self.clauses[best.clause],
            rule=best,
            rpm=rpm,
            tpm=tpm,
            until=until,
            families=tuple(f for f in FAMILIES if f in assessment.families),
            fell_back=best_action != best.action,
        )

    def clause(self, clause_id: str | None) -> Clause | None:
        return self.clauses.get(clause_id) if clause_id is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "clauses": [{"id": c.id, "title": c.title, "text": c.text} for c in self.clauses.values()],
            "rules": [{k: v for k, v in r.__dict__.items() if v is not None} for r in self.rules],
        }


def escalates(current: Enforcement | None, decision: Decision, now: datetime) -> bool:
    """Whether ``decision`` may replace ``current``: actions only escalate on their own.

    * nothing in force (none, lapsed): any action applies;
    * otherwise only a strictly stricter action does;
    * after an admin set or cleared the account, only when the level also rose above the level the admin judged.

    Example:
        >>> from datetime import UTC, datetime
        >>> now = datetime(2025, 1, 1, tzinfo=UTC)
        >>> p = Policy.default()
        >>> blocked = Enforcement("a", "block", "severe", "4.1", now)
        >>> d = p.decide(Assessment("a", None, 0.6, "alert", (), now))
        >>> escalates(blocked, d, now), escalates(None, d, now)
        (False, True)
    """
    if current is not None and current.set_by == "admin" and level_rank(decision.level) <= level_rank(current.level):
        return False
    if current is None or not current.active(now):
        return decision.action != "none"
    return action_rank(decision.action) > action_rank(current.action)


# ---- validation helpers -------------------------------------------------------------------------------
def _positive(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def _clauses(raw: Any) -> dict[str, Clause]:
    if not isinstance(raw, list) or not raw:
        raise InputError("clauses must be a non-empty list of {id, title, text}")
    out: dict[str, Clause] = {}
    for i, c in enumerate(raw):
        if not isinstance(c, dict):
            raise InputError(f"clauses[{i}] must be a mapping with id, title and text")
        unknown = set(c) - {"id", "title", "text"}
        if unknown:
            raise InputError(f"clauses[{i}]: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        cid = c.get("id")
        if isinstance(cid, int | float) and not isinstance(cid, bool):
            cid = str(cid)  # `id: 4.2` unquoted in YAML is a number
        if not isinstance(cid, str) or not cid.strip() or len(cid) > 64:
            raise InputError(f"clauses[{i}].id must be a non-empty string of at most 64 characters")
        cid = cid.strip()
        if cid in out:
            raise InputError(f"clauses[{i}]: duplicate clause id {cid!r}")
        title, text = c.get("title", ""), c.get("text")
        if not isinstance(title, str):
            raise InputError(f"clause {cid}: title must be a string")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"clause {cid}: text must be a non-empty string")
        if len(text) > _MAX_CLAUSE_TEXT:
            raise InputError(f"clause {cid}: text must be at most {_MAX_CLAUSE_TEXT} characters")
        out[cid] = Clause(cid, title.strip(), " ".join(text.split()))
    return out


def _rule(i: int, r: Any, clauses: dict[str, Clause], t_rpm: int | None, t_tpm: int | None) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(r, dict):
        raise InputError(f"{where} must be a mapping with level, action and clause")
    unknown = set(r) - {
        "level",
        "action",
        "clause",
        "scope",
        "min_cluster_size",
        "rpm",
        "tpm",
        "duration",
        "min_families",
        "otherwise",
    }
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    level = r.get("level")
    if level not in LEVELS[1:]:
        raise InputError(f"{where}.level must be one of {', '.join(LEVELS[1:])}, got {level!r}")
    action = r.get("action")
    if action not in RULE_ACTIONS:
        raise InputError(f"{where}.action must be one of {', '.join(RULE_ACTIONS)}, got {action!r}")
    clause = r.get("clause")
    if isinstance(clause, int | float) and not isinstance(clause, bool):
        clause = str(clause)
    if not isinstance(clause, str) or not clause.strip():
        raise InputError(f"{where}.clause is missing (every action is taken under a clause)")
    clause = clause.strip()
    if clause not in clauses:
        raise InputError(f"{where}.clause {clause!r} is not one of the policy's clauses ({', '.join(clauses)})")
    scope = r.get("scope", "account")
    if scope not in SCOPES:
        raise InputError(f"{where}.scope must be account or cluster, got {scope!r}")
    size = r.get("min_cluster_size", 2)
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise InputError(f"{where}.min_cluster_size must be an integer >= 2, got {size!r}")
    if scope == "account" and "min_cluster_size" in r:
        raise InputError(f"{where}: min_cluster_size needs scope: cluster")
    rpm = _positive(f"{where}.rpm", r.get("rpm"))
    tpm = _positive(f"{where}.tpm", r.get("tpm"))
    if action != "throttle" and (rpm is not None or tpm is not None):
        raise InputError(f"{where}: rpm/tpm apply only to action throttle")
    if action == "throttle":
        rpm, tpm = (rpm, tpm) if (rpm is not None or tpm is not None) else (t_rpm, t_tpm)
        if rpm is None and tpm is None:
            raise InputError(f"{where}: a throttle needs rpm or tpm (here or in the policy's throttle section)")
    duration = r.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or not 0 < duration <= 10 * 365 * 86400
    ):
        raise InputError(f"{where}.duration must be a positive number of seconds, got {duration!r}")
    min_families, otherwise, rpm, tpm = _families(where, r, action, rpm, tpm, t_rpm, t_tpm)
    return Rule(
        level=level,
        action=action,
        clause=clause,
        scope=scope,
        min_cluster_size=size,
        rpm=rpm,
        tpm=tpm,
        duration_s=float(duration) if duration is not None else None,
        min_families=min_families,
        otherwise=otherwise,
    )


def _families(
    where: str, r: dict[str, Any], action: str, rpm: int | None, tpm: int | None, t_rpm: int | None, t_tpm: int | None
) -> tuple[int, str, int | None, int | None]:
    """A rule's ``min_families`` and ``otherwise`` (with a throttle fallback's limits), validated."""
    min_families = r.get("min_families", 2 if action == "block" else 0)
    if isinstance(min_families, bool) or not isinstance(min_families, int) or not 0 <= min_families <= len(FAMILIES):
        raise InputError(f"{where}.min_families must be an integer from 0 to {len(FAMILIES)}, got {min_families!r}")
    otherwise = r.get("otherwise", "review" if action == "block" else "none")
    if otherwise not in ("none", *RULE_ACTIONS):
        raise InputError(f"{where}.otherwise must be one of none, {', '.join(RULE_ACTIONS)}, got {otherwise!r}")
    if action_rank(otherwise) >= action_rank(action):
        raise InputError(f"{where}.otherwise must be milder than the rule's action {action}, got {otherwise!r}")
    if "otherwise" in r and min_families == 0:
        raise InputError(f"{where}: otherwise needs min_families of at least 1")
    if otherwise == "throttle" and rpm is None and tpm is None:
        rpm, tpm = t_rpm, t_tpm
        if rpm is None and tpm is None:
            raise InputError(f"{where}: otherwise: throttle needs rpm or tpm in the policy's throttle section")
    return min_families, otherwise, rpm, tpm
