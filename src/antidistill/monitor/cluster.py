"""Linking accounts into clusters: a hydra of many clean-looking accounts is one campaign.

Each account is described by a few *attributes*: its payment fingerprint, organisation, signup source and signup
date (from the account's metadata), the address prefix (/24 or /48) and user agent it mostly uses, the prompt
templates (each used at least twice) and system prompt it mostly sends, and a coarse *timing signature* (the
10-minute slots of a sparse, bursty account). Each kind of attribute carries a weight (:data:`WEIGHTS`); two
accounts are linked when the attributes they share weigh at least 1. One shared payment fingerprint is enough;
one shared NAT prefix, a common SDK's user agent or a public benchmark's template is not; a shared NAT *and* user
agent *and* template is.

The weight of the ambient attributes (prefix, user agent, signup source and date) follows the value's rarity among
all accounts seen, as inverse document frequency weighs terms (Sparck Jones 1972): a value that more than
:data:`RARITY_COMMON_SHARE` of the accounts hold loses weight in proportion to ``log share`` (a common SDK's user
agent shared by thousands, or the signup day of a launch, weigh next to nothing), and an account's (prefix, user
agent) pair that a group of :data:`RARITY_GROUP` or more accounts holds, with both its prefix and user agent rare
(:data:`RARITY_RARE_SHARE`), weighs a link by itself: a hydra on one datacenter range with an odd client. Rarity
counts once :data:`RARITY_LEAST` accounts hold a value of the kind; before, the fixed weights apply.

Linking is incremental and exact for that rule at any moment: every account registers, for each minimal
combination of its attribute values whose weights reach 1, a key made of those values; two accounts that share
such a key are joined in a union-find (Tarjan 1975). Accounts sharing values of total weight >= 1 always share a
minimal combination, so no pairwise comparison is ever made, and the cost per account is a few dictionary
look-ups. Weights move as accounts arrive, so an account registers again whenever its values' weights change
(the monitor does it at its checkpoints); a link once made stays.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from itertools import combinations, product
from operator import itemgetter
from typing import Any, NamedTuple

from antidistill.monitor.features import AT_T, AT_TEMPLATE, SLOT_S, WINDOW, AccountState, Atom

#: what a group shares that is rare among all accounts: the pair (network prefix, user agent) of an account, which
#: weighs :data:`LINK_AT` by itself when a group of at least RARITY_GROUP accounts holds it and both its prefix and
#: its user agent are rare (each held by at most RARITY_RARE_SHARE of the accounts), and nothing otherwise: a hydra
#: on one datacenter range with an odd client links; a crowd on the common SDK, two or three neighbours on a
#: residential /24 or a campus NAT full of students on the common SDK do not
PAIR_KIND = "prefix_agent"
#: how much sharing each kind of attribute says about common control (two accounts link at a total of 1.0)
WEIGHTS: dict[str, float] = {
    "payment": 1.0,
    "organisation": 0.6,
    "template": 0.45,
    "system": 0.45,
    "prefix": 0.4,
    "timing": 0.35,
    "signup_day": 0.3,
    "agent": 0.25,
    "signup": 0.15,
    PAIR_KIND: 1.0,
    # what a whole group of linked accounts shares (keys of these kinds only ever match another group's)
    "group_template": 0.6,
    "group_signup_day": 0.4,
    "group_signup": 0.15,
    "group_prefix": 0.6,
}
LINK_AT = 1.0
#: kinds whose weight falls with the share of accounts that hold the value (:meth:`Linker.rarity`): a common SDK's
#: user agent, a popular signup day or source, a mobile carrier's prefix say little
RARITY_KINDS: tuple[str, ...] = ("prefix", "agent", "signup", "signup_day")
#: accounts holding a value of the kind before rarity counts (until then the fixed weights apply)
RARITY_LEAST = 100
RARITY_GROUP = 5
RARITY_RARE_SHARE = 0.05
#: a value held by more than this share of the accounts loses weight: log(share) / log(RARITY_COMMON_SHARE) of it,
#: rounded down to RARITY_STEP (0.75 at 40%, 0.25 at 75%, nothing when all accounts hold it)
RARITY_COMMON_SHARE = 0.3
RARITY_STEP = 0.25
#: words shown in reasons
KIND_WORDS: dict[str, str] = {
    "payment": "payment fingerprint",
    "organisation": "organisation",
    "template": "prompt template",
    "system": "system prompt",
    "prefix": "network prefix",
    "timing": "synchronised timing",
    "agent": "user agent",
    "signup": "signup source",
    "signup_day": "signup date",
    PAIR_KIND: "rare network prefix and user agent",
    "group_template": "prompt templates (group)",
    "group_signup_day": "signup burst (group)",
    "group_signup": "signup source (group)",
    "group_prefix": "network prefixes (group)",
}
#: an attribute value must cover this share of an account's requests (and at least MIN_COUNT of them)
MIN_SHARE = 0.25
MIN_COUNT = 5
TEMPLATE_SHARE = 0.1
#: uses of a template before it links an account to another account or to a group: one prompt is not a habit,
#: and the first prompt of a new account is often a phrasing thousands of people use ("what's a good name for …");
#: with one, a casual user who signed up in a hydra's signup week was swept into its cluster
TEMPLATE_LEAST = 2
#: an account's template, to join a group that uses it: a twentieth or more of its requests (a member of a campaign
#: that spreads its harvest over many templates uses each of them a few times)
PROBE_SHARE = 0.05
#: a group's template: one used by at least this share of its members (and this many)
MEMBER_SHARE = 0.2
MEMBER_LEAST = 3
#: a group's network prefix: one used by at least this share of its members (and MEMBER_LEAST)
PREFIX_MEMBER_SHARE = 0.1
#: a group's signup burst: each 3-day bucket that holds at least this share of its members
BUCKET_SHARE = 1 / 6
#: exchanges in an account's window before its timing signature counts
TIMING_LEAST = 20
#: metadata values that say nothing (placeholders, free-mail organisations)
_EMPTY = frozenset({"", "none", "null", "n/a", "na", "-", "unknown", "personal", "individual", "self", "private"})

_COUNT = itemgetter(1)
#: the kinds :meth:`Linker.rarity` weighs
_RATED = frozenset((*RARITY_KINDS, PAIR_KIND))


def _meta(meta: dict[str, Any], *names: str) -> str | None:
    for n in names:
        v = meta.get(n)
        if isinstance(v, str | int) and not isinstance(v, bool):
            s = str(v).strip().casefold()[:200]
            if s not in _EMPTY:
                return s
    return None


def _dominant(counter: Counter[Any], n: int, k: int = 2, share: float = MIN_SHARE, least: int = 1) -> list[Any]:
    # a new account's first requests count: a hydra member may send only one or two
    need = max(least, min(MIN_COUNT, math.ceil(share * n)), share * n)
    if not counter or max(counter.values()) < need:  # the common case (a casual user's templates): nothing
        return []
    # the same as filtering ``counter.most_common(k)`` (the threshold is monotone in the count and the sort is
    # stable), without a heap over every value the account ever used
    top = sorted(((v, c) for v, c in counter.items() if c >= need), key=_COUNT, reverse=True)
    return [v for v, _ in top[:k]]


def _slots(window: Sequence[Atom]) -> set[int]:
    return {int(a[AT_T] // SLOT_S) for a in window}


@lru_cache(maxsize=65536)
def _signup_day_pair(value: str) -> tuple[str, str] | None:
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        return None
    return day.isoformat(), f"b{day.toordinal() // 3}"


def _signup_days(value: str) -> list[str]:
    """The signup date and its 3-day bucket: a campaign signs its accounts up in a burst of a few days."""
    pair = _signup_day_pair(value)
    return list(pair) if pair else []


def timing_signature(window: Sequence[Atom], min_events: int = TIMING_LEAST) -> str | None:
    """The set of 10-minute slots an account was active in, hashed, when the activity is bursty and sparse.

    Accounts driven by one scheduler fire in the same slots; a sparse signature (a few busy slots) that two
    accounts share is unlikely by chance, a dense one (active all day) says nothing and is not returned.
    """
    if len(window) < min_events:
        return None
    return _slot_signature({int(a[AT_T] // SLOT_S) for a in window})


def _slot_signature(active: Collection[int]) -> str | None:
    if len(active) > 48:  # dense: no signature (and no need to sort)
        return None
    slots = sorted(active)
    span = slots[-1] - slots[0] + 1
    if len(slots) > 0.5 * span or len(slots) > 48:
        return None
    return "t" + str(hash(tuple(slots)) & 0xFFFFFFFFFFFF)


class AccountMeta(NamedTuple):
    """What linking reads from an account's metadata (``None``: not given, or a placeholder)."""

    payment: str | None
    organisation: str | None
    signup: str | None
    signup_days: list[str]  # the signup date and its 3-day bucket, or nothing


