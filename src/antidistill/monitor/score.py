"""Risk scores with reasons: explicit rules, an anomaly model, a supervised model, and calibrated thresholds.

Three scorers look at the same feature vector (:data:`antidistill.monitor.features.FEATURES`):

* **rules** (:func:`rules`): thresholds a person can read and argue with ("demands step-by-step reasoning in
  92% of requests"), each with a strength in [0, 1], combined by noisy-OR. They need no training and are the
  fallback of an untrained monitor.
* **anomaly**: an Isolation Forest (Liu, Ting & Zhou 2008, "Isolation Forest", ICDM) fitted on benign traffic
  only, reported as the share of benign training windows that look less anomalous (an empirical CDF, so 0.99
  means "stranger than 99% of benign accounts").
* **supervised**: gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``) trained on simulated
  traffic whose labels are known (:mod:`antidistill.monitor.train`).

The combined risk is a fixed weighted mean of the three, shrunk in proportion for windows of fewer than
:data:`MIN_EVIDENCE` requests; the thresholds of the levels ``watch``, ``alert`` and
``severe`` are then set on benign calibration traffic so that each level is reached by at most its target
share of benign accounts (:func:`calibrate`), the way the 2026 MMD detector reports its benign false-positive
rate. The reasons of an assessment are the rules that fired, then the features furthest from benign traffic.

Three guards then hold the trained models to the evidence (:meth:`Scorer.raw`): the rules' decisive evidence is
a floor of the risk (a model trained on simulated traffic cannot unlearn what the rules call decisive); the
client's ``max_tokens`` adds weight but never lifts a level; and timing alone (regular intervals, activity around
the clock, what batch jobs show) keeps an account below ``watch``. Each rule belongs to one evidence family
(:data:`FAMILIES`: traffic shape, content, linking, release pivot); the families a window's rules support travel
with its score, and the policy blocks only on two or more of them (:mod:`antidistill.monitor.policy`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController

from antidistill.errors import InputError
from antidistill.monitor.api import FAMILIES, LEVELS
from antidistill.monitor.features import DESCRIPTIONS, FEATURES, INDEX, LONG_DEMAND

#: share of benign accounts allowed to reach each level (per account, over its whole history) on the calibration
#: traffic; ``alert`` is calibrated at half the 0.5% goal, a margin for held-out traffic that differs from it
TARGET_FPR: dict[str, float] = {"watch": 0.02, "alert": 0.0025, "severe": 0.001}
#: weights of the combined risk
WEIGHTS: dict[str, float] = {"supervised": 0.6, "rules": 0.25, "anomaly": 0.15}
#: requests (of an account or a cluster) below which its risk is shrunk in proportion: five requests say little,
#: and a hydra member with a handful is caught through its cluster, whose count is the members' total
MIN_EVIDENCE = 20
#: thresholds of an untrained monitor, on the rules score alone (documented fallback); they are also the scale
#: on which the rules' decisive evidence is a floor of a trained monitor's risk (:meth:`Scorer.floor`)
RULES_ONLY_THRESHOLDS: dict[str, float] = {"watch": 0.5, "alert": 0.7, "severe": 0.9}

#: each rule's evidence family (:data:`~antidistill.monitor.api.FAMILIES`); ``demand`` (answers of LONG_DEMAND+
#: tokens) is ``max_tokens``, a knob the client sets freely (an attacker turns it down, many legitimate users turn
#: it up): it adds weight, never a family, and never lifts a level on its own (:meth:`Scorer.raw`)
KIND_FAMILY: dict[str, str | None] = {
    "rate": "traffic",
    "regular": "traffic",
    "clock": "traffic",
    "template": "content",
    "reasoning": "content",
    "coverage": "content",
    "pivot": "release",
    "demand": None,
}
#: the families whose rules are decisive evidence, a floor of a trained monitor's risk (:meth:`Scorer.floor`): what
#: the traffic asks for and a release pivot. Traffic shape is not: legitimate batch jobs share it (the simulator's
#: evaluation harnesses reach 0.86 on the rules scale on rate and reasoning demands), so it adds weight through
#: the combined score and counts as a family for a block, but does not set a floor
FLOOR_FAMILIES: frozenset[str] = frozenset({"content", "release"})
#: the rules about timing alone: what a legitimate batch job (evaluation harness, nightly summariser) shows too
TIMING_KINDS: frozenset[str] = frozenset({"regular", "clock"})
#: the strength from which a rule counts as evidence of its family (a ramp a quarter to a third of the way up:
#: 270+ requests an hour, 65%+ of requests on one template, 45%+ demanding the reasoning, intervals varying < 0.41)
FAMILY_MIN = 0.15
#: an account linked with at least this many accounts in all has the ``linking`` family (a pair can be one person's
#: work and home accounts; the shipped policy holds clusters of three for review too)
LINKING_MIN_ACCOUNTS = 3
#: the features of the client's ``max_tokens`` (set to their benign median, with timing's, for the timing cap)
KNOB_FEATURES: tuple[str, ...] = ("log_demand", "long_demand_share", "demand_given_share")
#: the features of timing alone (set to their benign median to see a score without timing)
TIMING_FEATURES: tuple[str, ...] = ("gap_cv", "hour_entropy", "active_hours")


_CONTROLLER: Any = None


def _one_thread() -> Any:
    """A context that holds OpenMP to one thread: scikit-learn's tree predictors otherwise start a thread team
    for every small batch, which costs 10x the prediction itself on a busy machine (and the gateway calls the
    monitor from one worker thread anyway)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="openmp")


