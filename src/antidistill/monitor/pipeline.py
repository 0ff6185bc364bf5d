"""The monitor as the gateway and the batch scan use it: exchanges in, level changes out.

:class:`Monitor` keeps the features of every account up to date one exchange at a time
(:mod:`~antidistill.monitor.features`), links accounts into clusters as their attributes settle
(:mod:`~antidistill.monitor.cluster`) and scores accounts and clusters with the trained
:class:`~antidistill.monitor.score.Scorer`.

Scoring is batched; judgements are not. An account (or cluster) is due for a score at checkpoints of its request
count (every 5 requests up to 50, every 10 up to 200, then less often). At a checkpoint its window is linked and
turned into features at once. The model scores the windows due so far together, once :attr:`Monitor.batch_size`
are pending or ten minutes of event time have passed (the gateway also flushes whenever its monitoring worker is
idle), and the judgements are then formed in the order the checkpoints came, each from what was known at its
checkpoint. So what the monitor decides about an account does not depend on how busy it was: a campaign scored late
goes through the levels it would have gone through live (``watch``, ``alert``, ``severe``), and the policy's
graduated actions with them. The per-exchange cost stays a few microseconds plus the models' per-batch cost.

An account's level is the highest of its own and its cluster's; :meth:`Monitor.observe` reports every rise, and
every new evidence family (:data:`FAMILIES`) of an account already at ``watch`` or above (a policy blocks only on
two families, so a second one must reach it); a report names every family the account's reports have shown so far.

:func:`scan_records` replays audit records (``Store.iter_records``) through a monitor, with the same code path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from antidistill.errors import ConfigError
from antidistill.monitor.api import FAMILIES, LEVELS, Assessment, ExchangeEvent, level_rank
from antidistill.monitor.cluster import (
    TEMPLATE_LEAST,
    Cluster,
    Linker,
    attributes,
    cluster_attributes,
    group_probe_attributes,
)
from antidistill.monitor.features import AT_T, AT_TEMPLATE, EMBED_EVERY, AccountState, FeatureTracker, window_features
from antidistill.monitor.score import LINKING_MIN_ACCOUNTS, Score, Scorer
from antidistill.settings import Settings
from antidistill.store.api import AuditRecord, is_pending_record

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
#: audit records a batch scan hands to :meth:`Monitor.observe_many` at once
SCAN_BATCH = 512
MANIFEST_FILE = "manifest.json"


def monitor_dir(settings: Settings) -> Path:
    """Where the trained artefacts live: ``settings.data_dir / "monitor"``."""
    return Path(settings.data_dir) / "monitor"


@dataclass(frozen=True)
class _Checkpoint:
    """What was due at one exchange, featurised then and scored at the next flush.

    Args:
        accounts: ``(account id, its requests, its last event time)`` of each account window due.
        clusters: ``(cluster id, its members, the attributes that linked them in words)`` of each cluster due.
        context: every account the scores touch, with what its judgement reads: its cluster's id and size, its
            requests and its last event time (all as they were at the checkpoint).
        event: the monitor's count of exchanges observed at the checkpoint (:attr:`Assessment.event`).
    """

    accounts: tuple[tuple[str, int, float], ...]
    clusters: tuple[tuple[str, tuple[str, ...], str], ...]
    context: dict[str, tuple[str | None, int, int, float]]
    event: int


def is_checkpoint(n: int) -> bool:
    """Whether an account (or cluster) with ``n`` requests is due for a score."""
    if n < 5:
        return False
    if n <= 50:
        return n % 5 == 0
    if n <= 200:
        return n % 10 == 0
    if n <= 1000:
        return n % 50 == 0
    return n % 250 == 0


class Monitor:
    """Incremental distillation monitor.

    Args:
        scorer: the scorer (trained, or :meth:`Scorer.rules_only`).
        embedder: an :class:`~antidistill.monitor.embed.Embedder` for the topic features (``None``: off).
        releases: known model release times (model → datetime or unix seconds).
        batch_size: due scores computed together.
        flush_s: compute due scores at least this often (event time).
        recorder: called with ``(kind, key, members, features)`` for every window scored (``kind`` is
            ``account`` or ``cluster``); training uses it to collect rows.

    Example:
        >>> from datetime import UTC, datetime, timedelta
        >>> m = Monitor(Scorer.rules_only())
        >>> t0 = datetime(2026, 2, 1, tzinfo=UTC)
        >>> out = [a for i in range(300) for a in m.observe(ExchangeEvent("acct_x", t0 + timedelta(seconds=i),
        ...        prompt=f"Solve problem {i}. Show all your reasoning step by step.", max_tokens=4096))]
        >>> out += m.flush()
        >>> out[-1].level in ("alert", "severe"), m.assess("acct_x").level != "none"
        (True, True)
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        embedder: Any = None,
        releases: Mapping[str, Any] | None = None,
        batch_size: int = 256,
        flush_s: float = 600.0,
        recorder: Any = None,
    ) -> None:
        rel = {m: (t.timestamp() if isinstance(t, datetime) else float(t)) for m, t in (releases or {}).items()}
        self.scorer = scorer
        self.embedder = embedder
        self.tracker = FeatureTracker(rel)
        self.linker = Linker()
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.levels: dict[str, str] = {}  # highest level each account has reached
        self.families: dict[str, frozenset[str]] = {}  # evidence families reported for each account so far
        self.own: dict[str, tuple[Score, int, float]] = {}  # account -> last own score, its request count, time
        self.cluster_scores: dict[str, tuple[Score, int]] = {}  # cluster id -> last score, cluster size
        self._due_accounts: dict[str, None] = {}
        self._due_clusters: dict[str, None] = {}  # roots
        self._texts: list[tuple[AccountState, str]] = []
        self._texts_of: set[str] = set()  # accounts with a prompt waiting to be embedded
        self._pending: list[_Checkpoint] = []  # featurised, not yet scored, in the order they came
        self._rows: list[np.ndarray] = []
        self._sizes: list[int] = []
        self._last_flush: float | None = None
        self._now = float("-inf")
        self.events = 0
        self.recorder = recorder
        #: each account's highest effective risk so far (calibration reads it)
        self.max_risk: dict[str, float] = {}

    # ---- construction -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings, *, embeddings: bool | None = None, **kwargs: Any) -> Monitor:
        """The monitor trained by ``antidistill monitor train`` (artefacts in ``data_dir/monitor``).

        Without trained artefacts the monitor runs on its rules alone (:meth:`Scorer.rules_only`, fixed
        thresholds) and logs a warning. ``embeddings``: ``None`` uses what the model was trained with; ``True``
        for a model trained without them is an error.
        """

        path = monitor_dir(settings) / MODEL_FILE
        if not path.is_file():
            log.warning("no trained monitor model at %s; running on rules only (run `antidistill monitor train`)", path)
            if embeddings:
                raise ConfigError(
                    "embeddings need a trained monitor model; run `antidistill monitor train --embeddings`"
                )
            return cls(Scorer.rules_only(), **kwargs)

        try:
            scorer = Scorer.from_state(joblib.load(path))
        except Exception as exc:
            raise ConfigError(f"cannot read the monitor model {path}: {exc}") from None
        if embeddings and not scorer.embeddings:
            raise ConfigError("this monitor model was trained without embeddings; retrain with --embeddings")
        use = scorer.embeddings if embeddings is None else embeddings
        if not use and scorer.embeddings:
            log.warning("monitor model trained with embeddings runs without them: the topic features are missing")
        embedder = None
        if use:
            from antidistill.monitor.embed import Embedder  # sentence-transformers and torch: only with embeddings on

            embedder = Embedder()
        return cls(scorer, embedder=embedder, **kwargs)

    # ---- incremental path ---------------------------------------------------------------------------------
    def prepare(self, events: Iterable[ExchangeEvent]) -> None:
        """Hash a batch of events' prompts ahead of :meth:`observe` (vectorised): what a worker that drains a
        queue does before observing what it took. Results are the same without it."""
        self.tracker.encoder.prepare(e.prompt for e in events)

    def observe_many(self, events: Iterable[ExchangeEvent]) -> list[Assessment]:
        """:meth:`observe` each event, after :meth:`prepare` on them all."""
        events = list(events)
        self.prepare(events)
        out: list[Assessment] = []
        for ev in events:
            out.extend(self.observe(ev))
        return out

    def observe(self, event: ExchangeEvent) -> list[Assessment]:
        """Take one exchange; returns assessments of accounts whose level rose (possibly from earlier events,
        since scores are computed in batches)."""
        acct = self.tracker.add(event)
        self.events += 1
        aid = acct.account_id
        self.linker.add_account(aid)
        atom = acct.window[-1]
        t = atom[AT_T]
        if t > self._now:
            self._now = t
        if self._last_flush is None:
            self._last_flush = t
        if self.embedder is not None and not acct.n % EMBED_EVERY:  # a systematic sample (see EMBED_EVERY)
            self._texts.append((acct, event.prompt if isinstance(event.prompt, str) else ""))
            self._texts_of.add(aid)
        cluster = self.linker.cluster_of(aid)
        if cluster is not None:
            cluster.window.append(atom)
            cluster.n += 1
            if is_checkpoint(cluster.n):
                self._due_clusters[self.linker.find(aid)] = None
        if is_checkpoint(acct.n):
            self._due_accounts[aid] = None
        elif acct.n <= 3 or ((tid := atom[AT_TEMPLATE]) and acct.templates[tid] == TEMPLATE_LEAST):
            # link a new account early (its own score waits for its first checkpoint), and an account as soon as a
            # template becomes a habit of it (a hydra member may never reach its next checkpoint)
            self._link(acct)
        if self._due_accounts or self._due_clusters:
            self._checkpoint()
        if len(self._rows) >= self.batch_size or self._now - self._last_flush >= self.flush_s:
            return self.flush()
        return []

    def _checkpoint(self) -> None:
        """Link what is due and turn its windows into features now; the model scores them at the next flush."""
        accounts = self.tracker.accounts
        for aid in self._due_accounts:
            self._link(accounts[aid])
        for root in list(self._due_clusters):  # groups link to groups on what they share as a whole
            if self.linker.find(root) == root and (c := self.linker.clusters.get(root)) is not None:
                for changed in self.linker.register(root, cluster_attributes(c, accounts), accounts):
                    self._due_clusters[changed] = None
        due_a = list(self._due_accounts)
        self._due_accounts.clear()
        roots = [r for r in self._due_clusters if self.linker.find(r) == r and r in self.linker.clusters]
        self._due_clusters.clear()
        clusters = [self.linker.clusters[r] for r in roots]
        touched = dict.fromkeys(due_a)
        for c in clusters:
            touched.update(dict.fromkeys(c.members))
        if self._texts_of and not self._texts_of.isdisjoint(touched):
            self._embed_pending()  # the windows' topic features read every prompt sampled so far
        rows = [self._features(accounts[a].window, accounts[a].n, accounts[a]) for a in due_a]
        rows += [self._features(c.window, c.n, None, c) for c in clusters]
        if not rows:
            return
        if self.recorder is not None:
            for a, x in zip(due_a, rows, strict=False):
                self.recorder("account", a, (a,), x)
            for c, x in zip(clusters, rows[len(due_a) :], strict=True):
                self.recorder("cluster", c.id, tuple(c.members), x)
        self._rows += rows
        self._sizes += [1] * len(due_a) + [len(c.members) for c in clusters]
        context = {aid: self._context(aid) for aid in touched}
        self._pending.append(
            _Checkpoint(
                tuple((a, accounts[a].n, accounts[a].last_t) for a in due_a),
                tuple(
                    (c.id, tuple(c.members), ", ".join(self.linker.linked_by(c)) or "shared attributes")
                    for c in clusters
                ),
                context,
                self.events,
            )
        )

    def flush(self) -> list[Assessment]:
        """Score every window due so far; returns the level rises, checkpoint by checkpoint."""
        self._last_flush = self._now if math.isfinite(self._now) else None
        if not self._rows:
            self._embed_pending()
            return []
        scores = iter(self.scorer.score(np.vstack(self._rows), self._sizes))
        pending = self._pending
        self._pending, self._rows, self._sizes = [], [], []
        out = []
        for cp in pending:
            for aid, n, t in cp.accounts:
                self.own[aid] = (next(scores), n, t)
            for cid, members, linked in cp.clusters:
                s = next(scores)
                s.reasons = [f"linked with {len(members) - 1} other accounts by shared {linked}", *s.reasons]
                self.cluster_scores[cid] = (s, len(members))
            for aid, ctx in cp.context.items():
                a = self._effective(aid, ctx)
                if a is None:
                    continue
                if a.risk > self.max_risk.get(aid, -1.0):
                    self.max_risk[aid] = a.risk
                rank, top = level_rank(a.level), level_rank(self.levels.get(aid, "none"))
                seen = self.families.get(aid, frozenset())
                new_family = rank >= 1 and rank == top and not set(a.families) <= seen
                if rank > top or new_family:
                    self.levels[aid] = LEVELS[max(rank, top)]
                    fams = seen | set(a.families)
                    self.families[aid] = frozenset(fams)
                    # the families seen over the account's reports: traffic shape last week and content today are
                    # both evidence about it, though its latest window may show only one
                    out.append(replace(a, families=tuple(f for f in FAMILIES if f in fams), event=cp.event))
        self._embed_pending()
        return out

    def _link(self, acct: AccountState) -> None:
        if self.linker.clusters:
            # an account (alone, or in a small group of its own, one card's accounts say) joins a group whose
            # templates, signup burst or prefixes it shares
            for root in self.linker.probe(acct.account_id, group_probe_attributes(acct), self.tracker.accounts):
                self._due_clusters[root] = None
        # the linker registers nothing new unless the attributes or their rarity weights changed
        for root in self.linker.register(acct.account_id, attributes(acct), self.tracker.accounts):
            self._due_clusters[root] = None

    def _features(self, window: Any, n: int, acct: AccountState | None, cluster: Cluster | None = None) -> np.ndarray:
        embs = None
        if self.embedder is not None:
            if acct is not None:
                embs = acct.embeddings
            elif cluster is not None:
                accts = self.tracker.accounts
                embs = [e for m in cluster.members[-50:] for e in list(accts[m].embeddings)[-20:]]
        return window_features(window, n, embs)

    def _embed_pending(self) -> None:
        if not self._texts:
            return
        texts = self._texts
        self._texts = []
        self._texts_of.clear()
        vecs = self.embedder.embed([t for _, t in texts])
        for (acct, _), v in zip(texts, vecs, strict=True):
            acct.embeddings.append(v)

    def _context(self, aid: str) -> tuple[str | None, int, int, float]:
        """What an account's judgement reads besides the scores, now: its cluster's id and size, its requests, its
        last event time."""
        cluster = self.linker.cluster_of(aid)
        acct = self.tracker.accounts[aid]
        if cluster is None:
            return None, 1, acct.n, acct.last_t
        return cluster.id, len(cluster.members), acct.n, acct.last_t

    def _effective(self, aid: str, context: tuple[str | None, int, int, float] | None = None) -> Assessment | None:
        """The account's judgement from its latest own and cluster scores; ``context`` (:meth:`_context`) as of a
        checkpoint, or now."""
        cid, size, n, last_t = context if context is not None else self._context(aid)
        own = self.own.get(aid)
        cs = self.cluster_scores.get(cid) if cid is not None else None
        if own is None and cs is None:
            return None
        at = datetime.fromtimestamp(last_t, UTC) if math.isfinite(last_t) else datetime.now(UTC)
        best = own[0] if own else None
        scores: dict[str, float] = {}
        if own is not None:
            scores.update({f"own_{k}": v for k, v in own[0].parts.items()})
            scores["own_risk"] = own[0].risk
        if cs is not None:
            scores["cluster_risk"] = cs[0].risk
            if best is None or cs[0].risk > best.risk:
                best = cs[0]
        assert best is not None
        reasons = list(best.reasons)
        if best is not (own[0] if own else None) and own is not None:
            reasons += [r for r in own[0].reasons if r not in reasons]
        # the evidence about this account: its own window's, its cluster's, and being linked with others
        fams = set(own[0].families) if own is not None else set()
        if cs is not None:
            fams.update(cs[0].families)
        if size >= LINKING_MIN_ACCOUNTS:
            fams.add("linking")
        return Assessment(
            account_id=aid,
            cluster_id=cid,
            risk=best.risk,
            level=best.level,
            reasons=tuple(reasons[:5]),
            at=at,
            scores=scores,
            cluster_size=size,
            requests=n,
            families=tuple(f for f in FAMILIES if f in fams),
            event=self.events,
            calibrated=self.scorer.trained,
        )

    # ---- current judgements ---------------------------------------------------------------------------------
    def assess(self, account_id: str) -> Assessment:
        """The account's judgement now (scored afresh, with its cluster's latest score)."""
        acct = self.tracker.accounts.get(account_id)
        if acct is None:
            return Assessment(account_id, None, 0.0, "none", (), datetime.now(UTC), requests=0)
        self._embed_pending()
        s = self.scorer.score(self._features(acct.window, acct.n, acct)[None, :])[0]
        self.own[account_id] = (s, acct.n, acct.last_t)
        a = self._effective(account_id)
        assert a is not None
        return a

    def assessments(self) -> list[Assessment]:
        """Every account's judgement now, riskiest first."""
        self._embed_pending()
        accts = list(self.tracker.accounts.values())
        if not accts:
            return []
        scores = self.scorer.score(np.vstack([self._features(a.window, a.n, a) for a in accts]))
        for a, s in zip(accts, scores, strict=True):
            self.own[a.account_id] = (s, a.n, a.last_t)
        out = [x for a in accts if (x := self._effective(a.account_id)) is not None]
        return sorted(out, key=lambda x: -x.risk)

    def level(self, account_id: str) -> str:
        """The highest level the account has reached so far."""
        return self.levels.get(account_id, LEVELS[0])


