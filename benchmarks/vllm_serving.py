"""Serving on vLLM with the mark: what antidistill's plugin costs the engine, what the gateway adds in front of
it, and how fast an attacker harvests through it, all in one run on one machine.

Parts (every server a process of its own; the embedded model exported once with ``antidistill model export``):

1. **Engine throughput, 16 concurrent streams.** Engines of the same model, kept up side by side: ``none`` (vLLM
   without the plugin: antidistill is hidden from it, as in a venv without antidistill), and one engine per
   antidistill scheme (``--logits-processors antidistill.engines.vllm:AntidistillLogitsProcessor``, scheme from
   ``ANTIDISTILL_WATERMARK_SCHEME``). Rounds are interleaved (every engine once a round, rotating order), so load
   from elsewhere falls on all alike. A round: ``--streams`` chat completions at once, ``ignore_eos`` and
   ``max_tokens`` fixed so every engine writes the same number of tokens; tokens/s = tokens / wall time.
   Reported per engine: median tokens/s over rounds and the ratio to ``none`` (target: >= 0.97).
   vLLM's own watermark (``--watermark-config``) cannot take part here: in vLLM 0.32 it needs the V2 model
   runner, which needs Triton, which vLLM's CPU build has not (the engine refuses to start: "Model Runner V2
   requires Triton"). Part 2 compares the two marks where both run.
2. **Sampler step, vLLM's mark against ours** (in ``.venv-vllm``, outside the engine, same logits): per-step time
   of a plain sampling step, of vLLM's ``GumbelWatermarker`` (its Philox PRF, as ``--watermark-config`` runs it)
   and of our processor (``EngineMarker.apply`` + the same plain sampling) on ``(B, V)`` float32 logits. vLLM's
   ``DualKeyGumbelWatermarker`` routes its rows through vLLM's Triton random sampler and cannot run on the CPU.
3. **Gateway in front of vLLM.** ``antidistill serve --backend vllm`` in front of the first antidistill engine,
   against requests sent to that engine directly with the same ``vllm_xargs``: latency of one request at a time
   (p50/p95 over ``--latency-requests``, short answers, interleaved direct/gateway) and throughput at
   ``--streams`` streams.
4. **Harvest rate.** The red team's harvester (16 threads, the stock ``openai`` SDK) through the gateway with the
   vLLM backend, against the same gateway with the in-process backend (``antidistill serve``), same prompts.

Run: ``.venv/bin/python benchmarks/vllm_serving.py`` (after ``make vllm``; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import PROMPTS, table, write_json

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
FQCN = "antidistill.engines.vllm:AntidistillLogitsProcessor"
MODEL = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    base: str  # http://host:port
    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self, probe: str, timeout: float) -> float:
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + probe, timeout=2):
                    return time.monotonic() - t0
            except OSError:
                if time.monotonic() - t0 > timeout:
                    self.stop()
                    raise SystemExit(
                        f"{self.name} did not start in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}"
                    ) from None
                time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _spawn(name: str, cmd: list[str], env: dict[str, str], tmp: Path, base: str) -> Server:
    log = tmp / f"{name}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, base, proc, log)


def start_engine(name: str, model_dir: Path, tmp: Path, master: str, scheme: str | None) -> Server:
    """vLLM's OpenAI server; ``scheme`` None: without the plugin (antidistill hidden from the engine's venv)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTIDISTILL_", "VLLM_"))}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
    cmd = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", MODEL, "--dtype", "float32", "--max-model-len", "2048",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if scheme is None:
        # installing antidistill registers the plugin's entry point, which vLLM loads by itself: an
        # ``antidistill`` distribution without entry points first on the path hides it
        hide = tmp / f"{name}-hide" / "antidistill-0.0.0.dist-info"
        hide.mkdir(parents=True, exist_ok=True)
        (hide / "METADATA").write_text("Metadata-Version: 2.1\nName: antidistill\nVersion: 0.0.0\n")
        env["PYTHONPATH"] = str(hide.parent)
    else:
        env.update(
            ANTIDISTILL_MASTER_KEY=master,
            ANTIDISTILL_DATA_DIR=str(tmp / f"{name}-data"),
            ANTIDISTILL_WATERMARK_SCHEME=scheme,
        )
        cmd += ["--logits-processors", FQCN]
    return _spawn(name, cmd, env, tmp, f"http://127.0.0.1:{port}")