def account_meta(acct: AccountState) -> AccountMeta:
    """The account's :class:`AccountMeta`, read once per metadata object (linking reads it at every checkpoint)."""
    meta = acct.metadata
    got = acct.meta_read
    if got is not None and got[0] is meta:
        return got[1]
    md = meta or {}
    day = _meta(md, "signup_at", "created_at")
    out = AccountMeta(
        _meta(md, "payment_fingerprint", "payment", "card_fingerprint"),
        _meta(md, "organisation", "organization", "org"),
        _meta(md, "signup_source", "signup"),
        _signup_days(day) if day else [],
    )
    acct.meta_read = (meta, out)
    return out


def attributes(acct: AccountState) -> dict[str, list[str]]:
    """An account's linking attributes: kind → values (at most three per kind)."""
    n = max(1, acct.n)
    out: dict[str, list[str]] = {}
    pay, org, src, days = account_meta(acct)
    if pay:
        out["payment"] = [pay]
    if org:
        out["organisation"] = [org]
    if src:
        out["signup"] = [src]
    if days:
        out["signup_day"] = list(days)
    if p := _dominant(acct.prefixes, n):
        out["prefix"] = p
    if a := _dominant(acct.agents, n):
        out["agent"] = a
    if t := [str(v) for v in _dominant(acct.templates, n, least=TEMPLATE_LEAST)]:
        out["template"] = t
    if s := [str(v) for v in _dominant(acct.systems, n, 1)]:
        out["system"] = s
    # the account's slots are kept up to date as its window slides (the same set timing_signature computes)
    slots = acct.slots.keys() if acct.slots else _slots(acct.window)
    if len(acct.window) >= TIMING_LEAST and (ts := _slot_signature(slots)):
        out["timing"] = [ts]
    return out


