"""Distillation on the CPU: training speed and what the student learns, per training method.

Every method starts from the embedded teacher (SmolLM2-135M-Instruct) and trains on the same watermarked
teacher answers for the same wall-time budget; the held-out loss (mean NLL per answer token on teacher answers
to prompts it never saw) is measured before and after. Equal budgets answer the question the demo asks: which
method learns the teacher's outputs (and with them the watermark's bias) fastest per CPU-second?

Methods (see :mod:`antidistill.redteam.train`):

* ``full``: all weights;
* ``lora-all``: LoRA r=16 on every linear layer of every block (``k`` = 30, the depth);
* ``lora-last-K``: LoRA only on the last K blocks (backward stops there);
* ``last-K``: full tuning of the last K blocks, the frozen bottom run once per example and cached;
* ``subset-N``: a student of N evenly spaced teacher blocks, all weights trained (its "before" is the cut-down
  model's loss, much worse than the teacher's).

Data: the set written by ``benchmarks/make_distill_data.py`` (``wm_train.jsonl`` for training,
``wm_heldout.jsonl`` held out). Methods run one after another (a training run cannot be interleaved), so
machine load drifts between them; the load average is recorded.

Run: ``.venv/bin/python benchmarks/distill_training.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import table, write_json
from antidistill.redteam.data import load_pairs
from antidistill.redteam.train import load_teacher, train_student
from antidistill.settings import get_settings

METHODS = {
    "full": {"method": "full"},
    "lora-all": {"method": "lora", "k": 30},
    "lora-last-6": {"method": "lora", "k": 6},
    "last-2": {"method": "last-k", "k": 2},
    "last-6": {"method": "last-k", "k": 6},
    "subset-15": {"method": "subset", "n_layers": 15},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", help="default: <cache_dir>/distill-data/v1")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-heldout", type=int, default=16)
    ap.add_argument("--budget", type=float, default=90.0, help="training seconds per method")
    ap.add_argument("--epochs", type=float, default=20.0, help="upper bound; the budget usually stops first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="24 pairs, 8 held out, 20 s per method")
    ap.add_argument("--out", help="JSON output path")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if args.quick:
        args.n_train, args.n_heldout, args.budget = 24, 8, 20.0
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else get_settings().cache_dir / "distill-data" / "v1"
    train = load_pairs(data_dir / "wm_train.jsonl")[: args.n_train]
    held = load_pairs(data_dir / "wm_heldout.jsonl")[: args.n_heldout]
    if len(train) < args.n_train:
        print(f"note: only {len(train)} training pairs available", file=sys.stderr)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods: {unknown}")

    results, rows = [], []
    for name in names:
        model, tokenizer = load_teacher()
        load = os.getloadavg()[0]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = train_student(
            train,
            model=model,
            tokenizer=tokenizer,
            epochs=args.epochs,
            max_len=args.max_len,
            batch_size=args.batch_size,
            seed=0,
            heldout=held,
            max_seconds=args.budget,
            **METHODS[name],
        )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        drop = res.heldout_loss_before - res.heldout_loss_after
        r = {
            "name": name,
            **METHODS[name],
            **res.to_dict(),
            "drop": drop,
            "wall_s_total": wall,
            "cpu_s_total": cpu,
            "loadavg_1m_at_start": load,
            "drop_per_train_s": drop / res.seconds if res.seconds else 0.0,
            "tokens_per_cpu_s": res.tokens / res.cpu_seconds if res.cpu_seconds else 0.0,
        }
        r.pop("losses")
        r["first_losses"], r["last_losses"] = res.losses[:3], res.losses[-3:]
        results.append(r)
        rows.append(
            [
                name,
                res.trainable_params / 1e6,
                res.tokens_per_s,
                r["tokens_per_cpu_s"],
                res.steps,
                res.epochs_done,
                res.heldout_loss_before,
                res.heldout_loss_after,
                drop,
                load,
            ]
        )
        print(
            f"{name}: {res.tokens_per_s:.0f} tok/s, {res.epochs_done:.2f} epochs, held-out "
            f"{res.heldout_loss_before:.3f} -> {res.heldout_loss_after:.3f}",
            file=sys.stderr,
            flush=True,
        )
        del model
    print(
        table(
            [
                "method",
                "trainable M",
                "tok/s",
                "tok/cpu-s",
                "steps",
                "epochs",
                "held-out before",
                "after",
                "drop",
                "load",
            ],
            rows,
        )
    )
    path = write_json(
        "distill_training",
        {
            "params": {
                "n_train": len(train),
                "n_heldout": len(held),
                "budget_s": args.budget,
                "epochs_max": args.epochs,
                "batch_size": args.batch_size,
                "max_len": args.max_len,
                "threads": args.threads,
                "data_dir": str(data_dir),
                "train_file": "wm_train.jsonl",
                "heldout_file": "wm_heldout.jsonl",
            },
            "results": results,
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