def start_gateway(name: str, tmp: Path, master: str, admin: str, upstream: str | None) -> Server:
    """``antidistill serve`` with the vLLM backend in front of ``upstream``, or the in-process backend."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIDISTILL_")}
    env.update(
        ANTIDISTILL_DATA_DIR=str(tmp / f"{name}-data"),
        ANTIDISTILL_MASTER_KEY=master,
        ANTIDISTILL_ADMIN_TOKEN=admin,
    )
    cmd = [sys.executable, "-m", "antidistill", "serve", "--port", str(port), "--log-level", "warning"]
    cmd += ["--backend", "vllm", "--upstream-url", upstream + "/v1"] if upstream else ["--backend", "local"]
    return _spawn(name, cmd, env, tmp, f"http://127.0.0.1:{port}")


def new_account(gw: Server, admin: str, name: str) -> tuple[str, str]:
    req = urllib.request.Request(
        gw.base + "/admin/accounts",
        data=json.dumps({"name": name}).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    return body["account"]["id"], body["api_key"]


def burst(base_v1: str, key: str, n: int, max_tokens: int, extra: dict[str, Any]) -> tuple[float, int, list[float]]:
    """``n`` chat completions at once: (wall seconds, completion tokens, per-request latencies)."""
    import openai

    client = openai.OpenAI(base_url=base_v1, api_key=key, max_retries=0, timeout=1800)

    def one(i: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=max_tokens,
            temperature=1.0,
            extra_body=extra,
        )
        return time.perf_counter() - t, int(r.usage.completion_tokens if r.usage else 0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        res = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    client.close()
    return wall, sum(t for _, t in res), [lat for lat, _ in res]


def xargs(account: str) -> dict[str, Any]:
    from antidistill.engines.xargs import engine_xargs

    return engine_xargs(account, 1, 1)


# ---- part 2: the sampler step, run in .venv-vllm ------------------------------------------------------------
SAMPLER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np, torch
    torch.set_num_threads(os.cpu_count())
    from vllm.v1.watermarking.gumbel import GumbelWatermarker
    from antidistill.engines.marking import EngineMarker
    from antidistill.engines.xargs import engine_xargs
    from antidistill.keys import MasterKey
    from antidistill.watermark.config import WatermarkConfig
    from antidistill.watermark.marker import Watermark

    B, V, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, V, generator=g) * 4
    ctx = torch.randint(0, V, (B, 4), generator=g)

    def plain(x):
        p = torch.softmax(x, dim=-1)
        return p.div_(torch.empty_like(p).exponential_()).argmax(dim=-1)

    class P:  # the SamplingParams fields the processor reads
        def __init__(self, i):
            self.extra_args = engine_xargs(f"acct-{i}", 1, 1)
            self.temperature, self.top_p, self.top_k, self.min_p, self.seed = 1.0, 1.0, 0, 0.0, None
            self.presence_penalty = self.frequency_penalty = 0.0
            self.repetition_penalty = 1.0
            self.logit_bias = None

    class U:
        def __init__(self, added):
            self.batch_size, self.removed, self.added, self.moved = B, [], added, []

    def ours(scheme):
        m = EngineMarker(Watermark(WatermarkConfig(scheme=scheme)), MasterKey(os.urandom(32)))
        outs = [ctx[i].tolist() for i in range(B)]
        m.update(U([(i, P(i), [1, 2, 3, 4], outs[i]) for i in range(B)]))
        def step(x):
            for i in range(B):  # a new token each step: fresh contexts, as in decoding
                outs[i].append(int(torch.randint(0, V, (1,), generator=g)))
            return plain(m.apply(x))
        return step

    def vllm_mark(w):
        return lambda x: w._sample_watermarked(x, ctx).token_ids

    cases = {
        "plain sampling": plain,
        "vLLM gumbel": vllm_mark(GumbelWatermarker(12345, 4, "philox")),
        "ours antidistill-v1": ours("antidistill-v1"),
        "ours gumbel-dual": ours("gumbel-dual"),
    }
    out = {}
    for name, fn in cases.items():
        for _ in range(3):
            fn(logits.clone())
        ts = []
        for _ in range(reps):
            x = logits.clone()
            t = time.perf_counter(); fn(x); ts.append(time.perf_counter() - t)
        out[name] = float(np.median(ts)) * 1e3
    print(json.dumps(out))
    """
)