def isolation_scores(iso: Any, X: np.ndarray, flat: FlatForest | None = None) -> np.ndarray:
    """``-iso.score_samples(X)`` of a fitted ``IsolationForest``, without joblib or per-tree calls.

    Same arithmetic as scikit-learn's ``_compute_score_samples`` (Liu et al. 2008: ``2 ** (-E[h(x)] / c(psi))``),
    with all trees walked at once (:class:`FlatForest`; pass ``flat`` to reuse one); the tests check equality.
    Falls back to scikit-learn if its private per-tree tables are missing.
    """
    if flat is None:
        flat = FlatForest.of_isolation_forest(iso)
    if flat is None:  # pragma: no cover - other scikit-learn versions
        return -iso.score_samples(X)
    # scikit-learn's trees read float32 inputs (compared with float64 thresholds)
    X = np.ascontiguousarray(X, dtype=np.float32)
    depths = flat.total(X)
    denom = flat.norm
    return 2 ** (-np.divide(depths, denom, out=np.ones_like(depths), where=denom != 0))


class FlatForest:
    """Every tree of a fitted ensemble in one set of node arrays, walked for all (row, tree) pairs at once.

    scikit-learn predicts tree by tree, with input validation and a thread team per call: for the monitor's small
    batches (a few windows every ten minutes of traffic) that overhead is 10-50x the arithmetic. Here each step
    down the trees is a handful of numpy operations over an ``(rows, trees)`` array of node indices; leaves point
    to themselves, so walking ``depth`` steps lands every pair on its leaf. The per-tree values are then summed
    tree after tree (``np.cumsum`` is sequential), in the same order as scikit-learn, so results are bit-identical;
    the tests compare with scikit-learn.

    Args:
        feature, threshold, left, right: per node (all trees concatenated); a split sends a row left when
            ``x[feature] <= threshold``, leaves have ``left == right ==`` their own index.
        nan_left: per node, where a missing value goes (``None``: the inputs are never missing).
        value: per node, the leaf's contribution.
        roots: the root node of each tree.
        depth: the deepest leaf.
        start: the value the per-tree contributions are added to.
    """

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        nan_left: np.ndarray | None,
        value: np.ndarray,
        roots: np.ndarray,
        depth: int,
        start: float = 0.0,
    ) -> None:
        self.feature, self.threshold, self.left, self.right = feature, threshold, left, right
        self.nan_left, self.value, self.roots, self.depth, self.start = nan_left, value, roots, depth, start
        self.norm = 1.0  # what :func:`isolation_scores` divides the summed path lengths by

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree: ``(rows, trees)`` node indices."""
        n = X.shape[0]
        idx = np.repeat(self.roots[None, :], n, axis=0)
        rows = np.arange(n)[:, None]
        for _ in range(self.depth):
            v = X[rows, self.feature[idx]]
            go = v <= self.threshold[idx]
            if self.nan_left is not None:
                go |= np.isnan(v) & self.nan_left[idx]
            idx = np.where(go, self.left[idx], self.right[idx])
        return idx

    def total(self, X: np.ndarray) -> np.ndarray:
        """``start`` plus each tree's leaf value, added tree after tree."""
        vals = self.value[self.leaves(X)]
        acc = np.empty((vals.shape[0], vals.shape[1] + 1))
        acc[:, 0] = self.start
        acc[:, 1:] = vals
        return np.cumsum(acc, axis=1)[:, -1]

    @classmethod
    def of_hist_gradient_boosting(cls, hgb: Any) -> FlatForest | None:
        """A binary ``HistGradientBoostingClassifier`` with numerical features (``None``: anything else)."""
        try:
            if getattr(hgb, "_preprocessor", None) is not None or hgb.n_trees_per_iteration_ != 1:
                return None
            nodes = [p[0].nodes for p in hgb._predictors]
            baseline = float(np.asarray(hgb._baseline_prediction).reshape(-1)[0])
        except (AttributeError, IndexError, TypeError):
            return None
        if any(bool(nd["is_categorical"].any()) for nd in nodes):
            return None
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "t", "l", "r", "m", "v")}
        roots, off, depth = [], 0, 0
        for nd in nodes:
            k = len(nd)
            own = np.arange(off, off + k)
            leaf = nd["is_leaf"].astype(bool)
            parts["f"].append(np.where(leaf, 0, nd["feature_idx"]).astype(np.intp))
            parts["t"].append(nd["num_threshold"].astype(np.float64))
            parts["l"].append(np.where(leaf, own, nd["left"].astype(np.intp) + off))
            parts["r"].append(np.where(leaf, own, nd["right"].astype(np.intp) + off))
            parts["m"].append(nd["missing_go_to_left"].astype(bool))
            parts["v"].append(nd["value"].astype(np.float64))
            roots.append(off)
            depth = max(depth, int(nd["depth"].max()))
            off += k
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        return cls(
            cat["f"],
            cat["t"],
            cat["l"],
            cat["r"],
            cat["m"],
            cat["v"],
            np.asarray(roots, dtype=np.intp),
            depth,
            baseline,
        )

    @classmethod
    def of_isolation_forest(cls, iso: Any) -> FlatForest | None:
        """A fitted ``IsolationForest``: the value of a leaf is its depth plus the expected depth of the unbuilt
        subtree minus one, as scikit-learn's ``_compute_score_samples`` adds it (``None``: private tables
        missing)."""
        lengths = getattr(iso, "_decision_path_lengths", None)
        averages = getattr(iso, "_average_path_length_per_tree", None)
        if lengths is None or averages is None:
            return None
        n_features = getattr(iso, "n_features_in_", None)
        subsample = iso._max_features != n_features
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "t", "l", "r", "v")}
        roots, off, depth = [], 0, 0
        for tree, feats, dl, al in zip(iso.estimators_, iso.estimators_features_, lengths, averages, strict=True):
            t = tree.tree_
            k = t.node_count
            own = np.arange(off, off + k)
            leaf = t.children_left == -1
            f = np.where(leaf, 0, t.feature)
            if subsample:
                f = np.asarray(feats)[f]
            parts["f"].append(f.astype(np.intp))
            parts["t"].append(t.threshold.astype(np.float64))
            parts["l"].append(np.where(leaf, own, t.children_left + off))
            parts["r"].append(np.where(leaf, own, t.children_right + off))
            parts["v"].append(dl + al - 1.0)
            roots.append(off)
            depth = max(depth, int(t.max_depth))
            off += k
        from sklearn.ensemble._iforest import (
            _average_path_length,  # scikit-learn (~1 s to import): only a trained scorer needs it
        )

        cat = {k: np.concatenate(v) for k, v in parts.items()}
        flat = cls(cat["f"], cat["t"], cat["l"], cat["r"], None, cat["v"], np.asarray(roots, dtype=np.intp), depth)
        # c(psi) times the trees: the normaliser of the mean path length (computed once, not per batch)
        flat.norm = len(iso.estimators_) * _average_path_length([iso._max_samples])[0]
        return flat


