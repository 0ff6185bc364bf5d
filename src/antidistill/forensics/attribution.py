"""The statistics of a radioactivity scan: provider test, per-account attribution, pooled cluster tests, controls.

Pure functions on the scored (context, token) tuples of a scan; no model, tokenizer, file or network here.

Every position's green list comes from either the provider-wide key or the account's key, chosen by a keyed hash
of the context (see :mod:`antidistill.keys`). So, on the tuples a scan scores (each distinct tuple once):

* **provider test** ("was this trained on our outputs at all?"): the provider positions, green under the provider
  key. No account is needed. Under H0 the count is Binomial(n, gamma).
* **attribution**: the account positions, green under each candidate account key; the best one is
  Bonferroni-corrected for every key tried (accounts x key versions x provider versions).
* **cluster (pooled) test**: for K member keys, each account-position tuple contributes the number of the K keys
  that mark it green. Under H0 the K keys' indicators are independent Bernoulli(gamma) (independent keys, one
  keyed hash), so the sum over n tuples is exactly Binomial(K n, gamma). A harvest spread over 50 accounts, each
  too small to be significant alone, adds up here. Corrected for the number of clusters tested.
* **controls**: the same tuples tested, the way the provider test is, under keys that never marked anything.
  Their p-values must look uniform; a small one would expose a flaw of the scan, not of the suspect.
* **mixed deployments** (:func:`combine_groups`): when the outputs were marked under several configurations (the
  scheme changed, or its parameters), each configuration's tuples are one group, scored with that group's own
  scheme by :func:`attribute_tuples`. The groups are combined by Bonferroni over the ``G`` groups: the most
  significant group is reported with every corrected p-value multiplied by ``G``. Fisher's method would need the
  groups' statistics to be independent under H0, which fails when two groups share a hash family and a context
  width (e.g. the same scheme at two gammas): a tuple scored in both has dependent scores. Bonferroni holds
  under any dependence, and with one group it changes nothing.

Radioactivity: Sander et al. 2024, "Watermarking makes language models radioactive",
https://arxiv.org/abs/2402.14904.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from antidistill.detection.stats import bonferroni
from antidistill.errors import InputError
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64, Scheme
from antidistill.watermark.marker import Watermark

#: Number of never-issued keys the scan tests as controls, unless told otherwise.
DEFAULT_CONTROL_KEYS = 16
#: Points of the p-value curve (log-spaced in tokens scored).
CURVE_POINTS = 40


@dataclass(frozen=True)
class BinomialTest:
    """One exact binomial test: ``green`` successes in ``n`` trials with null probability ``gamma``.

    Args:
        key_id: the key (or keys) tested.
        green: green count.
        n: trials (tuples scored; K x tuples for a pooled test).
        p_value: exact ``P(X >= green)``, X ~ Binomial(n, gamma).
        z: the z-score, for readers.
        p_corrected: ``p_value`` corrected for the tests it was chosen among (``None`` if it was not chosen).
    """

    key_id: str
    green: int
    n: int
    p_value: float
    z: float
    p_corrected: float | None = None

    @property
    def green_fraction(self) -> float:
        return self.green / self.n if self.n else 0.0


@dataclass(frozen=True)
class AccountResult:
    """One candidate account on the account positions (best of its key versions)."""

    account: str
    key_id: str
    green: int
    n: int
    p_value: float
    p_corrected: float


@dataclass(frozen=True)
class ClusterResult:
    """A pooled test of a cluster of accounts: ``green`` of ``n`` = K x tuples trials under H0 Binomial(n, gamma).

    Args:
        cluster_id: the name given to the cluster.
        accounts: its member accounts.
        keys: the member keys pooled (K; every version of every member).
        tuples: account-position tuples scored.
        green: total green indicators over the K keys and the tuples.
        n: K x tuples.
        p_value: exact binomial tail; ``p_corrected`` Bonferroni-corrected for the clusters tested.
    """

    cluster_id: str
    accounts: list[str]
    keys: int
    tuples: int
    green: int
    n: int
    p_value: float
    p_corrected: float


@dataclass(frozen=True)
class ControlResult:
    """A control: the same test with a key that never marked anything, or the scan of a known-clean model."""

    name: str
    key: str | None
    model: str | None
    green: int
    tokens_scored: int
    p_value: float


@dataclass(frozen=True)
class CurvePoint:
    """The p-values after the first ``tokens_scored`` scored tuples (in scoring order), for the evidence plot.

    ``provider_p`` is the provider test on the ``provider_n`` provider positions among them; ``best_account_p``
    the test of the account that is best over the whole scan on the ``account_n`` account positions. Both are
    uncorrected (the corrected final values are in the report).
    """

    tokens_scored: int
    provider_n: int
    provider_p: float | None
    account_n: int
    best_account_p: float | None


@dataclass
class Attribution:
    """Everything the statistics conclude from one set of scored tuples (see the module docstring)."""

    gamma: float
    tuples: int
    provider: BinomialTest | None
    provider_keys_tested: int
    accounts: list[AccountResult]
    account_keys_tested: int
    account_positions: int
    best_account: AccountResult | None
    clusters: list[ClusterResult]
    controls: list[ControlResult]
    curve: list[CurvePoint]
    p_value: float
    families: list[str] = field(default_factory=list)
    #: configuration groups this result was chosen among (its corrected p-values include the correction)
    groups: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def control_keys(count: int = DEFAULT_CONTROL_KEYS, seed: int = 0) -> list[WatermarkKey]:
    """``count`` random keys that never marked anything (replayable from ``seed``).

    Example:
        >>> [k.key_id for k in control_keys(2)]
        ['control:0', 'control:1']
        >>> control_keys(3, seed=1)[2].value == control_keys(3, seed=1)[2].value
        True
    """
    if count < 0:
        raise InputError(f"count must be >= 0, got {count}")
    values = np.random.default_rng([0x5CA7, seed]).integers(0, 2**64, size=count, dtype=U64, endpoint=False)
    return [WatermarkKey(f"control:{i}", None, 0, int(v)) for i, v in enumerate(values)]


def _p(scheme: Scheme, score: float, n: int, vocab_size: int | None) -> float:
    """The exact null tail of a summed score over ``n`` tuples (1 when nothing was scored)."""
    return float(scheme.p_value(score, n, vocab_size)) if n > 0 else 1.0


def _test(key_id: str, green: float, n: int, scheme: Scheme, vocab_size: int | None) -> BinomialTest:
    p = _p(scheme, green, n, vocab_size)
    return BinomialTest(key_id, scheme.reported(green), int(n), p, scheme.z(float(green), n, vocab_size))


def _curve_marks(total: int, points: int) -> np.ndarray:
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    marks = np.unique(np.round(np.geomspace(1, total, num=min(points, total))).astype(np.int64))
    return marks


def pooled_counts(
    watermark: Watermark, keys: Sequence[WatermarkKey], contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None
) -> np.ndarray:
    """(n,) each tuple's score summed over ``keys`` (for green-list schemes: how many keys mark it green): the
    per-tuple summand of the pooled test."""
    if len(tokens) == 0 or not keys:
        return np.zeros(len(tokens), dtype=np.float64)
    values = np.array([k.value for k in keys], dtype=U64)
    out: np.ndarray = watermark.scheme.pair_scores(values, contexts, tokens, vocab_size).sum(axis=0)
    return out


def pooled_test(
    watermark: Watermark,
    keys: Sequence[WatermarkKey],
    contexts: np.ndarray,
    tokens: np.ndarray,
    vocab_size: int | None = None,
) -> BinomialTest:
    """The pooled test of ``keys`` on the tuples: scores summed over keys and tuples (green indicators:
    Binomial(K n, gamma); Gumbel-max scores: Gamma(K n, 1)), since distinct keys score independently.

    The keys must be distinct (one key counted twice would double its indicators, which are then not independent).

    Example:
        >>> from antidistill.keys import MasterKey
        >>> mk = MasterKey(b"k" * 32)
        >>> keys = [mk.account_key(a) for a in ("a", "b", "c")]
        >>> rng = np.random.default_rng(0)
        >>> t = pooled_test(Watermark(), keys, rng.integers(0, 1000, (200, 1)), rng.integers(0, 1000, 200))
        >>> t.n, t.p_value > 1e-3
        (600, True)
    """
    if len({k.value for k in keys}) != len(keys):
        raise InputError("pooled keys must be distinct")
    green = float(pooled_counts(watermark, keys, contexts, tokens, vocab_size).sum())
    return _test(
        "+".join(k.key_id for k in keys) if len(keys) <= 3 else f"{len(keys)} keys",
        green,
        len(keys) * len(tokens),
        watermark.scheme,
        vocab_size,
    )


def attribute_tuples(  # noqa: C901
    config: WatermarkConfig,
    contexts: np.ndarray,
    tokens: np.ndarray,
    provider_keys: Sequence[WatermarkKey],
    accounts: Mapping[str, Sequence[WatermarkKey]],
    clusters: Mapping[str, Sequence[str]] | None = None,
    controls: Sequence[WatermarkKey] = (),
    vocab_size: int | None = None,
    curve_points: int = CURVE_POINTS,
) -> Attribution:
    """All the tests of a scan on its scored tuples (each distinct tuple once, in scoring order).

    Args:
        config: the watermark parameters the outputs were marked with.
        contexts: (n, h) windows of the scored tuples.
        tokens: (n,) the scored tokens (the suspect's predictions or outputs).
        provider_keys: every version of the provider key (tested each; corrected for their number).
        accounts: candidate account -> every version of its key.
        clusters: cluster id -> member accounts (each must be in ``accounts``), tested pooled.
        controls: never-issued keys, each tested the way the provider test is.
        vocab_size: the vocabulary size (needed by the ``hf-lefthash`` scheme only).
        curve_points: points of the p-value curve.

    The overall ``p_value`` is the smallest corrected p-value of the families tested (provider, accounts,
    clusters), Bonferroni-corrected for the number of families: valid under any dependence between them.
    """
    contexts = np.asarray(contexts, dtype=np.int64).reshape(len(tokens), config.context_width)
    tokens = np.asarray(tokens, dtype=np.int64)
    wm = Watermark(config)
    scheme = wm.scheme
    gamma = scheme.null_moments(vocab_size)[0]
    n = len(tokens)
    clusters = dict(clusters or {})
    for cid, members in clusters.items():
        missing = [a for a in members if a not in accounts]
        if missing:
            raise InputError(f"cluster {cid!r} has accounts without keys: {', '.join(missing)}")
        if not members:
            raise InputError(f"cluster {cid!r} has no accounts")
    use_provider = config.provider_fraction > 0.0 and len(provider_keys) > 0
    splits: list[tuple[WatermarkKey | None, np.ndarray]] = (
        [(pk, wm.position_kinds(contexts, pk.value)) for pk in provider_keys]
        if use_provider
        else [(None, np.zeros(n, dtype=bool))]
    )
    n_versions = len(splits)

    # ---- provider test ---------------------------------------------------------------------------------
    provider: BinomialTest | None = None
    provider_flags = None
    best_split = splits[0]
    if use_provider:
        for pk, kinds in splits:
            flags = scheme.pair_scores(np.array([pk.value], dtype=U64), contexts[kinds], tokens[kinds], vocab_size)[0]
            t = _test(pk.key_id, float(flags.sum()), int(kinds.sum()), scheme, vocab_size)
            if provider is None or t.p_value < provider.p_value:
                provider, provider_flags, best_split = t, flags, (pk, kinds)
        provider = BinomialTest(
            provider.key_id,
            provider.green,
            provider.n,
            provider.p_value,
            provider.z,
            bonferroni(provider.p_value, n_versions),
        )

    # ---- accounts --------------------------------------------------------------------------------------
    all_keys = [(a, k) for a, ks in accounts.items() for k in ks]
    account_keys_tested = len(all_keys) * n_versions
    account_results: list[AccountResult] = []
    best_acct_flags = None
    acct_kinds = ~best_split[1]
    if all_keys:
        per_version: list[tuple[list[AccountResult], np.ndarray]] = []
        for _, kinds in splits:
            a_mask = ~kinds
            values = np.array([k.value for _, k in all_keys], dtype=U64)
            greens = scheme.score_sums(values, contexts[a_mask], tokens[a_mask], vocab_size)
            m = int(a_mask.sum())
            best_by_acct: dict[str, AccountResult] = {}
            ps = np.atleast_1d(scheme.p_value(greens, m, vocab_size)) if m > 0 else np.ones(len(greens))
            for (acct, key), g, p in zip(all_keys, greens, ps, strict=True):
                r = AccountResult(
                    acct, key.key_id, scheme.reported(g), m, float(p), bonferroni(float(p), account_keys_tested)
                )
                if acct not in best_by_acct or r.p_value < best_by_acct[acct].p_value:
                    best_by_acct[acct] = r
            per_version.append((sorted(best_by_acct.values(), key=lambda r: (r.p_value, r.account)), a_mask))
        account_results, acct_kinds = min(per_version, key=lambda v: v[0][0].p_value)
        best = account_results[0]
        best_key = next(k for a, k in all_keys if k.key_id == best.key_id)
        best_acct_flags = scheme.pair_scores(
            np.array([best_key.value], dtype=U64), contexts[acct_kinds], tokens[acct_kinds], vocab_size
        )[0]
    best_account = account_results[0] if account_results else None

    # ---- clusters (pooled, on the account positions of the split the accounts were tested on) -------------
    cluster_results: list[ClusterResult] = []
    for cid, members in clusters.items():
        keys = [k for a in dict.fromkeys(members) for k in accounts[a]]
        t = pooled_test(wm, keys, contexts[acct_kinds], tokens[acct_kinds], vocab_size)
        cluster_results.append(
            ClusterResult(
                cid,
                list(dict.fromkeys(members)),
                len(keys),
                int(acct_kinds.sum()),
                t.green,
                t.n,
                t.p_value,
                bonferroni(t.p_value, len(clusters)),
            )
        )
    cluster_results.sort(key=lambda c: (c.p_value, c.cluster_id))

    # ---- controls --------------------------------------------------------------------------------------
    control_results = []
    for ck in controls:
        kinds = wm.position_kinds(contexts, ck.value) if config.provider_fraction > 0.0 else np.ones(n, bool)
        g = float(
            scheme.pair_scores(np.array([ck.value], dtype=U64), contexts[kinds], tokens[kinds], vocab_size)[0].sum()
        )
        t = _test(ck.key_id, g, int(kinds.sum()), scheme, vocab_size)
        control_results.append(ControlResult(ck.key_id, ck.key_id, None, t.green, t.n, t.p_value))

    # ---- the curve: p-values against tuples scored (scoring order) -----------------------------------------
    curve = []
    marks = _curve_marks(n, curve_points)
    if len(marks):
        prov_kinds = best_split[1] if use_provider else np.zeros(n, bool)
        prov_cum_n = np.cumsum(prov_kinds)
        prov_green = np.zeros(n, dtype=np.float64)
        if provider_flags is not None:
            prov_green[np.flatnonzero(prov_kinds)] = provider_flags
        prov_cum_g = np.cumsum(prov_green)
        acct_cum_n = np.cumsum(acct_kinds)
        acct_green = np.zeros(n, dtype=np.float64)
        if best_acct_flags is not None:
            acct_green[np.flatnonzero(acct_kinds)] = best_acct_flags
        acct_cum_g = np.cumsum(acct_green)
        for m in marks:
            i = int(m) - 1
            pn, an = int(prov_cum_n[i]), int(acct_cum_n[i])
            pp = _p(scheme, float(prov_cum_g[i]), pn, vocab_size) if use_provider and pn > 0 else None
            ap = _p(scheme, float(acct_cum_g[i]), an, vocab_size) if best_acct_flags is not None and an else None
            curve.append(CurvePoint(int(m), pn, pp, an, ap))

    # ---- overall: the best family, corrected for the families tested --------------------------------------
    family_ps: dict[str, float] = {}
    if provider is not None:
        family_ps["provider"] = provider.p_corrected
    if best_account is not None:
        family_ps["accounts"] = best_account.p_corrected
    if cluster_results:
        family_ps["clusters"] = cluster_results[0].p_corrected
    p_value = bonferroni(min(family_ps.values()), len(family_ps)) if family_ps else 1.0
    return Attribution(
        gamma=gamma,
        tuples=n,
        provider=provider,
        provider_keys_tested=n_versions if use_provider else 0,
        accounts=account_results,
        account_keys_tested=account_keys_tested,
        account_positions=int(acct_kinds.sum()),
        best_account=best_account,
        clusters=cluster_results,
        controls=control_results,
        curve=curve,
        p_value=float(p_value),
        families=list(family_ps),
    )


def combine_groups(results: Sequence[Attribution]) -> tuple[int, Attribution]:
    """Combine the attributions of ``G`` configuration groups (see the module docstring): ``(index of the most
    significant group, its attribution with every corrected p-value Bonferroni-corrected for the G groups)``.

    Every reported corrected p-value (provider, each account, each cluster, the overall one) is the group's own
    times ``G``, capped at 1: the probability that any group shows a result this strong under H0 is at most the
    sum over the groups, whatever their dependence. The keyed controls of every group are kept (named with their
    group when ``G > 1``), so the control check covers each group's scheme.

    Example:
        >>> a = Attribution(0.25, 10, None, 0, [], 0, 0, None, [], [], [], 0.01, ["provider"])
        >>> b = Attribution(1.0, 10, None, 0, [], 0, 0, None, [], [], [], 0.2, ["provider"])
        >>> i, c = combine_groups([b, a])
        >>> i, c.p_value, c.groups
        (1, 0.02, 2)
    """
    if not results:
        raise InputError("no group to combine")
    g = len(results)
    if g == 1:
        return 0, results[0]
    best = min(range(g), key=lambda j: (results[j].p_value, j))
    a = results[best]
    provider = (
        replace(a.provider, p_corrected=bonferroni(a.provider.p_corrected or a.provider.p_value, g))
        if a.provider is not None
        else None
    )
    accounts = [replace(r, p_corrected=bonferroni(r.p_corrected, g)) for r in a.accounts]
    clusters = [replace(c, p_corrected=bonferroni(c.p_corrected, g)) for c in a.clusters]
    controls = [replace(c, name=f"{c.name} (group {j + 1})") for j, r in enumerate(results) for c in r.controls]
    return best, replace(
        a,
        provider=provider,
        accounts=accounts,
        best_account=accounts[0] if accounts else None,
        clusters=clusters,
        controls=controls,
        p_value=bonferroni(a.p_value, g),
        groups=g,
    )
