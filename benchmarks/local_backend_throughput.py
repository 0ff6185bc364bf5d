"""Aggregate throughput of the local backend under 1, 4 and 16 concurrent streaming clients.

Each client is an asyncio task that calls ``LocalBackend.stream`` directly (no HTTP), one request after another,
until the level's time is up (a request running at the deadline is finished and counted). Every request is
watermarked with its client's own account key, as in production, samples at temperature 0.7 with its own seed,
and asks for ``--tokens`` new tokens. Aggregate tokens/s = completion tokens of all requests / wall time from
the level's start to the end of its last request. The target: 16 clients >= 6x one client.

The peer, in the same run: transformers' ``generate`` on one static batch (``LocalModel.generate``) of 1 and of
the largest client count, the same prompts and token budget (``min_new_tokens = max_new_tokens``, so it does at
least the work ours does). Static batching is the upper bound of what one batch can do when every request
arrives at once and all are equally long; continuous batching has to get close to it while requests come and
go.

Run: ``.venv/bin/python benchmarks/local_backend_throughput.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

# On a machine shared with other work, OpenMP threads that spin while waiting for a descheduled sibling make every
# forward pass several times slower (measured here: a batch-16 decode step 0.15 s with passive waiting, 0.8-4 s
# spinning). Passive waiting measures the code, not the neighbours. Must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from _common import PROMPTS, table, write_json
from antidistill.keys import MasterKey
from antidistill.models.base import GenerationRequest, GenerationResult
from antidistill.models.local import LocalModel
from antidistill.models.local_backend import LocalBackend
from antidistill.watermark.marker import MarkKeys

TARGET_SPEEDUP_16 = 6.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per level (requests then finish)")
    ap.add_argument("--max-batch", type=int, default=32, help="the backend's max_batch")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers' static-batch generate")
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 tokens, one request per client")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/local_backend_throughput-<time>.json)")
    args = ap.parse_args(argv)
    args.clients = [int(x) for x in args.clients.split(",")]
    if args.quick:
        args.tokens, args.duration = 16, 0.0
    return args


async def client(
    backend: LocalBackend, cid: int, mark: MarkKeys, deadline: float, tokens: int, log: list[dict[str, Any]]
) -> None:
    """Sequential streaming requests until ``deadline`` (at least one)."""
    i = 0
    while True:
        req = GenerationRequest(
            messages=[{"role": "user", "content": PROMPTS[(cid + i) % len(PROMPTS)]}],
            max_tokens=tokens,
            temperature=0.7,
            seed=1000 * cid + i,
            mark=mark,
        )
        t0 = time.perf_counter()
        first = None
        result = None
        async for item in backend.stream(req):
            if isinstance(item, GenerationResult):
                result = item
            elif first is None and item.text:
                first = time.perf_counter() - t0
        log.append(
            {
                "client": cid,
                "tokens": result.completion_tokens,
                "seconds": time.perf_counter() - t0,
                "ttft": first,
                "finish": result.choices[0].finish_reason,
            }
        )
        i += 1
        if time.perf_counter() >= deadline:
            return


async def run_level(backend: LocalBackend, n: int, marks: list[MarkKeys], args: argparse.Namespace) -> dict[str, Any]:
    steps0, tokens0 = backend.stats["steps"], backend.stats["tokens"]
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    await asyncio.gather(*(client(backend, c, marks[c], deadline, args.tokens, log) for c in range(n)))
    wall = time.perf_counter() - t0
    total = sum(r["tokens"] for r in log)
    steps = backend.stats["steps"] - steps0
    ttfts = [r["ttft"] for r in log if r["ttft"] is not None]
    return {
        "clients": n,
        "requests": len(log),
        "tokens": total,
        "seconds": wall,
        "tokens_per_s": total / wall,
        "mean_rows_per_step": (backend.stats["tokens"] - tokens0) / steps if steps else 0.0,
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "latency_p50_s": statistics.median(r["seconds"] for r in log),
        "stopped_early": sum(r["finish"] == "stop" for r in log),
    }


def peer(lm: LocalModel, batch: int, tokens: int) -> dict[str, Any]:
    """transformers' generate on one static batch: tokens/s."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    t0 = time.perf_counter()
    outs = lm.generate(prompts, [None] * batch, max_new_tokens=tokens, min_new_tokens=tokens, temperature=0.7, seed=0)
    wall = time.perf_counter() - t0
    total = sum(len(o.token_ids) for o in outs)
    return {"batch": batch, "tokens": total, "seconds": wall, "tokens_per_s": total / wall}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    lm = LocalModel.load()
    backend = LocalBackend(lm, max_batch=args.max_batch)
    await backend.start()
    master = MasterKey(b"benchmark-master-key-not-a-secret")
    marks = [MarkKeys(master.account_key(f"client-{c}"), master.provider_key()) for c in range(max(args.clients))]
    try:
        t0 = time.perf_counter()
        await backend.generate(GenerationRequest(prompt="Warm-up.", max_tokens=4, mark=marks[0]))
        print(f"model: {lm.name}, warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        levels = []
        for n in args.clients:
            levels.append(await run_level(backend, n, marks, args))
            lv = levels[-1]
            print(
                f"  {n} clients: {lv['tokens_per_s']:.1f} tokens/s ({lv['requests']} requests, {lv['seconds']:.0f} s)",
                file=sys.stderr,
            )
    finally:
        await backend.aclose()
    peers = []
    if not args.no_peer:
        for b in sorted({min(args.clients), max(args.clients)}):
            peers.append(await asyncio.to_thread(peer, lm, b, args.tokens))
            print(f"  peer (static batch {b}): {peers[-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    return {
        "model": lm.name,
        "levels": levels,
        "peer": peers,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "backend_stats": dict(backend.stats),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = asyncio.run(amain(args))
    levels, peers = out["levels"], out["peer"]
    base = next((lv["tokens_per_s"] for lv in levels if lv["clients"] == 1), None)
    for lv in levels:
        lv["speedup_vs_1"] = lv["tokens_per_s"] / base if base else None
    peer_by_batch = {p["batch"]: p["tokens_per_s"] for p in peers}
    for lv in levels:
        lv["ratio_to_static_batch"] = (
            lv["tokens_per_s"] / peer_by_batch[lv["clients"]] if lv["clients"] in peer_by_batch else None
        )
    print(
        f"\nlocal backend: {out['model']}, {args.tokens} tokens per request, "
        f"{'one request per client' if args.duration == 0 else f'{args.duration:.0f} s per level'}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        table(
            [
                "clients",
                "requests",
                "tokens",
                "seconds",
                "tokens/s",
                "x 1 client",
                "rows/step",
                "ttft p50 s",
                "vs static batch",
            ],
            [
                [
                    lv["clients"],
                    lv["requests"],
                    lv["tokens"],
                    lv["seconds"],
                    lv["tokens_per_s"],
                    lv["speedup_vs_1"],
                    lv["mean_rows_per_step"],
                    lv["ttft_p50_s"],
                    lv["ratio_to_static_batch"],
                ]
                for lv in levels
            ],
        )
    )
    if peers:
        print(
            table(
                ["peer: transformers generate", "tokens", "seconds", "tokens/s"],
                [[f"static batch {p['batch']}", p["tokens"], p["seconds"], p["tokens_per_s"]] for p in peers],
            )
        )
    s16 = next((lv["speedup_vs_1"] for lv in levels if lv["clients"] == 16), None)
    met = s16 is not None and s16 >= TARGET_SPEEDUP_16
    if s16 is not None:
        print(f"16 clients: {s16:.1f}x one client (target >= {TARGET_SPEEDUP_16:.0f}x: {'met' if met else 'NOT met'})")
    path = write_json(
        "local_backend_throughput",
        {
            "args": vars(args),
            **out,
            "target_speedup_16": TARGET_SPEEDUP_16,
            "speedup_16": s16,
            "meets_target": met,
            "notes": (
                "tokens_per_s: completion tokens of all requests / wall time of the level; clients stream "
                "sequential requests until the level's time is up. vs static batch: ours / transformers' "
                "generate on one static batch of the same size (min_new_tokens = max_new_tokens)."
            ),
        },
        args.out,
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