def cluster_attributes(cluster: Cluster, accounts: dict[str, AccountState]) -> dict[str, list[str]]:
    """A cluster's own attributes, to link whole groups: its templates (each a tenth or more of its merged
    window, or used twice by a fifth or more of its members), its members' common signup burst (the 3-day buckets
    that hold a sixth of them or more) and source, and the network prefixes a tenth or more of them mainly use. A
    campaign paying with several cards forms one group per card; the groups share the campaign's templates and signup
    burst, which no single member may show strongly enough. Their kinds (``group_…``) only match other groups'
    keys, never a single account's."""
    out: dict[str, list[str]] = {}
    n = len(cluster.window)
    templates = Counter(a[AT_TEMPLATE] for a in cluster.window if a[AT_TEMPLATE])
    group = [str(v) for v in _dominant(templates, max(n, 1), 3, TEMPLATE_SHARE)]
    members = [accounts[m] for m in cluster.members if m in accounts]
    k = len(members)
    users: Counter[int] = Counter()  # members using each template twice or more
    prefixes: Counter[str] = Counter()  # members mainly sending from each prefix
    buckets: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for m in members:
        users.update(t for t, c in m.templates.items() if c >= TEMPLATE_LEAST)
        prefixes.update(_dominant(m.prefixes, max(1, m.n), 2, MIN_SHARE, TEMPLATE_LEAST))
        mm = account_meta(m)
        if mm.signup_days:
            buckets[mm.signup_days[1]] += 1
        if mm.signup:
            sources[mm.signup] += 1
    # a campaign spread over many templates (and reasoning demands, and cover chat) may have none that fills a
    # tenth of its window, yet each of its templates is used by many members, which a chat phrasing is not
    need = max(MEMBER_LEAST, MEMBER_SHARE * k)
    group += [str(v) for v, c in users.most_common(5) if c >= need and v and str(v) not in group]
    if group:
        out["group_template"] = group
    # a burst spread over a week or two covers several 3-day buckets: each that holds a sixth of the members
    if b := [v for v, c in buckets.most_common(3) if c >= max(2, BUCKET_SHARE * k)]:
        out["group_signup_day"] = b
    # the datacenter ranges a campaign's members send from (the members of a residential proxy network have no
    # main prefix, and its addresses spread over too many prefixes to count)
    if p := [v for v, c in prefixes.most_common(6) if c >= max(MEMBER_LEAST, PREFIX_MEMBER_SHARE * k)]:
        out["group_prefix"] = p
    if sources and (src := sources.most_common(1)[0]) and src[1] >= max(2, 0.5 * k):
        out["group_signup"] = [src[0]]
    return out