def sampler_step(batch: int, vocab: int, reps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTIDISTILL_", "VLLM_"))}
    r = subprocess.run(
        [str(VLLM_PYTHON), "-c", SAMPLER_SCRIPT, str(batch), str(vocab), str(reps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if r.returncode != 0:
        raise SystemExit(f"sampler step benchmark failed:\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def harvest_rate(gw: Server, key: str, out: Path, n: int, max_tokens: int) -> dict[str, float]:
    from antidistill.redteam.harvest import generate_prompts, harvest

    res = harvest(
        generate_prompts(n, seed=7), out, base_url=gw.base + "/v1", api_key=key, max_tokens=max_tokens, concurrency=16
    )
    if res.failed:
        raise SystemExit(f"{res.failed} prompts failed in the harvest through {gw.name}")
    return {
        "answered": res.written,
        "wall_s": res.seconds,
        "prompts_per_s": res.written / res.seconds,
        "tokens_per_s": res.completion_tokens / res.seconds,
    }


def pct(xs: list[float], q: float) -> float:
    return float(statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]) if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemes", default="antidistill-v1,gumbel-dual", help="antidistill engines (comma-separated)")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=20)
    ap.add_argument("--harvest-prompts", type=int, default=48)
    ap.add_argument("--sampler-reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round, few requests")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/vllm_serving-<time>.json)")
    args = ap.parse_args()
    if not VLLM_PYTHON.exists():
        raise SystemExit("no .venv-vllm: run `make vllm` first")
    if args.quick:
        args.rounds, args.latency_requests, args.harvest_prompts, args.sampler_reps = 1, 4, 16, 5
    schemes = [s for s in args.schemes.split(",") if s]
    master, admin = secrets.token_hex(32), "admin-" + secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    servers: list[Server] = []
    results: dict[str, Any] = {"parameters": vars(args)}
    try:
        model_dir = tmp / "model"
        subprocess.run([sys.executable, "-m", "antidistill", "model", "export", str(model_dir)], check=True)

        # ---- 1. engines, interleaved rounds
        engines = {"none": start_engine("none", model_dir, tmp, master, None)}
        servers.append(engines["none"])
        starts = {"none": engines["none"].wait("/v1/models", 900)}
        for s in schemes:  # one at a time: each start compiles the model, on the same cores
            engines[s] = start_engine(s, model_dir, tmp, master, s)
            servers.append(engines[s])
            starts[s] = engines[s].wait("/v1/models", 900)
        print("engines up in " + ", ".join(f"{k} {v:.0f} s" for k, v in starts.items()), file=sys.stderr)
        names = list(engines)
        for name in names:  # warm-up
            burst(engines[name].base + "/v1", "none", 4, 16, _extra(name))
        tps: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                wall, tokens, _ = burst(engines[name].base + "/v1", "none", args.streams, args.max_tokens, _extra(name))
                tps[name].append(tokens / wall)
                print(f"round {r + 1} {name}: {tokens} tokens in {wall:.1f} s", file=sys.stderr)
        base_tps = statistics.median(tps["none"])
        results["engine"] = {
            n: {"tokens_per_s": statistics.median(v), "rounds": v, "ratio_to_none": statistics.median(v) / base_tps}
            for n, v in tps.items()
        }
        results["engine_start_s"] = starts

        # ---- 3. the gateway in front of the first antidistill engine
        eng = engines[schemes[0]]
        gw = start_gateway("gateway-vllm", tmp, master, admin, eng.base)
        servers.append(gw)
        gw.wait("/health", 120)
        acct, key = new_account(gw, admin, "bench-vllm")
        direct_extra = {"ignore_eos": True, "vllm_xargs": xargs(acct)}
        lat: dict[str, list[float]] = {"direct": [], "gateway": []}
        burst(gw.base + "/v1", key, 2, 8, {"ignore_eos": True})  # warm-up
        for _ in range(args.latency_requests):
            lat["direct"] += burst(eng.base + "/v1", "none", 1, 16, direct_extra)[2]
            lat["gateway"] += burst(gw.base + "/v1", key, 1, 16, {"ignore_eos": True})[2]
        thr = {}
        for r in range(args.rounds):
            for target in ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct"):
                url, k, extra = (
                    (eng.base, "none", direct_extra) if target == "direct" else (gw.base, key, {"ignore_eos": True})
                )
                wall, tokens, _ = burst(url + "/v1", k, args.streams, args.max_tokens, extra)
                thr.setdefault(target, []).append(tokens / wall)
        results["gateway"] = {
            "latency_ms": {t: {"p50": pct(v, 50) * 1e3, "p95": pct(v, 95) * 1e3, "n": len(v)} for t, v in lat.items()},
            "added_ms_p50": (pct(lat["gateway"], 50) - pct(lat["direct"], 50)) * 1e3,
            "added_ms_p95": (pct(lat["gateway"], 95) - pct(lat["direct"], 95)) * 1e3,
            "tokens_per_s": {t: statistics.median(v) for t, v in thr.items()},
        }
        results["gateway"]["throughput_ratio"] = (
            results["gateway"]["tokens_per_s"]["gateway"] / results["gateway"]["tokens_per_s"]["direct"]
        )

        # ---- 4. harvest rate: through vLLM, then the in-process backend (vLLM engines stopped first)
        hv = harvest_rate(gw, key, tmp / "harvest-vllm.jsonl", args.harvest_prompts, args.max_tokens)
        for s in servers:
            s.stop()
        servers.clear()
        local = start_gateway("gateway-local", tmp, master, admin, None)
        servers.append(local)
        local.wait("/health", 300)
        _, lkey = new_account(local, admin, "bench-local")
        burst(local.base + "/v1", lkey, 2, 8, {})  # warm-up (the model loads on first use)
        hl = harvest_rate(local, lkey, tmp / "harvest-local.jsonl", args.harvest_prompts, args.max_tokens)
        local.stop()
        servers.clear()
        results["harvest"] = {
            "vllm": hv,
            "in_process": hl,
            "ratio_vllm_to_in_process": hv["tokens_per_s"] / hl["tokens_per_s"],
        }

        # ---- 2. the sampler step (engines down: the cores are free)
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        results["sampler_step_ms"] = sampler_step(args.streams, vocab, args.sampler_reps)
    finally:
        for s in servers:
            s.stop()

    rows = [[n, e["tokens_per_s"], e["ratio_to_none"]] for n, e in results["engine"].items()]
    print(f"\n1. vLLM engine, {args.streams} streams x {args.max_tokens} tokens ({args.rounds} rounds, median)")
    print(table(["engine", "tokens/s", "ratio to none"], rows))
    ss = results["sampler_step_ms"]
    print(f"\n2. one sampler step, B = {args.streams}, V = {vocab} (median ms)")
    print(table(["sampler", "ms/step", "ratio to plain"], [[k, v, v / ss["plain sampling"]] for k, v in ss.items()]))
    g = results["gateway"]
    print(f"\n3. gateway (--backend vllm) in front of the {schemes[0]} engine")
    print(
        table(
            ["path", "p50 ms (16 tok)", "p95 ms", f"tokens/s at {args.streams}"],
            [
                [t, g["latency_ms"][t]["p50"], g["latency_ms"][t]["p95"], g["tokens_per_s"][t]]
                for t in ("direct", "gateway")
            ],
        )
    )
    added = f"added latency p50 {g['added_ms_p50']:.1f} ms, p95 {g['added_ms_p95']:.1f} ms"
    print(f"{added}; throughput ratio {g['throughput_ratio']:.3f}")
    h = results["harvest"]
    print(f"\n4. harvest, {args.harvest_prompts} prompts, 16 threads")
    print(
        table(
            ["through", "prompts/s", "tokens/s"],
            [[k, h[k]["prompts_per_s"], h[k]["tokens_per_s"]] for k in ("vllm", "in_process")],
        )
    )
    print(f"vLLM / in-process: {h['ratio_vllm_to_in_process']:.2f}")
    print(f"\nwrote {write_json('vllm_serving', results, args.out)}")


def _extra(engine: str) -> dict[str, Any]:
    """Request extras for an engine: fixed lengths, and the keys by name for an antidistill engine."""
    extra: dict[str, Any] = {"ignore_eos": True}
    if engine != "none":
        extra["vllm_xargs"] = xargs(f"bench-{engine}")
    return extra


if __name__ == "__main__":
    main()
