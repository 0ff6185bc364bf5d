"""The simulated world the personas live in: virtual time, networks, user agents, model releases, account tiers.

Everything here is drawn from the scenario's seed, so two builds of one scenario are identical. Nothing is
contacted: addresses are made up (plausible public-looking prefixes, never private ranges) and only structure
matters to the monitor (who shares a /24, a NAT, a carrier's CGNAT pool, a cloud provider's range).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from antidistill.simulate.prompts import check_split

DAY_S = 86_400.0
HOUR_S = 3_600.0


@dataclass(frozen=True)
class VirtualLimits:
    """Per-account limits of an account tier, respected by the personas in *virtual* time.

    The simulated accounts are created unlimited (the gateway's limiter counts real time, and a simulated week
    runs in minutes); each persona keeps its own traffic under these limits instead, with the gateway's
    definitions: requests and tokens in any 60 s window, tokens per UTC day (prompt estimate + ``max_tokens``).
    """

    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


#: the provider's account tiers (what a signup gets, what a card unlocks, what a contract buys)
TIERS: dict[str, VirtualLimits] = {
    "free": VirtualLimits(rpm=20, tpm=40_000, tokens_per_day=250_000),
    "tier1": VirtualLimits(rpm=60, tpm=150_000, tokens_per_day=2_000_000),
    "tier2": VirtualLimits(rpm=300, tpm=1_000_000, tokens_per_day=20_000_000),
    "enterprise": VirtualLimits(rpm=3_000, tpm=10_000_000, tokens_per_day=None),
}


@dataclass(frozen=True)
class Release:
    """A model and when it became available (virtual unix seconds)."""

    model: str
    released_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "released_at": self.released_at}


# ---- user agents ------------------------------------------------------------------------------------------------
COMMON_UAS = (
    "OpenAI/Python 1.54.3",
    "OpenAI/Python 1.99.1",
    "OpenAI/Python 2.8.1",
    "AsyncOpenAI/Python 1.97.0",
    "OpenAI/JS 4.77.0",
    "OpenAI/JS 5.12.2",
    "python-requests/2.32.3",
    "curl/8.5.0",
    "node-fetch/1.0",
    "langchain-openai/0.3.28 OpenAI/Python 1.97.0",
    "LibreChat/0.7.8",
    "open-webui/0.6.5",
    "Chatbox/1.11.3",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 "
    "Safari/537.36 TypingMind/2.4",
    "Cursor/0.45.11",
    "continue.dev/0.9.250",
    "aider/0.82.1 OpenAI/Python 1.75.0",
)
UNCOMMON_UAS = (
    "python-httpx/0.27.0",
    "Go-http-client/2.0",
    "aiohttp/3.9.5 Python/3.11",
    "okhttp/4.12.0",
    "Apache-HttpClient/4.5.14 (Java/17.0.9)",
    "axios/1.7.2",
    "Python-urllib/3.10",
    "reqwest/0.12",
)


# ---- networks -------------------------------------------------------------------------------------------------
def _public_prefix16(rng: random.Random) -> tuple[int, int]:
    while True:
        a = rng.randint(23, 223)
        if a in (100, 127, 169, 172, 192, 198, 203):  # skip ranges with reserved parts, to keep it simple
            continue
        return a, rng.randint(0, 255)


@dataclass
class Network:
    """A source of client addresses: a home ISP block, a NAT, a carrier's CGNAT pool or a cloud range.

    Args:
        name: what it is (``isp-…``, ``nat-university-…``, ``cgnat-…``, ``cloud-…``, ``office-…``).
        kind: ``residential``, ``nat``, ``cgnat``, ``cloud`` or ``office``.
        prefixes: its /24 prefixes (``a.b.c``).
        pool: for a NAT or CGNAT: the few public addresses everyone behind it shares.
    """

    name: str
    kind: str
    prefixes: list[str]
    pool: list[str] = field(default_factory=list)

    def address(self, rng: random.Random) -> str:
        """One address of the network (from the shared pool for NATs)."""
        if self.pool:
            return rng.choice(self.pool)
        return f"{rng.choice(self.prefixes)}.{rng.randint(2, 254)}"


class World:
    """The scenario's shared environment; built once per scenario from its seed.

    Args:
        seed: the scenario's seed.
        split: ``train`` or ``heldout`` (the world differs too: other ISPs, NATs and clouds).
        start: virtual start (unix seconds).
        days: virtual duration.
    """

    def __init__(self, seed: int, split: str, start: float, days: float) -> None:
        self.seed = seed
        self.split = check_split(split)
        self.start = float(start)
        self.days = float(days)
        self.end = self.start + self.days * DAY_S
        #: multiplies every persona's request rate (a small scale thins the traffic; ratios stay)
        self.volume = 1.0
        #: the range hydra sizes are drawn from, and a cap on a hydra's requests a day (set by the scenario)
        self.hydra_members: tuple[int, int] = (20, 500)
        self.hydra_daily_budget: float | None = None
        rng = random.Random(f"world:{seed}:{split}")
        self.rng = rng
        self.isps = [self._network(rng, f"isp-{i}", "residential", n24=rng.randint(8, 40)) for i in range(40)]
        self.universities = [self._nat(rng, f"nat-university-{i}", rng.randint(1, 4)) for i in range(4)]
        self.corporate = [self._nat(rng, f"nat-corporate-{i}", rng.randint(1, 3)) for i in range(8)]
        self.carriers = [self._nat(rng, f"cgnat-{i}", rng.randint(16, 64), kind="cgnat") for i in range(3)]
        self.clouds = [self._network(rng, f"cloud-{i}", "cloud", n24=rng.randint(20, 80)) for i in range(6)]
        self._cards: list[str] = []
        # the release the whole scenario turns around: a new model, mid-way through (at least 12 h before the end)
        mid = self.start + self.days * DAY_S * rng.uniform(0.35, 0.6)
        new_at = min(mid, max(self.start + HOUR_S, self.end - 12 * HOUR_S))
        self.releases = [
            Release("atlas-1", self.start - 240 * DAY_S),
            Release("atlas-1-mini", self.start - 150 * DAY_S),
            Release("atlas-2", round(new_at, 3)),
        ]
        self.old_model, self.mini_model, self.new_model = (r.model for r in self.releases)
        self.new_release = self.releases[-1].released_at

    @staticmethod
    def _network(rng: random.Random, name: str, kind: str, n24: int) -> Network:
        a, b = _public_prefix16(rng)
        cs = rng.sample(range(256), n24)
        return Network(name, kind, [f"{a}.{b}.{c}" for c in cs])

    @classmethod
    def _nat(cls, rng: random.Random, name: str, size: int, kind: str = "nat") -> Network:
        net = cls._network(rng, name, kind, n24=1 if size < 8 else 2)
        net.pool = sorted({net.address(rng) for _ in range(size)})
        return net

    # ---- helpers the personas use ---------------------------------------------------------------------------
    def office(self, rng: random.Random, name: str) -> Network:
        """A fresh office network: one /24 of its own."""
        return self._network(rng, f"office-{name}", "office", n24=1)

    def household_card(self, rng: random.Random, share_prob: float) -> str:
        """A payment fingerprint; with ``share_prob`` one already used by another (family, flatmates)."""
        if self._cards and rng.random() < share_prob:
            return rng.choice(self._cards)
        card = new_card(rng)
        self._cards.append(card)
        return card

    def model_at(self, t: float, adopt_at: float | None, base: str | None = None) -> str:
        """The model an account asks for at ``t``: the new one once it has adopted it (``adopt_at``)."""
        if adopt_at is not None and t >= max(adopt_at, self.new_release):
            return self.new_model
        return base or self.old_model

    def to_dict(self) -> dict[str, Any]:
        return {
            "releases": [r.to_dict() for r in self.releases],
            "networks": {
                n.name: {"kind": n.kind, "prefixes": len(n.prefixes), "pool": n.pool}
                for n in [*self.universities, *self.corporate, *self.carriers]
            },
        }


def new_card(rng: random.Random) -> str:
    """A fresh payment fingerprint (what a payment processor hands back for a card)."""
    return "pf_" + "".join(rng.choice("0123456789abcdef") for _ in range(16))


# ---- time --------------------------------------------------------------------------------------------------------
#: relative activity per local hour
PROFILES: dict[str, tuple[float, ...]] = {
    # people at home: evenings, some lunch, little at night
    "human": (
        0.3,
        0.15,
        0.08,
        0.05,
        0.05,
        0.08,
        0.2,
        0.45,
        0.7,
        0.85,
        0.9,
        0.95,
        1.0,
        0.9,
        0.85,
        0.85,
        0.9,
        0.95,
        1.0,
        1.1,
        1.2,
        1.15,
        0.9,
        0.6,
    ),
    # office hours
    "office": (
        0.02,
        0.01,
        0.01,
        0.01,
        0.01,
        0.02,
        0.05,
        0.2,
        0.7,
        1.0,
        1.0,
        0.95,
        0.6,
        0.9,
        1.0,
        1.0,
        0.9,
        0.6,
        0.3,
        0.15,
        0.1,
        0.08,
        0.05,
        0.03,
    ),
    # students and night owls
    "night_owl": (
        0.8,
        0.6,
        0.4,
        0.2,
        0.08,
        0.04,
        0.04,
        0.1,
        0.3,
        0.5,
        0.6,
        0.7,
        0.8,
        0.8,
        0.8,
        0.8,
        0.85,
        0.9,
        0.9,
        1.0,
        1.1,
        1.2,
        1.2,
        1.0,
    ),
    # around the clock
    "flat": (1.0,) * 24,
}


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal for large ones)."""
    if lam <= 0:
        return 0
    if lam > 60:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def arrivals(
    rng: random.Random,
    world: World,
    per_day: float,
    profile: str = "human",
    tz_hours: float = 0.0,
    weekend: float = 1.0,
    start: float | None = None,
    end: float | None = None,
) -> list[float]:
    """Event times of an inhomogeneous Poisson process: ``per_day`` events a (weekday) day, shaped by the local
    hour ``profile`` (``tz_hours`` from UTC) and scaled by ``weekend`` on Saturdays and Sundays."""
    weights = PROFILES[profile]
    total = sum(weights)
    per_day *= world.volume
    lo = world.start if start is None else max(start, world.start)
    hi = world.end if end is None else min(end, world.end)
    out: list[float] = []
    day0 = math.floor((lo + tz_hours * HOUR_S) / DAY_S)
    day1 = math.floor((hi + tz_hours * HOUR_S) / DAY_S)
    for day in range(day0, day1 + 1):
        local_midnight = day * DAY_S - tz_hours * HOUR_S
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        factor = weekend if weekday >= 5 else 1.0
        for hour, w in enumerate(weights):
            n = poisson(rng, per_day * factor * w / total)
            for _ in range(n):
                t = local_midnight + (hour + rng.random()) * HOUR_S
                if lo <= t < hi:
                    out.append(t)
    out.sort()
    return out