def group_probe_attributes(acct: AccountState) -> dict[str, list[str]]:
    """An account's attributes in the group namespace (see :meth:`Linker.probe`): its templates (each used twice
    and a twentieth or more of its traffic), its signup burst bucket and source, its main network prefixes."""
    out: dict[str, list[str]] = {}
    if t := [str(v) for v in _dominant(acct.templates, max(1, acct.n), 5, PROBE_SHARE, TEMPLATE_LEAST)]:
        out["group_template"] = t
    mm = account_meta(acct)
    if mm.signup_days:
        out["group_signup_day"] = [mm.signup_days[1]]
    if mm.signup:
        out["group_signup"] = [mm.signup]
    if p := _dominant(acct.prefixes, max(1, acct.n), 2, MIN_SHARE, TEMPLATE_LEAST):
        out["group_prefix"] = p
    return out


@lru_cache(maxsize=8192)
def _minimal_combinations(slots: tuple[tuple[str, float], ...]) -> tuple[tuple[int, ...], ...]:
    """The minimal combinations of ``slots`` (``(kind, weight)``, sorted; at most one slot of each kind in a
    combination) whose weights reach :data:`LINK_AT`, as tuples of slot indices."""
    minimal: list[frozenset[int]] = []
    out: list[tuple[int, ...]] = []
    for r in range(1, len(slots) + 1):
        for combo in combinations(range(len(slots)), r):
            if len({slots[i][0] for i in combo}) < r or sum(slots[i][1] for i in combo) + 1e-9 < LINK_AT:
                continue
            members = frozenset(combo)
            if any(m <= members for m in minimal):
                continue
            minimal.append(members)
            out.append(combo)
    return tuple(out)


def weighted_link_keys(attrs: dict[str, list[tuple[str, float]]]) -> Iterator[tuple[tuple[str, str], ...]]:
    """Keys for every minimal combination of attribute values (at most one of each kind) whose weights reach
    :data:`LINK_AT`; ``attrs``: kind -> ``(value, weight)`` pairs. A key is its ``(kind, value)`` pairs in the order
    of the kinds' names, so two accounts that share the values share the key whatever else they hold."""
    # each slot's values as (kind, value) pairs, so that a key is a tuple of the product with nothing built per key
    groups: dict[tuple[str, float], list[tuple[str, str]]] = {}
    for kind, values in attrs.items():
        for value, w in values:
            if w > 0.0:  # a value that weighs nothing never helps reach the threshold
                groups.setdefault((kind, w), []).append((kind, value))
    slots = tuple(sorted(groups))
    # the combinations depend on the (kind, weight) slots present only, and accounts have few distinct sets of them
    for combo in _minimal_combinations(slots):
        yield from product(*[groups[slots[i]] for i in combo])


def link_keys(attrs: dict[str, list[str]]) -> Iterator[tuple[tuple[str, str], ...]]:
    """Keys for every minimal combination of attribute values whose kinds' fixed weights (:data:`WEIGHTS`) reach
    :data:`LINK_AT` (see :func:`weighted_link_keys`)."""
    return weighted_link_keys({k: [(v, WEIGHTS[k]) for v in vs] for k, vs in attrs.items()})


@dataclass
class Cluster:
    """A set of linked accounts with its merged window.

    Args:
        id: ``cluster:`` + the first account's id (stable while the cluster grows).
        members: its accounts, in the order they joined.
        n: requests from all members so far.
        window: the members' last :data:`~antidistill.monitor.features.WINDOW` exchanges, merged.
        shared: the attribute kinds that linked its members, with counts.
    """

    id: str
    members: list[str]
    n: int = 0
    window: deque[Atom] = field(default_factory=lambda: deque(maxlen=WINDOW))
    shared: Counter[str] = field(default_factory=Counter)


