"""Durability with real processes: kill -9 the gateway during concurrent load; after a restart every request that
received a 200 is in the audit log (by response id) and `antidistill audit verify` passes. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .conftest import ADMIN_TOKEN, CHAT, MASTER_KEY, auth, free_port

CLIENTS = 16
LOAD_SECONDS = 2.0


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'durable.db'}"
    return request.getfixturevalue("pg_schema")


def _env(tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "ANTIDISTILL_ENV": "test",
        "ANTIDISTILL_DATA_DIR": str(tmp_path),
        "ANTIDISTILL_MASTER_KEY": MASTER_KEY,
        "ANTIDISTILL_ADMIN_TOKEN": ADMIN_TOKEN,
    }


def _serve(port: int, db_url: str, env: dict[str, str]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "antidistill.cli",
        "serve",
        "--backend",
        "fake",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database-url",
        db_url,
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited early with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gateway not ready")


def test_kill_9_during_load_loses_no_served_exchange(tmp_path, database_url):
    from antidistill.settings import Settings
    from antidistill.store.sql import Store

    env = _env(tmp_path)
    store = Store.open(database_url, settings=Settings(env="test", data_dir=tmp_path, master_key=MASTER_KEY))
    _, api_key, _ = store.create_account("durable")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(port, database_url, env)
    served: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post(url + "/v1/chat/completions", json=CHAT, headers=auth(api_key))
                except httpx.HTTPError:
                    continue  # the connection died with the server: this request got no 200
                if r.status_code == 200:
                    with lock:
                        served.append(r.json()["id"])

    try:
        _wait_ready(url, proc)
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(LOAD_SECONDS)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight at this moment
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert len(served) >= 20, f"too little load reached the gateway ({len(served)} responses)"

        # restart on the same database: it must come up on the history the crash left behind
        proc = _serve(port, database_url, env)
        _wait_ready(url, proc)
        r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers=auth(api_key), timeout=10)
        assert r.status_code == 200
        served.append(r.json()["id"])

        logged = {rec["response_id"] for rec in store.iter_audit()}
        missing = [rid for rid in served if rid not in logged]
        assert not missing, f"{len(missing)} of {len(served)} served responses are not in the audit log"
        verify = subprocess.run(
            [sys.executable, "-m", "antidistill.cli", "audit", "verify", "--database-url", database_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        stop.set()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        store.close()
