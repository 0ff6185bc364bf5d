"""Aggregate tokens/s of the gateway on the local backend, with 1, 4 and 16 concurrent streaming SDK clients.

Each client is an ``openai.AsyncOpenAI`` talking to a real uvicorn in this process (local backend with the
embedded model, SQLite audit log, watermarking on). Each client sends streaming chat requests one after the other
for ``--duration`` seconds per level; tokens are counted from the streams' usage chunks. Target: 16 clients
reach at least 6x the tokens/s of one client.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json

PROMPTS = [
    "Explain how {} works.",
    "Write a short story about {}.",
    "Describe the history of {}.",
    "Give advice to someone learning about {}.",
]
TOPICS = [
    "volcanoes",
    "bicycles",
    "the printing press",
    "bees",
    "rainbows",
    "chess",
    "bridges",
    "tea",
    "comets",
    "libraries",
    "sailing",
    "bread",
    "glass",
    "clocks",
    "maps",
    "kites",
]


async def client(base_url: str, api_key: str, cid: int, deadline: float, tokens: int) -> tuple[int, int]:
    from openai import AsyncOpenAI

    oa = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    done = total = 0
    i = 0
    while time.perf_counter() < deadline:
        prompt = PROMPTS[(cid + i) % len(PROMPTS)].format(TOPICS[(cid * 7 + i) % len(TOPICS)])
        stream = await oa.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=tokens,
            temperature=0.7,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                total += chunk.usage.completion_tokens
        done += 1
        i += 1
    await oa.close()
    return done, total


async def level(base_url: str, keys: list[str], n: int, duration: float, tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(client(base_url, keys[i % len(keys)], i, t0 + duration, tokens) for i in range(n)))
    wall = time.perf_counter() - t0
    toks = sum(r[1] for r in results)
    return {
        "clients": n,
        "requests": sum(r[0] for r in results),
        "tokens": toks,
        "seconds": round(wall, 2),
        "tokens_per_s": round(toks / wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per level")
    ap.add_argument("--quick", action="store_true", help="5 s per level, 16 tokens")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.tokens = 5.0, 16

    from antidistill.gateway import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.keys import KeyRing, MasterKey
    from antidistill.models.local import LocalModel
    from antidistill.models.local_backend import LocalBackend
    from antidistill.settings import Settings
    from antidistill.store.sql import Store

    levels = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(env="test", data_dir=Path(tmp), backend="local", master_key="b" * 64)
        store = Store.open(f"sqlite:///{Path(tmp) / 'bench.db'}", settings=settings)
        keys = [store.create_account(f"bench-{i}")[1] for i in range(4)]
        lm = LocalModel.load()
        app = create_app(
            settings, backend=LocalBackend(lm), store=store, keyring=KeyRing(MasterKey.from_text("b" * 64))
        )
        rows = []
        with BackgroundServer(app) as srv:
            asyncio.run(level(srv.url + "/v1", keys, 1, 2.0, 8))  # warm-up
            for n in levels:
                rows.append(asyncio.run(level(srv.url + "/v1", keys, n, args.duration, args.tokens)))
                print(f"  {n} clients: {rows[-1]['tokens_per_s']} tokens/s", flush=True)
        audited = store.audit_count()
        store.close()
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["x_one_client"] = round(r["tokens_per_s"] / base, 2) if base else None
    print(
        table(
            ["clients", "requests", "tokens", "seconds", "tokens/s", "x 1 client"],
            [
                [r["clients"], r["requests"], r["tokens"], r["seconds"], r["tokens_per_s"], r["x_one_client"]]
                for r in rows
            ],
        )
    )
    top = rows[-1]["x_one_client"]
    print(
        f"{rows[-1]['clients']} clients / 1 client: {top}x (target >= 6x: {'met' if top and top >= 6 else 'missed'});"
        f" audit records written: {audited}"
    )
    result = {"tokens": args.tokens, "duration_s": args.duration, "levels": rows, "audit_records": audited}
    path = write_json("gateway_streaming", result, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
