"""Per-account behaviour features over a sliding window, kept up to date one exchange at a time.

Each exchange is first *encoded* into a small :class:`Atom` (its template id, whether it demands the chain of
thought, its hour of day, how fresh the model it asks for is, …) by an :class:`Encoder` that holds the little
global state this needs (the template index, when each model was first seen). An account keeps the atoms of its
last :data:`WINDOW` exchanges plus running totals, and :func:`window_features` turns such a window into the
feature vector :data:`FEATURES` the scorers read. The same function serves the incremental path
(:class:`FeatureTracker`, one event at a time, as the gateway sees them) and the batch path
(:func:`batch_features`, from a list of audit records), so the two give identical values by construction; the
tests check it.

The features follow what published distillation and model-extraction campaigns look like (PRADA, Juuti et al.
2019, arXiv:1805.02628: the distribution of a client's queries; Anthropic's and Google's 2026 reports on
distillation campaigns: heavy volume, repetitive templates, demands for the full chain of thought, systematic
coverage, new-model pivots), computed cheaply enough for the gateway's hot path.
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import ge, itemgetter, le, lt, mul, sub
from typing import Any, NamedTuple, cast

import numpy as np

from antidistill.monitor.api import ExchangeEvent
from antidistill.monitor.intent import PHRASES, PROBES, ReasoningIntent
from antidistill.monitor.templates import _STOP, TemplateIndex, content_words, normalise

#: exchanges in an account's sliding window
WINDOW = 200
#: a model counts as "fresh" for this long after the monitor (or a release list) first saw it
FRESH_MODEL_S = 24 * 3600.0
#: distinct prompt texts whose normalised form is remembered by an :class:`Encoder`
TEXT_CACHE = 20_000
#: with embeddings on, an account's every EMBED_EVERY-th prompt is embedded (the forward pass costs about 10 ms per
#: prompt on one core, 500 times the rest of the monitor): the topic features are estimated from that systematic
#: sample of the window, which keeps the last EMBED_WINDOW of them (as many as the window spans)
EMBED_EVERY = 16
EMBED_WINDOW = -(-WINDOW // EMBED_EVERY)
#: the time slots of an account's activity that linking compares (seconds)
SLOT_S = 600
#: a demanded length at or above this counts as "long"
LONG_DEMAND = 1024


def demands_reasoning(norm: str) -> bool:
    """Whether normalised prompt text demands the chain of thought, recognised by meaning
    (:mod:`antidistill.monitor.intent`: a small classifier, not a phrase list).

    >>> from antidistill.monitor.templates import normalise
    >>> demands_reasoning(normalise("Solve it. Show all your reasoning, step-by-step!"))
    True
    >>> demands_reasoning(normalise("Solve it, and lay out how you got from the facts to the result, stage by stage."))
    True
    >>> demands_reasoning(normalise("What's the capital of France?"))
    False
    """
    return ReasoningIntent.shipped().demands(norm)


#: the phrase list that decided this before (:data:`antidistill.monitor.intent.PHRASES`), for code that checks its
#: own wordings against it (a paraphrased demand holds none of these); no longer the test
COT_PHRASES = PHRASES
COT_PROBES = PROBES


#: the feature vector, in order; :data:`DESCRIPTIONS` says each in words
FEATURES: tuple[str, ...] = (
    "log_requests",
    "log_rate_per_hour",
    "log_prompt_tokens",
    "log_completion_tokens",
    "completion_ratio",
    "gap_cv",
    "log_gap_median",
    "burst_share",
    "mean_turns",
    "single_turn_share",
    "template_top_share",
    "template_distinct_ratio",
    "template_reuse",
    "word_diversity",
    "cot_share",
    "system_share",
    "system_distinct_ratio",
    "hour_entropy",
    "active_hours",
    "log_demand",
    "long_demand_share",
    "demand_given_share",
    "models",
    "fresh_model_share",
    "log_switches",
    "error_share",
    "prompt_len_cv",
    "emb_spread",
    "emb_coverage",
    "log_accounts",
    "top_account_share",
)
DESCRIPTIONS: dict[str, str] = {
    "log_requests": "total requests",
    "log_rate_per_hour": "requests per hour",
    "log_prompt_tokens": "prompt length",
    "log_completion_tokens": "completion length",
    "completion_ratio": "completion-to-prompt token ratio",
    "gap_cv": "irregularity of the time between requests",
    "log_gap_median": "typical time between requests",
    "burst_share": "share of requests within 5 s of the previous one",
    "mean_turns": "conversation depth",
    "single_turn_share": "share of single-turn requests",
    "template_top_share": "share of requests using the most common prompt template",
    "template_distinct_ratio": "variety of prompt templates",
    "template_reuse": "share of requests reusing an earlier template",
    "word_diversity": "variety of topics (distinct content words)",
    "cot_share": "share of requests demanding step-by-step reasoning",
    "system_share": "share of requests with a system prompt",
    "system_distinct_ratio": "variety of system prompts",
    "hour_entropy": "spread of activity over the hours of the day",
    "active_hours": "hours of the day with activity",
    "log_demand": "demanded response length (max_tokens)",
    "long_demand_share": f"share of requests demanding >= {LONG_DEMAND} tokens",
    "demand_given_share": "share of requests setting max_tokens",
    "models": "distinct models used",
    "fresh_model_share": "share of requests to a model released within the last day",
    "log_switches": "model switches",
    "error_share": "share of failed requests",
    "prompt_len_cv": "variation of prompt length",
    "emb_spread": "semantic spread of the prompts (embeddings)",
    "emb_coverage": "semantic coverage of the prompts (embeddings)",
    # a cluster's window mixes its members' exchanges: a lab is a handful of people, each with real volume; a hydra
    # spreads its traffic thin over many accounts (for one account's window: 0 and 1)
    "log_accounts": "accounts sending the window's requests",
    "top_account_share": "share of the window's requests from its busiest account",
}
INDEX: dict[str, int] = {n: i for i, n in enumerate(FEATURES)}


class Atom(NamedTuple):
    """What the window keeps of one exchange (a few numbers; the text itself is not kept).

    The schema of the window's entries, which :meth:`Encoder.encode` builds as **plain tuples** in this field order
    and the monitor reads by position (:data:`AT_T`, :data:`AT_TEMPLATE`; :func:`window_features` reads the fields
    as columns): the garbage collector stops tracking a plain tuple of numbers and strings, never a named tuple, and
    with thousands of windows of 200 exchanges each full collection walked every one of them. A named tuple built
    with these fields compares equal to the plain tuple.
    """

    t: float
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int  # -1: not given
    turns: int
    template: int
    template_seen: bool
    system: int  # CRC-32 of the normalised system prompt, 0: none
    cot: bool
    hour: int
    model: str
    fresh: bool
    switch: bool
    ok: bool
    chars: int
    words: tuple[str, ...]  # its distinct content words, sorted (see Encoder._text)
    account: str


#: positions in an atom of the fields read by name outside :func:`window_features`
AT_T = Atom._fields.index("t")
AT_TEMPLATE = Atom._fields.index("template")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_MISSING: Any = object()
#: a dotted IPv4 address as ipaddress reads one (four decimal octets, no leading zeros)
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def address_prefix(addr: str | None) -> str | None:
    """The /24 of an IPv4 address or the /48 of an IPv6 one (``None`` for missing or unparsable addresses).

    >>> address_prefix("203.0.113.77"), address_prefix("2001:db8:1:2::5")
    ('203.0.113.0/24', '2001:db8:1::/48')
    """

    if not addr:
        return None
    addr = addr.strip()
    if _IPV4.fullmatch(addr):  # the common case, without ipaddress's objects (the same strings: the tests check)
        return addr[: addr.rfind(".")] + ".0/24"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def _clean_ua(ua: str | None) -> str | None:
    if not ua:
        return None
    ua = unicodedata.normalize("NFKC", ua).strip().casefold()[:200]
    return ua or None


@dataclass
class AccountState:
    """One account's window and running totals.

    Args:
        account_id: the account.
        metadata: its metadata (organisation, payment fingerprint, signup source, …), last seen.
    """

    account_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    window: deque[Atom] = field(default_factory=lambda: deque(maxlen=WINDOW))
    n: int = 0
    first_t: float = 0.0
    last_t: float = float("-inf")
    last_model: str | None = None
    templates: Counter[int] = field(default_factory=Counter)
    prefixes: Counter[str] = field(default_factory=Counter)
    agents: Counter[str] = field(default_factory=Counter)
    systems: Counter[int] = field(default_factory=Counter)
    embeddings: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=EMBED_WINDOW))
    #: the window's 10-minute slots (``int(t // SLOT_S)``) with their counts, kept up to date by
    #: :meth:`FeatureTracker.add` (linking reads the set of them at every checkpoint)
    slots: dict[int, int] = field(default_factory=dict)
    #: what linking reads from :attr:`metadata` (:func:`antidistill.monitor.cluster.account_meta`), with the
    #: metadata object it was read from (the tracker replaces the object when the metadata change)
    meta_read: Any = field(default=None, repr=False, compare=False)


class Encoder:
    """Turns events into atoms, holding the global state that needs (templates, first sightings of models).

    Args:
        releases: known release times of models (seconds since the epoch); other models count from the first
            time the monitor sees them.
    """

    def __init__(self, releases: Mapping[str, float] | None = None) -> None:
        self.templates = TemplateIndex()
        self.first_seen: dict[str, float] = dict(releases or {})
        self.known = frozenset(self.first_seen)
        self.start: float | None = None  # the first event's time: models seen in the first day are not "new"
        self._systems: dict[str, int] = {}
        self._prefixes: dict[str, str | None] = {}
        self._agents: dict[str, str | None] = {}
        # prompt -> (normalised text, demands reasoning, content words): pure functions of the text, and campaigns
        # (and retries, and shared benchmarks) repeat prompts verbatim; bounded: two generations of TEXT_CACHE / 2,
        # the older dropped when the newer fills (a full clear would forget the prompts just seen, too)
        self._texts: dict[str, tuple[str, bool, tuple[str, ...]]] = {}
        self._older: dict[str, tuple[str, bool, tuple[str, ...]]] = {}

    def _system_id(self, system: Any) -> int:
        if not system or not isinstance(system, str):
            return 0
        sid = self._systems.get(system)
        if sid is None:
            if len(self._systems) > 10_000:
                self._systems.clear()
            sid = self._systems[system] = zlib.crc32(normalise(system).encode()) or 1
        return sid

    def _prefix(self, addr: Any) -> str | None:
        if not isinstance(addr, str):
            return None
        if addr not in self._prefixes:
            if len(self._prefixes) > 100_000:
                self._prefixes.clear()
            self._prefixes[addr] = address_prefix(addr)
        return self._prefixes[addr]

    def _agent(self, ua: Any) -> str | None:
        if not isinstance(ua, str):
            return None
        if ua not in self._agents:
            if len(self._agents) > 10_000:
                self._agents.clear()
            self._agents[ua] = _clean_ua(ua)
        return self._agents[ua]

    def _retire(self, room: int) -> None:
        """Make room for ``room`` more texts in the newer generation (the older is dropped)."""
        if len(self._texts) + room > TEXT_CACHE // 2:
            self._older = self._texts
            self._texts = {}

    def _text(self, prompt: str) -> tuple[str, bool, tuple[str, ...]]:
        got = self._texts.get(prompt)
        if got is None:
            got = self._older.get(prompt)
            if got is None:
                norm = normalise(prompt)
                got = (norm, demands_reasoning(norm), tuple(sorted(content_words(norm))))
            self._retire(1)
            self._texts[prompt] = got
        return got

    def prepare(self, prompts: Iterable[Any]) -> None:
        """Normalise a batch of prompts and hash their templates ahead of :meth:`encode` (vectorised; the
        atoms are the same as without it)."""
        todo = [p for p in dict.fromkeys(prompts) if isinstance(p, str) and p not in self._texts]
        if not todo:
            return
        self._retire(len(todo))
        texts, older = self._texts, self._older
        for p in todo:  # seen a generation ago: kept, not computed again
            if (got := older.get(p)) is not None:
                texts[p] = got
        todo = [p for p in todo if p not in texts]
        if not todo:
            return
        norms = list(map(normalise, todo))
        words = [t.split() for t in norms]
        intent = ReasoningIntent.shipped()
        cots = (intent.scores(words) > intent.threshold).tolist()  # the batch at once: the same as demands_reasoning
        texts.update(zip(todo, zip(norms, cots, map(_content_words, words), strict=True), strict=True))
        self.templates.prepare(norms)

    def encode(self, event: ExchangeEvent, acct: AccountState) -> Atom:
        """The atom of ``event``, updating ``acct``'s running totals (not its window)."""
        # the hot path: every exchange passes here, so the small caches are read inline (a method call each costs
        # as much as the look-up)
        ts = event.ts.timestamp()
        n = acct.n
        last_t = acct.last_t
        # a clock that goes backwards must not make time run backwards inside an account
        t = ts if ts > last_t else (last_t if n else ts)
        prompt = event.prompt
        if prompt.__class__ is not str and not isinstance(prompt, str):
            prompt = ""
        norm, cot, words = self._texts.get(prompt) or self._text(prompt)
        tid = self.templates.template_of(norm)
        counts = acct.templates
        seen = tid in counts if tid else False  # counts only grow: present means used before
        system = event.system
        if system:
            system = self._systems.get(system) if system.__class__ is str else None
            if system is None:
                system = self._system_id(event.system)
        else:
            system = 0
        model = event.model or ""
        if len(model) > 256:
            model = model[:256]
        if self.start is None:
            self.start = t
        first = self.first_seen.setdefault(model, t)
        fresh = (model in self.known or first >= self.start + FRESH_MODEL_S) and 0.0 <= t - first < FRESH_MODEL_S
        last_model = acct.last_model
        mt = event.max_tokens
        if not isinstance(mt, int) or mt < 0:
            mt = -1
        hour = int((ts % 86400) // 3600) if ts - ts == 0.0 else 0  # ts - ts is 0.0 exactly when ts is finite
        status = int(event.status)
        atom: Atom = cast(
            Atom,
            (
                t,
                max(0, int(event.prompt_tokens)),
                max(0, int(event.completion_tokens)),
                mt,
                max(0, int(event.turns)),
                tid,
                seen,
                system,
                cot,
                hour,
                model,
                fresh,
                last_model is not None and model != last_model,
                200 <= status < 300,
                len(prompt),
                words,
                acct.account_id,
            ),
        )
        if not n:
            acct.first_t = t
        acct.n = n + 1
        acct.last_t = t
        acct.last_model = model
        if tid:
            counts[tid] += 1
        if system:
            acct.systems[system] += 1
        addr = event.client_addr
        prefix = self._prefixes.get(addr, _MISSING) if addr.__class__ is str else _MISSING
        if prefix is _MISSING:
            prefix = self._prefix(addr)
        if prefix:
            acct.prefixes[prefix] += 1
        ua = event.user_agent
        agent = self._agents.get(ua, _MISSING) if ua.__class__ is str else _MISSING
        if agent is _MISSING:
            agent = self._agent(ua)
        if agent:
            acct.agents[agent] += 1
        md = event.account_metadata
        if md and md != acct.metadata:  # the same metadata on every event of an account: copy on change only
            acct.metadata = dict(md)
        return atom


def _entropy(counts: Iterable[int], k: int) -> float:
    """Shannon entropy of the counts, over its maximum ``log k`` (0 for one value or ``k <= 1``)."""
    c = [x for x in counts if x > 0]
    if len(c) <= 1 or k <= 1:
        return 0.0
    total = sum(c)
    return -math.fsum(v / total * math.log(v / total) for v in c) / math.log(k)


def _embedding_features(embs: Sequence[np.ndarray]) -> tuple[float, float]:
    """(spread, coverage) of unit-norm prompt embeddings: 1 - |mean|, and the share of distinct directions."""
    if len(embs) < 2:
        return float("nan"), float("nan")
    e = np.stack(embs[-WINDOW:]).astype(np.float32, copy=False)
    spread = float(1.0 - np.linalg.norm(e.mean(axis=0)))
    # coverage: greedy count of directions at cosine < 0.6 from every one kept before, over the window size
    sims = e @ e.T
    kept: list[int] = []
    for i in range(len(e)):
        if not kept or float(sims[i, kept].max()) < 0.6:
            kept.append(i)
    return spread, len(kept) / len(e)


def _content_words(words: list[str]) -> tuple[str, ...]:
    """:func:`~antidistill.monitor.templates.content_words` of text already split into its words, sorted.

    A tuple of strings rather than a frozenset: the garbage collector stops tracking such a tuple, and with it the
    atom that holds it, where a frozenset keeps both tracked, and every full collection then walks every atom of
    every window (a tenth of the monitor's time in the throughput benchmark).
    """
    distinct = frozenset(words).difference(_STOP)  # the distinct words first: fewer to filter
    return tuple(sorted([w for w in distinct if len(w) > 3]))


_T = itemgetter(AT_T)
#: requests closer than this to the previous one are a burst (seconds)
_BURST_GAP = 5.0


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    k = len(v)
    return float(v[k // 2]) if k % 2 else (v[k // 2 - 1] + v[k // 2]) / 2.0


def _cv(values: Sequence[float]) -> float | None:
    """Population standard deviation over mean (``None`` when the mean is not positive)."""
    k = len(values)
    mean = math.fsum(values) / k
    if mean <= 0:
        return None
    dev = list(map(sub, values, repeat(mean)))
    return math.sqrt(math.fsum(map(mul, dev, dev)) / k) / mean


def window_features(atoms: Sequence[Atom], n_total: int, embeddings: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The feature vector :data:`FEATURES` of one window of atoms (any order; sorted by time here).

    Plain Python over the window's columns, with the counting done by C-level ``map``: for a couple of hundred
    values, numpy's per-call cost is most of the work (the tests compare with a numpy version).

    Args:
        atoms: the window (an account's last :data:`WINDOW` exchanges, or a cluster's merged ones).
        n_total: requests ever seen from the account (or cluster).
        embeddings: unit-norm prompt embeddings of the window, or of a sample of it (``None``: the embedding
            features are NaN).
    """
    n = len(atoms)
    if n == 0:
        return np.zeros(len(FEATURES))
    x = [math.nan] * len(FEATURES)
    # one pass over the atoms, then columns (the window is scored often: this is on the hot path)
    (
        t,
        pt,
        ct,
        mt,
        turns,
        templates,
        seen,
        systems_all,
        cots,
        hours_all,
        models,
        fresh,
        switches,
        oks,
        chars,
        words,
        accounts,
    ) = zip(*sorted(atoms, key=_T), strict=True)  # Atom's fields, in order
    span_h = max(float(t[-1] - t[0]), 60.0) / 3600.0
    gaps = list(map(sub, t[1:], t[:-1]))
    x[_I_REQUESTS] = math.log1p(n_total)
    x[_I_RATE] = math.log1p((n - 1) / span_h) if n > 1 else 0.0
    pt_sum, ct_sum = math.fsum(pt), math.fsum(ct)
    x[_I_PROMPT] = math.log1p(pt_sum / n)
    x[_I_COMPLETION] = math.log1p(ct_sum / n)
    x[_I_RATIO] = math.log((ct_sum + 1.0) / (pt_sum + 1.0))
    cv = _cv(gaps) if len(gaps) >= 2 else None
    x[_I_GAP_CV] = 1.0 if cv is None else cv
    x[_I_GAP_MEDIAN] = math.log1p(_median(gaps)) if gaps else 0.0
    x[_I_BURST] = sum(map(lt, gaps, repeat(_BURST_GAP))) / len(gaps) if gaps else 0.0
    x[_I_TURNS] = math.log1p(sum(turns) / n)
    x[_I_SINGLE] = sum(map(le, turns, repeat(1))) / n
    tc = Counter(templates)
    x[_I_TEMPLATE_TOP] = max(tc.values()) / n
    x[_I_TEMPLATE_DISTINCT] = len(tc) / n
    x[_I_REUSE] = sum(seen) / n
    total_words = sum(map(len, words))
    x[_I_WORDS] = len(frozenset().union(*words)) / total_words if total_words else 0.0
    x[_I_COT] = sum(cots) / n
    systems = [v for v in systems_all if v]
    x[_I_SYSTEM] = len(systems) / n
    x[_I_SYSTEM_DISTINCT] = len(set(systems)) / len(systems) if systems else 0.0
    hours = Counter(hours_all)
    x[_I_HOUR_ENTROPY] = _entropy(hours.values(), 24)
    x[_I_ACTIVE_HOURS] = len(hours) / 24.0
    given = [v for v in mt if v >= 0]
    x[_I_DEMAND] = math.log1p(_median(given)) if given else 0.0
    x[_I_LONG] = sum(map(ge, mt, repeat(LONG_DEMAND))) / n
    x[_I_GIVEN] = len(given) / n
    x[_I_MODELS] = float(len(set(models)))
    x[_I_FRESH] = sum(fresh) / n
    x[_I_SWITCHES] = math.log1p(sum(switches))
    x[_I_ERRORS] = (n - sum(oks)) / n
    cv = _cv(chars)
    x[_I_LEN_CV] = 0.0 if cv is None else cv
    per_account = Counter(accounts)
    x[_I_ACCOUNTS] = math.log(len(per_account))
    x[_I_TOP_ACCOUNT] = max(per_account.values()) / n
    if embeddings is not None:
        x[_I_EMB_SPREAD], x[_I_EMB_COVERAGE] = _embedding_features(list(embeddings))
    return np.array(x, dtype=float)


(
    _I_REQUESTS,
    _I_RATE,
    _I_PROMPT,
    _I_COMPLETION,
    _I_RATIO,
    _I_GAP_CV,
    _I_GAP_MEDIAN,
    _I_BURST,
    _I_TURNS,
    _I_SINGLE,
    _I_TEMPLATE_TOP,
    _I_TEMPLATE_DISTINCT,
    _I_REUSE,
    _I_WORDS,
    _I_COT,
    _I_SYSTEM,
    _I_SYSTEM_DISTINCT,
    _I_HOUR_ENTROPY,
    _I_ACTIVE_HOURS,
    _I_DEMAND,
    _I_LONG,
    _I_GIVEN,
    _I_MODELS,
    _I_FRESH,
    _I_SWITCHES,
    _I_ERRORS,
    _I_LEN_CV,
    _I_EMB_SPREAD,
    _I_EMB_COVERAGE,
    _I_ACCOUNTS,
    _I_TOP_ACCOUNT,
) = range(len(FEATURES))


class FeatureTracker:
    """Incremental features: one :meth:`add` per exchange, :meth:`features` whenever a score is wanted.

    Args:
        releases: known model release times (see :class:`Encoder`).

    Example:
        >>> from datetime import UTC, datetime
        >>> ft = FeatureTracker()
        >>> acct = ft.add(ExchangeEvent("acct_1", datetime(2026, 2, 1, tzinfo=UTC), prompt="hello"))
        >>> acct.n, float(ft.features("acct_1")[INDEX["log_requests"]]) > 0
        (1, True)
    """

    def __init__(self, releases: Mapping[str, float] | None = None) -> None:
        self.encoder = Encoder(releases)
        self.accounts: dict[str, AccountState] = {}

    def add(self, event: ExchangeEvent) -> AccountState:
        """Encode ``event`` into its account's window; returns the account's state."""
        acct = self.accounts.get(event.account_id)
        if acct is None:
            acct = self.accounts[event.account_id] = AccountState(event.account_id)
        atom = self.encoder.encode(event, acct)
        window = acct.window
        slots = acct.slots
        if len(window) == WINDOW:  # the oldest atom leaves the window
            old = int(window[0][AT_T] // SLOT_S)
            left = slots[old] - 1
            if left:
                slots[old] = left
            else:
                del slots[old]
        window.append(atom)
        slot = int(atom[AT_T] // SLOT_S)
        slots[slot] = slots.get(slot, 0) + 1
        return acct

    def features(self, account_id: str, with_embeddings: bool = False) -> np.ndarray:
        """The account's feature vector now (zeros for an account never seen)."""
        acct = self.accounts.get(account_id)
        if acct is None:
            return window_features((), 0)
        return window_features(acct.window, acct.n, acct.embeddings if with_embeddings else None)


def batch_features(
    events: Iterable[ExchangeEvent], releases: Mapping[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Every account's feature vector after all of ``events`` (in the order given), computed in one pass.

    The windows are cut from each account's full history at the end rather than maintained one event at a
    time, so this is an independent check of :class:`FeatureTracker` (and the way to recompute from the audit
    log without a running monitor).
    """
    enc = Encoder(releases)
    states: dict[str, AccountState] = {}
    history: dict[str, list[Atom]] = {}
    for ev in events:
        acct = states.get(ev.account_id)
        if acct is None:
            acct = states[ev.account_id] = AccountState(ev.account_id)
        history.setdefault(ev.account_id, []).append(enc.encode(ev, acct))
    return {a: window_features(h[-WINDOW:], len(h)) for a, h in history.items()}
