"""Anytime-valid (sequential) tests of a scan's scored tuples: test martingales, Ville's inequality.

A closed-mode scan pays per query, so it should stop as soon as the evidence is in. Stopping when the fixed-n
p-value first drops below alpha is not a valid test: under H0 the p-value path wanders, and checking it after every
completion rejects far more often than alpha (``tests/forensics/test_sequential.py`` measures it). This module
gives p-values that stay valid under any stopping rule.

For one key, let ``S_1, S_2, ...`` be the scores of the scored tuples in scoring order (each distinct tuple once;
the selection of tuples does not depend on the key, so under H0 the scores are i.i.d. with the member's exact
null, see :mod:`antidistill.watermark.nulls`). With ``psi(lam) = log E0[exp(lam S)]`` the member's null log-MGF,

    ``M_t(lam) = exp(lam (S_1 + ... + S_t) - t psi(lam))``

is a nonnegative martingale with ``M_0 = 1`` under H0 (a product of independent mean-one factors), and so is the
average over a fixed grid of ``lam`` (a *mixture*, which adapts to the unknown effect size at the cost of
``log K`` nats). Ville's inequality, ``P0(sup_t M_t >= 1/a) <= a``, makes ``p_t = min(1, 1 / max_{s <= t} M_s)`` an
anytime-valid p-value: ``P0(p_tau <= a) <= a`` at any stopping time ``tau``, however it was chosen (Ville 1939;
Ramdas, Grünwald, Vovk and Shafer 2023, "Game-theoretic statistics and safe anytime-valid inference",
https://arxiv.org/abs/2210.01948). Green-list members: ``S`` Bernoulli(gamma); Gumbel-max members: Exp(1), so
``E0[exp(lam S)] = 1 / (1 - lam)``; the tournament: a sum of ``m`` fair bits. A pooled cluster score (the sum over
``K`` independent keys) has log-MGF ``K psi``.

The families of a scan (provider key versions, every account key, clusters) are combined as the fixed-n scan
combines them, by Bonferroni, which holds for anytime-valid p-values too (each is below ``a`` with probability at
most ``a`` at the stopping time, whatever it is).

Example (a stream of green indicators at rate 0.6 against gamma 0.25):
    >>> from antidistill.watermark.nulls import bernoulli_log_mgf
    >>> e = EProcess(lambda lam: bernoulli_log_mgf(lam, 0.25))
    >>> e.update(np.array([[1.0, 1, 0, 1, 1, 0, 1, 1, 0, 1] * 5]))
    >>> float(e.p_values()[0]) < 1e-6
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from antidistill.errors import InputError
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.marker import Watermark

#: the fixed grid of betting fractions the mixture averages over (clipped where a member's null MGF is infinite)
DEFAULT_LAMBDAS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 0.9, 1.6, 3.2)

LogMGF = Callable[[np.ndarray], np.ndarray]


class EProcess:
    """A mixture test martingale for each of ``streams`` score streams (see the module docstring).

    Args:
        log_mgf: the null log-MGF of one tuple's score (vectorised over ``lam``).
        lambdas: the fixed betting grid; values where ``log_mgf`` is infinite are dropped (chosen before any data).
        streams: independent streams tracked at once (keys, or simulated replications).
        multiplicity: each score is a sum of this many independent null scores (a pooled cluster test).
    """

    def __init__(
        self, log_mgf: LogMGF, lambdas: Sequence[float] = DEFAULT_LAMBDAS, streams: int = 1, multiplicity: int = 1
    ) -> None:
        lam = np.asarray(lambdas, dtype=np.float64)
        psi = multiplicity * np.asarray(log_mgf(lam), dtype=np.float64)
        keep = np.isfinite(psi) & (lam > 0)
        if not keep.any():
            raise InputError("no betting fraction has a finite null moment for this scheme")
        self.lam, self.psi = lam[keep], psi[keep]
        self.total = np.zeros(streams)
        self.sq = np.zeros(streams)
        self.n = np.zeros(streams, dtype=np.int64)
        self.max_log_e = np.zeros(streams)

    def update(self, scores: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add new scores, ``(streams, k)``; ``mask`` (same shape, bool) leaves out the entries of a stream that are
        not its tuples (positions of the other kind). The running maximum is taken after every tuple."""
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        w = np.ones(scores.shape, dtype=bool) if mask is None else np.atleast_2d(mask)
        s = np.where(w, scores, 0.0)
        cum_s = self.total[:, None] + np.cumsum(s, axis=1)
        cum_n = self.n[:, None] + np.cumsum(w, axis=1)
        log_m = cum_s[..., None] * self.lam - cum_n[..., None] * self.psi  # (streams, k, K)
        mix = np.logaddexp.reduce(log_m, axis=-1) - np.log(len(self.lam))
        if mix.shape[1]:
            self.max_log_e = np.maximum(self.max_log_e, mix.max(axis=1))
        self.total += s.sum(axis=1)
        self.sq += (s * s).sum(axis=1)
        self.n += w.sum(axis=1)

    def p_values(self) -> np.ndarray:
        """``min(1, 1 / max_t M_t)`` per stream: anytime-valid."""
        out: np.ndarray = np.minimum(1.0, np.exp(-self.max_log_e))
        return out

    def mean_sd(self, stream: int) -> tuple[float, float]:
        """Observed mean and standard deviation of one stream's scores (for the budget planner)."""
        n = max(int(self.n[stream]), 1)
        mean = self.total[stream] / n
        return float(mean), float(np.sqrt(max(self.sq[stream] / n - mean * mean, 0.0)))


