"""Shared scenarios of the simulator's tests: small enough to run in seconds, with every persona present."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from antidistill.simulate.scenario import SCALES, Scenario
from antidistill.simulate.world import VirtualLimits
from antidistill.store.api import is_pending_record

#: the kinds added after the small scale was fixed (the small scale keeps its twelve, so that the figures measured
#: on it stay comparable; the default and large scales hold these too)
NEWER = ("lab_cot_eval", "nightly_summariser", "reasoning_harvester", "agent_loop", "conversation_farm", "described")
NEWER_VOLUME = {"lab_cot_eval": 0.1, "nightly_summariser": 0.2, "reasoning_harvester": 0.3, "agent_loop": 0.5}


def tiny(seed: int = 7, split: str = "train", **kw) -> Scenario:
    """Half a virtual day, every persona once, ten casual users, the smallest hydra (seed 7: all send)."""
    small = SCALES["small"]
    values = {
        "seed": seed,
        "days": 0.5,
        "counts": {**small.counts, "casual": 10, **dict.fromkeys(NEWER, 1)},
        "split": split,
        "hydra_members": (20, 20),
        "hydra_daily_budget": 80.0,
        "persona_volume": {**small.persona_volume, **NEWER_VOLUME},
    }
    values.update(kw)
    return Scenario(**values)


def limit_violations(times: list[float], costs: list[int], limits: VirtualLimits) -> list[str]:
    """Every way a request sequence breaks the limits, checked independently of the simulator's own code
    (any 60 s window, tokens per UTC day)."""
    problems = []
    window: deque[tuple[float, int]] = deque()
    tokens = 0
    per_day: dict[int, int] = {}
    for t, c in sorted(zip(times, costs, strict=True)):
        window.append((t, c))
        tokens += c
        while window[0][0] <= t - 60:
            tokens -= window.popleft()[1]
        if limits.rpm is not None and len(window) > limits.rpm:
            problems.append(f"rpm {len(window)} > {limits.rpm} at {t}")
        if limits.tpm is not None and tokens > limits.tpm:
            problems.append(f"tpm {tokens} > {limits.tpm} at {t}")
        day = math.floor(t / 86400)
        per_day[day] = per_day.get(day, 0) + c
        if limits.tokens_per_day is not None and per_day[day] > limits.tokens_per_day:
            problems.append(f"tokens/day {per_day[day]} > {limits.tokens_per_day} on day {day}")
    return problems


# ---- a running gateway ---------------------------------------------------------------------------------------
ADMIN_TOKEN = "sim-admin-" + "4b9e2f7a1c3d5e8f0a2b4c6d8e0f1a3b"
MASTER_KEY = "9c2e4f6a8b0d1e3f5a7c9e1b3d5f7a9c2e4f6a8b0d1e3f5a7c9e1b3d5f7a9c2e"


@dataclass
class RunningGateway:
    url: str
    store: Any
    settings: Any

    def audit(self) -> list[dict[str, Any]]:
        """The exchanges' final records (a stream's opening record is left out)."""
        return [r for r in self.store.iter_audit() if not is_pending_record(r)]


@contextmanager
def running_gateway(data_dir: Path, **overrides: Any) -> Iterator[RunningGateway]:
    """A real gateway (fake backend, SQLite store in ``data_dir``) under uvicorn on a free port."""
    from antidistill.gateway.app import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.models.fake import FakeBackend
    from antidistill.settings import Settings
    from antidistill.store.sql import Store

    values: dict[str, Any] = {
        "env": "test",
        "data_dir": data_dir,
        "cache_dir": data_dir / "cache",
        "backend": "fake",
        "admin_token": ADMIN_TOKEN,
        "master_key": MASTER_KEY,
    }
    values.update(overrides)
    settings = Settings(**values)
    store = Store.open(f"sqlite:///{data_dir / 'gateway.db'}", settings=settings)
    try:
        with BackgroundServer(create_app(settings, backend=FakeBackend(), store=store)) as srv:
            yield RunningGateway(srv.url, store, settings)
    finally:
        store.close()


@pytest.fixture(scope="module")
def clock_gateway(tmp_path_factory) -> Iterator[RunningGateway]:
    """A gateway that takes the client's clock and X-Forwarded-For, as simulations need."""
    with running_gateway(tmp_path_factory.mktemp("clock-gw"), accept_client_clock=True, trust_forwarded_for=True) as gw:
        yield gw
