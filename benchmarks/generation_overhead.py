"""Generation overhead of the watermark: the embedded model with and without marks, ours and transformers'.

Configurations, all run in one process on the same prompts:

* ``none``: no watermark (the baseline of each batch size);
* ``ours-h1`` .. ``ours-h4``: antidistill's ``WatermarkLogitsProcessor``, ``WatermarkConfig(context_width=h)``
  (default scheme, gamma, delta and provider_fraction), one account key per row plus the provider key;
* ``hf-lefthash`` / ``hf-selfhash``: transformers' built-in ``WatermarkingConfig`` (the same gamma and bias),
  passed as ``watermarking_config=`` to ``generate``.

Every configuration generates exactly ``--new-tokens`` tokens per row (``min_new_tokens = max_new_tokens``),
sampling with the same seed, so all do the same model work. Rounds are interleaved (round-robin over
configurations, the starting configuration rotating each round) so that machine drift affects every
configuration alike; reported figures are medians over rounds, and the overhead is the median of per-round
ratios to the unwatermarked run of the same round and batch size.

A second, more precise figure: the time spent inside the watermark processors' ``__call__`` (wrapped with a
``perf_counter`` accumulator) as a share of the generation time, and per step.

Before timing, the script checks that our processor's output is bit-identical to a reference implementation
of the green-list formula written out here from the specification (so any optimisation of the core must
leave the marks unchanged).

Run: ``.venv/bin/python benchmarks/generation_overhead.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList, WatermarkingConfig
from transformers.generation import logits_process as hf_lp

from _common import PROMPTS, median, table, write_json
from antidistill.keys import MasterKey
from antidistill.models.local import LocalModel
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor

TARGET_OVERHEAD_PCT = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", help="comma-separated batch sizes (default 1,16; --quick: 1,4)")
    ap.add_argument("--widths", default="1,2,3,4", help="comma-separated context widths of our scheme")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (forced)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    ap.add_argument(
        "--selfhash-rounds",
        type=int,
        default=2,
        help="rounds that include hf-selfhash (very slow on CPU; 0 leaves it out)",
    )
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 new tokens, 1 round, batch sizes 1,4")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/generation_overhead-<time>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.new_tokens, args.rounds, args.selfhash_rounds = 8, 1, 1
    if args.batch_sizes is None:
        args.batch_sizes = "1,4" if args.quick else "1,16"
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        args.widths = [int(h) for h in args.widths.split(",")]
    except ValueError:
        ap.error("--batch-sizes and --widths take comma-separated integers")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or max(args.batch_sizes) > len(PROMPTS):
        ap.error(f"--batch-sizes must be in 1..{len(PROMPTS)}")
    if any(not 1 <= h <= 4 for h in args.widths):
        ap.error("--widths must be in 1..4")
    if args.new_tokens < 1 or args.rounds < 1 or args.selfhash_rounds < 0 or args.temperature <= 0:
        ap.error("--new-tokens and --rounds must be >= 1, --selfhash-rounds >= 0, --temperature > 0")
    return args


# ---- reference green-list formula (the specification, written out independently of the core) ------------
_U = np.uint64
_REF = {
    "m1": 0xFF51AFD7ED558CCD,
    "m2": 0xC4CEB9FE1A85EC53,
    "golden": 0x9E3779B97F4A7C15,
    "token_salt": 0x243F6A8885A308D3,
    "context_salt": 0x13198A2E03707344,
    "slot_salt": 0xA4093822299F31D0,
}


def _ref_fmix64(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=_U, copy=True)
    x ^= x >> _U(33)
    x *= _U(_REF["m1"])
    x ^= x >> _U(33)
    x *= _U(_REF["m2"])
    x ^= x >> _U(33)
    return x


def _ref_threshold(fraction: float) -> np.uint64:
    return _U(min(int(fraction * 2**64), 2**64 - 1))


def _ref_context_hash(ctx: np.ndarray) -> np.ndarray:
    h = ctx.shape[1]
    x = np.full(ctx.shape[0], _U(_REF["context_salt"]) + _U(h), dtype=_U)
    for j in range(h):
        x = _ref_fmix64(x ^ (ctx[:, j].astype(_U) * _U(_REF["golden"]) + _U(j + 1)))
    return x


def reference_scores(
    cfg: WatermarkConfig, marks: list[MarkKeys | None], input_ids: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """What the processor must return: scores + delta on the green list of each marked row."""
    vocab = scores.shape[-1]
    tok_hash = _ref_fmix64(np.arange(vocab, dtype=np.int64).astype(_U) * _U(_REF["golden"]) + _U(_REF["token_salt"]))
    out = scores.clone()
    for i, mark in enumerate(marks):
        if mark is None:
            continue
        ctx = input_ids[i : i + 1, -cfg.context_width :].numpy().astype(np.int64)
        ch = _ref_context_hash(ctx)
        key = _U(mark.account.value)
        if mark.provider is not None and cfg.provider_fraction > 0:
            slot = _ref_fmix64(np.array([_U(mark.provider.value) ^ _U(_REF["slot_salt"])]))
            if _ref_fmix64(ch ^ slot[0])[0] < _ref_threshold(cfg.provider_fraction):
                key = _U(mark.provider.value)
        green = _ref_fmix64((key ^ ch[0]) ^ tok_hash) < _ref_threshold(cfg.gamma)
        out[i] = scores[i] + torch.from_numpy(green).to(scores.dtype).mul_(cfg.delta)
    return out


def check_bit_identical(mk: MasterKey, vocab: int, seed: int) -> dict[str, Any]:
    """Our processor against the reference, over widths, gammas, batch sizes and mixed rows."""
    gen = torch.Generator().manual_seed(seed)
    cases = 0
    for h in (1, 2, 3, 4):
        for gamma in (0.25, 0.3, 0.5):
            cfg = WatermarkConfig(gamma=gamma, context_width=h)
            for b in (1, 16):
                acct = [mk.account_key(f"check{i}") for i in range(b)]
                variants = {
                    "provider": [MarkKeys(a, mk.provider_key()) for a in acct],
                    "account-only": [MarkKeys(a) for a in acct],
                    "mixed": [
                        None if i % 3 == 0 else MarkKeys(a, mk.provider_key() if i % 2 else None)
                        for i, a in enumerate(acct)
                    ],
                }
                for marks in variants.values():
                    if all(m is None for m in marks):
                        continue
                    proc = WatermarkLogitsProcessor(Watermark(cfg), marks)
                    for _ in range(3):
                        ids = torch.randint(0, vocab, (b, 12), generator=gen)
                        scores = torch.randn(b, vocab, generator=gen)
                        scores[0, :5] = float("-inf")
                        got = proc(ids, scores.clone())
                        want = reference_scores(cfg, marks, ids, scores)
                        if not torch.equal(got, want):
                            return {"bit_identical": False, "failed": {"h": h, "gamma": gamma, "batch": b}}
                        cases += 1
    return {"bit_identical": True, "cases": cases}


# ---- timing ---------------------------------------------------------------------------------------------
class ProcessorTimer:
    """Accumulates the time spent in the ``__call__`` of the watermark processor classes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def install(self, cls: type) -> None:
        original = cls.__call__
        timer = self

        @functools.wraps(original)
        def timed_call(self_: Any, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            out = original(self_, input_ids, scores)
            timer.seconds += time.perf_counter() - t0
            timer.calls += 1
            return out

        cls.__call__ = timed_call

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def batch_inputs(lm: LocalModel, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [lm.encode_prompt(p) for p in PROMPTS[:b]]
    width = max(len(e) for e in encoded)
    pad = lm.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], dtype=torch.long)
    att = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], dtype=torch.long)
    return ids, att


