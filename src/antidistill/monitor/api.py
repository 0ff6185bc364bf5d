"""What crosses the monitor's boundary: exchanges in, assessments out.

The gateway (incrementally) and ``antidistill monitor scan`` (in batch, from the audit log) both turn each
exchange into an :class:`ExchangeEvent` and hand it to the monitor; the monitor answers with
:class:`Assessment` objects, which the policy (:mod:`antidistill.monitor.policy`) maps to actions. Plain frozen
dataclasses, like :mod:`antidistill.store.api`, so nothing secret or ORM-bound crosses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from antidistill.errors import InputError
from antidistill.store.api import AuditEntry, AuditRecord

#: risk levels, lowest first; the monitor calibrates a threshold for each on benign traffic and the policy file
#: maps each to an action
LEVELS: tuple[str, ...] = ("none", "watch", "alert", "severe")
#: the independent families of evidence a judgement can rest on: how the traffic arrives (rate, machine-regular
#: timing, activity around the clock), what it asks (one template, demands for the reasoning, a coverage sweep),
#: whom it is linked with (a cluster of accounts), and a pivot onto a model just released
FAMILIES: tuple[str, ...] = ("traffic", "content", "linking", "release")


def level_rank(level: str) -> int:
    """``LEVELS.index(level)``, with a clear error for an unknown level.

    >>> level_rank("alert") > level_rank("watch")
    True
    """
    try:
        return LEVELS.index(level)
    except ValueError:
        raise InputError(f"unknown risk level {level!r} (expected one of {', '.join(LEVELS)})") from None


def _text(content: Any) -> str:
    """A chat message's content as text (OpenAI allows a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    raise TypeError(f"not a timestamp: {type(value).__name__}")


@dataclass(frozen=True)
class ExchangeEvent:
    """One exchange as the monitor sees it.

    Args:
        account_id: the account that sent it.
        ts: when it happened (the gateway's clock, or the simulator's virtual clock).
        endpoint: ``/v1/chat/completions`` or ``/v1/completions``.
        model: the model the client asked for.
        system: the system prompt(s), joined ("" when none).
        prompt: the last user turn (or the raw prompt of ``/v1/completions``).
        turns: how many messages the request carried (session depth).
        max_tokens: the length the client demanded (``None``: not given).
        prompt_tokens, completion_tokens: the usage the gateway counted.
        client_addr, user_agent: where it came from.
        status: the HTTP status the gateway answered.
        response_id: the audit record's response id.
        account_metadata: the account's metadata (organisation, payment fingerprint, signup source, …).
    """

    account_id: str
    ts: datetime
    endpoint: str = "/v1/chat/completions"
    model: str = ""
    system: str = ""
    prompt: str = ""
    turns: int = 1
    max_tokens: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    client_addr: str | None = None
    user_agent: str | None = None
    status: int = 200
    response_id: str = ""
    account_metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(
        cls, record: AuditRecord | AuditEntry | Mapping[str, Any], account_metadata: Mapping[str, Any] | None = None
    ) -> ExchangeEvent:
        """An event from an audit record: an :class:`~antidistill.store.api.AuditRecord` (``Store.iter_records``),
        the gateway's :class:`~antidistill.store.api.AuditEntry`, or a dict as ``Store.iter_audit`` yields it (an
        exported line).

        The request is whatever the client sent, so it is read tolerantly (non-string content, missing fields);
        so is every field of a dict, which may come from anywhere.
        """
        if isinstance(record, AuditRecord | AuditEntry):  # typed: only the request needs care
            model, system, prompt, turns, max_tokens = _read_request(record.request)
            return cls(
                account_id=record.account_id,
                ts=_as_utc(record.created_at),
                endpoint=record.endpoint,
                model=model,
                system=system,
                prompt=prompt,
                turns=turns,
                max_tokens=max_tokens,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                client_addr=record.client_addr,
                user_agent=record.user_agent,
                status=record.status,
                response_id=record.response_id,
                account_metadata=dict(account_metadata or {}),
            )
        model, system, prompt, turns, max_tokens = _read_request(record.get("request"))
        return cls(
            account_id=str(record.get("account_id", "")),
            ts=_as_utc(record.get("created_at")),
            endpoint=str(record.get("endpoint", "")),
            model=model,
            system=system,
            prompt=prompt,
            turns=turns,
            max_tokens=max_tokens,
            prompt_tokens=int(record.get("prompt_tokens") or 0),
            completion_tokens=int(record.get("completion_tokens") or 0),
            client_addr=record.get("client_addr"),
            user_agent=record.get("user_agent"),
            status=int(record.get("status") or 0),
            response_id=str(record.get("response_id", "")),
            account_metadata=dict(account_metadata or {}),
        )

    def to_json(self) -> str:
        """The event as one JSON object (what a gateway publishes on the monitor's stream): every field, ``ts`` in
        ISO-8601. Nothing secret is in an event: no API key, no key id, no completion.

        >>> e = ExchangeEvent("acct_1", datetime(2026, 1, 5, tzinfo=UTC), prompt="hi")
        >>> ExchangeEvent.from_json(e.to_json()) == e
        True
        """
        d = asdict(self)
        d["ts"] = self.ts.isoformat()
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ExchangeEvent:
        """Read back :meth:`to_json`'s output.

        Raises:
            InputError: not such an object (the message says what is wrong, never the content).
        """
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or not isinstance(d.get("account_id"), str):
                raise ValueError("not an exchange event")
            unknown = set(d) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown fields {sorted(unknown)}")
            d["ts"] = _as_utc(d["ts"])
            return cls(**d)
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(f"malformed exchange event: {exc}") from None


