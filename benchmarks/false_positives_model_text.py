"""False positives on the model's own unmarked text: the demo's verdict under many fresh master keys.

Human-written text (``false_positives.py``) is varied; what a model writes unmarked is often not: the embedded
135M model repeats itself ("The sky is blue is a fundamental concept…"), and repeated text is where a test that
counts repeated pairs goes wrong. This benchmark generates unmarked completions of the demo's prompts with the
embedded model (``--seeds``, ``--tokens`` each; the demo's batch of stage 2 at seed 7 among them), then scores
every completion exactly as the demo's detector does (:func:`antidistill.demo.checks.demo_detector`: the provider
key, the accounts alice and bob and the eight decoy accounts) under ``--keys`` fresh random master keys. The text
does not depend on the key (it is unmarked), so each key is an independent draw of the test's null distribution
for that text.

Figures: for the verdict (provider and attribution combined), the provider test and the corrected attribution,
the count, rate and exact 95% Clopper-Pearson interval of p <= each alpha, over all (key, text) tests; and the
smallest verdict p-value of each text. Valid p-values give rates at or below alpha.

Run: ``.venv/bin/python benchmarks/false_positives_model_text.py [--keys 8000]`` (generation ~2 min on 2 cores,
scoring ~2,500 tests/s).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from _common import table, write_json
from antidistill.demo.checks import DECOY_ACCOUNTS, DEMO_ALPHA
from antidistill.demo.stages.serve import PROMPTS, demo_rows
from antidistill.detection.detector import Detector
from antidistill.detection.text import TextDetector
from antidistill.errors import InputError
from antidistill.keys import MasterKey
from antidistill.models.local import LocalModel
from antidistill.watermark.marker import MarkKeys
from false_positives import rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=2000, help="fresh master keys (default 2000)")
    ap.add_argument("--seeds", default="11,12", help="generation seeds of the extra unmarked completions")
    ap.add_argument("--tokens", type=int, default=160, help="tokens per completion (the demo's 160)")
    ap.add_argument("--alphas", default="1e-2,1e-3,1e-4", help="comma-separated significance levels")
    ap.add_argument("--seed", type=int, default=1, help="seed of the master keys")
    ap.add_argument("--out", default=None, help="JSON path")
    return ap.parse_args(argv)


def unmarked_texts(lm: LocalModel, seeds: list[int], tokens: int) -> list[str]:
    """The demo's unmarked controls (stage 2's batch at seed 7, marked rows beside them), then every demo prompt
    unmarked at each seed."""
    rows = demo_rows(3, 3)
    mk = MasterKey(b"\x01" * 32)  # the controls are unmarked: their text does not depend on this key
    marks = [MarkKeys(mk.account_key(a), mk.provider_key()) if a else None for _, a, _ in rows]
    comps = lm.generate([p for _, _, p in rows], marks, max_new_tokens=tokens, min_new_tokens=tokens, seed=7)
    texts = [c.text for (_, a, _), c in zip(rows, comps, strict=True) if a is None]
    prompts = [p for ps in PROMPTS.values() for p in ps]
    for seed in seeds:
        out = lm.generate(prompts, [None] * len(prompts), max_new_tokens=tokens, min_new_tokens=tokens, seed=seed)
        texts += [c.text for c in out]
    return texts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    lm = LocalModel.load(None)
    t0 = time.perf_counter()
    texts = unmarked_texts(lm, [int(s) for s in args.seeds.split(",") if s], args.tokens)
    gen_s = time.perf_counter() - t0
    det = Detector(lm.watermark.config, vocab_size=lm.vocab_size)
    rng = np.random.default_rng(args.seed)
    p = {"verdict": [], "provider": [], "attribution": []}
    per_text = [1.0] * len(texts)
    skipped = 0
    t0 = time.perf_counter()
    for _ in range(args.keys):
        mk = MasterKey(rng.bytes(32))
        cands = [mk.account_key(a) for a in ("alice", "bob", *DECOY_ACCOUNTS)]
        td = TextDetector(lm.tokenizer, det, [mk.provider_key()], cands, DEMO_ALPHA)
        for j, text in enumerate(texts):
            try:
                r = td.detect(text)
            except InputError:  # too few distinct pairs to test: the demo generates such a text again
                skipped += 1
                continue
            p["verdict"].append(r.p_value)
            p["provider"].append(r.provider.p_value if r.provider else 1.0)
            p["attribution"].append(r.p_value_corrected if r.p_value_corrected is not None else 1.0)
            per_text[j] = min(per_text[j], r.p_value)
    score_s = time.perf_counter() - t0
    results: dict[str, Any] = {}
    rows = []
    for name, ps in p.items():
        arr = np.asarray(ps)
        results[name] = {f"{a:g}": rate(int((arr <= a).sum()), len(arr)) for a in alphas}
        for a in alphas:
            r = results[name][f"{a:g}"]
            rows.append(
                [name, f"{a:g}", r["count"], r["n"], f"{r['rate']:.2e}", f"[{r['ci95'][0]:.1e}, {r['ci95'][1]:.1e}]"]
            )
    print(
        f"{len(texts)} unmarked completions ({gen_s:.0f} s), {args.keys} fresh master keys, "
        f"{len(p['verdict'])} tests ({score_s:.0f} s; {skipped} too short to test)"
    )
    print(table(["test", "alpha", "p <= alpha", "tests", "rate", "95% CI"], rows))
    print("smallest verdict p per text:", " ".join(f"{x:.1e}" for x in per_text))
    path = write_json(
        "false_positives_model_text",
        {"keys": args.keys, "texts": texts, "tokens": args.tokens, "results": results, "min_p_per_text": per_text},
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