def run_once(
    lm: LocalModel,
    conf: dict[str, Any],
    ids: torch.Tensor,
    att: torch.Tensor,
    new_tokens: int,
    args: argparse.Namespace,
    timer: ProcessorTimer,
) -> dict[str, float]:
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": att,
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": True,
        "temperature": args.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "pad_token_id": lm.tokenizer.pad_token_id,
    }
    if conf["kind"] == "ours":
        marks = conf["marks"][: ids.shape[0]]
        kwargs["logits_processor"] = LogitsProcessorList([WatermarkLogitsProcessor(conf["watermark"], marks)])
    elif conf["kind"] == "hf":
        kwargs["watermarking_config"] = conf["wcfg"]
    timer.reset()
    with torch.inference_mode():
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        out = lm.model.generate(**kwargs)
        dt = time.perf_counter() - t0
    made = out.shape[1] - ids.shape[1]
    if made != new_tokens:
        raise RuntimeError(f"{conf['name']}: generated {made} tokens, expected {new_tokens}")
    return {"seconds": dt, "proc_seconds": timer.seconds, "proc_calls": timer.calls}


def configurations(args: argparse.Namespace, mk: MasterKey) -> list[dict[str, Any]]:
    marks = [MarkKeys(mk.account_key(f"acct{i}"), mk.provider_key()) for i in range(len(PROMPTS))]
    confs: list[dict[str, Any]] = [{"name": "none", "kind": "none"}]
    for h in args.widths:
        confs.append(
            {
                "name": f"ours-h{h}",
                "kind": "ours",
                "marks": marks,
                "watermark": Watermark(WatermarkConfig(context_width=h)),
            }
        )
    ours = WatermarkConfig()  # transformers' configurations get the same gamma and bias
    for seeding in ("lefthash", "selfhash"):
        if seeding == "selfhash" and args.selfhash_rounds == 0:
            continue
        confs.append(
            {
                "name": f"hf-{seeding}",
                "kind": "hf",
                "wcfg": WatermarkingConfig(
                    greenlist_ratio=ours.gamma, bias=ours.delta, seeding_scheme=seeding, context_width=1
                ),
            }
        )
    return confs


