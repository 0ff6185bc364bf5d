"""A scenario: seed, virtual duration, how many of each persona, and the split; built into a plan.

The plan is the whole simulation decided in advance: the accounts (with their metadata and ground truth) and
every request in virtual-time order. Building it twice from one scenario gives the same plan; the driver
(:mod:`antidistill.simulate.driver`) only sends it.

Example:
    >>> plan = Scenario.from_scale("small", seed=1).build()
    >>> plan.requests == Scenario.from_scale("small", seed=1).build().requests
    True
    >>> sorted({a.role for a in plan.accounts})
    ['attacker', 'benign']
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from antidistill.errors import InputError
from antidistill.simulate.personas import ATTACKERS, BENIGN, PERSONAS, AccountPlan, PlannedRequest
from antidistill.simulate.prompts import check_split, paraphrase_demands
from antidistill.simulate.world import DAY_S, TIERS, VirtualLimits, World

#: the default virtual start: Monday 2026-01-05 00:00 UTC
DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
#: the gateway's default max_tokens (what a request without one reserves)
DEFAULT_MAX_TOKENS = 256
#: seconds of margin added when a request is pushed past a limit window (the gateway counts whole seconds)
_MARGIN_S = 1.5
#: the range a perturbed attacker's ``max_tokens`` is drawn from (below the 1024 a long-answer signal keys on)
PERTURB_MAX_TOKENS = (256, 900)


@dataclass(frozen=True)
class ScaleSpec:
    """A preset of a scenario's size.

    Args:
        days: default virtual duration.
        counts: personas of each kind.
        hydra_members: the range a hydra's size is drawn from.
        hydra_daily_budget: the most requests a day a whole hydra sends (members slow down to fit).
        volume: multiplies every persona's request rate; ``persona_volume`` further multiplies some personas'.
    """

    days: float
    counts: Mapping[str, int]
    hydra_members: tuple[int, int]
    hydra_daily_budget: float | None
    volume: float = 1.0
    persona_volume: Mapping[str, float] = field(default_factory=dict)


SCALES: dict[str, ScaleSpec] = {
    # a few seconds: the tests' size (every persona present, the hydra at its smallest)
    "small": ScaleSpec(
        days=1.0,
        counts={
            "casual": 40,
            "coding_product": 1,
            "rag_app": 1,
            "enterprise_batch": 1,
            "eval_harness": 1,
            "research_team": 1,
            "bulk_harvester": 1,
            "stealthy_harvester": 1,
            "hydra": 1,
            "cot_extractor": 1,
            "coverage_sweeper": 1,
            "release_pivot": 1,
        },
        hydra_members=(20, 24),
        hydra_daily_budget=100.0,
        # thin the high-volume personas, keep enough of the rare ones for every persona to show
        persona_volume={
            "coding_product": 0.15,
            "rag_app": 0.3,
            "enterprise_batch": 0.06,
            "eval_harness": 0.08,
            "research_team": 0.4,
            "bulk_harvester": 0.06,
            "cot_extractor": 0.15,
            "coverage_sweeper": 0.08,
            "release_pivot": 0.2,
        },
    ),
    # a simulated week; several hundred benign accounts, so that a 0.5% per-account false-positive rate can be
    # measured over a few seeds
    "default": ScaleSpec(
        days=7.0,
        counts={
            "casual": 420,
            "coding_product": 2,
            "rag_app": 3,
            "enterprise_batch": 2,
            "eval_harness": 3,
            "research_team": 3,
            "bulk_harvester": 1,
            "stealthy_harvester": 2,
            "hydra": 1,
            "cot_extractor": 1,
            "coverage_sweeper": 1,
            "release_pivot": 1,
            "lab_cot_eval": 1,
            "nightly_summariser": 1,
            "reasoning_harvester": 1,
            "agent_loop": 1,
            "conversation_farm": 1,
        },
        hydra_members=(20, 500),
        hydra_daily_budget=1200.0,
    ),
    "large": ScaleSpec(
        days=14.0,
        counts={
            "casual": 1500,
            "coding_product": 4,
            "rag_app": 8,
            "enterprise_batch": 4,
            "eval_harness": 6,
            "research_team": 8,
            "bulk_harvester": 2,
            "stealthy_harvester": 5,
            "hydra": 2,
            "cot_extractor": 2,
            "coverage_sweeper": 2,
            "release_pivot": 2,
            "lab_cot_eval": 2,
            "nightly_summariser": 2,
            "reasoning_harvester": 2,
            "agent_loop": 2,
            "conversation_farm": 2,
        },
        hydra_members=(20, 500),
        hydra_daily_budget=2000.0,
    ),
}


@dataclass(frozen=True)
class Scenario:
    """What to simulate.

    Args:
        seed: the seed every draw derives from.
        days: virtual duration (days, > 0, at most 366).
        counts: personas of each kind (names from :data:`~antidistill.simulate.personas.PERSONAS`).
        split: ``train`` or ``heldout``: held-out runs draw every persona parameter from bands of its range that
            training runs never use, and templates from the other half of each pool (see
            :class:`~antidistill.simulate.world.Draw`); use different seeds too.
        start: virtual start (unix seconds).
        scale: the preset name it came from (recorded only).
        hydra_members: the range hydra sizes are drawn from.
        hydra_daily_budget: cap on a hydra's total requests a day (``None``: none).
        volume: multiplies every persona's request rate (in (0, 10]); small scales thin the traffic.
        persona_volume: further factors by persona name (in (0, 10]).
        overrides: parameter values per persona name, used instead of drawn ones.
        perturb: perturb every attacker's client-set knobs (:func:`perturb_requests`): ``max_tokens`` drawn from
            :data:`PERTURB_MAX_TOKENS`, stock reasoning demands paraphrased, timing jittered; benign traffic is
            left alone. What an attacker who knows the monitor's signals would change first.

    Example:
        >>> plan = Scenario(seed=3, days=0.5, counts={"casual": 2, "hydra": 1}, hydra_members=(20, 20)).build()
        >>> plan.summary()["accounts"]
        22
    """

    seed: int = 0
    days: float = 7.0
    counts: Mapping[str, int] = field(default_factory=lambda: dict(SCALES["default"].counts))
    split: str = "train"
    start: float = DEFAULT_START
    scale: str | None = None
    hydra_members: tuple[int, int] = (20, 500)
    hydra_daily_budget: float | None = 1200.0
    volume: float = 1.0
    persona_volume: Mapping[str, float] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    perturb: bool = False

    def __post_init__(self) -> None:
        check_split(self.split)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.days, int | float) and math.isfinite(self.days) and 0 < self.days <= 366):
            raise InputError(f"days must be in (0, 366], got {self.days!r}")
        unknown = set(self.counts) - set(PERSONAS)
        if unknown:
            raise InputError(
                f"unknown persona(s) in counts: {', '.join(sorted(unknown))} (known: {', '.join(PERSONAS)})"
            )
        for name, n in self.counts.items():
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 100_000:
                raise InputError(f"counts[{name!r}] must be an integer in [0, 100000], got {n!r}")
        unknown = set(self.overrides) - set(PERSONAS)
        if unknown:
            raise InputError(f"unknown persona(s) in overrides: {', '.join(sorted(unknown))}")
        if not (isinstance(self.volume, int | float) and 0 < self.volume <= 10):
            raise InputError(f"volume must be in (0, 10], got {self.volume!r}")
        for name, v in self.persona_volume.items():
            if name not in PERSONAS:
                raise InputError(f"unknown persona in persona_volume: {name!r}")
            if not (isinstance(v, int | float) and 0 < v <= 10):
                raise InputError(f"persona_volume[{name!r}] must be in (0, 10], got {v!r}")
        lo, hi = self.hydra_members
        if not 1 <= lo <= hi <= 10_000:
            raise InputError(f"hydra_members must be 1 <= lo <= hi <= 10000, got {self.hydra_members!r}")

    @classmethod
    def from_scale(
        cls, scale: str = "default", seed: int = 0, days: float | None = None, split: str = "train", **kw: Any
    ) -> Scenario:
        """The preset ``small``, ``default`` or ``large`` (``days`` overrides its duration)."""
        if scale not in SCALES:
            raise InputError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        spec = SCALES[scale]
        return cls(
            seed=seed,
            days=spec.days if days is None else days,
            counts=dict(spec.counts),
            split=split,
            scale=scale,
            hydra_members=spec.hydra_members,
            hydra_daily_budget=spec.hydra_daily_budget,
            volume=spec.volume,
            persona_volume=dict(spec.persona_volume),
            **kw,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "days": self.days,
            "split": self.split,
            "start": self.start,
            "start_iso": datetime.fromtimestamp(self.start, UTC).isoformat(),
            "scale": self.scale,
            "counts": dict(self.counts),
            "hydra_members": list(self.hydra_members),
            "hydra_daily_budget": self.hydra_daily_budget,
            "volume": self.volume,
            "persona_volume": dict(self.persona_volume),
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "perturb": self.perturb,
        }

    def build(self) -> Plan:
        """The plan: accounts and time-ordered requests, each account's traffic kept under its virtual limits."""
        world = World(self.seed, self.split, self.start, self.days)
        world.hydra_members = (int(self.hydra_members[0]), int(self.hydra_members[1]))
        world.hydra_daily_budget = self.hydra_daily_budget
        accounts: list[AccountPlan] = []
        by_account: dict[str, list[PlannedRequest]] = {}
        for name, cls in PERSONAS.items():  # a fixed order, whatever the order of ``counts``
            world.volume = float(self.volume) * float(self.persona_volume.get(name, 1.0))
            for i in range(self.counts.get(name, 0)):
                built = cls(i, world, self.seed, dict(self.overrides.get(name, {}))).build()
                accounts += built.accounts
                for a in built.accounts:
                    by_account.setdefault(a.key, [])
                for r in built.requests:
                    by_account[r.account].append(r)
        limits = {a.key: a.limits for a in accounts}
        requests: list[PlannedRequest] = []
        role = {a.key: a.role for a in accounts}
        for key, reqs in by_account.items():
            if self.perturb and role[key] == "attacker":
                rng = random.Random(f"perturb:{self.seed}:{self.split}:{key}")
                reqs = perturb_requests(reqs, rng, world.start, world.end, self.split)
            requests += enforce_limits(reqs, limits[key], world.end)
        requests.sort(key=lambda r: (r.t, r.account, r.turn))
        return Plan(self, accounts, requests, world.to_dict()["releases"], world.to_dict()["networks"])


