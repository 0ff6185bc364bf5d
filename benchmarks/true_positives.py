"""True positives: how reliably watermarked completions of the embedded model are detected and attributed.

The embedded model (SmolLM2-135M-Instruct, :class:`antidistill.models.local.LocalModel`) generates ``--n``
completions of exactly ``--tokens`` new tokens (``min_new_tokens = max_new_tokens``) in batches of
``--batch``, each row marked with ``MarkKeys(master.account_key(account), master.provider_key())``, the
rows spread round-robin over ``--accounts`` accounts. Prompts are built here from topic x task templates
(chat template, one user message each).

Each completion (the generated token ids only, no prompt) is scored with
``Detector(WatermarkConfig()).detect(ids, provider_keys=[provider], candidates=...)`` at ``--alpha``
(default 1e-5), the candidates being every real account plus ``--decoys`` decoy accounts (1,000 in all), and
the figures are:

* TPR of the verdict (``p_value <= alpha``: provider test combined with the corrected attribution), of the
  provider test alone, and of the verdict on the decoded text tokenized again (what a detector that has only
  the text sees);
* correct attribution: the attributed account is the one that generated it (corrected p-value <= alpha);
* tokens needed: the shortest prefix (scanned in steps of ``--step`` tokens; monotonicity in the prefix length
  is not guaranteed, so the first length that reaches alpha) at which the verdict, the provider test, and the
  correct attribution reach alpha. Percentiles count completions that never reach it as infinitely long.

A control set of ``--controls`` completions of the same prompts, generated without marks, is scored the same
way: its flagged count is the false-positive control of this run.

The sampling parameters are explicit and written to the JSON: temperature 0.7, top-p 1.0 and top-k 0 (what
``LocalModel.generate`` uses), seeds ``--seed + batch index``.

Run: ``.venv/bin/python benchmarks/true_positives.py`` (about 8-10 minutes on 2 cores); ``--quick`` for a
smoke run (16 completions of 64 tokens, 16 controls).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from typing import Any

import numpy as np

from _common import RESULTS_DIR, table, write_json
from antidistill.detection.detector import Detector
from antidistill.keys import MasterKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys

MASTER = MasterKey(b"antidistill/benchmarks/true-positives/master")
TOP_K = 0  # LocalModel.generate samples from the full distribution (top_k=0)

TOPICS = [
    "the history of the printing press",
    "how vaccines work",
    "the water cycle",
    "black holes",
    "the French Revolution",
    "photosynthesis",
    "machine learning",
    "the Roman Empire",
    "climate change",
    "the human heart",
    "volcanoes",
    "the invention of the telephone",
    "honey bees",
    "the stock market",
    "plate tectonics",
    "the Industrial Revolution",
    "coral reefs",
    "the immune system",
    "renewable energy",
    "the Moon landing",
    "ancient Egypt",
    "the internet",
    "sleep",
    "bread baking",
    "the Great Wall of China",
    "electric cars",
    "the Olympic Games",
    "rainforests",
    "the Renaissance",
    "earthquakes",
    "coffee",
    "the human brain",
    "recycling",
    "jazz music",
    "the solar system",
    "public libraries",
]
TASKS = [
    "Write an essay about {}.",
    "Explain {} in detail.",
    "Write a detailed blog post about {}.",
    "Describe {} to a curious teenager.",
    "Write a long, informative article about {}.",
    "Tell me everything you know about {}.",
    "Give a thorough overview of {}, with examples.",
    "Write a story that teaches the reader about {}.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=208, help="watermarked completions")
    ap.add_argument("--tokens", type=int, default=200, help="new tokens per completion (forced)")
    ap.add_argument("--batch", type=int, default=16, help="rows per generate call")
    ap.add_argument("--accounts", type=int, default=8, help="accounts the rows are spread over")
    ap.add_argument("--decoys", type=int, default=992, help="decoy candidate accounts in attribution")
    ap.add_argument("--alpha", type=float, default=1e-5)
    ap.add_argument("--controls", type=int, default=48, help="unwatermarked control completions")
    ap.add_argument("--step", type=int, default=8, help="prefix step (tokens) of the tokens-needed scan")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: n=16, tokens=64, controls=16")
    ap.add_argument("--out", default=str(RESULTS_DIR / "true_positives.json"), help="JSON path")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.tokens, args.controls = 16, 64, 16
    return args


def prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct prompts (topic x task), shuffled with ``seed``."""
    all_prompts = [t.format(topic) for topic, t in itertools.product(TOPICS, TASKS)]
    random.Random(seed).shuffle(all_prompts)
    if n > len(all_prompts):
        raise SystemExit(f"at most {len(all_prompts)} distinct prompts; asked for {n}")
    return all_prompts[:n]