def _ramp(v: float, lo: float, hi: float) -> float:
    if not math.isfinite(v):
        return 0.0
    return min(1.0, max(0.0, (v - lo) / (hi - lo)))


class Fired(NamedTuple):
    """One rule that fired on a window.

    Args:
        strength: in [0, 1].
        reason: the rule in words.
        kind: which rule (a key of :data:`KIND_FAMILY`).
    """

    strength: float
    reason: str
    kind: str

    @property
    def family(self) -> str | None:
        """The evidence family the rule belongs to (``None``: a knob the client sets, no family)."""
        return KIND_FAMILY[self.kind]


def rules(x: np.ndarray, cluster_size: int = 1) -> list[Fired]:
    """The rules that fire on one feature vector, strongest first.

    Args:
        x: a feature vector (:data:`FEATURES`).
        cluster_size: accounts the window belongs to (1: one account; more: a cluster's merged window).
    """
    f = {name: float(x[i]) for i, name in enumerate(FEATURES)}
    n = math.expm1(f["log_requests"])
    who = "the account" if cluster_size <= 1 else f"the {cluster_size} linked accounts"
    out: list[Fired] = []
    rate = math.expm1(f["log_rate_per_hour"])
    if n >= 30:
        s = 0.6 * _ramp(math.log(max(rate, 1.0)), math.log(150), math.log(1500))
        out.append(Fired(s, f"{who} sent {rate:,.0f} requests an hour", "rate"))
    if n >= 20:
        s = 0.45 * _ramp(f["template_top_share"], 0.5, 0.95)
        out.append(Fired(s, f"{f['template_top_share']:.0%} of requests use one prompt template", "template"))
        s = 0.6 * _ramp(f["cot_share"], 0.3, 0.85)
        out.append(
            Fired(
                s,
                f"{f['cot_share']:.0%} of requests demand step-by-step reasoning or the full chain of thought",
                "reasoning",
            )
        )
        s = 0.35 * _ramp(f["long_demand_share"], 0.3, 0.9)
        out.append(
            Fired(s, f"{f['long_demand_share']:.0%} of requests demand answers of {LONG_DEMAND}+ tokens", "demand")
        )
        s = (
            0.4
            * _ramp(f["template_top_share"], 0.3, 0.8)
            * _ramp(f["word_diversity"], 0.35, 0.7)
            * _ramp(f["single_turn_share"], 0.8, 1.0)
        )
        out.append(Fired(s, "one template swept across many distinct topics (systematic coverage)", "coverage"))
    if n >= 50:
        s = 0.35 * _ramp(0.6 - f["gap_cv"], 0.0, 0.45)
        out.append(Fired(s, f"requests arrive at machine-regular intervals (variation {f['gap_cv']:.2f})", "regular"))
        s = 0.25 * _ramp(f["hour_entropy"], 0.9, 0.99) * _ramp(f["active_hours"], 0.85, 1.0)
        out.append(Fired(s, "active around the clock with no daily rhythm", "clock"))
    if n >= 20 and f["log_switches"] > 0:
        s = 0.4 * _ramp(f["fresh_model_share"], 0.3, 0.8)
        out.append(
            Fired(
                s, f"moved {f['fresh_model_share']:.0%} of its traffic to a model within a day of its release", "pivot"
            )
        )
    return sorted((r for r in out if r.strength > 0.01), key=lambda r: -r.strength)