def _read_request(req: Any) -> tuple[str, str, str, int, int | None]:
    """``(model, system, prompt, turns, max_tokens)`` of a request body as the client sent it (anything at all)."""
    if not isinstance(req, dict):
        req = {}
    messages = req.get("messages")
    system_parts: list[str] = []
    prompt = ""
    turns = 1
    if isinstance(messages, list):
        turns = len(messages)
        for m in messages:
            if not isinstance(m, dict):
                continue
            if m.get("role") in ("system", "developer"):
                system_parts.append(_text(m.get("content")))
            elif m.get("role") == "user":
                prompt = _text(m.get("content"))
    else:
        raw = req.get("prompt")
        if isinstance(raw, list):
            raw = " ".join(x for x in raw if isinstance(x, str))
        prompt = raw if isinstance(raw, str) else ""
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
    model = req.get("model")
    return (
        str(model) if model is not None else "",
        "\n".join(system_parts),
        prompt,
        turns,
        max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
    )


@dataclass(frozen=True)
class Assessment:
    """The monitor's judgement of one account at one moment.

    Args:
        account_id: the account.
        cluster_id: the cluster the account was linked into (``None``: on its own).
        risk: the combined risk score in [0, 1].
        level: one of :data:`LEVELS`, from thresholds calibrated on benign traffic.
        reasons: the top reasons, in plain words, most important first.
        at: the (event) time of the judgement.
        scores: the parts the risk was combined from (``rules``, ``anomaly``, ``supervised``, ``cluster``…).
        cluster_size: how many accounts the cluster holds (1 when on its own).
        requests: how many exchanges of the account the monitor had seen when it judged (0: unknown).
        families: the independent families of evidence the judgement rests on (``traffic``, ``content``,
            ``linking``, ``release``; :data:`FAMILIES`). The policy blocks only on two or
            more; one family at most holds the account for review.
        event: the monitor's count of exchanges observed when the judgement was formed (its checkpoint; 0:
            unknown): the monitor service keys the judgement's effects on the stream entry of that exchange. Not
            compared: the same judgement formed by two monitors is equal.
        calibrated: formed by a trained monitor, whose thresholds were calibrated on benign traffic (``False``:
            the untrained, rules-only fallback). The policy blocks only on a calibrated judgement.
    """

    account_id: str
    cluster_id: str | None
    risk: float
    level: str
    reasons: tuple[str, ...]
    at: datetime
    scores: dict[str, float] = field(default_factory=dict)
    cluster_size: int = 1
    requests: int = 0
    families: tuple[str, ...] = ()
    event: int = field(default=0, compare=False)
    calibrated: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "cluster_id": self.cluster_id,
            "cluster_size": self.cluster_size,
            "requests": self.requests,
            "risk": round(self.risk, 6),
            "level": self.level,
            "reasons": list(self.reasons),
            "families": list(self.families),
            "at": self.at.isoformat(),
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "calibrated": self.calibrated,
        }