class Linker:
    """Union-find over accounts, fed with their attribute keys as they change.

    Example:
        >>> lk = Linker()
        >>> lk.add_account("a"); lk.add_account("b"); lk.add_account("c")
        >>> _ = lk.register("a", {"payment": ["pf_1"], "prefix": ["10.0.0.0/24"]})
        >>> _ = lk.register("b", {"payment": ["pf_1"]})
        >>> _ = lk.register("c", {"prefix": ["10.0.0.0/24"]})
        >>> lk.find("a") == lk.find("b"), lk.find("a") == lk.find("c")
        (True, False)
    """

    def __init__(self) -> None:
        #: accounts holding each value of a rarity-weighted kind (:data:`RARITY_KINDS`, :data:`PAIR_KIND`), and any
        #: value of that kind; an account's values as counted
        self.holders: Counter[tuple[str, str]] = Counter()
        self.kind_holders: Counter[str] = Counter()
        self._counted: dict[str, frozenset[tuple[str, str]]] = {}
        # keyed by (id, is a group's registration): a cluster registers under its root account's id
        self._weighted: dict[tuple[str, bool], dict[str, list[tuple[str, float]]]] = {}
        self._seen: dict[tuple[str, bool], tuple[dict[str, list[str]], int]] = {}
        self.epoch = 0  # changes of the holders' counts so far
        self.parent: dict[str, str] = {}
        self.order: dict[str, int] = {}
        self.keys: dict[tuple[tuple[str, str], ...], str] = {}
        self.registered: dict[str, set[tuple[tuple[str, str], ...]]] = {}
        self.clusters: dict[str, Cluster] = {}  # root -> cluster (only for roots of size >= 2)
        self.group_keys = 0  # keys registered by groups so far
        self._probed: dict[str, tuple[dict[str, list[str]], int]] = {}

    def add_account(self, account_id: str) -> None:
        if account_id not in self.parent:
            self.parent[account_id] = account_id
            self.order[account_id] = len(self.order)

    def find(self, a: str) -> str:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def cluster_of(self, account_id: str) -> Cluster | None:
        """The account's cluster (``None`` while it is on its own)."""
        if account_id not in self.parent:
            return None
        return self.clusters.get(self.find(account_id))

    def probe(
        self, account_id: str, attrs: dict[str, list[str]], windows: dict[str, AccountState] | None = None
    ) -> list[str]:
        """Join the group whose ``group_…`` keys the account's own attributes (in that namespace) match, without
        registering them: an account may join a group on what the group shares, but two lone accounts never link
        this way. Returns the roots of clusters that changed."""
        # nothing to find if neither the account's attributes nor the groups' keys changed since it last looked
        memo = (attrs, self.group_keys)
        if self._probed.get(account_id) == memo:
            return []
        self._probed[account_id] = memo
        changed: list[str] = []
        for key in link_keys(attrs):
            owner = self.keys.get(key)
            if owner is not None and owner != account_id and self.find(owner) != self.find(account_id):
                root = self.union(account_id, owner, [k for k, _ in key], windows)
                if root is not None:
                    changed.append(root)
        return changed

    def _share(self, kind: str, value: str) -> tuple[int, float]:
        n = self.kind_holders[kind]
        k = self.holders[(kind, value)]
        return k, k / n if n else 1.0

    def rarity(self, kind: str, value: str) -> float:
        """The multiplier of a value's weight: 1 while fewer than :data:`RARITY_LEAST` accounts hold a value of the
        kind and for kinds outside :data:`RARITY_KINDS`; for those, less than 1 for a common value
        (:data:`RARITY_COMMON_SHARE`); for :data:`PAIR_KIND`, 1 for a pair a group holds whose prefix and user agent
        are both rare, else 0."""
        if kind != PAIR_KIND and kind not in RARITY_KINDS:
            return 1.0
        if self.kind_holders[kind if kind != PAIR_KIND else "prefix"] < RARITY_LEAST:
            return 1.0 if kind != PAIR_KIND else 0.0
        if kind == PAIR_KIND:
            prefix, agent = value.split("\x00", 1)
            k = self.holders[(kind, value)]
            rare = all(self._share(c, v)[1] <= RARITY_RARE_SHARE for c, v in (("prefix", prefix), ("agent", agent)))
            return 1.0 if k >= RARITY_GROUP and rare else 0.0
        share = max(1, self.holders[(kind, value)]) / self.kind_holders[kind]
        if share <= RARITY_COMMON_SHARE:
            return 1.0
        m = math.log(share) / math.log(RARITY_COMMON_SHARE)
        return math.floor(m / RARITY_STEP + 1e-9) * RARITY_STEP

    @staticmethod
    def _with_pairs(attrs: dict[str, list[str]]) -> dict[str, list[str]]:
        if "prefix" not in attrs or "agent" not in attrs:
            return attrs
        return {**attrs, PAIR_KIND: [f"{p}\x00{a}" for p in attrs["prefix"] for a in attrs["agent"]]}

    def _count(self, account_id: str, attrs: dict[str, list[str]]) -> None:
        now = frozenset((k, v) for k in (*RARITY_KINDS, PAIR_KIND) for v in attrs.get(k, ()))
        before = self._counted.get(account_id, frozenset())
        if now == before:
            return
        self._counted[account_id] = now
        self.epoch += 1
        self.holders.subtract(before - now)
        self.holders.update(now - before)
        self.kind_holders.subtract({k for k, _ in before} - {k for k, _ in now})
        self.kind_holders.update({k for k, _ in now} - {k for k, _ in before})

    def weighted(self, attrs: dict[str, list[str]]) -> dict[str, list[tuple[str, float]]]:
        """``attrs`` (with their :data:`PAIR_KIND` pairs) and each value's weight now: its kind's
        :data:`WEIGHTS` times :meth:`rarity`."""
        rarity = self.rarity  # a kind it does not weigh keeps its fixed weight (times 1.0: the same float)
        return {
            k: [(v, WEIGHTS[k] * rarity(k, v)) for v in vs] if k in _RATED else [(v, WEIGHTS[k]) for v in vs]
            for k, vs in self._with_pairs(attrs).items()
        }

    def register(
        self, account_id: str, attrs: dict[str, list[str]], windows: dict[str, AccountState] | None = None
    ) -> list[str]:
        """Register the account's current attribute keys (values weighted by their rarity among the accounts
        registered so far); returns the roots of clusters that changed."""
        # weights depend on the holders' counts only: unchanged attributes and counts register nothing new
        # a group's attributes (its root account's id, kinds group_...) are not an account's: they count for no rarity
        slot = (account_id, any(k.startswith("group_") for k in attrs))
        if self._seen.get(slot) == (attrs, self.epoch):
            return []
        if not slot[1]:
            self._count(account_id, self._with_pairs(attrs))
        self._seen[slot] = (attrs, self.epoch)
        weighted = self.weighted(attrs)
        # the keys follow the values and their weights: nothing new to register if neither changed
        if self._weighted.get(slot) == weighted:
            return []
        self._weighted[slot] = weighted
        have = self.registered.setdefault(account_id, set())
        changed: list[str] = []
        for key in weighted_link_keys(weighted):
            if key in have:
                continue
            have.add(key)
            other = self.keys.setdefault(key, account_id)
            if other == account_id and key[0][0].startswith("group_"):
                self.group_keys += 1
            elif other != account_id:
                root = self.union(account_id, other, [k for k, _ in key], windows)
                if root is not None:
                    changed.append(root)
        return changed

    def union(self, a: str, b: str, kinds: list[str], windows: dict[str, AccountState] | None = None) -> str | None:
        """Join the clusters of ``a`` and ``b``; the root is the account that arrived first."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            if (c := self.clusters.get(ra)) is not None:
                c.shared.update(kinds)
            return None
        if self.order[rb] < self.order[ra]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        ca = self.clusters.pop(ra, None) or self._singleton(ra, windows)
        cb = self.clusters.pop(rb, None) or self._singleton(rb, windows)
        merged = sorted([*ca.window, *cb.window], key=itemgetter(AT_T))
        c = Cluster(
            id=ca.id,
            members=ca.members + cb.members,
            n=ca.n + cb.n,
            window=deque(merged[-WINDOW:], maxlen=WINDOW),
            shared=ca.shared + cb.shared,
        )
        c.shared.update(kinds)
        self.clusters[ra] = c
        return ra

    @staticmethod
    def _singleton(account_id: str, windows: dict[str, AccountState] | None) -> Cluster:
        st = (windows or {}).get(account_id)
        return Cluster(
            id=f"cluster:{account_id}",
            members=[account_id],
            n=st.n if st else 0,
            window=deque(st.window if st else (), maxlen=WINDOW),
        )

    def linked_by(self, cluster: Cluster, k: int = 3) -> list[str]:
        """The attribute kinds that linked the cluster, most frequent first, in words."""
        return [KIND_WORDS[kind] for kind, _ in cluster.shared.most_common(k)]