@dataclass(frozen=True)
class SequentialResult:
    """The anytime-valid p-values of a scan so far (each Bonferroni-corrected within its family, as the fixed-n
    scan corrects them; ``p_value`` corrected for the families and configuration groups too).

    Args:
        p_value: the overall sequential p-value.
        provider_p: the provider family (``None`` without a provider test).
        best_account: the account with the smallest sequential p; ``account_p`` its corrected p.
        best_cluster: likewise for the pooled clusters; ``cluster_p`` its corrected p.
        tuples: tuples the test has seen.
        lambdas: the betting grid.
    """

    p_value: float
    provider_p: float | None
    best_account: str | None
    account_p: float | None
    best_cluster: str | None
    cluster_p: float | None
    tuples: int
    lambdas: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bonf(p: float, tests: int) -> float:
    return min(1.0, p * max(tests, 1))


class SequentialScan:
    """The sequential versions of a scan's families (provider, accounts, clusters) for one configuration.

    Fed with the scored tuples in scoring order (:meth:`update`); :meth:`result` is valid at any time.

    Args:
        config: the watermark configuration the tuples are scored with.
        provider: provider key versions; accounts: account -> key versions; clusters: cluster -> member accounts.
        vocab_size: for ``hf-lefthash``.
        lambdas: the betting grid.
    """

    def __init__(
        self,
        config: WatermarkConfig,
        provider: Sequence[WatermarkKey],
        accounts: Mapping[str, Sequence[WatermarkKey]],
        clusters: Mapping[str, Sequence[str]] | None = None,
        vocab_size: int | None = None,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    ) -> None:
        self.wm = Watermark(config)
        self.vocab_size = vocab_size
        self.provider = list(provider) if config.provider_fraction > 0.0 else []
        self.accounts = [(a, k) for a, ks in accounts.items() for k in ks]
        self.clusters = [(c, [k for a in dict.fromkeys(m) for k in accounts[a]]) for c, m in (clusters or {}).items()]
        self.tuples = 0
        self.lambdas = list(lambdas)
        psi = self._psi
        versions = max(len(self.provider), 1)
        self.e_provider = EProcess(psi, lambdas, len(self.provider)) if self.provider else None
        self.e_accounts = EProcess(psi, lambdas, versions * len(self.accounts)) if self.accounts else None
        self.e_clusters = [EProcess(psi, lambdas, versions, len(ks)) for _, ks in self.clusters]

    def _psi(self, lam: np.ndarray) -> np.ndarray:
        return self.wm.scheme.null_log_mgf(lam, self.vocab_size)

    def _scores(self, keys: Sequence[WatermarkKey], contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        values = np.array([k.value for k in keys], dtype=U64)
        out: np.ndarray = self.wm.scheme.pair_scores(values, contexts, tokens, self.vocab_size)
        return out

    def update(self, contexts: np.ndarray, tokens: np.ndarray) -> None:
        """Score new tuples (in scoring order) under every key and advance every test martingale."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 0:
            return
        contexts = np.asarray(contexts, dtype=np.int64).reshape(len(tokens), -1)
        self.tuples += len(tokens)
        kinds = np.array(
            [self.wm.position_kinds(contexts, p.value) for p in self.provider] or [np.zeros(len(tokens), bool)]
        )
        if self.e_provider is not None:
            self.e_provider.update(self._scores(self.provider, contexts, tokens), kinds)
        if self.e_accounts is not None:
            acc = self._scores([k for _, k in self.accounts], contexts, tokens)
            self.e_accounts.update(np.tile(acc, (len(kinds), 1)), np.repeat(~kinds, len(self.accounts), axis=0))
        for e, (_, ks) in zip(self.e_clusters, self.clusters, strict=True):
            pooled = self._scores(ks, contexts, tokens).sum(axis=0)
            e.update(np.tile(pooled, (len(kinds), 1)), ~kinds)

    def family_ps(self) -> dict[str, tuple[float, str | None]]:
        """Family -> (its corrected sequential p, the best member's name)."""
        out: dict[str, tuple[float, str | None]] = {}
        if self.e_provider is not None:
            ps = self.e_provider.p_values()
            out["provider"] = (_bonf(float(ps.min()), len(ps)), None)
        if self.e_accounts is not None:
            ps = self.e_accounts.p_values()
            i = int(np.argmin(ps))
            out["accounts"] = (_bonf(float(ps[i]), len(ps)), self.accounts[i % len(self.accounts)][0])
        if self.e_clusters:
            per = [float(e.p_values().min()) for e in self.e_clusters]
            i = int(np.argmin(per))
            out["clusters"] = (_bonf(per[i], len(per) * len(self.e_clusters[i].n)), self.clusters[i][0])
        return out

    def planning_stream(self) -> tuple[EProcess, int, int]:
        """The stream a budget planner extrapolates: the provider key (``"was it trained on our outputs"``), else
        the best account key; ``(its e-process, stream index, tests it is corrected for)``."""
        if self.e_provider is not None:
            return self.e_provider, int(np.argmin(self.e_provider.p_values())), len(self.provider)
        if self.e_accounts is None:
            raise InputError("no key to test: give a provider key or candidate accounts")
        ps = self.e_accounts.p_values()
        return self.e_accounts, int(np.argmin(ps)), len(ps)


def combine_sequential(scans: Sequence[SequentialScan]) -> SequentialResult:
    """The overall sequential result of one or more configuration groups (Bonferroni over families and groups)."""
    best: dict[str, tuple[float, str | None]] = {}
    families = 0
    for s in scans:
        fam = s.family_ps()
        families = max(families, len(fam))
        for name, (p, who) in fam.items():
            p = _bonf(p, len(scans))
            if name not in best or p < best[name][0]:
                best[name] = (p, who)
    overall = _bonf(min((p for p, _ in best.values()), default=1.0), families)
    acct, clus = best.get("accounts"), best.get("clusters")
    return SequentialResult(
        p_value=overall,
        provider_p=best["provider"][0] if "provider" in best else None,
        best_account=acct[1] if acct else None,
        account_p=acct[0] if acct else None,
        best_cluster=clus[1] if clus else None,
        cluster_p=clus[0] if clus else None,
        tuples=max((s.tuples for s in scans), default=0),
        lambdas=list(scans[0].lambdas) if scans else list(DEFAULT_LAMBDAS),
    )
