"""Gateway overhead: what the antidistill gateway adds to a request, against calling the backend directly, and
against LiteLLM's proxy in front of the same backend.

Targets, all measured in one run with the same client load:

* ``direct``: the fake upstream itself, a minimal OpenAI-compatible server (raw asyncio HTTP/1.1, keep-alive)
  that answers every ``POST /v1/chat/completions`` with one fixed completion at once;
* ``antidistill``: ``python -m antidistill serve --backend upstream`` in front of it, with everything on that
  serving needs: API-key authentication against the store, rate limits (in process; the account has generous
  limits so every request goes through the limiter), the SQLite audit log (WAL, one durable append per exchange),
  metrics;
* ``litellm``: ``litellm --config …`` (PyPI ``litellm[proxy]``) with one ``openai/…`` model whose ``api_base``
  is the same fake upstream, a master key for authentication, no database;
* ``antidistill-fake`` (reference): the gateway with its in-process fake backend (no upstream hop);
* ``antidistill-fake-monitor``: the same with ``--monitor``: the policy check on every request and every audited
  exchange handed to the monitor's worker thread (the trained model of ``--monitor-model DIR``, by default the
  user's ``antidistill monitor train`` output when there is one, else the rules-only monitor). The pair
  ``antidistill-fake`` / ``antidistill-fake-monitor`` is the gateway's added latency with the monitor off and on.

Every server runs in its own process; the client (this process) is a raw asyncio HTTP/1.1 client with one
keep-alive connection per concurrent worker, so that the client's own cost stays small next to the servers'.
Rounds are interleaved (each round runs every target once, in rotating order) so machine drift affects all
targets alike. Reported: requests/s, latency p50/p99, and the latency each proxy adds over ``direct`` (p50 and
p99 differences), with the ratio ``litellm added / antidistill added`` (above 1: antidistill adds less).

LiteLLM is looked up as ``--litellm PATH``, ``$LITELLM_BIN``, ``.venv-bench/bin/litellm``, ``.venv/bin/litellm``,
then ``litellm`` on ``PATH``. Its proxy extra pins packages (rich, huggingface_hub, …) that the project's venv
must not be downgraded to, so install it into a venv of its own:
``python3 -m venv .venv-bench && .venv-bench/bin/pip install 'litellm[proxy]'``. Without it the LiteLLM row
is reported as missing.

Run: ``.venv/bin/python benchmarks/gateway_overhead.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import table, write_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
COMPLETION = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog. " * 4},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
}
REQUEST = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Write one sentence about foxes."}],
    "max_tokens": 64,
    "temperature": 0.7,
}
MASTER_KEY = "b7e23ec29af22b0b4e41da31e868d57226121c84f1d2b53b0a5a1a2b3c4d5e6f"
LITELLM_KEY = "sk-litellm-bench-0123456789abcdef"


# ---- the fake upstream ----------------------------------------------------------------------------------
async def _serve_upstream(port: int) -> None:
    body = json.dumps(COMPLETION).encode()
    ok = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    models = json.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}
    ).encode()
    ok_models = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(models)).encode()
        + b"\r\n\r\n"
        + models
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                if length:
                    await reader.readexactly(length)
                writer.write(ok_models if head.startswith(b"GET /v1/models") else ok)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---- the client -----------------------------------------------------------------------------------------
class _Conn:
    """One keep-alive HTTP/1.1 connection that sends a fixed POST and reads whole responses."""

    def __init__(self, port: int, path: str, headers: dict[str, str], body: bytes) -> None:
        self.port = port
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.request = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{hdrs}\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.readexactly(length or 0)
        if close:
            self.writer.close()
            self.writer = None
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _load(port: int, path: str, headers: dict[str, str], n: int, concurrency: int) -> dict[str, Any]:
    body = json.dumps(REQUEST).encode()
    conns = [_Conn(port, path, headers, body) for _ in range(concurrency)]
    latencies: list[float] = []
    errors: dict[int, int] = {}
    remaining = [n]

    async def worker(conn: _Conn) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                status, _ = await conn.send()
            except (ConnectionError, asyncio.IncompleteReadError):
                conn.writer = None
                errors[-1] = errors.get(-1, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    latencies.sort()
    return {
        "requests": n,
        "wall_s": wall,
        "rps": n / wall,
        "p50_ms": _pct(latencies, 50) * 1000,
        "p99_ms": _pct(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0,
        "errors": errors,
    }


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def _check(port: int, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """One request, whose answer must be a chat completion with the upstream's text."""

    async def one():
        c = _Conn(port, path, headers, json.dumps(REQUEST).encode())
        try:
            return await c.send()
        finally:
            c.close()

    status, body = asyncio.run(one())
    if status != 200:
        raise RuntimeError(f"check request to port {port} answered {status}: {body[:300]!r}")
    data = json.loads(body)
    if data["choices"][0]["message"]["content"] != COMPLETION["choices"][0]["message"]["content"]:
        raise RuntimeError(f"port {port} answered an unexpected completion: {body[:300]!r}")
    return data