def families_of(fired: Sequence[Fired], at_least: float = FAMILY_MIN) -> tuple[str, ...]:
    """The evidence families (in :data:`FAMILIES` order) with a rule of at least ``at_least`` strength.

    >>> families_of([Fired(0.5, "", "rate"), Fired(0.3, "", "demand"), Fired(0.2, "", "template")])
    ('traffic', 'content')
    """
    seen = {r.family for r in fired if r.strength >= at_least and r.family is not None}
    return tuple(f for f in FAMILIES if f in seen)


def timing_only(fired: Sequence[Fired], at_least: float = FAMILY_MIN) -> bool:
    """Whether the only family evidence of a window is its timing (machine-regular intervals, activity around
    the clock): what a legitimate batch job shows too. No family at all is not "timing only".

    >>> timing_only([Fired(0.3, "", "regular"), Fired(0.3, "", "demand")]), timing_only([])
    (True, False)
    """
    kinds = {r.kind for r in fired if r.strength >= at_least and r.family is not None}
    return bool(kinds) and kinds <= TIMING_KINDS


def rules_score(fired: Sequence[Fired] | Sequence[tuple[float, str]]) -> float:
    """Noisy-OR of rule strengths: 1 - prod(1 - s)."""
    p = 1.0
    for r in fired:
        p *= 1.0 - r[0]
    return 1.0 - p


