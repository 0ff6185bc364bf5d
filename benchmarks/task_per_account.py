"""The task score one account gets: marked answers under several account keys, against unmarked answers.

The distortion-free members are distortion-free over keys; one account always uses one key. Where a context
recurs in every answer of an account, its keyed choice recurs too. The chat template's tail is such a context:
it ends every prompt, so the answer's first tokens used to be chosen by the same keyed race for every prompt an
account sent. Since the mark skips contexts that reach into the prompt (``WatermarkLogitsProcessor``'s
``answer_start``), those tokens come from the ordinary sampler.

This program measures what that does to the capital-city task score of ``watermark_compare.py`` (120 questions,
16 tokens, temperature 0.7), per account key:

* ``answer contexts``: the product as it marks now (contexts inside the answer only);
* ``whole-sequence contexts``: the earlier rule (every step with a full context, the prompt's tail included),
  reproduced with the same processor given no ``answer_start``;
* ``none``: unmarked, one seed per key, for the run-to-run spread.

Run: ``.venv/bin/python benchmarks/task_per_account.py --scheme gumbel-dual --keys 6``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from _common import table, write_json
from antidistill.models.local import LocalModel
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor
from watermark_compare import MASTER, TASK_TOKENS, task_correct, task_items

MODES = ("answer contexts", "whole-sequence contexts", "none")


def accuracy(lm: LocalModel, items: list[Any], mode: str, mark: MarkKeys, seed: int, temperature: float) -> float:
    """The share of ``items`` answered right under ``mode`` (batches of 60, the same seeds in every mode)."""
    correct: list[bool] = []
    for s in range(0, len(items), 60):
        chunk = items[s : s + 60]
        marks: list[MarkKeys | None] = [mark if mode == "answer contexts" else None] * len(chunk)
        extra = []
        if mode == "whole-sequence contexts":
            extra = [WatermarkLogitsProcessor(lm.watermark, [mark] * len(chunk), temperature=temperature)]
        comps = lm.generate(
            [it.prompt for it in chunk],
            marks,
            max_new_tokens=TASK_TOKENS,
            temperature=temperature,
            seed=seed * 1000 + s,
            logits_processor_extra=extra,
        )
        correct += [task_correct(it, c.text) for it, c in zip(chunk, comps, strict=True)]
    return float(np.mean(correct))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheme", default="gumbel-dual")
    ap.add_argument("--context-width", type=int, default=None)
    ap.add_argument("--keys", type=int, default=6, help="account keys (and unmarked seeds)")
    ap.add_argument("--task-items", type=int, default=120)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    config = WatermarkConfig(scheme=args.scheme, context_width=args.context_width)
    lm = LocalModel.load()
    lm.watermark = Watermark(config)
    items = task_items(args.task_items, 0)
    scores: dict[str, list[float]] = {m: [] for m in MODES}
    t0 = time.perf_counter()
    for k in range(args.keys):
        mark = MarkKeys(MASTER.account_key(f"task-account-{k}"), MASTER.provider_key())
        for mode in MODES:
            scores[mode].append(accuracy(lm, items, mode, mark, k, args.temperature))
        print(f"key {k}: " + ", ".join(f"{m} {scores[m][-1]:.3f}" for m in MODES), flush=True)
    rows = [
        [m, f"{np.mean(v):.1%}", f"{np.std(v, ddof=1):.1%}" if len(v) > 1 else "-", f"{min(v):.1%}", f"{max(v):.1%}"]
        for m, v in scores.items()
    ]
    print(f"\n{config.scheme} h={config.context_width}, {len(items)} capital-city questions, T={args.temperature}")
    print(table(["mode", "mean over keys", "sd", "worst key", "best key"], rows))
    payload = {"config": config.to_dict(), "items": len(items), "temperature": args.temperature, "scores": scores}
    payload["seconds"] = time.perf_counter() - t0
    print(f"wrote {write_json('task_per_account', payload, args.out)}")


if __name__ == "__main__":
    main()
