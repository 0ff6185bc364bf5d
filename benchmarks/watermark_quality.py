"""Cost of the watermark to quality: perplexity of watermarked completions under the unwatermarked teacher.

For each green-list bias ``delta`` (0 = no watermark, then 1, 2, 3, 4; gamma and the scheme at their defaults),
the embedded model answers the same prompts with the same sampling seeds, each row marked with an account key
and the provider key as the gateway marks it. Each completion's token ids (exactly as generated, no
re-tokenization) are then scored by the same model *without* the watermark: the perplexity
``exp(mean NLL per token)`` measures how far the bias pushed the text from what the model itself would say
(Kirchenbauer et al. 2023, https://arxiv.org/abs/2301.10226, Fig. 2, use the same measure with a larger
oracle model). Reported next to it: the green fraction and the median p-value of the exact binomial test, so
quality and detectability are read off one table.

Generation uses ``min_new_tokens = max_new_tokens``, so every row has the same length at every delta, and
rounds of all deltas are interleaved with different seeds.

Run: ``.venv/bin/python benchmarks/watermark_quality.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import PROMPTS, table, write_json
from antidistill.detection.detector import Detector
from antidistill.keys import MasterKey
from antidistill.models.local import LocalModel
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deltas", default="0,1,2,3,4", help="comma-separated deltas (0: no watermark)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per round (from the shared list)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per completion (forced)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds (each a different sampling seed)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 prompts, 32 tokens, 1 round")
    ap.add_argument("--out", help="JSON output path")
    return ap.parse_args(argv)


def completion_nll(lm: LocalModel, prompts: list[str], completions: list[list[int]]) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each completion given its prompt, under ``lm``'s model with no processor."""
    import torch

    rows = [lm.encode_prompt(p) for p in prompts]
    width = max(len(r) + len(c) for r, c in zip(rows, completions, strict=True))
    pad = lm.tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, c) in enumerate(zip(rows, completions, strict=True)):
        seq = r + c
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for i, (r, c) in enumerate(zip(rows, completions, strict=True)):
        pos = torch.arange(len(r) - 1, len(r) + len(c) - 1)
        nll = -logp[i, pos, torch.tensor(c)].sum().item()
        out.append((nll, len(c)))
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.rounds = 8, 32, 1
    torch.set_num_threads(args.threads)
    deltas = [float(d) for d in args.deltas.split(",")]
    prompts = PROMPTS[: args.prompts]
    lm = LocalModel.load()
    master = MasterKey(b"watermark-quality-benchmark-key!")
    provider = master.provider_key()
    marks = [MarkKeys(master.account_key(f"user-{i}"), provider) for i in range(len(prompts))]

    per_delta: dict[float, dict] = {
        d: {"nll": 0.0, "tokens": 0, "ppl_rows": [], "green": 0, "scored": 0, "p": [], "gen_s": 0.0} for d in deltas
    }
    t_start = time.perf_counter()
    for rnd in range(args.rounds):
        order = deltas[rnd % len(deltas) :] + deltas[: rnd % len(deltas)]
        for d in order:
            config = WatermarkConfig(delta=d)
            lm.watermark = Watermark(config)
            t0 = time.perf_counter()
            comps = lm.generate(
                prompts,
                marks if d > 0 else [None] * len(prompts),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                temperature=args.temperature,
                seed=1000 + rnd,
            )
            acc = per_delta[d]
            acc["gen_s"] += time.perf_counter() - t0
            for nll, n in completion_nll(lm, prompts, [c.token_ids for c in comps]):
                acc["nll"] += nll
                acc["tokens"] += n
                acc["ppl_rows"].append(math.exp(nll / max(n, 1)))
            det = Detector(config)
            for c, m in zip(comps, marks, strict=True):
                s = det.score(c.token_ids, m.account, m.provider)
                acc["green"] += s.green
                acc["scored"] += s.tokens_scored
                acc["p"].append(s.p_value)
            print(
                f"round {rnd + 1}/{args.rounds} delta {d:g}: ppl {math.exp(acc['nll'] / acc['tokens']):.2f}",
                file=sys.stderr,
                flush=True,
            )

    base = math.exp(per_delta[deltas[0]]["nll"] / per_delta[deltas[0]]["tokens"])
    results, rows = [], []
    for d in deltas:
        acc = per_delta[d]
        ppl = math.exp(acc["nll"] / acc["tokens"])
        r = {
            "delta": d,
            "watermarked": d > 0,
            "completions": len(acc["ppl_rows"]),
            "tokens": acc["tokens"],
            "perplexity": ppl,
            "perplexity_ratio": ppl / base,
            "median_row_perplexity": statistics.median(acc["ppl_rows"]),
            "green_fraction": acc["green"] / max(acc["scored"], 1),
            "median_p_value": statistics.median(acc["p"]),
            "detected_at_1e-3": sum(p <= 1e-3 for p in acc["p"]) / len(acc["p"]),
        }
        results.append(r)
        rows.append(
            [
                f"{d:g}" + (" (none)" if d == 0 else ""),
                r["perplexity"],
                r["perplexity_ratio"],
                r["median_row_perplexity"],
                r["green_fraction"],
                r["median_p_value"],
                r["detected_at_1e-3"],
            ]
        )
    print(table(["delta", "ppl", "x none", "median row ppl", "green frac", "median p", "detected@1e-3"], rows))
    path = write_json(
        "watermark_quality",
        {
            "params": {
                "deltas": deltas,
                "prompts": len(prompts),
                "new_tokens": args.new_tokens,
                "rounds": args.rounds,
                "temperature": args.temperature,
                "gamma": WatermarkConfig().gamma,
                "scheme": WatermarkConfig().scheme,
                "scorer": "the same model, unwatermarked",
            },
            "results": results,
            "seconds": time.perf_counter() - t_start,
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
