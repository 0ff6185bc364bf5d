"""How much faster a closed scan queries with many requests in flight: a local OpenAI-compatible endpoint that
answers each request after a simulated latency, queried by ``sample_endpoint`` at concurrency 1 and N.

    .venv/bin/python benchmarks/closed_scan_concurrency.py --requests 48 --latency 0.2 --concurrency 8

Prints a short table and writes ``benchmarks/results/closed_scan_concurrency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from fastapi import FastAPI, Request

from antidistill.forensics.scan import make_client, sample_endpoint
from antidistill.gateway.server import BackgroundServer


def slow_app(latency: float) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        await asyncio.sleep(latency)
        text = f"answer to {body['messages'][-1]['content']} with seed {body.get('seed')}"
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    prompts = [f"prompt {i}" for i in range(a.requests // 2)]
    rows = {}
    with BackgroundServer(slow_app(a.latency)) as srv:
        client = make_client(srv.url + "/v1")
        for c in (1, a.concurrency):
            t0 = time.perf_counter()
            s = sample_endpoint(client, prompts, "m", samples=2, concurrency=c)
            rows[c] = {"seconds": round(time.perf_counter() - t0, 3), "requests": s.requests}
    speedup = rows[1]["seconds"] / rows[a.concurrency]["seconds"]
    print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8}")
    for c, r in rows.items():
        print(f"{c:>11} {r['requests']:>8} {r['seconds']:>8.2f}")
    print(f"speedup x{speedup:.1f} at {a.latency * 1000:.0f} ms latency")
    out = Path(__file__).parent / "results" / "closed_scan_concurrency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "rows": rows, "speedup": speedup}, indent=2) + "\n")


if __name__ == "__main__":
    main()
