"""The simulator's personas: eight kinds of legitimate customers and nine kinds of distillation campaign.

Each persona is one class with a parameters dataclass. Its parameters are drawn from ranges by the persona's
own seeded generator through :class:`~antidistill.simulate.world.Draw`, which keeps the training and the
held-out split on disjoint bands of every range (and the template pools on disjoint halves), so a held-out run
uses parameter values and templates that no training run used.

The benign personas are hard negatives on purpose: a RAG app is as templated as a harvester, a batch job has
the volume of one, an evaluation harness is as systematic as a coverage sweep (and evaluates a new model on its
release day), a research team is several accounts of one organisation behind one office prefix, sharing a card,
and casual users sit behind university NATs and carrier CGNATs. The attackers follow what real campaigns did
(Anthropic's and Google's reports of February 2026): heavy volume on a few capabilities, repetitive templates,
demands for the whole chain of thought, systematic coverage of a capability space, hydra clusters of accounts
that each look clean but share payment details, infrastructure or timing, pivots to a new model within a day of
its release, and legitimate-looking traffic mixed in. The newer kinds test what the first ones made easy: a
reasoning harvester that words its demands in its own way, an agent loop whose harvest is multi-turn
self-refinement, a conversation farm whose accounts share almost nothing, and, on the benign side, a lab whose
chain-of-thought study looks like extraction and a summariser whose timing is machine-regular. The attackers'
ranges include subtle settings (a hydra member can send two requests a day from a residential proxy with its
own card).

Volumes are scaled down from real campaigns (millions of exchanges) so that a simulated week runs in minutes;
the *ratios* between personas are what the monitor sees.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from antidistill.errors import InputError
from antidistill.simulate import prompts as P
from antidistill.simulate.world import (
    COMMON_UAS,
    DAY_S,
    HOUR_S,
    TIERS,
    UNCOMMON_UAS,
    Draw,
    Network,
    VirtualLimits,
    World,
    arrivals,
    new_card,
    paced,
)

CHAT = "chat"
COMPLETION = "completion"


@dataclass(frozen=True)
class AccountPlan:
    """An account a persona uses, before it exists in the store.

    Args:
        key: its id within the plan (``hydra-0-017``); the store assigns the real ``acct_…`` id.
        name: display name.
        persona: the persona's name (``casual``, ``hydra``, …).
        role: ``benign`` or ``attacker``.
        campaign: the group it belongs to (a hydra, a research team, a company's accounts), else ``None``.
        tier: the account tier (:data:`~antidistill.simulate.world.TIERS`); ``limits`` are its virtual limits.
        metadata: what the store keeps and the monitor links on: ``organisation``, ``payment_fingerprint``,
            ``signup_source``, ``signup_at`` (virtual ISO time), ``email_domain``.
        params: the persona's drawn parameters (ground truth).
    """

    key: str
    name: str
    persona: str
    role: str
    campaign: str | None
    tier: str
    limits: VirtualLimits
    metadata: dict[str, Any]
    params: dict[str, Any]


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the plan, sent at virtual time ``t``.

    ``messages`` may hold assistant turns whose ``content`` is ``None``: the driver fills them with the answers
    the gateway gave to the earlier turns of ``conversation``.

    Args:
        t: virtual unix seconds.
        account: the :attr:`AccountPlan.key` that sends it.
        endpoint: ``chat`` or ``completion``.
        model: the model asked for.
        messages: the chat messages (``endpoint == "chat"``).
        prompt: the raw prompt (``endpoint == "completion"``).
        max_tokens, temperature: sampling (``None``: not sent).
        stream: ask for server-sent events.
        user_agent, client_addr: the client's software and address.
        purpose: what the persona meant by it (``chat``, ``harvest``, ``cover``, ``eval``, ``batch``, …).
        conversation: the conversation it continues, if any; ``turn`` is its index there.
    """

    t: float
    account: str
    endpoint: str
    model: str
    messages: tuple[dict[str, Any], ...] | None
    prompt: str | None
    max_tokens: int | None
    temperature: float | None
    stream: bool
    user_agent: str
    client_addr: str
    purpose: str
    conversation: str | None = None
    turn: int = 0

    def cost(self, default_max_tokens: int = 256) -> int:
        """Tokens the gateway's limiter would reserve: the prompt estimate plus ``max_tokens``."""
        if self.messages is not None:
            est = sum(_estimate(m.get("content") or "") + 4 for m in self.messages)
        else:
            est = _estimate(self.prompt or "")
        return est + (self.max_tokens or default_max_tokens)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["messages"] = list(self.messages) if self.messages is not None else None
        return d


def _estimate(text: str) -> int:
    # the gateway's estimate (routes/openai.py): about 4 bytes a token, at least one per word
    return max(len(text.encode("utf-8", "surrogatepass")) // 4, len(text.split()))


def _iso(t: float) -> str:

    return datetime.fromtimestamp(t, UTC).isoformat()


@dataclass
class Built:
    """What a persona contributes to a plan."""

    accounts: list[AccountPlan] = field(default_factory=list)
    requests: list[PlannedRequest] = field(default_factory=list)


class Persona(ABC):
    """A kind of customer. Subclasses set :attr:`name`, :attr:`role`, a ``Params`` dataclass, :meth:`draw` and
    :meth:`build`.

    Args:
        index: which persona of its kind in the scenario (part of its account keys and its seed).
        world: the scenario's world.
        seed: the scenario's seed.
        overrides: parameter values to use instead of drawn ones (tests, targeted experiments).
    """

    name: ClassVar[str]
    role: ClassVar[str]
    #: one line for the CLI and the docs
    summary: ClassVar[str]

    def __init__(self, index: int, world: World, seed: int, overrides: dict[str, Any] | None = None) -> None:
        self.index = index
        self.world = world
        self.rng = random.Random(f"persona:{seed}:{world.split}:{self.name}:{index}")
        params = self.draw(Draw(self.rng, world.split), world)
        if overrides:
            unknown = set(overrides) - set(asdict(params))
            if unknown:
                raise InputError(f"unknown parameter(s) for persona {self.name}: {', '.join(sorted(unknown))}")
            params = type(params)(**{**asdict(params), **overrides})
        self.params = params
        self.campaign = f"{self.name}-{index}"

    @classmethod
    @abstractmethod
    def draw(cls, d: Draw, world: World) -> Any:
        """This persona's parameters, drawn from its ranges."""

    @abstractmethod
    def build(self) -> Built:
        """Its accounts and its requests (in any order; the scenario sorts and applies the virtual limits)."""

    # ---- helpers ------------------------------------------------------------------------------------------
    def account(
        self,
        suffix: str,
        tier: str,
        metadata: dict[str, Any],
        campaign: str | None = None,
        name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> AccountPlan:
        key = f"{self.name}-{self.index}" + (f"-{suffix}" if suffix else "")
        params = {**asdict(self.params), **(extra or {})}
        # the display name must not give the persona away: the plan key stays in the labels only
        return AccountPlan(
            key=key,
            name=name or username(self.rng),
            persona=self.name,
            role=self.role,
            campaign=campaign,
            tier=tier,
            limits=TIERS[tier],
            metadata=metadata,
            params=params,
        )

    def signup(self, lo_days: float, hi_days: float) -> float:
        """A signup time between ``hi_days`` and ``lo_days`` before the scenario starts."""
        return self.world.start - self.rng.uniform(lo_days, hi_days) * DAY_S

    def chat(
        self,
        t: float,
        acct: str,
        model: str,
        content: str | list[dict[str, Any]],
        *,
        ua: str,
        addr: str,
        purpose: str,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool = False,
        conversation: str | None = None,
        turn: int = 0,
    ) -> PlannedRequest:
        if isinstance(content, str):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": content}
            ]
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + list(content)
        return PlannedRequest(
            t,
            acct,
            CHAT,
            model,
            tuple(messages),
            None,
            max_tokens,
            temperature,
            stream,
            ua,
            addr,
            purpose,
            conversation,
            turn,
        )

    def completion(
        self,
        t: float,
        acct: str,
        model: str,
        prompt: str,
        *,
        ua: str,
        addr: str,
        purpose: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> PlannedRequest:
        return PlannedRequest(
            t, acct, COMPLETION, model, None, prompt, max_tokens, temperature, False, ua, addr, purpose
        )

    def conversation(
        self,
        t: float,
        acct: str,
        model: str,
        turns: list[str],
        gaps: list[float],
        *,
        ua: str,
        addr: str,
        purpose: str,
        conv: str,
        system: str | None = None,
        **kw: Any,
    ) -> list[PlannedRequest]:
        """A multi-turn chat: turn k carries the k earlier user turns and (filled in later) the answers."""
        out, history, at = [], [], t
        for k, text in enumerate(turns):
            history = [*history, {"role": "user", "content": text}]
            out.append(
                self.chat(
                    at,
                    acct,
                    model,
                    list(history),
                    ua=ua,
                    addr=addr,
                    purpose=purpose,
                    system=system,
                    conversation=conv if len(turns) > 1 else None,
                    turn=k,
                    **kw,
                )
            )
            history = [*history, {"role": "assistant", "content": None}]
            if k < len(gaps):
                at += gaps[k]
        return out

    def adopt_after(self, lo_h: float, hi_h: float, never: float = 0.0) -> float | None:
        """When this persona starts asking for the new model: ``lo_h``-``hi_h`` hours after its release."""
        if self.rng.random() < never:
            return None
        return self.world.new_release + self.rng.uniform(lo_h, hi_h) * HOUR_S


_FIRST = (
    "alex",
    "sam",
    "maria",
    "jun",
    "fatima",
    "lena",
    "tom",
    "ines",
    "raj",
    "olga",
    "kofi",
    "mei",
    "diego",
    "anna",
    "yusuf",
    "clara",
    "ben",
    "sofia",
    "ivan",
    "nora",
    "hiro",
    "zoe",
    "omar",
    "eva",
    "luca",
    "amir",
)
_LAST = (
    "smith",
    "garcia",
    "chen",
    "muller",
    "kowalski",
    "okafor",
    "tanaka",
    "rossi",
    "novak",
    "silva",
    "kim",
    "nguyen",
    "haddad",
    "jensen",
    "dubois",
    "ivanova",
    "patel",
    "lopez",
    "schmidt",
    "brown",
)


def username(rng: random.Random) -> str:
    """A display name as people pick them."""
    f, last = rng.choice(_FIRST), rng.choice(_LAST)
    return rng.choice(
        (
            f"{f}.{last}",
            f"{f}{last}{rng.randint(1, 99)}",
            f"{f[0]}{last}",
            f"{f}_{rng.randint(70, 2005)}",
            f"{f.title()} {last.title()}",
            f"{last}{f[0]}{rng.randint(1, 9)}",
        )
    )


_STEMS = (
    "North",
    "Blue",
    "Bright",
    "Stone",
    "Silver",
    "Oak",
    "Harbor",
    "Summit",
    "Cedar",
    "Iron",
    "Nova",
    "Lumen",
    "Vertex",
    "Quill",
    "Maple",
    "Atlas",
    "Crest",
    "Delta",
    "Ember",
    "Granite",
    "Haven",
    "Kite",
    "Meridian",
    "Orbit",
    "Pine",
    "River",
    "Sable",
    "Tidal",
    "Umber",
    "Willow",
)
_STEMS2 = ("wind", "field", "gate", "bridge", "point", "line", "works", "stone", "brook", "way", "light", "mark")


def company_name(rng: random.Random, suffixes: tuple[str, ...]) -> str:
    """A plausible company name (stem + stem + a suffix of its trade)."""
    return rng.choice(_STEMS) + rng.choice(_STEMS2) + rng.choice(suffixes)


def _tz(rng: random.Random) -> float:
    return rng.choice((-8.0, -7.0, -5.0, -3.0, 0.0, 1.0, 1.0, 2.0, 3.0, 5.5, 8.0, 9.0, 10.0))


def _email(rng: random.Random, kind: str) -> str:
    pools = {
        "personal": ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "gmx.de"),
        "disposable": ("mailinator.com", "tempmail.dev", "guerrillamail.com", "10minutemail.net"),
    }
    return rng.choice(pools[kind])


# =====================================================================================================================
# benign
# =====================================================================================================================
@dataclass(frozen=True)
class CasualParams:
    sessions_per_day: float
    turns_mean: float
    tz_hours: float
    profile: str
    weekend: float
    access: str
    typo_rate: float
    stream_prob: float
    code_share: float
    max_tokens: int | None
    tier: str
    adopt_days: float
    never_adopt: float


class CasualUser(Persona):
    """A person chatting through an SDK or a chat front end: a few sessions a day (heavy-tailed: power users
    send dozens of requests), from home, a phone (carrier CGNAT), a university or an office NAT."""

    name, role = "casual", "benign"
    summary = "chat users; heavy-tailed activity; many behind shared NATs and CGNATs"

    @classmethod
    def draw(cls, d: Draw, world: World) -> CasualParams:
        return CasualParams(
            sessions_per_day=d.log_uniform(0.03, 8.0),
            turns_mean=d.uniform(1.0, 4.0),
            tz_hours=_tz(d.rng),
            profile=d.choice(("human", "human", "office", "night_owl")),
            weekend=d.uniform(0.4, 1.4),
            access=d.choice(("residential", "residential", "residential", "mobile", "university", "corporate")),
            typo_rate=d.uniform(0.0, 0.08),
            stream_prob=d.chance(0.0, 1.0),
            code_share=d.uniform(0.0, 0.35),
            max_tokens=d.choice((None, None, 256, 512, 1024, 2048)),
            tier=d.choice(("free", "free", "free", "tier1")),
            adopt_days=d.log_uniform(1.0, 20.0),
            never_adopt=d.chance(0.1, 0.6),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        net: Network
        if p.access == "mobile":
            net = rng.choice(w.carriers)
        elif p.access == "university":
            net = rng.choice(w.universities)
        elif p.access == "corporate":
            net = rng.choice(w.corporate)
        else:
            isp = rng.choice(w.isps)
            net = Network(isp.name, "residential", isp.prefixes, pool=[isp.address(rng) for _ in range(2)])
        ua = rng.choice(COMMON_UAS)
        card = w.household_card(rng, 0.04) if p.tier != "free" else None
        meta = {
            "organisation": None,
            "payment_fingerprint": card,
            "signup_source": rng.choice(("web", "web", "google", "github", "mobile-app")),
            "signup_at": _iso(self.signup(1, 700)),
            "email_domain": _email(rng, "personal"),
        }
        acct = self.account("", p.tier, meta)
        topics = rng.sample(P.ALL_TOPICS, rng.randint(3, 10))
        adopt = None if rng.random() < p.never_adopt else w.new_release + rng.expovariate(1 / p.adopt_days) * DAY_S
        out: list[PlannedRequest] = []
        for s, t in enumerate(arrivals(rng, w, p.sessions_per_day, p.profile, p.tz_hours, p.weekend)):
            n = max(1, min(8, round(rng.expovariate(1 / p.turns_mean) + 0.5)))
            first = P.code_prompt(rng) if rng.random() < p.code_share else P.casual_prompt(rng, topics, p.typo_rate)
            turns = [first] + [P.followup_prompt(rng) for _ in range(n - 1)]
            gaps = [rng.uniform(15, 240) for _ in range(n - 1)]
            addr = net.address(rng)
            out += self.conversation(
                t,
                acct.key,
                w.model_at(t, adopt),
                turns,
                gaps,
                ua=ua,
                addr=addr,
                purpose="chat",
                conv=f"{acct.key}-s{s}",
                max_tokens=p.max_tokens,
                stream=rng.random() < p.stream_prob,
            )
        return Built([acct], out)


@dataclass(frozen=True)
class CodingParams:
    requests_per_day: float
    accounts: int
    stream_prob: float
    turns_mean: float
    max_tokens: int
    temperature: float
    egress: int
    adopt_hours: float


class CodingAssistant(Persona):
    """A coding-assistant product: one company's backend relays its users' questions under a fixed system
    prompt, from a few cloud egress addresses, with its own user agent; production plus staging keys."""

    name, role = "coding_product", "benign"
    summary = "a coding-assistant product relaying many end users; fixed system prompt; cloud egress"

    @classmethod
    def draw(cls, d: Draw, world: World) -> CodingParams:
        return CodingParams(
            requests_per_day=d.log_uniform(50.0, 400.0),
            accounts=d.integer(1, 3),
            stream_prob=d.chance(0.6, 1.0),
            turns_mean=d.uniform(1.0, 3.5),
            max_tokens=d.integer(512, 2048),
            temperature=d.uniform(0.0, 0.6, digits=2),
            egress=d.integer(2, 8),
            adopt_hours=d.log_uniform(6.0, 240.0),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        company = company_name(rng, ("Pilot", "wise", "mate", "ly", "helm", "forge", "stack"))
        cloud = rng.choice(w.clouds)
        egress = [cloud.address(rng) for _ in range(p.egress)]
        ua = f"{company.split()[0].lower()}-server/{rng.randint(1, 4)}.{rng.randint(0, 20)} python-httpx/0.27.2"
        system = rng.choice(P.CODING_SYSTEM_PROMPTS)
        card = new_card(rng)
        meta = {
            "organisation": f"{company} Inc.",
            "payment_fingerprint": card,
            "signup_source": "sales",
            "signup_at": _iso(self.signup(60, 500)),
            "email_domain": company.split()[0].lower() + ".io",
        }
        names = ["prod", "staging", "ci"][: p.accounts]
        accts = [
            self.account(
                n, "tier2" if n == "prod" else "tier1", dict(meta), campaign=self.campaign, name=f"{company} {n}"
            )
            for n in names
        ]
        shares = [0.85, 0.12, 0.03][: p.accounts]
        adopt = w.new_release + p.adopt_hours * HOUR_S
        out: list[PlannedRequest] = []
        for acct, share in zip(accts, shares, strict=True):
            # end users everywhere: two office-hour humps (Europe, Americas)
            times = sorted(
                arrivals(rng, w, p.requests_per_day * share * 0.55, "office", 1.0, 0.3)
                + arrivals(rng, w, p.requests_per_day * share * 0.45, "office", -6.0, 0.3)
            )
            for i, t in enumerate(times):
                n = max(1, min(6, round(rng.expovariate(1 / p.turns_mean) + 0.5)))
                turns = [P.code_prompt(rng)] + [
                    rng.choice(
                        (
                            "that didn't work, same error",
                            "can you add tests?",
                            "now make it async",
                            "explain line 3",
                            P.code_prompt(rng),
                        )
                    )
                    for _ in range(n - 1)
                ]
                out += self.conversation(
                    t,
                    acct.key,
                    w.model_at(t, adopt),
                    turns,
                    [rng.uniform(20, 600) for _ in range(n - 1)],
                    ua=ua,
                    addr=rng.choice(egress),
                    purpose="product",
                    conv=f"{acct.key}-c{i}",
                    system=system,
                    max_tokens=p.max_tokens,
                    temperature=p.temperature,
                    stream=rng.random() < p.stream_prob,
                )
        return Built(accts, out)


@dataclass(frozen=True)
class RagParams:
    requests_per_day: float
    corpus: str
    system_prompt: str
    template: str
    chunks: int
    max_tokens: int
    temperature: float
    tz_hours: float
    egress: int


class RagApp(Persona):
    """A retrieval-augmented app: a fixed system prompt and a fixed template around retrieved chunks of a small
    corpus; templated, repetitive, and legitimate."""

    name, role = "rag_app", "benign"
    summary = "RAG app: fixed system prompt and template over a fixed corpus (templated but legitimate)"

    @classmethod
    def draw(cls, d: Draw, world: World) -> RagParams:
        return RagParams(
            requests_per_day=d.log_uniform(30.0, 400.0),
            corpus=d.choice(sorted(P.RAG_CORPORA)),
            system_prompt=d.choice(P.split_pool(P.RAG_SYSTEM_PROMPTS, world.split)),
            template=d.choice(P.split_pool(P.RAG_TEMPLATES, world.split)),
            chunks=d.integer(2, 4),
            max_tokens=d.integer(150, 600),
            temperature=d.uniform(0.0, 0.4, digits=2),
            tz_hours=_tz(d.rng),
            egress=d.integer(1, 3),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        org = company_name(rng, (" Health", " Insurance", " Software", " Systems", " Legal", " Clinics", ""))
        system = p.system_prompt.format(org=org)
        net = rng.choice(w.clouds)
        egress = [net.address(rng) for _ in range(p.egress)]
        ua = rng.choice(
            (
                "langchain-openai/0.3.28 OpenAI/Python 1.97.0",
                "llama-index/0.12.8 OpenAI/Python 1.58.1",
                "OpenAI/Python 1.99.1",
                "haystack-ai/2.9",
            )
        )
        meta = {
            "organisation": org,
            "payment_fingerprint": new_card(rng),
            "signup_source": "web",
            "signup_at": _iso(self.signup(30, 600)),
            "email_domain": org.split()[0].lower() + ".com",
        }
        acct = self.account("", "tier1", meta)
        adopt = self.adopt_after(48, 24 * 30, never=0.5)
        out = []
        for t in arrivals(rng, w, p.requests_per_day, "office", p.tz_hours, 0.15):
            user = p.template.format(
                context=P.rag_context(rng, p.corpus, p.chunks), question=P.rag_question(rng, p.corpus)
            )
            out.append(
                self.chat(
                    t,
                    acct.key,
                    w.model_at(t, adopt),
                    user,
                    system=system,
                    ua=ua,
                    addr=rng.choice(egress),
                    purpose="rag",
                    max_tokens=p.max_tokens,
                    temperature=p.temperature,
                    stream=False,
                )
            )
        return Built([acct], out)


@dataclass(frozen=True)
class BatchParams:
    records_per_run: int
    runs_per_week: int
    start_hour: float
    gap_s: float
    instructions: int
    max_tokens: int
    completions_endpoint: bool
    tz_hours: float
    use_mini: bool


class EnterpriseBatch(Persona):
    """An enterprise's nightly batch job over its own records (tickets, reviews, notes): high volume, one or two
    fixed instructions, temperature 0, short answers, one datacenter address."""

    name, role = "enterprise_batch", "benign"
    summary = "nightly high-volume batch job over its own records (volume but legitimate)"

    @classmethod
    def draw(cls, d: Draw, world: World) -> BatchParams:
        return BatchParams(
            records_per_run=d.log_integer(120, 1200),
            runs_per_week=d.integer(2, 7),
            start_hour=d.uniform(0.0, 5.0),
            gap_s=d.log_uniform(0.2, 4.0),
            instructions=d.integer(1, 3),
            max_tokens=d.integer(8, 200),
            completions_endpoint=d.rng.random() < 0.3,
            tz_hours=_tz(d.rng),
            use_mini=d.rng.random() < 0.6,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        org = company_name(rng, (" Retail", " Logistics", " Bank", " Telecom", " Energy", " Insurance", " Airlines"))
        nat = rng.choice(w.corporate)
        addr = nat.address(rng)
        instructions = rng.sample(P.BATCH_INSTRUCTIONS, p.instructions)
        meta = {
            "organisation": org,
            "payment_fingerprint": new_card(rng),
            "signup_source": "sales",
            "signup_at": _iso(self.signup(90, 900)),
            "email_domain": org.split()[0].lower() + ".com",
        }
        acct = self.account("", "enterprise", meta)
        ua = rng.choice(("OpenAI/Python 1.54.3", "python-requests/2.32.3", "Apache-HttpClient/4.5.14 (Java/17.0.9)"))
        model = w.mini_model if p.use_mini else w.old_model
        starts = [
            day * DAY_S + (p.start_hour - p.tz_hours) * HOUR_S + rng.uniform(0, 600)
            for day in range(math.floor(w.start / DAY_S) - 1, math.ceil(w.end / DAY_S) + 1)
        ]
        starts = [t0 for t0 in starts if w.start <= t0 < w.end] or [rng.uniform(w.start, w.end)]  # an ad hoc run
        run_starts = [t0 for t0 in starts if rng.random() < p.runs_per_week / 7] or starts[:1]
        records = max(1, round(p.records_per_run * w.volume))
        out = []
        for t0 in run_starts:
            for t in paced(rng, t0, records, p.gap_s):
                if not w.start <= t < w.end:
                    continue
                text = rng.choice(instructions).format(record=P.batch_record(rng))
                if p.completions_endpoint:
                    out.append(
                        self.completion(
                            t,
                            acct.key,
                            model,
                            text,
                            ua=ua,
                            addr=addr,
                            purpose="batch",
                            max_tokens=p.max_tokens,
                            temperature=0.0,
                        )
                    )
                else:
                    out.append(
                        self.chat(
                            t,
                            acct.key,
                            model,
                            text,
                            ua=ua,
                            addr=addr,
                            purpose="batch",
                            max_tokens=p.max_tokens,
                            temperature=0.0,
                        )
                    )
        return Built([acct], out)


@dataclass(frozen=True)
class EvalParams:
    benchmarks: tuple[str, ...]
    items: int
    runs_per_week: float
    gap_s: float
    cot: bool
    completions_endpoint: bool
    release_eval_hours: float
    tz_hours: float


class EvalHarness(Persona):
    """A team running a benchmark through an evaluation harness: every item in order, temperature 0, the same
    items again on every run, often "let's think step by step", and a run on the new model within hours of its
    release (a benign release-day pivot)."""

    name, role = "eval_harness", "benign"
    summary = "evaluation harness running benchmarks (systematic; evaluates a new model on release day)"

    @classmethod
    def draw(cls, d: Draw, world: World) -> EvalParams:
        k = d.integer(1, 3)
        return EvalParams(
            benchmarks=tuple(d.rng.sample(P.EVAL_BENCHMARKS, k)),
            items=d.log_integer(80, 600),
            runs_per_week=d.uniform(0.5, 4.0),
            gap_s=d.log_uniform(0.1, 3.0),
            cot=d.rng.random() < 0.5,
            completions_endpoint=d.rng.random() < 0.4,
            release_eval_hours=d.log_uniform(1.0, 30.0),
            tz_hours=_tz(d.rng),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        org = company_name(rng, (" Evals", " Labs", " AI Safety", " Research", " Benchmarks"))
        meta = {
            "organisation": org,
            "payment_fingerprint": new_card(rng),
            "signup_source": "github",
            "signup_at": _iso(self.signup(20, 400)),
            "email_domain": org.split()[0].lower() + ".org",
        }
        acct = self.account("", "tier2", meta)
        office = w.office(rng, acct.key)
        addr = office.address(rng)
        ua = rng.choice(
            (
                "lm-eval/0.4.8 OpenAI/Python 1.97.0",
                "OpenAI/Python 1.99.1",
                "inspect_ai/0.3.90",
                "helm/0.5.4 python-requests/2.32.3",
            )
        )
        items = {b: P.benchmark_items(b, max(1, round(p.items * w.volume)), seed=0) for b in p.benchmarks}
        starts = arrivals(rng, w, p.runs_per_week / 7 / w.volume, "office", p.tz_hours, 0.1)
        release_run = w.new_release + p.release_eval_hours * HOUR_S
        if not starts:  # a short scenario still sees one run
            starts = [w.start + rng.uniform(0.1, 0.5) * (w.end - w.start)]
        runs = [(t, w.old_model if t < w.new_release else w.new_model) for t in starts]
        if release_run < w.end:
            runs.append((release_run, w.new_model))
            if rng.random() < 0.7:  # and the old model again, as the baseline
                runs.append((release_run + rng.uniform(1, 6) * HOUR_S, w.old_model))
        out = []
        for t0, model in runs:
            bench = rng.choice(p.benchmarks)
            suffix = P.EVAL_COT_SUFFIX[1] if p.cot else P.EVAL_COT_SUFFIX[2 if bench == "multiple-choice" else 0]
            max_tokens = 512 if p.cot else (5 if bench == "multiple-choice" else 256)
            for item, t in zip(items[bench], paced(rng, t0, len(items[bench]), p.gap_s, 0.5), strict=True):
                text = item.prompt + suffix
                if p.completions_endpoint:
                    out.append(
                        self.completion(
                            t,
                            acct.key,
                            model,
                            text,
                            ua=ua,
                            addr=addr,
                            purpose="eval",
                            max_tokens=max_tokens,
                            temperature=0.0,
                        )
                    )
                else:
                    out.append(
                        self.chat(
                            t,
                            acct.key,
                            model,
                            text,
                            ua=ua,
                            addr=addr,
                            purpose="eval",
                            max_tokens=max_tokens,
                            temperature=0.0,
                        )
                    )
        return Built([acct], out)


@dataclass(frozen=True)
class ResearchParams:
    members: int
    per_member_per_day: float
    shared_card: float
    signup_spread_days: float
    home_share: float
    sweep_share: float
    cot_share: float
    tz_hours: float
    adopt_hours: float


class ResearchTeam(Persona):
    """A university lab: several accounts of one organisation behind one office /24, often on one institutional
    card, signed up in the same week, running experiments (sweeps over topics, reasoning checks, annotation) in
    bursts during working hours. Linked, systematic, and legitimate."""

    name, role = "research_team", "benign"
    summary = "several accounts of one lab: one office prefix, shared card, experiments in bursts"

    @classmethod
    def draw(cls, d: Draw, world: World) -> ResearchParams:
        return ResearchParams(
            members=d.integer(3, 12),
            per_member_per_day=d.log_uniform(2.0, 25.0),
            shared_card=d.chance(0.3, 1.0),
            signup_spread_days=d.log_uniform(0.5, 60.0),
            home_share=d.uniform(0.0, 0.4),
            sweep_share=d.uniform(0.1, 0.6),
            cot_share=d.uniform(0.0, 0.4),
            tz_hours=_tz(d.rng),
            adopt_hours=d.log_uniform(2.0, 72.0),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        uni = rng.choice(
            (
                "University of Northbridge",
                "Eastlake Institute of Technology",
                "Universidad del Sur",
                "Technische Hochschule Mittelstadt",
                "Kestrel University",
            )
        )
        org = f"{uni}, {rng.choice(('NLP', 'ML Systems', 'HCI', 'Computational Linguistics'))} lab"
        office = w.office(rng, self.campaign)
        lab_card = new_card(rng)
        signup0 = self.signup(30, 400)
        domain = uni.split()[-1].lower() + ".edu"
        adopt = w.new_release + p.adopt_hours * HOUR_S
        accts, out = [], []
        topics = rng.sample(P.ALL_TOPICS, 25)
        for m in range(p.members):
            card = lab_card if rng.random() < p.shared_card else new_card(rng)
            meta = {
                "organisation": org,
                "payment_fingerprint": card,
                "signup_source": rng.choice(("web", "sso")),
                "signup_at": _iso(signup0 + rng.uniform(0, p.signup_spread_days) * DAY_S),
                "email_domain": domain,
            }
            acct = self.account(f"m{m:02d}", "tier1", meta, campaign=self.campaign, name=f"{username(rng)}@{domain}")
            accts.append(acct)
            desk = office.address(rng)
            home = rng.choice(w.isps).address(rng)
            ua = rng.choice(
                ("OpenAI/Python 1.99.1", "OpenAI/Python 1.54.3", "AsyncOpenAI/Python 1.97.0", "python-requests/2.32.3")
            )
            rate = p.per_member_per_day * rng.uniform(0.3, 1.7)
            for t in arrivals(rng, w, rate, "office", p.tz_hours, 0.2):
                addr = home if rng.random() < p.home_share else desk
                model = w.model_at(t, adopt)
                r = rng.random()
                if r < p.sweep_share / 4:  # an experiment: one template over many topics, in a burst
                    template = rng.choice(P._RESEARCH)
                    for i, tt in enumerate(paced(rng, t, rng.randint(8, 25), rng.uniform(0.5, 5.0))):
                        topic = topics[i % len(topics)]
                        text = template.format(t=topic, q=f"what is {topic}?", k=5, p=P._math_word(rng))
                        out.append(
                            self.chat(
                                tt,
                                acct.key,
                                model,
                                text,
                                ua=ua,
                                addr=addr,
                                purpose="experiment",
                                max_tokens=400,
                                temperature=rng.choice((0.0, 0.7, 1.0)),
                            )
                        )
                elif r < p.sweep_share / 4 + p.cot_share:
                    out.append(
                        self.chat(
                            t,
                            acct.key,
                            model,
                            P.cot_prompt(rng, P.COT_DEMANDS[:3]),
                            ua=ua,
                            addr=addr,
                            purpose="reasoning-study",
                            max_tokens=1024,
                            temperature=0.0,
                        )
                    )
                else:
                    out.append(
                        self.chat(
                            t,
                            acct.key,
                            model,
                            P.research_prompt(rng, topics),
                            ua=ua,
                            addr=addr,
                            purpose="research",
                            max_tokens=rng.choice((None, 300, 800)),
                        )
                    )
        return Built(accts, out)


@dataclass(frozen=True)
class LabEvalParams:
    accounts: int
    items: int
    bursts: int
    gap_s: float
    max_tokens: int
    demands: tuple[str, ...]
    tz_hours: float
    completions_endpoint: bool


class LabCotEval(Persona):
    """A university lab evaluating chain-of-thought prompting: benchmark items wrapped in the stock demands for
    step-by-step reasoning, ``max_tokens`` 1024, temperature 0, sent in two bursts (a baseline and a rerun) from
    the university's NAT by one to three students' accounts. Everything a reasoning harvester shows, for a
    legitimate study: the false accusation the monitor must not make."""

    name, role = "lab_cot_eval", "benign"
    summary = "university lab running chain-of-thought evaluations in two bursts, max_tokens 1024"

    @classmethod
    def draw(cls, d: Draw, world: World) -> LabEvalParams:
        return LabEvalParams(
            accounts=d.integer(1, 3),
            items=d.log_integer(150, 600),
            bursts=2,
            gap_s=d.log_uniform(0.5, 8.0),
            max_tokens=1024,
            demands=tuple(d.rng.sample(P.split_pool(P.COT_DEMANDS, world.split), d.integer(1, 3))),
            tz_hours=_tz(d.rng),
            completions_endpoint=d.rng.random() < 0.2,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        uni = rng.choice(("Northbridge", "Eastlake", "Kestrel", "Mittelstadt", "Southport", "Alder"))
        org = f"{uni} University, {rng.choice(('NLP', 'Reasoning', 'Cognitive Science', 'ML Theory'))} group"
        nat = rng.choice(w.universities)
        card = new_card(rng)
        bench = rng.choice(("math-word", "reading"))
        n = max(1, round(p.items * w.volume))
        items = P.benchmark_items(bench, n, seed=0)
        ua = rng.choice(("lm-eval/0.4.8 OpenAI/Python 1.97.0", "OpenAI/Python 1.99.1", "inspect_ai/0.3.90"))
        accts = []
        for a in range(p.accounts):
            meta = {
                "organisation": org,
                "payment_fingerprint": card,
                "signup_source": rng.choice(("web", "sso")),
                "signup_at": _iso(self.signup(10, 300)),
                "email_domain": uni.lower() + ".edu",
            }
            accts.append(self.account(f"{a}", "tier1", meta, campaign=self.campaign if p.accounts > 1 else None))
        # two bursts in working hours on two different days (the run and its rerun)
        span = max(1.0, w.days)
        out = []
        for b in range(p.bursts):
            day = math.floor(w.start / DAY_S) + math.floor((b + rng.uniform(0.1, 0.6)) * span / p.bursts)
            t0 = day * DAY_S + (rng.uniform(9.0, 15.0) - p.tz_hours) * HOUR_S
            t0 = min(max(t0, w.start + rng.uniform(0, HOUR_S)), w.end - HOUR_S)
            acct = accts[b % len(accts)]
            for item, t in zip(items, paced(rng, t0, len(items), p.gap_s, 0.5), strict=True):
                text = P.cot_prompt(rng, p.demands, item.prompt)
                addr = nat.address(rng)
                if p.completions_endpoint:
                    out.append(
                        self.completion(
                            t,
                            acct.key,
                            w.old_model,
                            text,
                            ua=ua,
                            addr=addr,
                            purpose="eval",
                            max_tokens=p.max_tokens,
                            temperature=0.0,
                        )
                    )
                else:
                    out.append(
                        self.chat(
                            t,
                            acct.key,
                            w.old_model,
                            text,
                            ua=ua,
                            addr=addr,
                            purpose="eval",
                            max_tokens=p.max_tokens,
                            temperature=0.0,
                        )
                    )
        return Built(accts, out)


@dataclass(frozen=True)
class SummariserParams:
    docs_per_night: int
    start_hour: float
    gap_s: float
    nights_per_week: int
    max_tokens: int
    tz_hours: float
    use_mini: bool


class NightlySummariser(Persona):
    """A company's nightly job that summarises the day's documents: a cron start at the same minute every
    night and one request every ``gap_s`` seconds to the millisecond (machine-regular timing), one fixed
    instruction per document, short answers, one cloud address."""

    name, role = "nightly_summariser", "benign"
    summary = "nightly summariser: cron start, machine-regular gaps, short summaries of its own documents"

    @classmethod
    def draw(cls, d: Draw, world: World) -> SummariserParams:
        return SummariserParams(
            docs_per_night=d.log_integer(30, 400),
            start_hour=d.uniform(0.0, 4.0, digits=2),
            gap_s=d.log_uniform(1.0, 30.0),
            nights_per_week=d.integer(5, 7),
            max_tokens=d.integer(120, 400),
            tz_hours=_tz(d.rng),
            use_mini=d.rng.random() < 0.5,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        org = company_name(rng, (" Media", " News", " Research", " Analytics", " Legal"))
        meta = {
            "organisation": org,
            "payment_fingerprint": new_card(rng),
            "signup_source": "web",
            "signup_at": _iso(self.signup(60, 700)),
            "email_domain": org.split()[0].lower() + ".com",
        }
        acct = self.account("", "tier2", meta)
        addr = rng.choice(w.clouds).address(rng)
        ua = rng.choice(("python-requests/2.32.3", "OpenAI/Python 1.54.3", "Go-http-client/2.0"))
        instruction = rng.choice(P.SUMMARY_INSTRUCTIONS)
        model = w.mini_model if p.use_mini else w.old_model
        docs = max(1, round(p.docs_per_night * w.volume))
        out = []
        starts = [
            day * DAY_S + (p.start_hour - p.tz_hours) * HOUR_S  # cron: the same second every night
            for day in range(math.floor(w.start / DAY_S) - 1, math.ceil(w.end / DAY_S) + 1)
            if (day + 3) % 7 < p.nights_per_week  # the nights it does not run: weekends first
        ]
        starts = [t0 for t0 in starts if w.start - docs * p.gap_s < t0 < w.end]
        if not starts:  # a short scenario between two nights still sees one (a rerun by hand)
            starts = [round(rng.uniform(w.start, w.end - min(docs * p.gap_s, (w.end - w.start) / 2)), 0)]
        for t0 in starts:
            for i in range(docs):
                t = t0 + i * p.gap_s
                if not w.start <= t < w.end:
                    continue
                out.append(
                    self.chat(
                        round(t, 3),
                        acct.key,
                        model,
                        instruction.format(doc=P.document(rng)),
                        ua=ua,
                        addr=addr,
                        purpose="batch",
                        max_tokens=p.max_tokens,
                        temperature=0.0,
                    )
                )
        return Built([acct], out)


# =====================================================================================================================
# attackers
# =====================================================================================================================
@dataclass(frozen=True)
class BulkParams:
    per_day: float
    templates: tuple[str, ...]
    domains: tuple[str, ...]
    max_tokens: int
    temperature: float
    addresses: int
    tier: str
    signup_days_before: float
    pivot: bool


class BulkHarvester(Persona):
    """The naive harvester: one account, around the clock at a steady pace, one to three templates over a few
    capability domains, long answers, a datacenter address and a scripting user agent."""

    name, role = "bulk_harvester", "attacker"
    summary = "naive bulk harvester: one account, 24/7, few templates, long answers, datacenter"

    @classmethod
    def draw(cls, d: Draw, world: World) -> BulkParams:
        k = d.integer(1, 3)
        return BulkParams(
            per_day=d.log_uniform(400.0, 2500.0),
            templates=tuple(d.rng.sample(P.split_pool(P.HARVEST_TEMPLATES, world.split), k)),
            domains=tuple(d.rng.sample(sorted(P.TOPICS), d.integer(1, 3))),
            max_tokens=d.integer(1024, 4096),
            temperature=d.uniform(0.5, 1.1, digits=2),
            addresses=d.integer(1, 3),
            tier=d.choice(("tier1", "tier2")),
            signup_days_before=d.log_uniform(0.5, 60.0),
            pivot=d.rng.random() < 0.5,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        cloud = rng.choice(w.clouds)
        addrs = [cloud.address(rng) for _ in range(p.addresses)]
        ua = rng.choice(("python-requests/2.31.0", "OpenAI/Python 1.54.3", *UNCOMMON_UAS[:3]))
        meta = {
            "organisation": rng.choice((None, "Data Services LLC", "AI Research Co")),
            "payment_fingerprint": new_card(rng),
            "signup_source": "web",
            "signup_at": _iso(self.signup(p.signup_days_before, p.signup_days_before + 0.1)),
            "email_domain": _email(rng, rng.choice(("personal", "disposable"))),
        }
        acct = self.account("", p.tier, meta)
        topics = [t for dom in p.domains for t in P.TOPICS[dom]]
        adopt = self.adopt_after(0.5, 12) if p.pivot else None
        per_day = p.per_day * w.volume
        t0 = w.start + rng.uniform(0, 2 * HOUR_S)
        out = []
        for t in paced(rng, t0, int(per_day * w.days) + 1, DAY_S / per_day, 0.4):
            if t >= w.end:
                break
            out.append(
                self.chat(
                    t,
                    acct.key,
                    w.model_at(t, adopt),
                    P.harvest_prompt(rng, p.templates, topics),
                    ua=ua,
                    addr=rng.choice(addrs),
                    purpose="harvest",
                    max_tokens=p.max_tokens,
                    temperature=p.temperature,
                )
            )
        return Built([acct], out)


@dataclass(frozen=True)
class StealthyParams:
    per_day: float
    cover_share: float
    templates: tuple[str, ...]
    domains: tuple[str, ...]
    tz_hours: float
    profile: str
    harvest_max_tokens: int
    paraphrase_typos: float
    account_age_days: float
    access: str
    stream_prob: float


class StealthyHarvester(Persona):
    """A single account with human pacing (diurnal, by time zone, fewer on weekends) that mixes ordinary chat
    into its harvest; several templates, paraphrased; an aged account at a home address or on a phone."""

    name, role = "stealthy_harvester", "attacker"
    summary = "stealthy single account: human pacing, cover traffic mixed in, paraphrased templates"

    @classmethod
    def draw(cls, d: Draw, world: World) -> StealthyParams:
        k = d.integer(3, 6)
        return StealthyParams(
            per_day=d.log_uniform(20.0, 160.0),
            cover_share=d.uniform(0.1, 0.6),
            templates=tuple(d.rng.sample(P.split_pool(P.HARVEST_TEMPLATES, world.split), k)),
            domains=tuple(d.rng.sample(sorted(P.TOPICS), d.integer(1, 2))),
            tz_hours=_tz(d.rng),
            profile=d.choice(("human", "office", "night_owl")),
            harvest_max_tokens=d.integer(600, 2048),
            paraphrase_typos=d.uniform(0.0, 0.05),
            account_age_days=d.log_uniform(10.0, 700.0),
            access=d.choice(("residential", "residential", "mobile")),
            stream_prob=d.chance(0.0, 1.0),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        if p.access == "mobile":
            net = rng.choice(w.carriers)
        else:
            isp = rng.choice(w.isps)
            net = Network(isp.name, "residential", isp.prefixes, pool=[isp.address(rng)])
        ua = rng.choice(COMMON_UAS)
        meta = {
            "organisation": None,
            "payment_fingerprint": new_card(rng),
            "signup_source": rng.choice(("web", "google")),
            "signup_at": _iso(self.signup(p.account_age_days, p.account_age_days + 1)),
            "email_domain": _email(rng, "personal"),
        }
        acct = self.account("", "tier1", meta)
        topics = [t for dom in p.domains for t in P.TOPICS[dom]]
        adopt = self.adopt_after(2, 48, never=0.3)
        out = []
        for i, t in enumerate(arrivals(rng, w, p.per_day, p.profile, p.tz_hours, 0.6)):
            model = w.model_at(t, adopt)
            addr = net.address(rng)
            stream = rng.random() < p.stream_prob
            if rng.random() < p.cover_share:
                n = rng.randint(1, 3)
                turns = [P.casual_prompt(rng)] + [P.followup_prompt(rng) for _ in range(n - 1)]
                out += self.conversation(
                    t,
                    acct.key,
                    model,
                    turns,
                    [rng.uniform(20, 200) for _ in range(n - 1)],
                    ua=ua,
                    addr=addr,
                    purpose="cover",
                    conv=f"{acct.key}-s{i}",
                    stream=stream,
                )
            else:
                text = P._typos(rng, P.harvest_prompt(rng, p.templates, topics), p.paraphrase_typos)
                out.append(
                    self.chat(
                        t,
                        acct.key,
                        model,
                        text,
                        ua=ua,
                        addr=addr,
                        purpose="harvest",
                        max_tokens=p.harvest_max_tokens,
                        stream=stream,
                    )
                )
        return Built([acct], out)


@dataclass(frozen=True)
class HydraParams:
    members: int
    per_member_per_day: float
    cards_ratio: float
    paid_share: float
    signup_spread_days: float
    signup_days_before: float
    proxy: str
    prefixes: int
    ua_mode: str
    sync: float
    templates: tuple[str, ...]
    domains: tuple[str, ...]
    cot_share: float
    max_tokens: int
    organisation: str
    pivot: bool
    cover_share: float


class HydraCluster(Persona):
    """A hydra: 20-500 accounts that each stay under every per-account limit and look clean on their own, but
    share what a campaign cannot avoid sharing: a few cards (or, subtly, one card each), a signup burst,
    datacenter prefixes (or residential proxies with no shared prefix), a user agent, templates, and the
    coordinator's timing (waves; ``sync`` = 0 makes members independent); ``cover_share`` of each member's
    requests are ordinary chat."""

    name, role = "hydra", "attacker"
    summary = "hydra cluster of 20-500 accounts, each under every limit; shared cards/infra/templates/timing"

    @classmethod
    def draw(cls, d: Draw, world: World) -> HydraParams:
        lo, hi = world.hydra_members
        return HydraParams(
            members=d.log_integer(lo, hi),
            per_member_per_day=d.log_uniform(1.5, 40.0),
            cards_ratio=d.log_uniform(0.01, 1.0),
            paid_share=d.uniform(0.0, 1.0),
            signup_spread_days=d.log_uniform(0.1, 30.0),
            signup_days_before=d.log_uniform(0.5, 90.0),
            proxy=d.choice(("datacenter", "datacenter", "residential_proxy", "mixed")),
            prefixes=d.integer(1, 6),
            ua_mode=d.choice(("shared_rare", "shared_common", "per_member", "rotating")),
            sync=d.uniform(0.0, 1.0),
            templates=tuple(d.rng.sample(P.split_pool(P.HARVEST_TEMPLATES, world.split), d.integer(2, 6))),
            domains=tuple(d.rng.sample(sorted(P.TOPICS), d.integer(1, 4))),
            cot_share=d.uniform(0.0, 0.5),
            max_tokens=d.integer(512, 3000),
            organisation=d.choice(("none", "fake_varied", "blank")),
            pivot=d.rng.random() < 0.6,
            cover_share=d.uniform(0.0, 0.5),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        # a hydra's total is what its coordinator needs; scale each member down so the scenario's budget holds
        budget = w.hydra_daily_budget
        rate = p.per_member_per_day if not budget else min(p.per_member_per_day, budget / p.members)
        rate_seen = rate * w.volume  # what ``arrivals`` will produce per member
        cards = [new_card(rng) for _ in range(max(1, math.ceil(p.members * p.cards_ratio)))]
        dc = rng.choice(w.clouds)
        prefixes = rng.sample(dc.prefixes, min(p.prefixes, len(dc.prefixes)))
        shared_ua = rng.choice(UNCOMMON_UAS) if p.ua_mode == "shared_rare" else rng.choice(COMMON_UAS)
        source = rng.choice(("web", "google", "github"))
        signup_end = w.start - p.signup_days_before * DAY_S
        adopt = self.adopt_after(0.5, 24) if p.pivot else None
        topics = [t for dom in p.domains for t in P.TOPICS[dom]]
        # the coordinator's waves: moments when it hands work to many members at once
        waves = arrivals(rng, w, max(2.0, rate * 1.5) / w.volume, "flat")
        accts, out = [], []
        for m in range(p.members):
            paid = rng.random() < p.paid_share
            tier = "tier1" if paid else "free"
            org = {
                "none": None,
                "blank": "",
                "fake_varied": rng.choice(("Solutions", "Consulting", "Labs", "Tech"))
                + f" {rng.choice(P._NAMES)} {rng.randint(1, 99)}",
            }[p.organisation]
            meta = {
                "organisation": org,
                "payment_fingerprint": cards[m % len(cards)] if paid else None,
                "signup_source": source if rng.random() < 0.9 else rng.choice(("web", "google")),
                "signup_at": _iso(signup_end - rng.uniform(0, p.signup_spread_days) * DAY_S),
                "email_domain": _email(rng, rng.choice(("personal", "disposable"))),
            }
            acct = self.account(
                f"{m:03d}", tier, meta, campaign=self.campaign, extra={"effective_per_member_per_day": round(rate, 3)}
            )
            accts.append(acct)
            if p.proxy == "datacenter" or (p.proxy == "mixed" and rng.random() < 0.5):
                net = Network(dc.name, "cloud", prefixes)
                home = [net.address(rng) for _ in range(rng.randint(1, 3))]
            else:
                home = []  # residential proxy: a fresh address from some ISP on every request
            ua = shared_ua if p.ua_mode.startswith("shared") else rng.choice(COMMON_UAS)
            own = arrivals(rng, w, rate * (1 - p.sync), rng.choice(("flat", "human")), _tz(rng), 0.9)
            synced = [
                wt + rng.uniform(0, 90) for wt in waves if rng.random() < rate_seen * p.sync / max(2.0, rate * 1.5)
            ]
            for t in sorted(own + synced):
                if not w.start <= t < w.end:
                    continue
                addr = rng.choice(home) if home else rng.choice(w.isps).address(rng)
                req_ua = rng.choice(COMMON_UAS) if p.ua_mode == "rotating" else ua
                model = w.model_at(t, adopt)
                if rng.random() < p.cover_share:  # ordinary-looking chat, so each member looks like a user
                    out.append(
                        self.chat(t, acct.key, model, P.casual_prompt(rng), ua=req_ua, addr=addr, purpose="cover")
                    )
                    continue
                if rng.random() < p.cot_share:
                    text = P.cot_prompt(rng, P.split_pool(P.COT_DEMANDS, w.split))
                else:
                    text = P.harvest_prompt(rng, p.templates, topics)
                out.append(
                    self.chat(
                        t,
                        acct.key,
                        model,
                        text,
                        ua=req_ua,
                        addr=addr,
                        purpose="harvest",
                        max_tokens=p.max_tokens,
                        temperature=rng.choice((None, 0.7, 1.0)),
                    )
                )
        return Built(accts, out)


@dataclass(frozen=True)
class CotParams:
    accounts: int
    per_day: float
    demands: tuple[str, ...]
    max_tokens: int
    temperature: float
    cover_share: float
    profile: str
    datacenter: bool


class CotExtractor(Persona):
    """A chain-of-thought extractor: reasoning problems wrapped in demands for the complete, step-by-step
    reasoning, long answers; a few accounts, some ordinary questions mixed in."""

    name, role = "cot_extractor", "attacker"
    summary = "chain-of-thought extractor: reasoning problems + demands for the full reasoning"

    @classmethod
    def draw(cls, d: Draw, world: World) -> CotParams:
        pool = P.split_pool(P.COT_DEMANDS, world.split)
        return CotParams(
            accounts=d.integer(1, 3),
            per_day=d.log_uniform(100.0, 800.0),
            demands=tuple(d.rng.sample(pool, d.integer(2, len(pool)))),
            max_tokens=d.integer(1500, 4096),
            temperature=d.uniform(0.0, 0.8, digits=2),
            cover_share=d.uniform(0.0, 0.3),
            profile=d.choice(("flat", "office", "human")),
            datacenter=d.rng.random() < 0.6,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        card = new_card(rng)
        accts, out = [], []
        adopt = self.adopt_after(1, 36, never=0.4)
        for a in range(p.accounts):
            meta = {
                "organisation": rng.choice((None, "Reasoning Data Inc", "")),
                "payment_fingerprint": card if rng.random() < 0.6 else new_card(rng),
                "signup_source": "web",
                "signup_at": _iso(self.signup(1, 120)),
                "email_domain": _email(rng, "personal"),
            }
            acct = self.account(f"{a}", "tier1", meta, campaign=self.campaign if p.accounts > 1 else None)
            accts.append(acct)
            net = rng.choice(w.clouds) if p.datacenter else rng.choice(w.isps)
            addr = net.address(rng)
            ua = rng.choice((*COMMON_UAS[:8], *UNCOMMON_UAS))
            for t in arrivals(rng, w, p.per_day / p.accounts, p.profile, _tz(rng), 0.8):
                model = w.model_at(t, adopt)
                if rng.random() < p.cover_share:
                    out.append(self.chat(t, acct.key, model, P.casual_prompt(rng), ua=ua, addr=addr, purpose="cover"))
                else:
                    out.append(
                        self.chat(
                            t,
                            acct.key,
                            model,
                            P.cot_prompt(rng, p.demands),
                            ua=ua,
                            addr=addr,
                            purpose="cot-harvest",
                            max_tokens=p.max_tokens,
                            temperature=p.temperature,
                        )
                    )
        return Built(accts, out)


@dataclass(frozen=True)
class SweepParams:
    domains: int
    skills: int
    difficulties: int
    formats: int
    per_day: float
    shuffled: bool
    templates: tuple[str, ...]
    max_tokens: int
    profile: str
    topics_per_cell: int


class CoverageSweeper(Persona):
    """A capability-coverage sweep: every cell of a domain × skill × difficulty × format grid, once each (in
    order, or shuffled to hide the order), at a steady pace; once covered, another pass with other topics."""

    name, role = "coverage_sweeper", "attacker"
    summary = "capability-coverage sweeper over a domain x skill x difficulty x format grid"

    @classmethod
    def draw(cls, d: Draw, world: World) -> SweepParams:
        return SweepParams(
            domains=d.integer(3, 10),
            skills=d.integer(5, 16),
            difficulties=d.integer(2, 4),
            formats=d.integer(2, 6),
            per_day=d.log_uniform(200.0, 1500.0),
            shuffled=d.rng.random() < 0.5,
            templates=tuple(d.rng.sample(P.split_pool(P.SWEEP_TEMPLATES, world.split), d.integer(1, 3))),
            max_tokens=d.integer(512, 2048),
            profile=d.choice(("flat", "office")),
            topics_per_cell=d.integer(1, 3),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        axes = (
            rng.sample(sorted(P.TOPICS), p.domains),
            rng.sample(P.SWEEP_SKILLS, p.skills),
            P.SWEEP_DIFFICULTIES[: p.difficulties],
            rng.sample(P.SWEEP_FORMATS, p.formats),
        )
        grid = P.coverage_grid(rng, *axes, p.topics_per_cell)
        if p.shuffled:
            rng.shuffle(grid)
        meta = {
            "organisation": rng.choice((None, "Benchmark Builders", "Data Curation Ltd")),
            "payment_fingerprint": new_card(rng),
            "signup_source": rng.choice(("web", "github")),
            "signup_at": _iso(self.signup(2, 200)),
            "email_domain": _email(rng, "personal"),
        }
        acct = self.account("", "tier2", meta, extra={"grid_cells": len(grid)})
        addr = rng.choice(w.clouds).address(rng)
        ua = rng.choice(("OpenAI/Python 1.99.1", "python-httpx/0.27.0", "aiohttp/3.9.5 Python/3.11"))
        times = arrivals(rng, w, p.per_day, p.profile, _tz(rng), 1.0)
        cells = list(grid)
        while len(cells) < len(times):  # grid covered: another pass over the same cells with other topics
            again = P.coverage_grid(rng, *axes, p.topics_per_cell)
            if p.shuffled:
                rng.shuffle(again)
            cells += again
        out = []
        for cell, t in zip(cells, times, strict=False):
            out.append(
                self.chat(
                    t,
                    acct.key,
                    w.old_model if t < w.new_release else w.new_model,
                    P.sweep_prompt(cell, rng.choice(p.templates)),
                    ua=ua,
                    addr=addr,
                    purpose="sweep",
                    max_tokens=p.max_tokens,
                    temperature=0.7,
                )
            )
        return Built([acct], out)


@dataclass(frozen=True)
class PivotParams:
    accounts: int
    before_per_day: float
    boost: float
    pivot_hours: float
    templates: tuple[str, ...]
    domains: tuple[str, ...]
    cot_share: float
    max_tokens: int


class ReleasePivot(Persona):
    """A campaign that moves to a new model within a day of its release: modest harvesting of the old model,
    then most of its traffic, boosted, on the new one."""

    name, role = "release_pivot", "attacker"
    summary = "release-day pivot: switches to the new model within hours and boosts volume"

    @classmethod
    def draw(cls, d: Draw, world: World) -> PivotParams:
        return PivotParams(
            accounts=d.integer(1, 4),
            before_per_day=d.log_uniform(30.0, 300.0),
            boost=d.log_uniform(1.5, 8.0),
            pivot_hours=d.log_uniform(0.3, 24.0),
            templates=tuple(d.rng.sample(P.split_pool(P.HARVEST_TEMPLATES, world.split), d.integer(2, 5))),
            domains=tuple(d.rng.sample(sorted(P.TOPICS), d.integer(1, 3))),
            cot_share=d.uniform(0.0, 0.6),
            max_tokens=d.integer(800, 4096),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        cards = [new_card(rng) for _ in range(max(1, p.accounts // 2))]
        pivot_at = w.new_release + p.pivot_hours * HOUR_S
        topics = [t for dom in p.domains for t in P.TOPICS[dom]]
        cloud = rng.choice(w.clouds)
        accts, out = [], []
        for a in range(p.accounts):
            meta = {
                "organisation": None,
                "payment_fingerprint": cards[a % len(cards)],
                "signup_source": "web",
                "signup_at": _iso(self.signup(5, 300)),
                "email_domain": _email(rng, "personal"),
            }
            acct = self.account(f"{a}", "tier1", meta, campaign=self.campaign if p.accounts > 1 else None)
            accts.append(acct)
            addr = cloud.address(rng)
            ua = rng.choice(COMMON_UAS[:7])
            rate = p.before_per_day / p.accounts
            times = arrivals(rng, w, rate, "flat", 0.0, 1.0, end=pivot_at) + arrivals(
                rng, w, rate * p.boost, "flat", 0.0, 1.0, start=pivot_at
            )
            for t in sorted(times):
                model = w.new_model if t >= pivot_at else w.old_model
                if rng.random() < p.cot_share:
                    text = P.cot_prompt(rng, P.split_pool(P.COT_DEMANDS, w.split))
                else:
                    text = P.harvest_prompt(rng, p.templates, topics)
                out.append(
                    self.chat(
                        t,
                        acct.key,
                        model,
                        text,
                        ua=ua,
                        addr=addr,
                        purpose="harvest",
                        max_tokens=p.max_tokens,
                        temperature=0.8,
                    )
                )
        return Built(accts, out)


@dataclass(frozen=True)
class ReasoningParams:
    accounts: int
    per_day: float
    demands: tuple[str, ...]
    system_prompt: str
    cover_share: float
    max_tokens: int
    temperature: float
    profile: str
    residential: bool


class ReasoningTraceHarvester(Persona):
    """A reasoning-trace harvester that knows the stock phrases: a system prompt asking for explicit reasoning,
    reasoning problems with demands for the whole derivation worded in its own way
    (:data:`~antidistill.simulate.prompts.PARAPHRASED_DEMANDS`, none of the monitor's phrases), ordinary chat
    mixed in as cover, long answers."""

    name, role = "reasoning_harvester", "attacker"
    summary = "reasoning-trace harvester: system prompt, paraphrased demands (no stock phrase), cover traffic"

    @classmethod
    def draw(cls, d: Draw, world: World) -> ReasoningParams:
        pool = P.split_pool(P.PARAPHRASED_DEMANDS, world.split)
        return ReasoningParams(
            accounts=d.integer(1, 2),
            per_day=d.log_uniform(50.0, 400.0),
            demands=tuple(d.rng.sample(pool, d.integer(2, len(pool)))),
            system_prompt=d.choice(P.split_pool(P.REASONING_SYSTEM_PROMPTS, world.split)),
            cover_share=d.uniform(0.1, 0.4),
            max_tokens=d.integer(1024, 4096),
            temperature=d.uniform(0.0, 0.8, digits=2),
            profile=d.choice(("human", "office", "flat")),
            residential=d.rng.random() < 0.5,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        accts, out = [], []
        adopt = self.adopt_after(2, 48, never=0.4)
        for a in range(p.accounts):
            meta = {
                "organisation": rng.choice((None, "", "Independent research")),
                "payment_fingerprint": new_card(rng),
                "signup_source": rng.choice(("web", "google")),
                "signup_at": _iso(self.signup(5, 200)),
                "email_domain": _email(rng, "personal"),
            }
            acct = self.account(f"{a}", "tier1", meta, campaign=self.campaign if p.accounts > 1 else None)
            accts.append(acct)
            if p.residential:
                isp = rng.choice(w.isps)
                net = Network(isp.name, "residential", isp.prefixes, pool=[isp.address(rng)])
            else:
                net = rng.choice(w.clouds)
            addr = net.address(rng)
            ua = rng.choice(COMMON_UAS)
            for i, t in enumerate(arrivals(rng, w, p.per_day / p.accounts, p.profile, _tz(rng), 0.7)):
                model = w.model_at(t, adopt)
                if rng.random() < p.cover_share:
                    n = rng.randint(1, 3)
                    turns = [P.casual_prompt(rng)] + [P.followup_prompt(rng) for _ in range(n - 1)]
                    out += self.conversation(
                        t,
                        acct.key,
                        model,
                        turns,
                        [rng.uniform(20, 200) for _ in range(n - 1)],
                        ua=ua,
                        addr=addr,
                        purpose="cover",
                        conv=f"{acct.key}-s{i}",
                    )
                    continue
                out.append(
                    self.chat(
                        t,
                        acct.key,
                        model,
                        P.cot_prompt(rng, p.demands),
                        ua=ua,
                        addr=addr,
                        purpose="cot-harvest",
                        system=p.system_prompt,
                        max_tokens=p.max_tokens,
                        temperature=p.temperature,
                    )
                )
        return Built(accts, out)


@dataclass(frozen=True)
class AgentLoopParams:
    per_day: float
    turns_min: int
    turns_max: int
    gap_s: float
    max_tokens: int
    reasoning_share: float
    domains: tuple[str, ...]
    templates: tuple[str, ...]
    datacenter: bool


class AgentLoopHarvester(Persona):
    """An agent loop harvesting self-refinement: one account whose script opens a task, then asks the model to
    critique, revise and verify its own answer over 5-8 turns of one conversation (about 800 requests a week).
    Every turn is a chat turn; the templated part is only the first."""

    name, role = "agent_loop", "attacker"
    summary = "agent-loop harvester: one account, self-refine conversations of 5-8 turns, ~800 requests a week"

    @classmethod
    def draw(cls, d: Draw, world: World) -> AgentLoopParams:
        lo = d.integer(5, 6)
        return AgentLoopParams(
            per_day=d.log_uniform(70.0, 180.0),
            turns_min=lo,
            turns_max=lo + 2,
            gap_s=d.log_uniform(2.0, 40.0),
            max_tokens=d.integer(800, 2048),
            reasoning_share=d.uniform(0.0, 0.6),
            domains=tuple(d.rng.sample(sorted(P.TOPICS), d.integer(1, 3))),
            templates=tuple(d.rng.sample(P.split_pool(P.HARVEST_TEMPLATES, world.split), d.integer(1, 3))),
            datacenter=d.rng.random() < 0.7,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        meta = {
            "organisation": rng.choice((None, "Agentic Data Co", "")),
            "payment_fingerprint": new_card(rng),
            "signup_source": rng.choice(("web", "github")),
            "signup_at": _iso(self.signup(3, 90)),
            "email_domain": _email(rng, "personal"),
        }
        acct = self.account("", "tier1", meta)
        net = rng.choice(w.clouds) if p.datacenter else rng.choice(w.isps)
        addr = net.address(rng)
        ua = rng.choice(
            ("OpenAI/Python 1.99.1", "AsyncOpenAI/Python 1.97.0", "langchain-openai/0.3.28 OpenAI/Python 1.97.0")
        )
        topics = [t for dom in p.domains for t in P.TOPICS[dom]]
        adopt = self.adopt_after(1, 24, never=0.3)
        mean_turns = (p.turns_min + p.turns_max) / 2
        refine = P.split_pool(P.REFINE_TURNS, w.split)
        out: list[PlannedRequest] = []
        for i, t in enumerate(arrivals(rng, w, p.per_day / mean_turns, "flat", 0.0, 1.0)):
            n = rng.randint(p.turns_min, p.turns_max)
            if rng.random() < p.reasoning_share:
                first, purpose = P.reasoning_problem(rng), "cot-harvest"
            else:
                first, purpose = P.harvest_prompt(rng, p.templates, topics), "harvest"
            turns = [first] + [rng.choice(refine) for _ in range(n - 1)]
            out += self.conversation(
                t,
                acct.key,
                w.model_at(t, adopt),
                turns,
                [max(0.5, rng.gauss(p.gap_s, p.gap_s * 0.3)) for _ in range(n - 1)],
                ua=ua,
                addr=addr,
                purpose=purpose,
                conv=f"{acct.key}-loop{i}",
                max_tokens=p.max_tokens,
                temperature=0.7,
            )
        return Built([acct], out)


@dataclass(frozen=True)
class FarmParams:
    members: int
    per_member_per_day: float
    turns_mean: float
    templates: tuple[str, ...]
    domains: tuple[str, ...]
    max_tokens: int
    paid_share: float
    signup_spread_days: float
    cover_share: float


class ConversationFarm(Persona):
    """A conversation farm: about 40 accounts on residential addresses (a fresh home address per member, from
    many ISPs), each holding multi-turn chats that open with a harvesting template and dig deeper with
    follow-ups. Links are weak on purpose: every paying member has its own card, signups spread over weeks,
    common user agents, human pacing; what they share is the campaign's templates and topics."""

    name, role = "conversation_farm", "attacker"
    summary = "conversation farm: ~40 accounts on residential addresses, multi-turn chats, weak links"

    @classmethod
    def draw(cls, d: Draw, world: World) -> FarmParams:
        return FarmParams(
            members=d.integer(30, 50),
            per_member_per_day=d.log_uniform(4.0, 30.0),
            turns_mean=d.uniform(2.0, 5.0),
            templates=tuple(d.rng.sample(P.split_pool(P.HARVEST_TEMPLATES, world.split), d.integer(2, 5))),
            domains=tuple(d.rng.sample(sorted(P.TOPICS), d.integer(1, 3))),
            max_tokens=d.integer(600, 2048),
            paid_share=d.uniform(0.2, 0.9),
            signup_spread_days=d.log_uniform(7.0, 60.0),
            cover_share=d.uniform(0.0, 0.3),
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        budget = w.hydra_daily_budget
        rate = p.per_member_per_day if not budget else min(p.per_member_per_day, budget / p.members)
        topics = [t for dom in p.domains for t in P.TOPICS[dom]]
        signup_end = w.start - rng.uniform(1, 20) * DAY_S
        followups = P.split_pool(P.FARM_FOLLOWUPS, w.split)
        accts, out = [], []
        for m in range(p.members):
            paid = rng.random() < p.paid_share
            meta = {
                "organisation": None,
                "payment_fingerprint": new_card(rng) if paid else None,
                "signup_source": rng.choice(("web", "google", "mobile-app")),
                "signup_at": _iso(signup_end - rng.uniform(0, p.signup_spread_days) * DAY_S),
                "email_domain": _email(rng, "personal"),
            }
            acct = self.account(
                f"{m:03d}",
                "tier1" if paid else "free",
                meta,
                campaign=self.campaign,
                extra={"effective_per_member_per_day": round(rate, 3)},
            )
            accts.append(acct)
            isp = rng.choice(w.isps)
            home = Network(isp.name, "residential", isp.prefixes, pool=[isp.address(rng) for _ in range(2)])
            ua = rng.choice(COMMON_UAS)
            mean_turns = max(1.0, p.turns_mean)
            for i, t in enumerate(arrivals(rng, w, rate / mean_turns, "human", _tz(rng), 0.8)):
                n = max(2, min(8, round(rng.expovariate(1 / mean_turns) + 1)))
                if rng.random() < p.cover_share:
                    turns = [P.casual_prompt(rng)] + [P.followup_prompt(rng) for _ in range(n - 1)]
                    purpose, kw = "cover", {}
                else:
                    turns = [P.harvest_prompt(rng, p.templates, topics)] + [
                        rng.choice(followups).format(u=rng.choice(topics)) for _ in range(n - 1)
                    ]
                    purpose, kw = "harvest", {"max_tokens": p.max_tokens}
                out += self.conversation(
                    t,
                    acct.key,
                    w.model_at(t, None),
                    turns,
                    [rng.uniform(30, 400) for _ in range(n - 1)],
                    ua=ua,
                    addr=home.address(rng),
                    purpose=purpose,
                    conv=f"{acct.key}-c{i}",
                    **kw,
                )
        return Built(accts, out)


@dataclass(frozen=True)
class DescribedParams:
    role: str
    accounts: int
    per_day: float
    profile: str
    tz_hours: float
    weekend: float
    prompts: tuple[str, ...]
    topics: tuple[str, ...]
    system_prompt: str
    turns: int
    followups: tuple[str, ...]
    gap_s: float
    max_tokens: int | None
    temperature: float | None
    network: str
    user_agent: str
    tier: str
    shared_card: bool
    organisation: str | None


#: the networks a described persona can sit on
DESCRIBED_NETWORKS = ("residential", "mobile", "university", "corporate", "cloud", "office")


class Described(Persona):
    """A request pattern described by the user rather than a kind of the simulator: its role, how many accounts,
    how often (a rate shaped by a daily profile), what it sends (its own prompt templates, ``{t}`` and ``{u}``
    filled from its topics; an optional system prompt; conversations of ``turns`` turns with its own
    follow-ups, ``gap_s`` apart), with which knobs (``max_tokens``, ``temperature``), from which network and
    software. Drawn values (when a persona file leaves them out) are an ordinary chat user's.

    The kind's own role is ``benign``; an instance's accounts carry ``params.role``, which is what the labels
    and the evaluation read."""

    name, role = "described", "benign"
    summary = "a request pattern described in a persona file: role, rate, prompts, turns, knobs, network"

    @classmethod
    def draw(cls, d: Draw, world: World) -> DescribedParams:
        return DescribedParams(
            role="benign",
            accounts=d.integer(1, 3),
            per_day=d.log_uniform(2.0, 60.0),
            profile=d.choice(("human", "office", "night_owl")),
            tz_hours=_tz(d.rng),
            weekend=d.uniform(0.3, 1.2),
            prompts=tuple(d.rng.sample(P.split_pool(P._CASUAL_TASKS, world.split), 4)),
            topics=tuple(d.rng.sample(P.ALL_TOPICS, 6)),
            system_prompt="",
            turns=d.integer(1, 4),
            followups=tuple(d.rng.sample(P.split_pool(P._FOLLOWUPS, world.split), 4)),
            gap_s=d.log_uniform(10.0, 300.0),
            max_tokens=d.choice((None, 256, 512, 1024)),
            temperature=d.uniform(0.3, 1.0, digits=2),
            network=d.choice(("residential", "mobile", "university")),
            user_agent="",
            tier=d.choice(("free", "tier1")),
            shared_card=False,
            organisation=None,
        )

    def build(self) -> Built:
        p, w, rng = self.params, self.world, self.rng
        checks = (
            ("role", p.role, ("benign", "attacker")),
            ("network", p.network, DESCRIBED_NETWORKS),
            ("tier", p.tier, tuple(TIERS)),
        )
        for field_name, value, allowed in checks:
            if value not in allowed:
                raise InputError(f"described.{field_name} must be one of {', '.join(allowed)}, got {value!r}")
        if not p.prompts or not p.topics or p.turns < 1 or p.accounts < 1:
            raise InputError("described needs prompts, topics, turns >= 1 and accounts >= 1")
        card = new_card(rng)
        accts, out = [], []
        for a in range(p.accounts):
            meta = {
                "organisation": p.organisation,
                "payment_fingerprint": (card if p.shared_card else new_card(rng)) if p.tier != "free" else None,
                "signup_source": "web",
                "signup_at": _iso(self.signup(1, 400)),
                "email_domain": _email(rng, "personal"),
            }
            acct = self.account(f"{a}", p.tier, meta, campaign=self.campaign if p.accounts > 1 else None)
            acct = replace(acct, role=p.role)
            accts.append(acct)
            net = self._network(p.network)
            ua = p.user_agent or rng.choice(COMMON_UAS)
            per_conversation = max(1.0, float(p.turns))
            for i, t in enumerate(arrivals(rng, w, p.per_day / per_conversation, p.profile, p.tz_hours, p.weekend)):
                first = rng.choice(p.prompts).format(t=rng.choice(p.topics), u=rng.choice(p.topics))
                turns = [first] + [
                    rng.choice(p.followups or ("go on",)).format(t=rng.choice(p.topics), u=rng.choice(p.topics))
                    for _ in range(p.turns - 1)
                ]
                out += self.conversation(
                    t,
                    acct.key,
                    w.old_model,
                    turns,
                    [p.gap_s] * (p.turns - 1),
                    ua=ua,
                    addr=net.address(rng),
                    purpose="described",
                    conv=f"{acct.key}-d{i}",
                    system=p.system_prompt or None,
                    max_tokens=p.max_tokens,
                    temperature=p.temperature,
                )
        return Built(accts, out)

    def _network(self, kind: str) -> Network:
        w, rng = self.world, self.rng
        if kind == "mobile":
            return rng.choice(w.carriers)
        if kind == "university":
            return rng.choice(w.universities)
        if kind == "corporate":
            return rng.choice(w.corporate)
        if kind == "cloud":
            return rng.choice(w.clouds)
        if kind == "office":
            return w.office(rng, self.campaign)
        isp = rng.choice(w.isps)
        return Network(isp.name, "residential", isp.prefixes, pool=[isp.address(rng)])


#: every persona, by name (benign first)
PERSONAS: dict[str, type[Persona]] = {
    c.name: c
    for c in (
        CasualUser,
        CodingAssistant,
        RagApp,
        EnterpriseBatch,
        EvalHarness,
        ResearchTeam,
        LabCotEval,
        NightlySummariser,
        BulkHarvester,
        StealthyHarvester,
        HydraCluster,
        CotExtractor,
        CoverageSweeper,
        ReleasePivot,
        ReasoningTraceHarvester,
        AgentLoopHarvester,
        ConversationFarm,
        Described,  # a user's own pattern (persona files); its role is a parameter
    )
}
BENIGN = tuple(n for n, c in PERSONAS.items() if c.role == "benign")
ATTACKERS = tuple(n for n, c in PERSONAS.items() if c.role == "attacker")