def perturb_requests(
    requests: Sequence[PlannedRequest], rng: random.Random, start: float, end: float, split: str | None = None
) -> list[PlannedRequest]:
    """One attacker account's requests with the knobs a client sets freely perturbed.

    * ``max_tokens``: every request asks for a value drawn from :data:`PERTURB_MAX_TOKENS` (an attacker that
      knows long answers are watched asks for shorter ones and sends more requests);
    * wording: every stock reasoning demand (:data:`~antidistill.simulate.prompts.COT_DEMANDS` and the stock
      "think step by step" suffixes) is replaced by a paraphrase with none of the monitor's phrases
      (:func:`~antidistill.simulate.prompts.paraphrase_demands`, from the split's half of the paraphrases), in
      the system prompt too;
    * timing: each conversation (or single request) moves by a uniform offset of up to half the account's
      median gap between conversations, at least 30 s and at most an hour, so a steady pace loses its
      regularity; the turns of a conversation keep their own gaps. Requests moved outside ``[start, end)``
      are dropped.
    """
    if not requests:
        return []
    firsts = sorted(r.t for r in requests if r.turn == 0)
    gaps = [b - a for a, b in itertools.pairwise(firsts) if b > a]
    jitter = min(3600.0, max(30.0, statistics.median(gaps) / 2 if gaps else 30.0))
    offsets: dict[str, float] = {}
    out: list[PlannedRequest] = []
    for r in sorted(requests, key=lambda r: (r.t, r.turn)):
        key = r.conversation or f"single-{len(out)}-{r.t}"
        shift = offsets.setdefault(key, rng.uniform(-jitter, jitter))
        t = r.t + shift
        if not start <= t < end:
            continue
        messages = r.messages
        if messages is not None:
            messages = tuple(
                {**m, "content": paraphrase_demands(m["content"], rng, split)}
                if isinstance(m.get("content"), str) and m.get("role") in ("user", "system")
                else m
                for m in messages
            )
        prompt = paraphrase_demands(r.prompt, rng, split) if r.prompt is not None else None
        out.append(
            replace(
                r,
                t=round(t, 3),
                messages=messages,
                prompt=prompt,
                max_tokens=rng.randint(*PERTURB_MAX_TOKENS),
            )
        )
    return out