def paced(rng: random.Random, start: float, n: int, gap: float, jitter: float = 0.3) -> list[float]:
    """``n`` times from ``start``, ``gap`` seconds apart on average (a client working through a list)."""
    out, t = [], start
    for _ in range(n):
        out.append(t)
        t += max(0.05, rng.gauss(gap, gap * jitter))
    return out


class Draw:
    """Parameter draws that keep the training and the held-out split apart.

    Every numeric range is cut into :attr:`BANDS` equal bands (on a log scale for :meth:`log_uniform`) and the
    bands are dealt to the splits in the mirror-symmetric pattern train, held-out, held-out, train, train,
    held-out, held-out, train: no held-out persona has a parameter value any training persona had, both splits
    span the range (a detector must interpolate, not memorise), and both have the same mean band, so held-out
    traffic is not systematically heavier or lighter than training traffic. Integers are cut into blocks of
    values the same way (single values when the range is short). Categorical choices are not split; template
    pools are (:func:`antidistill.simulate.prompts.split_pool`).

    Args:
        rng: the persona's generator.
        split: ``train`` or ``heldout``.

    Example:
        >>> a = Draw(random.Random(1), "train").uniform(0.0, 8.0)
        >>> b = Draw(random.Random(1), "heldout").uniform(0.0, 8.0)
        >>> int(a) in Draw.TRAIN_BANDS, int(b) in Draw.TRAIN_BANDS
        (True, False)
    """

    BANDS = 8
    #: the bands (and blocks) of the training split; the others are the held-out split's
    TRAIN_BANDS = frozenset({0, 3, 4, 7})

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng = rng
        self.split = check_split(split)

    def _mine(self, n: int) -> list[int]:
        """This split's indices among ``n`` bands or blocks (the pattern repeats every 4 when ``n`` < 8)."""
        train = [i for i in range(n) if (i % 4) in (0, 3)] if n < self.BANDS else sorted(self.TRAIN_BANDS)
        return train if self.split == "train" else [i for i in range(n) if i not in train]

    def uniform(self, lo: float, hi: float, digits: int | None = None) -> float:
        """A float in [lo, hi), from this split's bands; rounded to ``digits`` without leaving its band."""
        if hi <= lo:
            return lo
        band = self.rng.choice(self._mine(self.BANDS))
        width = (hi - lo) / self.BANDS
        while True:
            value = lo + (band + self.rng.random()) * width
            if digits is None:
                return value
            value = round(value, digits)
            if lo + band * width < value < lo + (band + 1) * width:  # rounding must not cross into a neighbour
                return value

    def log_uniform(self, lo: float, hi: float) -> float:
        """A float in [lo, hi), log-uniform, from this split's bands (rates, volumes)."""
        return math.exp(self.uniform(math.log(lo), math.log(hi)))

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi], from this split's blocks of values."""
        values = list(range(lo, hi + 1))
        if len(values) == 1:
            return lo
        n_blocks = min(self.BANDS, len(values))
        size = len(values) / n_blocks
        blocks = [values[round(i * size) : round((i + 1) * size)] for i in range(n_blocks)]
        mine = [blocks[i] for i in self._mine(n_blocks) if blocks[i]]
        return self.rng.choice(self.rng.choice(mine))

    def log_integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi], roughly log-uniform, from this split's blocks (sizes spanning orders of
        magnitude); the blocks' edges are integers, so the two splits never share a value."""
        if hi <= lo:
            return lo
        step = (math.log(hi + 1) - math.log(lo)) / self.BANDS
        edges = [lo] + [round(math.exp(math.log(lo) + i * step)) for i in range(1, self.BANDS)] + [hi + 1]
        edges = [min(max(e, lo), hi + 1) for e in edges]
        blocks = [(edges[i], edges[i + 1]) for i in range(self.BANDS) if edges[i + 1] > edges[i]]
        mine = [blocks[i] for i in self._mine(len(blocks))] or blocks[:1]
        a, b = self.rng.choice(mine)
        return min(hi, max(lo, int(math.exp(self.rng.uniform(math.log(a), math.log(b))))))

    def chance(self, lo: float, hi: float) -> float:
        """A probability in [lo, hi] (clamped to [0, 1]), from this split's bands."""
        return min(1.0, max(0.0, self.uniform(lo, hi)))

    def choice(self, options: Sequence[Any]) -> Any:
        """One of ``options`` (not split)."""
        return self.rng.choice(list(options))