def _fallback_event(
    record: AuditRecord | Mapping[str, Any], meta: Mapping[str, Any] | None, last_ts: datetime | None
) -> ExchangeEvent:
    """An event for a record :meth:`ExchangeEvent.from_record` cannot read (kept, not dropped)."""
    rec = record if isinstance(record, dict) else {}
    return ExchangeEvent(
        account_id=str(rec.get("account_id", "")),
        ts=last_ts or datetime.now(UTC),
        status=int(rec.get("status") or 0) if str(rec.get("status") or "0").isdigit() else 0,
        account_metadata=dict(meta or {}),
    )


def scan_records(
    records: Iterable[AuditRecord | Mapping[str, Any]], accounts: Mapping[str, Mapping[str, Any]], monitor: Monitor
) -> list[Assessment]:
    """Replay audit records through ``monitor``; every level change, in event-time order.

    Args:
        records: audit records as :meth:`Store.iter_records` yields them (or dicts, as :meth:`Store.iter_audit`
            does or an export holds).
        accounts: account id → metadata (``Account.metadata``).
        monitor: a fresh (or running) monitor.
    """
    out: list[Assessment] = []
    last_ts: datetime | None = None
    batch: list[ExchangeEvent] = []
    for rec in records:
        if isinstance(rec, AuditRecord):  # typed: it reads (only its request is the client's)
            if rec.is_pending:  # a stream's opening record: its final record is the exchange
                continue
            ev = ExchangeEvent.from_record(rec, accounts.get(rec.account_id))
        else:
            if is_pending_record(rec):
                continue
            meta = accounts.get(str(rec.get("account_id", ""))) if isinstance(rec, dict) else None
            try:
                ev = ExchangeEvent.from_record(rec, meta)
            except (TypeError, ValueError, AttributeError, OverflowError):
                ev = _fallback_event(rec, meta, last_ts)
        last_ts = ev.ts
        batch.append(ev)
        if len(batch) >= SCAN_BATCH:
            out.extend(monitor.observe_many(batch))
            batch = []
    out.extend(monitor.observe_many(batch))
    out.extend(monitor.flush())
    out.sort(key=lambda a: a.at)
    return out