def enforce_limits(requests: Sequence[PlannedRequest], limits: VirtualLimits, end: float) -> list[PlannedRequest]:
    """One account's requests, each moved later where it would break a limit (as a client that backs off on
    429 would send it), dropped if it would land after ``end`` or could never pass. Order is kept; turns of a
    conversation move together with the turn before them."""

    out: list[PlannedRequest] = []
    minute: deque[tuple[float, int]] = deque()
    minute_tokens = 0
    per_day: Counter[int] = Counter()
    last = -math.inf
    shift: dict[str, float] = {}
    for r in sorted(requests, key=lambda r: (r.t, r.turn)):
        cost = r.cost(DEFAULT_MAX_TOKENS)
        if (limits.tpm is not None and cost > limits.tpm) or (
            limits.tokens_per_day is not None and cost > limits.tokens_per_day
        ):
            continue
        t = max(r.t + (shift.get(r.conversation, 0.0) if r.conversation else 0.0), last)
        while True:
            while minute and minute[0][0] <= t - 60:
                minute_tokens -= minute.popleft()[1]
            if limits.rpm is not None and len(minute) + 1 > limits.rpm:
                t = minute[len(minute) - limits.rpm][0] + 60 + _MARGIN_S
                continue
            if limits.tpm is not None and minute_tokens + cost > limits.tpm:
                need, acc = minute_tokens + cost - limits.tpm, 0
                for ts, c in minute:
                    acc += c
                    if acc >= need:
                        t = ts + 60 + _MARGIN_S
                        break
                continue
            day = math.floor(t / DAY_S)
            if limits.tokens_per_day is not None and per_day[day] + cost > limits.tokens_per_day:
                t = (day + 1) * DAY_S + 1.0
                continue
            break
        if t >= end:
            continue
        if r.conversation:  # later turns keep their gaps after this one
            shift[r.conversation] = t - r.t
        minute.append((t, cost))
        minute_tokens += cost
        per_day[math.floor(t / DAY_S)] += cost
        last = t
        out.append(r if t == r.t else replace(r, t=round(t, 3)))
    return out