def level_of(risk: float, thresholds: Mapping[str, float]) -> str:
    """The highest level whose threshold ``risk`` reaches."""
    level = "none"
    for name in LEVELS[1:]:
        if risk >= thresholds[name]:
            level = name
    return level


def calibrate(
    benign_max_risk: Sequence[float],
    targets: Mapping[str, float] = TARGET_FPR,
    floor: float = 0.2,
    above_all: Sequence[str] = ("alert",),
    margin: float = 0.02,
    ceiling_risks: Sequence[float] | None = None,
) -> dict[str, float]:
    """Thresholds so that at most ``targets[level]`` of the benign accounts reach each level.

    Args:
        benign_max_risk: each benign calibration account's highest risk over its history.
        targets: per level, the allowed share of benign accounts (per-account false-positive rate).
        floor: no threshold below this (a tiny calibration set must not put a threshold at zero).
        above_all: levels also kept above *every* benign calibration account (plus ``margin``). The hard negatives
            (batch jobs, evaluation harnesses, research teams) are a few accounts among hundreds of casual users,
            so a quantile alone lets exactly them through; above them the target holds with room (0 of n).
        margin: added to the highest benign risk for the ``above_all`` levels.
        ceiling_risks: the benign risks the ``above_all`` levels must clear (default: all of
            ``benign_max_risk``). Training passes the accounts that were not linked into an attacker's cluster: a
            customer swept into a hydra's cluster is a linking error that no threshold can undo without letting
            the hydra through, so it counts against the quantile targets only.

    Returns:
        ``{level: threshold}``, non-decreasing from ``watch`` to ``severe``. With ``n`` benign accounts, at most
        ``floor(target * n)`` of them reach a level (ties broken upward); none reach an ``above_all`` level.
        ``severe`` is at least a quarter of the way from ``alert`` to 1.

    Example:
        >>> r = [i / 1000 for i in range(1000)]
        >>> t = calibrate(r, {"watch": 0.02, "alert": 0.005, "severe": 0.001}, above_all=())
        >>> sum(x >= t["alert"] for x in r), sum(x >= t["watch"] for x in r)
        (5, 20)
    """
    r = np.sort(np.asarray(benign_max_risk, dtype=float))[::-1]
    if r.size == 0:
        raise InputError("benign_max_risk must not be empty: calibration needs benign accounts")
    top = float(r[0]) if ceiling_risks is None or len(ceiling_risks) == 0 else float(np.max(ceiling_risks))
    out: dict[str, float] = {}
    prev = floor
    for level in LEVELS[1:]:
        target = float(targets[level])
        if not 0.0 <= target < 1.0:
            raise InputError(f"target false-positive rate for {level} must be in [0, 1), got {target}")
        k = math.floor(target * r.size)
        thr = float(np.nextafter(r[k], np.inf)) if k < r.size else float(r[-1])
        if level in above_all:
            thr = max(thr, top + margin)
        if level == "severe" and "alert" in out:
            thr = max(thr, out["alert"] + (1.0 - out["alert"]) / 4)
        thr = max(thr, prev)
        out[level] = min(thr, 1.0)
        prev = out[level]
    return out


@dataclass
class Score:
    """One scored window: combined risk, level, parts and reasons."""

    risk: float
    level: str
    parts: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    #: the evidence families (:data:`FAMILIES`) the window's rules support
    families: tuple[str, ...] = ()


