"""Deterministic monitors for the enforcement tests (test doubles of ``antidistill.monitor.pipeline.Monitor``).

:class:`CountingMonitor` raises an account's level with the number of exchanges it has seen (thresholds given by
the test), so a test knows exactly which request crosses which level. Its assessments name the evidence
``families`` given (default: traffic and content, two independent families, on which the policy blocks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from antidistill.monitor.api import LEVELS, Assessment, ExchangeEvent, level_rank


class CountingMonitor:
    """Level by exchange count: ``thresholds={"watch": 2, "alert": 3, "severe": 6}`` means the 2nd exchange of an
    account makes it ``watch``, the 3rd ``alert``, the 6th ``severe``. Only accounts in ``watched`` (all if
    ``None``) rise. ``cluster`` puts the watched accounts into one cluster; ``families`` are the evidence families
    every assessment names."""

    def __init__(
        self,
        thresholds: Mapping[str, int],
        watched: Iterable[str] | None = None,
        cluster: str | None = None,
        families: tuple[str, ...] = ("traffic", "content"),
    ) -> None:
        self.thresholds = dict(thresholds)
        self.families = families
        self.watched = set(watched) if watched is not None else None
        self.cluster = cluster
        self.counts: dict[str, int] = {}
        self.levels: dict[str, str] = {}
        self.events: list[ExchangeEvent] = []

    def _level(self, account_id: str) -> str:
        if self.watched is not None and account_id not in self.watched:
            return "none"
        n = self.counts.get(account_id, 0)
        level = "none"
        for name in LEVELS[1:]:
            if name in self.thresholds and n >= self.thresholds[name]:
                level = name
        return level

    def _assessment(self, account_id: str) -> Assessment:
        level = self.levels.get(account_id, "none")
        in_cluster = self.cluster is not None and self.watched is not None and account_id in self.watched
        return Assessment(
            account_id,
            self.cluster if in_cluster else None,
            level_rank(level) / 3,
            level,
            (f"{self.counts.get(account_id, 0)} exchanges",),
            self.events[-1].ts,
            scores={"rules": level_rank(level) / 3},
            cluster_size=len(self.watched) if in_cluster else 1,
            families=self.families if level != "none" else (),
        )

    def observe(self, event: ExchangeEvent) -> list[Assessment]:
        self.events.append(event)
        a = event.account_id
        self.counts[a] = self.counts.get(a, 0) + 1
        level = self._level(a)
        if level_rank(level) <= level_rank(self.levels.get(a, "none")):
            return []
        self.levels[a] = level
        return [self._assessment(a)]

    def assess(self, account_id: str) -> Assessment:
        return self._assessment(account_id)

    def assessments(self) -> list[Assessment]:
        return [self._assessment(a) for a in self.counts]


class RaisingMonitor(CountingMonitor):
    """A monitor with a bug: every observe raises."""

    def observe(self, event: ExchangeEvent) -> list[Assessment]:
        self.events.append(event)
        raise RuntimeError("monitor bug")


class BlockingMonitor(CountingMonitor):
    """A monitor that hangs in observe until ``release`` is set (a slow scorer: the queue fills up)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.entered = threading.Event()

    def observe(self, event: ExchangeEvent) -> list[Assessment]:
        self.entered.set()
        self.release.wait(30)
        return super().observe(event)


def scan_with(monitor: CountingMonitor):
    """A ``scan_records`` for the double: observe every record, then every account's assessment."""

    def scan_records(records, accounts, mon) -> list[Assessment]:
        for r in records:
            mon.observe(ExchangeEvent.from_record(r, accounts.get(r.get("account_id"))))
        return mon.assessments()

    return scan_records


class BatchingMonitor(CountingMonitor):
    """Like ``pipeline.Monitor``: rises are held back by ``observe`` and reported by ``flush``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: list[Assessment] = []
        self.flushes = 0

    def observe(self, event: ExchangeEvent) -> list[Assessment]:
        self.pending.extend(super().observe(event))
        return []

    def flush(self) -> list[Assessment]:
        self.flushes += 1
        out, self.pending = self.pending, []
        return out
