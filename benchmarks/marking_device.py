"""Per-step cost of marking a (batch, vocabulary) step, with the vocabulary-sized work on the host or on the device.

What one decode step costs, on ``--device`` (the CPU by default; ``cuda`` on a GPU), for logits of shape (B, V):

* ``unmarked``: the sampling step without a watermark: ``softmax(logits / T)`` and ``torch.multinomial``;
* ``host``: :class:`~antidistill.watermark.processor.WatermarkLogitsProcessor` ``.mark`` with ``on_device=False``:
  the scheme core's numpy code on the host (on a GPU: the probabilities go to the host, the mask comes back);
* ``device``: the same with ``on_device=True``: the kernels of :mod:`antidistill.watermark.device`, in torch on
  the logits' device.

Both marked figures are the processor's whole step (row keys, contexts, the mask or the choice, the returned
logits), called as an engine calls it (``mark`` with each row's context); ratios are to the unmarked step of the
same batch size. Calls are interleaved (unmarked, host, device, in turn) and figures are medians.

Before timing, on the same device, the host and device paths are run on a few batches with the same coins and
their outputs compared with ``torch.equal``: the result (``bit_identical``) is printed and written, so a GPU run
proves that the kernels are the core's bit for bit on that GPU too.

Runs where only torch and numpy are installed (no transformers, scipy or pydantic: keys are random 64-bit values,
as derived keys are)::

    PYTHONPATH=src python3 benchmarks/marking_device.py --device cuda --out /tmp/marking_device.json

``--quick`` for a smoke run (batch sizes 1 and 16, a few steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from _common import median, table, write_json
from antidistill.watermark import device as device_kernels
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor


@dataclass(frozen=True)
class BenchKey:
    """A watermark key's 64-bit value: all the processor reads of a key (``antidistill.keys`` derives real ones
    from a master key, through the settings, which need pydantic; random values are what derived keys look like)."""

    value: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="torch device of the logits: cpu (default), cuda, cuda:1 ...")
    ap.add_argument("--vocab", type=int, default=49152, help="vocabulary size (49152: SmolLM2; 151936: Qwen2.5)")
    ap.add_argument("--batch-sizes", default="1,16,64,256", help="comma-separated batch sizes")
    ap.add_argument("--schemes", default="antidistill-v1,gumbel-dual", help="comma-separated members")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per (scheme, batch size, path)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--check-batches", type=int, default=4, help="batches compared host against device")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: batch sizes 1,16, 5 steps, 2 check batches")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/marking_device-<time>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.steps, args.warmup, args.check_batches = "1,16", 5, 1, 2
    return args


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Case:
    """One (scheme, batch size): logits, fresh contexts at every step, and a processor per path."""

    def __init__(self, args: argparse.Namespace, scheme: str, batch: int, dev: torch.device, rng: np.random.Generator):
        self.wm = Watermark(WatermarkConfig(scheme=scheme))
        self.h = self.wm.config.context_width
        self.dev, self.batch, self.vocab, self.rng = dev, batch, args.vocab, rng
        keys = rng.integers(1, 2**64, size=(batch, 2), dtype=np.uint64)
        self.row_keys: list[MarkKeys | None] = [
            MarkKeys(BenchKey(int(a)), BenchKey(int(p)))  # type: ignore[arg-type]
            for a, p in keys
        ]
        self.temps = [args.temperature] * batch
        self.top_ps = [args.top_p] * batch
        gen = torch.Generator(device=dev).manual_seed(args.seed + batch)
        # logits of a trained model's spread (a few likely tokens, a long tail), made on the device
        self.logits = torch.randn(batch, args.vocab, generator=gen, device=dev) * 3.0
        self.processors = {path: self._processor(path == "device") for path in ("host", "device")}

    def _processor(self, on_device: bool) -> WatermarkLogitsProcessor:
        proc = WatermarkLogitsProcessor(self.wm, self.row_keys, on_device=on_device)
        proc.set_row_sampling(self.temps, self.top_ps)
        return proc

    def contexts(self) -> np.ndarray:
        # new contexts at every step: the sampling members leave repeated contexts unmarked (and undone)
        out: np.ndarray = self.rng.integers(0, self.vocab, size=(self.batch, self.h), dtype=np.int64)
        return out

    def unmarked(self) -> torch.Tensor:
        probs = torch.softmax(self.logits / self.temps[0], dim=-1)
        return torch.multinomial(probs, 1)

    def marked(self, path: str, ctx: np.ndarray) -> torch.Tensor:
        return self.processors[path].mark(ctx, self.logits)


def check(case: Case, batches: int) -> bool:
    """Whether the host and device paths give the same logits (same contexts, same coins) on ``batches`` steps."""
    same = True
    for _ in range(batches):
        ctx = case.contexts()
        # shared across calls, so the generator state that the coins (gumbel-dual) come from is reset in between
        state = torch.random.get_rng_state()
        a = case.marked("host", ctx)
        torch.random.set_rng_state(state)
        b = case.marked("device", ctx)
        # compared by type and index: torch.device("cuda") is not equal to the "cuda:0" a tensor reports
        on = {(t.device.type, t.device.index or 0) for t in (a, b)} == {(case.dev.type, case.dev.index or 0)}
        same = same and on and bool(torch.equal(a, b))
    return same


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    times: dict[str, list[float]] = {"unmarked": [], "host": [], "device": []}
    for step in range(args.warmup + args.steps):
        for name in times:
            ctx = case.contexts()
            sync(case.dev)
            t0 = time.perf_counter()
            case.unmarked() if name == "unmarked" else case.marked(name, ctx)
            sync(case.dev)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * median(ts) for name, ts in times.items()}
    return {
        "unmarked_ms": ms["unmarked"],
        "host_ms": ms["host"],
        "device_ms": ms["device"],
        "host_ratio": ms["host"] / ms["unmarked"],
        "device_ratio": ms["device"] / ms["unmarked"],
        "device_speedup": ms["host"] / ms["device"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available here", file=sys.stderr)
        return 2
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rng = np.random.default_rng(args.seed)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(
        f"device {dev} ({dev_name}), vocab {args.vocab}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )

    rows: list[dict[str, Any]] = []
    checks: dict[str, bool] = {}
    for scheme in schemes:
        for batch in batch_sizes:
            case = Case(args, scheme, batch, dev, rng)
            kernel = device_kernels.supported(case.wm.scheme)
            ok = check(case, args.check_batches)
            checks[f"{scheme}/B={batch}"] = ok
            row = {"scheme": scheme, "batch": batch, "device_kernel": kernel, "bit_identical": ok}
            row.update(run_case(case, args))
            rows.append(row)
            print(f"  {scheme} B={batch}: done (host == device: {ok})", file=sys.stderr)

    print(
        table(
            ["scheme", "B", "unmarked ms", "host ms", "device ms", "host x", "device x", "speedup", "identical"],
            [
                [
                    r["scheme"] + ("" if r["device_kernel"] else " (no kernel)"),
                    r["batch"],
                    r["unmarked_ms"],
                    r["host_ms"],
                    r["device_ms"],
                    r["host_ratio"],
                    r["device_ratio"],
                    r["device_speedup"],
                    r["bit_identical"],
                ]
                for r in rows
            ],
        )
    )
    identical = all(checks.values())
    print(f"bit-identical host vs device on {dev} ({dev_name}): {identical}")
    path = write_json(
        "marking_device",
        {
            "args": vars(args),
            "device": str(dev),
            "device_name": dev_name,
            "rows": rows,
            "bit_identical": identical,
            "checks": checks,
            "notes": (
                "*_ms: median per-step time; host x / device x: the marked step's time over the unmarked sampling "
                "step's (softmax + multinomial) at the same batch size; speedup: host ms / device ms."
            ),
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
