"""A whole simulation in this process: the real gateway app (fake backend, SQLite audit log in the output
directory, client clock and forwarded addresses trusted) under a real uvicorn, driven over HTTP by the ``openai``
SDK, with the ground truth written beside it (see :mod:`antidistill.simulate.runner` for the files).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.gateway.app import create_app
from antidistill.gateway.server import BackgroundServer
from antidistill.models.fake import FakeBackend
from antidistill.settings import Settings
from antidistill.simulate.driver import create_accounts_in_store, drive
from antidistill.simulate.runner import DB_FILE, SimulationResult, auto_processes, finish_run, prepare_out
from antidistill.simulate.scenario import Plan, Scenario
from antidistill.store.sql import Store


def run_simulation(
    scenario: Scenario,
    out_dir: str | Path,
    *,
    concurrency: int = 12,
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    plan: Plan | None = None,
    monitor: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> SimulationResult:
    """Run ``scenario`` against an in-process gateway whose SQLite audit log lands in ``out_dir``.

    Args:
        scenario: what to simulate.
        out_dir: a new (or empty) directory.
        concurrency: client threads (in all).
        processes: driver processes (0: threads of this process; ``None``: :func:`auto_processes`).
        progress: called with ``(done, total)`` while requests are sent.
        plan: an already built plan of ``scenario`` (saves building it twice).
        monitor: run the gateway's own monitor and policy enforcement during the simulation (an end-to-end
            evaluation: flagged accounts get throttled or blocked, and ``requests.jsonl`` records those statuses);
            off by default, so the traffic is the personas' alone.
        settings: further gateway settings (``Settings`` field names), e.g. ``{"policy_file": ...}``.

    Raises:
        InputError: ``out_dir`` is unusable or already holds a simulation.
        SimulationError: the gateway failed.
    """
    t0 = time.perf_counter()
    out = prepare_out(out_dir)
    plan = plan or scenario.build()
    data_dir = out / "gateway"
    store_url = f"sqlite:///{(out / DB_FILE).resolve()}"
    # a fresh random master key and admin token: nothing of this run can be confused with a real deployment's
    values: dict[str, Any] = {"monitor": monitor, **(settings or {})}
    # A master key of its own (a key file created in out_dir/gateway, never one from the environment), so the
    # audit log's checkpoints verify with ANTIDISTILL_DATA_DIR=out_dir/gateway; a random admin token, unused.
    values.update(
        env="dev",
        data_dir=data_dir,
        cache_dir=data_dir / "cache",
        backend="fake",
        database_url=store_url,
        master_key=None,
        admin_token=secrets.token_hex(32),
        accept_client_clock=True,
        trust_forwarded_for=True,
        redis_url=values.get("redis_url"),
    )
    try:
        gateway_settings = Settings(**values)
    except ValueError as exc:
        raise InputError(f"bad gateway settings for the simulation: {exc}") from None
    store = Store.open(store_url, settings=gateway_settings)
    try:
        app = create_app(gateway_settings, backend=FakeBackend(), store=store)
        ids = create_accounts_in_store(store, plan.accounts)
        with BackgroundServer(app) as srv:
            result = drive(
                plan,
                srv.url,
                {k: v[1] for k, v in ids.items()},
                concurrency=concurrency,
                processes=auto_processes(len(plan.requests)) if processes is None else processes,
                progress=progress,
            )
        return finish_run(
            out,
            plan,
            ids,
            result,
            t0,
            store_url,
            "in-process (fake backend" + (", monitor on)" if monitor else ")"),
            data_dir,
        )
    finally:
        store.close()