# ---- processes ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"{name} exited with {proc.returncode}: {out[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s")


def _find_litellm(explicit: str | None) -> str | None:
    for candidate in (
        explicit,
        os.environ.get("LITELLM_BIN"),
        str(ROOT / ".venv-bench/bin/litellm"),
        str(ROOT / ".venv/bin/litellm"),
        shutil.which("litellm"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Targets:
    """Starts the servers, and stops them all on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        p = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.workdir
        )
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def _antidistill_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIDISTILL_")}
    env.update(
        ANTIDISTILL_ENV="dev",
        ANTIDISTILL_DATA_DIR=str(data_dir),
        ANTIDISTILL_MASTER_KEY=MASTER_KEY,
        ANTIDISTILL_CACHE_DIR=str(data_dir / "cache"),
    )
    return env


def _create_key(data_dir: Path) -> str:
    """An account with limits far above the load (so every request passes through the limiter) and its key."""
    sys.path.insert(0, str(ROOT / "src"))
    from antidistill.settings import Settings
    from antidistill.store.sql import Store

    settings = Settings(env="dev", data_dir=data_dir, master_key=MASTER_KEY)
    with Store.open(settings=settings) as store:
        _, key, _ = store.create_account("bench", rpm=10_000_000, tpm=2_000_000_000)
    return key


# ---- main -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per target per round")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent client connections")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    ap.add_argument("--warmup", type=int, default=200, help="untimed requests per target before the rounds")
    ap.add_argument("--litellm", help="path of the litellm executable")
    ap.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    ap.add_argument(
        "--monitor-model",
        type=Path,
        default=None,
        help="directory with a trained monitor (default: the user's data dir's monitor/, if any)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 300 requests, 1 round, 50 warm-up")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/gateway_overhead-<time>.json)")
    ap.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    args = parse_args(argv)
    if args.serve_upstream:
        asyncio.run(_serve_upstream(args.serve_upstream))
        return 0
    if args.quick:
        args.requests, args.rounds, args.warmup = 300, 1, 50
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    data_dir = work / "data"
    targets = Targets(work)
    notes: list[str] = []
    try:
        up_port = _free_port()
        up = targets.spawn([sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(up_port)])
        _wait_http(up_port, "/v1/models", up, 30, "fake upstream")
        key = _create_key(data_dir)
        env = _antidistill_env(data_dir)
        gw_port, gwf_port = _free_port(), _free_port()
        gateway = [sys.executable, "-m", "antidistill", "serve", "--host", "127.0.0.1", "--log-level", "warning"]
        gw = targets.spawn(
            [
                *gateway,
                "--port",
                str(gw_port),
                "--backend",
                "upstream",
                "--upstream-url",
                f"http://127.0.0.1:{up_port}/v1",
            ],
            env=env,
        )
        gwf = targets.spawn([*gateway, "--port", str(gwf_port), "--backend", "fake"], env=env)
        monitor_src = args.monitor_model
        if monitor_src is None:
            from antidistill.settings import Settings

            monitor_src = Path(Settings().data_dir) / "monitor"
        if (monitor_src / "model.joblib").is_file():
            shutil.copytree(monitor_src, data_dir / "monitor", dirs_exist_ok=True)
            notes.append(f"monitor: trained model from {monitor_src}")
        else:
            notes.append("monitor: no trained model found; the rules-only monitor ran")
        gwm_port = _free_port()
        gwm = targets.spawn([*gateway, "--port", str(gwm_port), "--backend", "fake", "--monitor"], env=env)
        auth = {"authorization": f"Bearer {key}"}
        chat = "/v1/chat/completions"
        plan: dict[str, tuple[int, dict[str, str]]] = {"direct": (up_port, {})}
        _wait_http(gw_port, "/health", gw, 60, "antidistill gateway")
        _wait_http(gwf_port, "/health", gwf, 60, "antidistill gateway (fake backend)")
        _wait_http(gwm_port, "/health", gwm, 60, "antidistill gateway (fake backend, monitor on)")
        plan["antidistill"] = (gw_port, auth)

        litellm_bin = None if args.no_litellm else _find_litellm(args.litellm)
        litellm_version = None
        if litellm_bin is None:
            notes.append(
                "LiteLLM not measured: "
                + ("--no-litellm" if args.no_litellm else "no litellm executable found (see the module docstring)")
            )
        else:
            ll_port = _free_port()
            cfg = work / "litellm.yaml"
            cfg.write_text(
                "model_list:\n"
                f"  - model_name: {MODEL}\n"
                "    litellm_params:\n"
                f"      model: openai/{MODEL}\n"
                f"      api_base: http://127.0.0.1:{up_port}/v1\n"
                "      api_key: sk-upstream-unused\n"
                "litellm_settings:\n"
                "  telemetry: false\n"
                "  drop_params: true\n"
                "general_settings:\n"
                f"  master_key: {LITELLM_KEY}\n",
                encoding="utf-8",
            )
            ll_env = {
                **os.environ,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "LITELLM_TELEMETRY": "False",
                "DISABLE_SCHEMA_UPDATE": "True",
            }
            ll = targets.spawn(
                [litellm_bin, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(ll_port)], env=ll_env
            )
            _wait_http(ll_port, "/health/liveliness", ll, 180, "LiteLLM proxy")
            plan["litellm"] = (ll_port, {"authorization": f"Bearer {LITELLM_KEY}"})
            try:
                out = subprocess.run(
                    [
                        str(Path(litellm_bin).parent / "python"),
                        "-c",
                        "import importlib.metadata as m; print(m.version('litellm'))",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                litellm_version = out.stdout.strip() or None
            except (OSError, subprocess.SubprocessError):
                pass
        plan["antidistill-fake"] = (gwf_port, auth)
        plan["antidistill-fake-monitor"] = (gwm_port, auth)

        for name, (port, headers) in plan.items():
            _check(port, chat, headers) if not name.startswith("antidistill-fake") else None
            asyncio.run(_load(port, chat, headers, args.warmup, args.concurrency))

        names = list(plan)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                port, headers = plan[name]
                res = asyncio.run(_load(port, chat, headers, args.requests, args.concurrency))
                runs[name].append(res)
                print(
                    f"round {rnd + 1}/{args.rounds} {name:17s} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:.2f} ms"
                    f"  p99 {res['p99_ms']:.2f} ms  errors {res['errors'] or 0}",
                    file=sys.stderr,
                )
    finally:
        targets.close()

    summary: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        summary[name] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "mean_ms")}
        summary[name]["errors"] = sum(sum(r["errors"].values()) for r in rs)
    base = summary["direct"]
    for s in summary.values():
        s["added_p50_ms"] = s["p50_ms"] - base["p50_ms"]
        s["added_p99_ms"] = s["p99_ms"] - base["p99_ms"]
        s["rps_vs_direct"] = s["rps"] / base["rps"]
    comparison = None
    if "litellm" in summary:
        a, ll = summary["antidistill"], summary["litellm"]
        comparison = {
            "litellm_added_p50_over_antidistill_added_p50": ll["added_p50_ms"] / a["added_p50_ms"]
            if a["added_p50_ms"] > 0
            else float("inf"),
            "litellm_added_p99_over_antidistill_added_p99": ll["added_p99_ms"] / a["added_p99_ms"]
            if a["added_p99_ms"] > 0
            else float("inf"),
            "antidistill_rps_over_litellm_rps": a["rps"] / ll["rps"],
            "target_met": a["added_p50_ms"] < ll["added_p50_ms"],
        }

    if "antidistill-fake-monitor" in summary:
        off, on = summary["antidistill-fake"], summary["antidistill-fake-monitor"]
        comparison = {
            **(comparison or {}),
            "monitor_on_minus_off_p50_ms": on["p50_ms"] - off["p50_ms"],
            "monitor_on_minus_off_p99_ms": on["p99_ms"] - off["p99_ms"],
            "monitor_rps_on_over_off": on["rps"] / off["rps"],
        }
    rows = [
        [n, s["rps"], s["p50_ms"], s["p99_ms"], s["added_p50_ms"], s["added_p99_ms"], s["errors"]]
        for n, s in summary.items()
    ]
    print(table(["target", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "errors"], rows))
    if comparison and "litellm_added_p50_over_antidistill_added_p50" in comparison:
        print(
            f"\nLiteLLM adds {comparison['litellm_added_p50_over_antidistill_added_p50']:.2f}x the p50 latency "
            f"antidistill adds ({comparison['litellm_added_p99_over_antidistill_added_p99']:.2f}x at p99); "
            f"antidistill serves {comparison['antidistill_rps_over_litellm_rps']:.2f}x LiteLLM's requests/s. "
            f"Target (lower overhead than LiteLLM): {'met' if comparison['target_met'] else 'NOT met'}."
        )
    if comparison and "monitor_on_minus_off_p50_ms" in comparison:
        print(
            f"\nMonitor on vs off (fake backend): p50 {comparison['monitor_on_minus_off_p50_ms']:+.2f} ms, "
            f"p99 {comparison['monitor_on_minus_off_p99_ms']:+.2f} ms, requests/s x"
            f"{comparison['monitor_rps_on_over_off']:.2f}."
        )
    for n in notes:
        print("note:", n)
    path = write_json(
        "gateway_overhead",
        {
            "config": {
                "requests": args.requests,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "quick": args.quick,
                "litellm": litellm_bin,
                "litellm_version": litellm_version,
                "request": REQUEST,
            },
            "summary": summary,
            "comparison": comparison,
            "runs": runs,
            "notes": notes,
        },
        args.out,
    )
    print(f"\nwrote {path}")
    errors = sum(s["errors"] for s in summary.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