class Scorer:
    """Rules, optionally with the trained anomaly and supervised models, and the level thresholds.

    Args:
        thresholds: ``{level: threshold}`` on the combined risk.
        supervised: a fitted classifier with ``predict_proba`` (``None``: rules only).
        anomaly: a fitted ``IsolationForest`` (``None``: no anomaly part).
        anomaly_cdf: sorted anomaly scores (``-score_samples``) of the benign training windows.
        benign_median, benign_scale: per feature, for the "far from benign" reasons.
        embeddings: whether the models were trained with the embedding features.
        manifest: how it was trained (seeds, parameters, sizes).
        guards: apply the rules' floor, the knob guard and the timing cap (:meth:`raw`); off only for the
            provisional scorer that calibration replays (its thresholds are not set yet, and calibration sets
            them on the natural combined risk).

    Example:
        >>> s = Scorer.rules_only()
        >>> x = np.zeros(len(FEATURES)); x[INDEX["log_requests"]] = math.log1p(500); x[INDEX["cot_share"]] = 1.0
        >>> r = s.score(x[None, :])[0]
        >>> r.parts["rules"] > 0.5, "chain of thought" in r.reasons[0]
        (True, True)
    """

    def __init__(
        self,
        thresholds: Mapping[str, float],
        supervised: Any = None,
        anomaly: Any = None,
        anomaly_cdf: np.ndarray | None = None,
        benign_median: np.ndarray | None = None,
        benign_scale: np.ndarray | None = None,
        embeddings: bool = False,
        manifest: dict[str, Any] | None = None,
        guards: bool = True,
    ) -> None:
        for level in LEVELS[1:]:
            if level not in thresholds:
                raise InputError(f"thresholds must give a value for {level!r}")
        self.thresholds = {k: float(v) for k, v in thresholds.items()}
        self.supervised = supervised
        self.anomaly = anomaly
        self.anomaly_cdf = anomaly_cdf
        self.benign_median = benign_median
        self.benign_scale = benign_scale
        self.embeddings = embeddings
        self.manifest = dict(manifest or {})
        self.guards = guards
        self._flat_cache: dict[str, tuple[Any, FlatForest | None]] = {}

    def _flat(self, which: str) -> FlatForest | None:
        # built on first use: the models may be swapped on a live scorer (tests, training), so keyed by identity
        model = self.supervised if which == "supervised" else self.anomaly
        cached = self._flat_cache.get(which)
        if cached is None or cached[0] is not model:
            flat = (
                FlatForest.of_hist_gradient_boosting(model)
                if which == "supervised"
                else FlatForest.of_isolation_forest(model)
            )
            cached = self._flat_cache[which] = (model, flat)
        return cached[1]

    def _supervised_proba(self, X: np.ndarray) -> np.ndarray:
        """``supervised.predict_proba(X)[:, 1]``, bit-identical, through :class:`FlatForest` when it applies."""
        flat = self._flat("supervised")
        if flat is None or X.shape[1] != getattr(self.supervised, "n_features_in_", -1):
            with _one_thread():
                return self.supervised.predict_proba(X)[:, 1]
        raw = flat.total(np.ascontiguousarray(X, dtype=np.float64))
        return self.supervised._loss.predict_proba(raw.reshape(-1, 1))[:, 1]

    @classmethod
    def rules_only(cls) -> Scorer:
        """The untrained fallback: the rules score is the risk, with :data:`RULES_ONLY_THRESHOLDS`."""
        return cls(dict(RULES_ONLY_THRESHOLDS), manifest={"trained": False})

    @property
    def trained(self) -> bool:
        return self.supervised is not None

    def _matrix(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if not self.embeddings:
            X = X.copy()
            X[:, INDEX["emb_spread"]] = 0.0  # constant: models trained without embeddings ignore them
            X[:, INDEX["emb_coverage"]] = 0.0
        return X

    def floor(self, decisive: np.ndarray) -> np.ndarray:
        """The rules' decisive evidence (their noisy-OR without the knob, shrunk for little evidence) mapped onto
        this scorer's levels: piecewise linear through the points (:data:`RULES_ONLY_THRESHOLDS` [level],
        ``thresholds[level]``), so a window reaches at least the level an untrained, rules-only monitor would give
        it (0.7 on the rules scale: at least ``alert``). The identity for the rules-only scorer.

        >>> s = Scorer({"watch": 0.25, "alert": 0.42, "severe": 0.56})
        >>> [round(float(v), 3) for v in s.floor(np.array([0.0, 0.6, 0.7, 0.86, 1.0]))]
        [0.0, 0.335, 0.42, 0.532, 1.0]
        """
        knots = [0.0, *(RULES_ONLY_THRESHOLDS[lv] for lv in LEVELS[1:]), 1.0]
        values = [0.0, *(min(1.0, self.thresholds[lv]) for lv in LEVELS[1:]), 1.0]
        return np.interp(np.clip(decisive, 0.0, 1.0), knots, values)

    def _combined(
        self, X: np.ndarray, r: np.ndarray, evidence: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The weighted mean of the parts (the rules score alone, untrained), shrunk for little evidence; and the
        supervised and anomaly parts (``None`` untrained)."""
        if not self.trained:
            return r * evidence, None, None
        sup = self._supervised_proba(X)
        if self.anomaly is not None and self.anomaly_cdf is not None and len(self.anomaly_cdf):
            a_raw = isolation_scores(self.anomaly, np.nan_to_num(X, nan=0.0), self._flat("anomaly"))
            anom = np.searchsorted(self.anomaly_cdf, a_raw, side="right") / len(self.anomaly_cdf)
        else:
            anom = np.zeros(len(X))
        risk = (WEIGHTS["supervised"] * sup + WEIGHTS["rules"] * r + WEIGHTS["anomaly"] * anom) * evidence
        return risk, sup, anom

    def _without(self, X: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """``X`` with the features ``names`` set to their benign median (a score without that evidence)."""
        X = X.copy()
        for name in names:
            i = INDEX[name]
            X[:, i] = self.benign_median[i] if self.benign_median is not None else 0.0
        return X

    @property
    def _rules_weight(self) -> float:
        """The weight of the rules score in the combined risk."""
        return WEIGHTS["rules"] if self.trained else 1.0

    def _below(self, level: str) -> float:
        """The highest risk that stays under ``level``."""
        return float(np.nextafter(self.thresholds[level], -np.inf))

    def _ceiling(self, risk: float) -> float:
        """The highest risk that stays within the level ``risk`` reaches."""
        rank = LEVELS.index(level_of(risk, self.thresholds))
        return self._below(LEVELS[rank + 1]) if rank + 1 < len(LEVELS) else math.inf

    def raw(
        self, X: np.ndarray, cluster_sizes: Sequence[int] | None = None
    ) -> tuple[np.ndarray, list[dict[str, float]], list[list[Fired]]]:
        """Risks, parts and fired rules of a batch of feature vectors (no reasons beyond the rules).

        The risk is the combined score, then (with ``guards``):

        1. **the rules' floor**: at least :meth:`floor` of the decisive evidence (the noisy-OR of the rules of
           :data:`FLOOR_FAMILIES`), so a trained model cannot unlearn what the rules call decisive (a templated
           exercise harvester demanding the reasoning at 70 a day reaches ``alert`` whatever the model thinks);
        2. **the knob guard**: the ``demand`` rule (``max_tokens``, which the client sets freely) adds its weight
           within a level but does not carry a window across one: the risk stays within the level it reaches
           without that rule. (The supervised model reads :data:`KNOB_FEATURES` too; what it learnt of them is a
           matter of its training traffic, not guarded here.)
        3. **the timing cap**: a window whose only family evidence is its timing (:func:`timing_only`) stays
           below ``watch``, unless the score without timing and the knob (:data:`TIMING_FEATURES` and
           :data:`KNOB_FEATURES` at their benign median, the timing and demand rules left out) reaches it on its
           own: regular, round-the-clock traffic is what legitimate batch jobs look like, so neither the rules nor
           the models' learnt taste for it raise an account on it.

        Calibration replays without guards (the thresholds are set on the natural combined risk); the guards only
        move a window's level by the evidence they name.
        """
        X = self._matrix(X)
        sizes = list(cluster_sizes) if cluster_sizes is not None else [1] * len(X)
        fired = [rules(x, s) for x, s in zip(X, sizes, strict=True)]
        r = np.array([rules_score(f) for f in fired])
        evidence = np.minimum(1.0, np.expm1(np.nan_to_num(X[:, INDEX["log_requests"]])) / MIN_EVIDENCE)
        risk, sup, anom = self._combined(X, r, evidence)
        parts: list[dict[str, float]] = [
            {"rules": float(v), "evidence": float(e)} for v, e in zip(r, evidence, strict=True)
        ]
        if sup is not None and anom is not None:
            for p, s, a in zip(parts, sup, anom, strict=True):
                p["supervised"], p["anomaly"] = float(s), float(a)
        if not self.guards:
            return risk, parts, fired
        decisive = np.array([rules_score([q for q in f if q.family in FLOOR_FAMILIES]) for f in fired])
        floor = self.floor(decisive * evidence)
        risk = np.maximum(risk, floor)
        for p, fl in zip(parts, floor, strict=True):
            p["floor"] = float(fl)
        # 2. the knob: the demand rule's weight may not carry a window across a level
        knob = np.array([rules_score([q for q in f if q.family is not None]) for f in fired])
        without = np.maximum(risk - self._rules_weight * (r - knob) * evidence, floor)
        for i in np.flatnonzero(r > knob):
            risk[i] = min(risk[i], self._ceiling(float(without[i])))
        # 3. timing alone
        idx = np.array([i for i in range(len(X)) if risk[i] >= self.thresholds["watch"] and timing_only(fired[i])])
        if len(idx):
            other = np.array(
                [rules_score([q for q in fired[i] if q.family is not None and q.kind not in TIMING_KINDS]) for i in idx]
            )
            c, _, _ = self._combined(self._without(X[idx], (*KNOB_FEATURES, *TIMING_FEATURES)), other, evidence[idx])
            without = np.maximum(c, self.floor(decisive[idx] * evidence[idx]))
            cap = self._below("watch")
            for j, i in enumerate(idx):
                risk[i] = min(risk[i], max(cap, float(without[j])))
                parts[i]["timing_capped"] = 1.0
        return risk, parts, fired

    def score(self, X: np.ndarray, cluster_sizes: Sequence[int] | None = None, n_reasons: int = 4) -> list[Score]:
        """Scores with levels, reasons and evidence families for a batch of feature vectors."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        if len(X) == 0:
            return []
        risk, parts, fired = self.raw(X, cluster_sizes)
        out = []
        for i, x in enumerate(X):
            reasons = [f.reason for f in fired[i] if f.strength >= 0.05][:n_reasons]
            if len(reasons) < n_reasons and parts[i].get("supervised", 0.0) >= 0.5:
                reasons += self.deviations(x, n_reasons - len(reasons))
            level = level_of(float(risk[i]), self.thresholds)
            out.append(Score(float(risk[i]), level, parts[i], reasons, families_of(fired[i])))
        return out

    def deviations(self, x: np.ndarray, k: int) -> list[str]:
        """The ``k`` features furthest from benign traffic (robust z), in words."""
        if self.benign_median is None or self.benign_scale is None or k <= 0:
            return []
        z = (x - self.benign_median) / self.benign_scale
        z = np.where(np.isfinite(z), z, 0.0)
        out = []
        for i in np.argsort(-np.abs(z))[:k]:
            if abs(z[i]) < 3:
                break
            word = "unusually high" if z[i] > 0 else "unusually low"
            out.append(f"{word} {DESCRIPTIONS[FEATURES[i]]} for benign traffic ({abs(z[i]):.0f} spreads from typical)")
        return out

    # ---- persistence -----------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "features": list(FEATURES),
            "thresholds": self.thresholds,
            "supervised": self.supervised,
            "anomaly": self.anomaly,
            "anomaly_cdf": self.anomaly_cdf,
            "benign_median": self.benign_median,
            "benign_scale": self.benign_scale,
            "embeddings": self.embeddings,
            "manifest": self.manifest,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Scorer:
        if state.get("format") != 1:
            raise InputError(f"unknown monitor model format {state.get('format')!r}")
        if list(state.get("features", [])) != list(FEATURES):
            raise InputError("the monitor model was trained on other features; run `antidistill monitor train`")
        return cls(
            state["thresholds"],
            state.get("supervised"),
            state.get("anomaly"),
            state.get("anomaly_cdf"),
            state.get("benign_median"),
            state.get("benign_scale"),
            bool(state.get("embeddings")),
            state.get("manifest"),
        )