def summarise(
    confs: list[dict[str, Any]],
    runs: dict[tuple[int, str], list[dict[str, float]]],
    batch_sizes: list[int],
    new_tokens: int,
) -> list[dict[str, Any]]:
    rows = []
    for b in batch_sizes:
        base = runs[(b, "none")]
        for conf in confs:
            rs = runs[(b, conf["name"])]
            # paired with the baseline of the same round (hf-selfhash runs in the first rounds only)
            ratios = [r["seconds"] / base[i]["seconds"] for i, r in enumerate(rs)]
            med_s = median([r["seconds"] for r in rs])
            fracs = [r["proc_seconds"] / r["seconds"] for r in rs]
            calls = [r["proc_calls"] for r in rs]
            marked = conf["kind"] != "none"
            proc_frac = median(fracs) if marked else None
            per_step = [r["proc_seconds"] / max(1, r["proc_calls"]) for r in rs]
            step_ms = median(per_step) * 1e3 if marked else None
            rows.append(
                {
                    "batch": b,
                    "config": conf["name"],
                    "rounds": len(rs),
                    "seconds": [r["seconds"] for r in rs],
                    "median_s": med_s,
                    "tokens_per_s": b * new_tokens / med_s,
                    "overhead_pct": (median(ratios) - 1.0) * 100.0,
                    "processor_share_pct": proc_frac * 100.0 if marked else None,
                    "processor_overhead_pct": proc_frac / (1.0 - proc_frac) * 100.0 if marked else None,
                    "processor_ms_per_step": step_ms,
                    "processor_calls": calls[0] if calls else 0,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mk = MasterKey(b"benchmark-master-key-0123456789ab")
    lm = LocalModel.load()
    threads = torch.get_num_threads()
    print(f"model: {lm.name}, vocab {lm.vocab_size}, torch threads {threads}", file=sys.stderr)

    t0 = time.perf_counter()
    check = check_bit_identical(mk, lm.vocab_size, args.seed)
    print(f"bit-identical check: {check} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    timer = ProcessorTimer()
    timer.install(WatermarkLogitsProcessor)
    timer.install(hf_lp.WatermarkLogitsProcessor)
    confs = configurations(args, mk)
    inputs = {b: batch_inputs(lm, b) for b in args.batch_sizes}

    t0 = time.perf_counter()
    for b in args.batch_sizes:  # warm-up: first-call costs of every path, untimed
        for conf in confs:
            run_once(lm, conf, *inputs[b], 2, args, timer)
    print(f"warm-up done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    runs: dict[tuple[int, str], list[dict[str, float]]] = {(b, c["name"]): [] for b in args.batch_sizes for c in confs}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        active = [c for c in confs if c["name"] != "hf-selfhash" or r < args.selfhash_rounds]
        order = active[r % len(active) :] + active[: r % len(active)]
        for b in args.batch_sizes:
            for conf in order:
                runs[(b, conf["name"])].append(run_once(lm, conf, *inputs[b], args.new_tokens, args, timer))
        print(f"  round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)

    rows = summarise(confs, runs, args.batch_sizes, args.new_tokens)
    print(
        f"\ngeneration: {lm.name}, {args.new_tokens} new tokens per row, {args.rounds} interleaved rounds "
        f"(hf-selfhash: {args.selfhash_rounds}), torch threads {threads}"
    )
    print(
        table(
            ["batch", "config", "rounds", "tokens/s", "overhead %", "in processor %", "proc ms/step"],
            [
                [
                    r["batch"],
                    r["config"],
                    r["rounds"],
                    r["tokens_per_s"],
                    r["overhead_pct"],
                    r["processor_share_pct"],
                    r["processor_ms_per_step"],
                ]
                for r in rows
            ],
        )
    )
    ours = [r for r in rows if r["config"].startswith("ours-")]
    worst_wall = max(r["overhead_pct"] for r in ours)
    worst_proc = max(r["processor_overhead_pct"] for r in ours)
    met = worst_proc <= TARGET_OVERHEAD_PCT
    print(
        f"ours, worst case: {worst_wall:.1f}% by wall clock, {worst_proc:.2f}% by processor time "
        f"(target <= {TARGET_OVERHEAD_PCT:.0f}%: {'met' if met else 'NOT met'}); bit-identical: "
        f"{check['bit_identical']}"
    )
    path = write_json(
        "generation_overhead",
        {
            "args": vars(args),
            "model": lm.name,
            "vocab_size": lm.vocab_size,
            "check": check,
            "rows": rows,
            "worst_ours_overhead_pct_wall": worst_wall,
            "worst_ours_overhead_pct_processor": worst_proc,
            "target_overhead_pct": TARGET_OVERHEAD_PCT,
            "meets_target": met,
            "meets_target_wall_clock": worst_wall <= TARGET_OVERHEAD_PCT,
            "notes": (
                "overhead_pct: median over rounds of (config time / unwatermarked time of the same round "
                "and batch) - 1. processor_overhead_pct: processor time / (generation time - processor "
                "time), the more precise figure on a noisy machine."
            ),
        },
        args.out,
    )
    print(f"\nwrote {path}")
    return 0 if check["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