@dataclass
class Plan:
    """A built scenario: the accounts, the time-ordered requests, the model releases and the shared networks."""

    scenario: Scenario
    accounts: list[AccountPlan]
    requests: list[PlannedRequest]
    releases: list[dict[str, Any]]
    networks: dict[str, Any]

    def counts(self) -> dict[str, dict[str, int]]:
        """Accounts and requests per persona."""
        persona = {a.key: a.persona for a in self.accounts}
        accts = Counter(a.persona for a in self.accounts)
        reqs = Counter(persona[r.account] for r in self.requests)
        return {p: {"accounts": accts[p], "requests": reqs[p]} for p in PERSONAS if accts[p]}

    def requests_per_account(self) -> Counter[str]:
        return Counter(r.account for r in self.requests)

    def summary(self) -> dict[str, Any]:
        """Totals for people: accounts, requests, benign vs attacker."""
        role = {a.key: a.role for a in self.accounts}
        by_role = Counter(role[r.account] for r in self.requests)
        return {
            "accounts": len(self.accounts),
            "requests": len(self.requests),
            "benign_accounts": sum(a.role == "benign" for a in self.accounts),
            "attacker_accounts": sum(a.role == "attacker" for a in self.accounts),
            "benign_requests": by_role["benign"],
            "attacker_requests": by_role["attacker"],
        }

    def scenario_dict(self) -> dict[str, Any]:
        """What ``scenario.json`` holds (before the run adds its own facts)."""
        return {
            **self.scenario.to_dict(),
            "end": self.scenario.start + self.scenario.days * DAY_S,
            "releases": self.releases,
            "tiers": {k: v.to_dict() for k, v in TIERS.items()},
            "personas": {"benign": list(BENIGN), "attacker": list(ATTACKERS)},
            "networks": self.networks,
            "persona_counts": self.counts(),
            "summary": self.summary(),
        }