def generate(model, texts: list[str], marks: list[MarkKeys | None], args) -> tuple[list[Any], float]:
    out, t0 = [], time.perf_counter()
    for b in range(0, len(texts), args.batch):
        out += model.generate(
            texts[b : b + args.batch],
            marks[b : b + args.batch],
            max_new_tokens=args.tokens,
            min_new_tokens=args.tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed + b // args.batch,
        )
        print(f"  generated {len(out)}/{len(texts)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return out, time.perf_counter() - t0


def tokens_needed(ids: np.ndarray, step: int, detect, account: str, alpha: float) -> dict[str, int | None]:
    """The first prefix length (multiples of ``step``, then the full length) at which the verdict, the
    provider test and the correct attribution each reach ``alpha`` (None: never within the completion)."""
    first: dict[str, int | None] = {"verdict": None, "provider": None, "attribution": None}
    for length in [*range(step, len(ids), step), len(ids)]:
        r = detect(ids[:length])
        hits = {
            "verdict": r.p_value <= alpha,
            "provider": r.provider.p_value <= alpha,
            "attribution": r.account == account,
        }
        for k, hit in hits.items():
            if hit and first[k] is None:
                first[k] = length
        if all(v is not None for v in first.values()):
            break
    return first


def percentiles(values: list[int | None]) -> dict[str, Any]:
    """p10/median/p90 of tokens needed; never-reached counts as infinitely long (reported as None)."""
    arr = np.array([np.inf if v is None else v for v in values], dtype=float)
    out: dict[str, Any] = {"reached": int(np.isfinite(arr).sum()), "of": len(arr)}
    for name, q in (("p10", 10), ("median", 50), ("p90", 90)):
        v = float(np.percentile(arr, q, method="higher")) if len(arr) else float("nan")
        out[name] = v if np.isfinite(v) else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from antidistill.models.local import LocalModel

    t0 = time.perf_counter()
    config = WatermarkConfig()
    model = LocalModel.load(config=config)
    t_load = time.perf_counter() - t0
    det = Detector(config, vocab_size=model.vocab_size)
    alpha = args.alpha

    provider = MASTER.provider_key()
    accounts = [f"acct-{j}" for j in range(args.accounts)]
    account_keys = {a: MASTER.account_key(a) for a in accounts}
    candidates = list(account_keys.values()) + [MASTER.account_key(f"decoy-{k}") for k in range(args.decoys)]
    texts = prompts(max(args.n, args.controls), args.seed)
    row_accounts = [accounts[i % len(accounts)] for i in range(args.n)]
    marks = [MarkKeys(account_keys[a], provider) for a in row_accounts]

    print(f"generating {args.n} watermarked completions of {args.tokens} tokens ...", file=sys.stderr)
    marked, t_marked = generate(model, texts[: args.n], marks, args)
    print(f"generating {args.controls} unwatermarked controls ...", file=sys.stderr)
    controls, t_controls = generate(model, texts[: args.controls], [None] * args.controls, args)

    def detect(ids, scan=False):
        return det.detect(ids, provider_keys=[provider], candidates=candidates, alpha=alpha, scan=scan)

    def retokenize(text: str) -> np.ndarray:
        """What a detector sees that has only the text: decoded, then encoded again."""
        return np.asarray(model.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    t1 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for comp, acct in zip(marked, row_accounts, strict=True):
        ids = np.asarray(comp.token_ids, dtype=np.int64)
        r = detect(ids, scan=True)
        rows.append(
            {
                "account": acct,
                "tokens": len(ids),
                "finish_reason": comp.finish_reason,
                "distinct_pairs": len(det.pairs(ids)),
                "p_value": r.p_value,
                "watermarked": r.watermarked,
                "provider_p": r.provider.p_value,
                "provider_green_fraction": r.provider.green_fraction,
                "provider_z": r.provider.z,
                "attributed": r.account,
                "attribution_p_corrected": r.p_value_corrected,
                "correct_attribution": r.account == acct,
                "p_value_retokenized": detect(retokenize(comp.text)).p_value,
                "tokens_needed": tokens_needed(ids, args.step, detect, acct, alpha),
                "text": comp.text,
            }
        )
    ctrl_rows = []
    for comp in controls:
        ids = np.asarray(comp.token_ids, dtype=np.int64)
        r = detect(ids, scan=True)
        ctrl_rows.append(
            {
                "tokens": len(ids),
                "p_value": r.p_value,
                "watermarked": r.watermarked,
                "provider_p": r.provider.p_value,
                "provider_green_fraction": r.provider.green_fraction,
                "attributed": r.account,
                "span_flagged": bool(r.span and r.span.watermarked),
                "text": comp.text,
            }
        )
    t_detect = time.perf_counter() - t1

    n = len(rows)
    tpr = sum(r["watermarked"] for r in rows) / n
    tpr_provider = sum(r["provider_p"] <= alpha for r in rows) / n
    tpr_retok = sum(r["p_value_retokenized"] <= alpha for r in rows) / n
    correct = sum(r["correct_attribution"] for r in rows) / n
    wrong = sum(r["attributed"] is not None and not r["correct_attribution"] for r in rows)
    need = percentiles([r["tokens_needed"]["verdict"] for r in rows])
    need_p = percentiles([r["tokens_needed"]["provider"] for r in rows])
    need_a = percentiles([r["tokens_needed"]["attribution"] for r in rows])
    ctrl_flagged = sum(r["watermarked"] for r in ctrl_rows)
    ctrl_attr = sum(r["attributed"] is not None for r in ctrl_rows)
    gen_tokens = sum(len(c.token_ids) for c in marked) + sum(len(c.token_ids) for c in controls)

    print(
        table(
            ["figure", "value"],
            [
                [f"watermarked completions ({args.tokens} tokens)", n],
                [f"TPR, verdict (alpha {alpha:g})", tpr],
                ["TPR, provider test alone", tpr_provider],
                ["TPR, verdict on the re-tokenized text", tpr_retok],
                [f"correct attribution among {len(candidates)} accounts", correct],
                ["wrong attributions", wrong],
                ["tokens needed, verdict p10/median/p90", f"{need['p10']}/{need['median']}/{need['p90']}"],
                ["tokens needed, provider p10/median/p90", f"{need_p['p10']}/{need_p['median']}/{need_p['p90']}"],
                ["tokens needed, attribution p10/median/p90", f"{need_a['p10']}/{need_a['median']}/{need_a['p90']}"],
                ["median provider green fraction", float(np.median([r["provider_green_fraction"] for r in rows]))],
                [
                    "median distinct pairs / tokens",
                    float(np.median([r["distinct_pairs"] / max(1, r["tokens"]) for r in rows])),
                ],
                [f"controls flagged (of {len(ctrl_rows)})", ctrl_flagged],
                ["controls attributed", ctrl_attr],
                ["generation tokens/s", gen_tokens / (t_marked + t_controls)],
            ],
        )
    )
    payload = {
        "model": model.name,
        "watermark_config": config.to_dict(),
        "sampling": {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": TOP_K,
            "max_new_tokens": args.tokens,
            "min_new_tokens": args.tokens,
            "batch": args.batch,
            "seeds": f"{args.seed} + batch index",
            "chat_template": True,
        },
        "alpha": alpha,
        "accounts": args.accounts,
        "candidates": len(candidates),
        "prefix_step": args.step,
        "quick": args.quick,
        "summary": {
            "n": n,
            "tpr": tpr,
            "tpr_provider": tpr_provider,
            "tpr_retokenized": tpr_retok,
            "correct_attribution": correct,
            "wrong_attributions": wrong,
            "tokens_needed": need,
            "tokens_needed_provider": need_p,
            "tokens_needed_attribution": need_a,
            "controls": {
                "n": len(ctrl_rows),
                "flagged": ctrl_flagged,
                "attributed": ctrl_attr,
                "span_flagged": sum(r["span_flagged"] for r in ctrl_rows),
                "min_p_value": min((r["p_value"] for r in ctrl_rows), default=None),
            },
        },
        "completions": rows,
        "control_completions": ctrl_rows,
        "prompts": texts,
        "seconds": {
            "load": t_load,
            "generate_marked": t_marked,
            "generate_controls": t_controls,
            "detect": t_detect,
            "total": time.perf_counter() - t0,
        },
    }
    path = write_json("true_positives", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
