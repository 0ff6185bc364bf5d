"""Reasoning-demand recognition: the classifier against the phrase list it replaced, on held-out text, at speed,
and on the simulator's personas.

Three measurements, each with the old phrase list (:func:`antidistill.monitor.intent.phrase_demands`) as the peer
in the same run:

* **held-out accuracy**: precision and recall with Wilson 95% intervals on
  ``benchmarks/data/reasoning_intent_heldout.tsv``, a set of demands and non-demands written separately from the
  training set (other wordings, whole prompts, casual and system-prompt forms; never trained on). The training
  set's own accuracy is shown for reference only (it is in-sample).
* **cost per prompt** (microseconds, one core): on the distinct prompts of a simulation, normalised beforehand;
  the classifier cold (its per-word cache empty) and warm, the phrase list, and ``normalise`` for scale. The
  monitor calls the recogniser once per distinct prompt text (``Encoder``'s text cache), so the warm figure is
  the steady state only for repeated words, the cold one is the worst case.
* **personas**: the share of each persona's exchanges recognised as demands (``cot_share`` over the whole run)
  in a held-out simulation plan (no gateway: the plan's prompts as the audit log would hold them), by role.

With ``--embed N`` it also times the shipped embedding model (all-MiniLM-L6-v2) on N prompts, the alternative
the issue names; a classifier on top of it would cost at least that much per prompt.

Run: ``.venv/bin/python benchmarks/reasoning_intent.py [--seed 1028] [--scale small] [--embed 256]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import table, write_json
from antidistill.monitor.intent import TRAIN_FILE, ReasoningIntent, phrase_demands, read_examples
from antidistill.monitor.templates import normalise

HELDOUT = Path(__file__).resolve().parent / "data" / "reasoning_intent_heldout.tsv"
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (Wilson 1927); ``(nan, nan)`` for ``n = 0``."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion(pred: Callable[[str], bool], examples: Sequence[tuple[int, str]]) -> dict:
    tp = fp = fn = tn = 0
    wrong = []
    for y, text in examples:
        p = pred(normalise(text))
        if p and y:
            tp += 1
        elif p:
            fp += 1
            wrong.append(("false positive", text))
        elif y:
            fn += 1
            wrong.append(("missed", text))
        else:
            tn += 1
    prec_ci, rec_ci = wilson(tp, tp + fp), wilson(tp, tp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "precision_ci95": prec_ci,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "recall_ci95": rec_ci,
        "false_positive_rate": fp / (fp + tn) if fp + tn else math.nan,
        "false_positive_rate_ci95": wilson(fp, fp + tn),
        "errors": wrong,
    }


def per_prompt_us(fn: Callable[[str], object], texts: Sequence[str], repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for t in texts:
            fn(t)
        best = min(best, time.perf_counter() - t0)
    return best / len(texts) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1028, help="held-out simulation seed (personas table)")
    ap.add_argument("--scale", default="small", help="simulation scale (personas table and prompts timed)")
    ap.add_argument("--embed", type=int, default=0, help="also time the embedding model on this many prompts")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    clf = ReasoningIntent.shipped()
    methods: dict[str, Callable[[str], bool]] = {
        "phrase list (old)": phrase_demands,
        "classifier": clf.demands,
    }
    heldout = read_examples(HELDOUT)
    train = read_examples(TRAIN_FILE)
    acc = {name: confusion(fn, heldout) for name, fn in methods.items()}
    acc_train = {name: confusion(fn, train) for name, fn in methods.items()}
    n_pos = sum(y for y, _ in heldout)
    print(f"held-out set: {n_pos} demands, {len(heldout) - n_pos} non-demands ({HELDOUT.name})")
    rows = []
    for name, r in acc.items():
        rows.append(
            [
                name,
                r["precision"],
                f"[{r['precision_ci95'][0]:.2f}, {r['precision_ci95'][1]:.2f}]",
                r["recall"],
                f"[{r['recall_ci95'][0]:.2f}, {r['recall_ci95'][1]:.2f}]",
                r["false_positive_rate"],
                f"[{r['false_positive_rate_ci95'][0]:.3f}, {r['false_positive_rate_ci95'][1]:.3f}]",
                acc_train[name]["recall"],
                acc_train[name]["false_positive_rate"],
            ]
        )
    print(
        table(
            [
                "held-out",
                "precision",
                "95% CI",
                "recall",
                "95% CI",
                "FPR",
                "95% CI",
                "train recall (in-sample)",
                "train FPR",
            ],
            rows,
        )
    )
    ratio = acc["classifier"]["recall"] / max(acc["phrase list (old)"]["recall"], 1e-9)
    print(f"recall ratio classifier / phrase list: {ratio:.1f}x")

    # ---- the simulation: prompts to time, and cot_share by persona
    from antidistill.monitor.train import plan_events
    from antidistill.simulate.scenario import Scenario

    plan = Scenario.from_scale(args.scale, seed=args.seed, split="heldout").build()
    events = list(plan_events(plan))
    persona = {a.key: a.persona for a in plan.accounts}
    role = {a.key: a.role for a in plan.accounts}
    prompts = list(dict.fromkeys(e.prompt for e in events if isinstance(e.prompt, str)))
    t0 = time.perf_counter()
    norms = [normalise(p) for p in prompts]
    normalise_us = (time.perf_counter() - t0) / len(prompts) * 1e6
    words = sum(len(n.split()) for n in norms) / len(norms)
    cold = ReasoningIntent(clf.weights, clf.bias, clf.threshold, clf.window_words)
    t0 = time.perf_counter()
    for n in norms:
        cold.demands(n)
    cold_us = (time.perf_counter() - t0) / len(norms) * 1e6
    speed = {
        "distinct_prompts": len(norms),
        "mean_words": words,
        "normalise_us": normalise_us,
        "classifier_cold_us": cold_us,
        "classifier_warm_us": per_prompt_us(cold.demands, norms),
        "phrase_list_us": per_prompt_us(phrase_demands, norms),
    }
    print(
        f"\ncost per distinct prompt ({len(norms):,} prompts of a {args.scale} plan, mean {words:.0f} words, one core)"
    )
    print(
        table(
            ["step", "us/prompt"],
            [
                ["normalise (for scale)", speed["normalise_us"]],
                ["classifier, cold word cache", speed["classifier_cold_us"]],
                ["classifier, warm word cache", speed["classifier_warm_us"]],
                ["phrase list (old)", speed["phrase_list_us"]],
            ],
        )
    )

    memo: dict[str, tuple[bool, bool]] = {}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in events:
        p = e.prompt if isinstance(e.prompt, str) else ""
        got = memo.get(p)
        if got is None:
            n = normalise(p)
            got = memo[p] = (phrase_demands(n), clf.demands(n))
        c = counts[f"{role[e.account_id]}:{persona[e.account_id]}"]
        c[0] += 1
        c[1] += got[0]
        c[2] += got[1]
    personas = {
        k: {"exchanges": n, "cot_share_phrase_list": old / n, "cot_share_classifier": new / n}
        for k, (n, old, new) in sorted(counts.items())
    }
    print(f"\ncot_share by persona (exchanges demanding the reasoning), held-out plan seed {args.seed}, {args.scale}")
    print(
        table(
            ["role:persona", "exchanges", "phrase list", "classifier"],
            [[k, v["exchanges"], v["cot_share_phrase_list"], v["cot_share_classifier"]] for k, v in personas.items()],
        )
    )

    embed = None
    if args.embed:
        from antidistill.monitor.embed import Embedder

        emb = Embedder(batch_size=64, threads=1)
        emb.embed(["warm up"])
        sub = prompts[: args.embed]
        t0 = time.perf_counter()
        emb.embed(sub)
        dt = time.perf_counter() - t0
        embed = {"prompts": len(sub), "us_per_prompt": dt / len(sub) * 1e6, "threads": 1, "batch_size": 64}
        print(f"\nembedding model (all-MiniLM-L6-v2, 1 thread, batches of 64): {embed['us_per_prompt']:,.0f} us/prompt")

    path = write_json(
        "reasoning_intent",
        {
            "args": vars(args),
            "heldout_file": str(HELDOUT.relative_to(Path(__file__).resolve().parent.parent)),
            "heldout": acc,
            "train_in_sample": {k: {x: v[x] for x in v if x != "errors"} for k, v in acc_train.items()},
            "recall_ratio": ratio,
            "speed": speed,
            "personas": personas,
            "embedding": embed,
        },
        args.out,
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
