"""Whole simulations against a running gateway, and what every simulation leaves behind.

:func:`run_against_gateway` drives a gateway that is already running (it must have
``ANTIDISTILL_ACCEPT_CLIENT_CLOCK`` and ``ANTIDISTILL_TRUST_FORWARDED_FOR`` on, and the admin API enabled).
:func:`antidistill.workflows.simulation.run_simulation` stands the gateway up in this process first (a workflow:
the simulator sits beside the gateway, not above it).

The output directory then holds ``antidistill.db`` and ``gateway/`` (in process only: the audit log and the
master key its checkpoints are signed with; ``ANTIDISTILL_DATA_DIR=<out>/gateway antidistill audit verify
--database-url sqlite:///<out>/antidistill.db`` verifies it), ``labels.jsonl`` (one line per account),
``requests.jsonl`` (one line per planned request, with the response id it got) and ``scenario.json``.

Example:
    >>> from antidistill.simulate import Scenario, load_labels
    >>> from antidistill.workflows.simulation import run_simulation
    >>> result = run_simulation(Scenario.from_scale("small", seed=1), "/tmp/sim")  # doctest: +SKIP
    >>> from antidistill.store.sql import Store
    >>> with Store.open(result.store_url) as store:  # doctest: +SKIP
    ...     records = list(store.iter_audit())
    >>> truth = {row["account_id"]: row["role"] for row in load_labels("/tmp/sim")}  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.simulate.driver import (
    SimulationError,
    create_accounts_via_admin,
    drive,
    labels,
    write_outputs,
)
from antidistill.simulate.scenario import Plan, Scenario

log = logging.getLogger(__name__)

DB_FILE = "antidistill.db"
#: plans shorter than this are sent from threads of this process
AUTO_PROCESSES_FROM = 3000
OUTPUT_FILES = ("labels.jsonl", "requests.jsonl", "scenario.json")


@dataclass(frozen=True)
class SimulationResult:
    """What a simulation left behind.

    Args:
        out_dir: where the files are.
        store_url: the audit log's database (``None`` when an external gateway was driven).
        labels: one dict per account, as in ``labels.jsonl``.
        scenario: as in ``scenario.json``.
        planned: requests in the plan; ``status_counts``: how the gateway answered them.
        wall_s: seconds the whole run took; ``drive_s`` of them sending; ``requests_per_s`` = planned / drive_s.
    """

    out_dir: Path
    store_url: str | None
    labels: list[dict[str, Any]]
    scenario: dict[str, Any]
    planned: int
    status_counts: dict[int, int]
    wall_s: float
    drive_s: float
    requests_per_s: float

    @property
    def ok(self) -> int:
        return self.status_counts.get(200, 0)


def prepare_out(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a directory")
    taken = [name for name in (DB_FILE, *OUTPUT_FILES) if (out / name).exists()]
    if taken:
        raise InputError(f"{out} already holds a simulation ({taken[0]}); choose a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror}") from None
    return out


def finish_run(
    out: Path,
    plan: Plan,
    ids: dict[str, tuple[str, str]],
    result: Any,
    t0: float,
    store_url: str | None,
    gateway: str,
    data_dir: Path | None = None,
) -> SimulationResult:
    rows = labels(plan, ids, result)
    wall = time.perf_counter() - t0
    extra = {
        "gateway": gateway,
        "store_url": store_url,
        "gateway_data_dir": str(data_dir) if data_dir else None,
        "wall_s": round(wall, 3),
        "drive_s": round(result.wall_s, 3),
        "requests_per_s": round(result.requests_per_s, 1),
        "status_counts": {str(k): v for k, v in sorted(result.status_counts.items())},
    }
    scenario = write_outputs(out, plan, rows, result, extra)
    log.info(
        "simulation done: %d requests in %.1f s (%.0f/s), statuses %s",
        len(plan.requests),
        result.wall_s,
        result.requests_per_s,
        result.status_counts,
    )
    return SimulationResult(
        out,
        store_url,
        rows,
        scenario,
        len(plan.requests),
        dict(result.status_counts),
        wall,
        result.wall_s,
        result.requests_per_s,
    )


def auto_processes(n_requests: int) -> int:
    """Driver processes worth starting for a plan this long: none for short runs (starting one costs about a
    second), else one per spare core (at most 4), so the clients do not compete with the gateway for one
    interpreter."""
    if n_requests < AUTO_PROCESSES_FROM:
        return 0
    return min(4, max(1, (os.cpu_count() or 1) - 1))


def run_against_gateway(
    scenario: Scenario,
    out_dir: str | Path,
    base_url: str,
    admin_token: str,
    *,
    concurrency: int = 12,
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    plan: Plan | None = None,
) -> SimulationResult:
    """Run ``scenario`` against a running gateway: accounts through its admin API, traffic through its
    OpenAI-compatible API. The gateway must accept the client clock and trust ``X-Forwarded-For``; otherwise
    its audit log holds real times and the gateway's own view of the client address.

    Raises:
        InputError: ``out_dir`` or ``base_url`` is unusable.
        SimulationError: the gateway is unreachable or refuses.
    """
    if not base_url.startswith(("http://", "https://")):
        raise InputError(f"base URL must start with http:// or https://, got {base_url!r}")
    if not admin_token:
        raise InputError("an admin token is needed to create the simulated accounts")
    t0 = time.perf_counter()
    out = prepare_out(out_dir)
    plan = plan or scenario.build()
    ids = create_accounts_via_admin(base_url, admin_token, plan.accounts)
    result = drive(
        plan,
        base_url,
        {k: v[1] for k, v in ids.items()},
        concurrency=concurrency,
        processes=auto_processes(len(plan.requests)) if processes is None else processes,
        progress=progress,
    )
    return finish_run(out, plan, ids, result, t0, None, base_url)


def load_labels(out_dir: str | Path) -> list[dict[str, Any]]:
    """The ground truth of a finished simulation: one dict per account (``account_id``, ``persona``, ``role``,
    ``campaign``, ``params``, ``requests``, …)."""
    path = Path(out_dir) / "labels.jsonl"
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise InputError(f"no labels.jsonl in {out_dir}: not a finished simulation") from None


def load_scenario(out_dir: str | Path) -> dict[str, Any]:
    """``scenario.json`` of a finished simulation (seed, split, releases, tiers, counts, timings)."""
    path = Path(out_dir) / "scenario.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no scenario.json in {out_dir}: not a finished simulation") from None


__all__ = [
    "SimulationError",
    "SimulationResult",
    "auto_processes",
    "load_labels",
    "load_scenario",
    "run_against_gateway",
]
