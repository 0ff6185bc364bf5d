"""Closed-mode power: the top-logprob mass statistic beside the sampled-token statistic, on a real distilled student,
as the budget grows (scored tuples and suspect tokens -> p).

The data set comes from ``benchmarks/make_distill_data.py`` (``--data DIR``: its ``meta.json`` holds the public test
master key and the watermark configuration). A student is distilled with the red team's trainer from ``--n`` pairs
of which ``--share`` carry the attacker's mark (LoRA, ``--epochs``); the untouched teacher is scanned the same way
as the control (``--no-teacher``: not).

Each suspect answers the prompts of the closed scan: the attacker's harvested prompts, then ``--pool`` built-in
prompts of the harvested domains (``antidistill scan --prompt-pool``), ``--samples`` samples each, ``--max-tokens``
tokens at ``--temperature``. The answers are sampled in process in batches (an endpoint would add only HTTP), with
the model's top ``--top-logprobs`` candidates and their logprobs at every step recorded, as an OpenAI-compatible API
returns them with ``logprobs=true`` (token ids in vLLM's ``token_id:N`` form). They are written into a closed
scan's answer cache, and :func:`antidistill.forensics.scan.scan_closed` then scores them from the cache
(``from_cache``): the code that scores a real endpoint, nothing re-implemented here. The curve repeats the scan
over the first 1/8, 1/4, 1/2 and all of the prompts (from the same cache).

Reported per suspect and budget: suspect tokens, tuples scored by the sampled-token statistic and positions by the
mass statistic, the provider p of each (fixed n), the attacker's corrected p of each, and the smallest p of the
never-issued control keys under each.

Run: ``.venv/bin/python benchmarks/closed_logprob_power.py --data DIR`` (``--share 1 --n 200 --epochs 3
--harvested 96 --pool 96 --samples 2 --max-tokens 128 --top-logprobs 20``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from antidistill.forensics.closed import RunOptions
from antidistill.forensics.endpoint import Answer, AnswerCache, Params, plan_asks, public_url
from antidistill.forensics.scan import ScanKeys, ScanReport, load_suspect, scan_closed
from antidistill.keys import MasterKey
from antidistill.redteam.data import load_pairs, mix
from antidistill.redteam.train import load_teacher, train_student
from antidistill.settings import get_settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.workflows.scan import with_prompt_pool

URL = "http://suspect.invalid/v1"
DECOYS = [f"customer-{i:03d}" for i in range(10)]


class TopLogprobs:
    """A logits processor that records each step's top-``k`` log-probabilities (and changes nothing)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.steps: list[tuple[Any, Any]] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        v, i = torch.topk(torch.log_softmax(scores.float(), dim=-1), self.k, dim=-1)
        self.steps.append((v.numpy(), i.numpy()))
        return scores


def sample_into_cache(
    lm: Any, prompts: list[str], args: Any, cache_dir: Path, name: str, extra: Sequence[Any] = (), quiet: bool = False
) -> int:
    """Answer every ask of the scan (prompt by prompt, sample by sample) in batches, with top-k logprobs, into the
    answer cache; returns the completion tokens. ``extra`` logits processors run before the recording (a student
    served with a reverse bias: the API's logprobs are those of the distribution it samples from)."""
    params = Params(public_url(URL), name, args.temperature, args.max_tokens, args.top_logprobs)
    cache = AnswerCache(cache_dir)
    asks = [a for a in plan_asks(prompts, args.samples, args.seed) if cache.get(params, a) is None]
    tokens = 0
    t0 = time.perf_counter()
    for b in range(0, len(asks), args.batch_size):
        batch = asks[b : b + args.batch_size]
        rec = TopLogprobs(args.top_logprobs)
        outs = lm.generate(
            [a.prompt for a in batch],
            [None] * len(batch),
            max_new_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed * 1_000_003 + b,
            logits_processor_extra=[*extra, rec],
        )
        for row, (ask, c) in enumerate(zip(batch, outs, strict=True)):
            positions = []
            for j, tid in enumerate(c.token_ids):
                vals, ids = rec.steps[j]
                top = [(f"token_id:{int(t)}", float(v)) for v, t in zip(vals[row], ids[row], strict=True)]
                positions.append((f"token_id:{int(tid)}", top))
            cache.put(params, ask, Answer([c.text], len(c.token_ids), logprobs=[positions]))
            tokens += len(c.token_ids)
        done = min(b + args.batch_size, len(asks))
        rate = tokens / max(time.perf_counter() - t0, 1e-9)
        if not quiet:
            print(f"  {name}: {done}/{len(asks)} answers, {rate:.0f} tok/s", flush=True)
    return tokens


def scan_prefix(
    prompts: list[str],
    tok: Any,
    keys: ScanKeys,
    config: WatermarkConfig,
    args: Any,
    cache: Path,
    name: str,
) -> ScanReport:
    return scan_closed(
        URL,
        prompts,
        tok,
        keys,
        config,
        model_name=name,
        samples=args.samples,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        run=RunOptions(cache_dir=cache, from_cache=True),
        top_logprobs=args.top_logprobs,
    )


def row(name: str, share: float | None, r: ScanReport, attacker: str) -> dict[str, Any]:
    lp = r.logprob or {}
    att = next((a for a in r.accounts if a.account == attacker), None)
    lp_att = next((a for a in lp.get("accounts", []) if a["account"] == attacker), None)
    budget = r.parameters.get("budget") or {}
    return {
        "suspect": name,
        "share": share,
        "prompts": budget.get("prompts_sent"),
        "answers": r.texts,
        "suspect_tokens": budget.get("completion_tokens_used"),
        "sampled_tuples": r.tokens_scored,
        "mass_positions": lp.get("positions"),
        "sampled_provider_p": r.provider.p_value if r.provider else None,
        "mass_provider_p": (lp.get("provider") or {}).get("p_value"),
        "sampled_attacker_p_corrected": att.p_corrected if att else None,
        "mass_attacker_p_corrected": lp_att["p_corrected"] if lp_att else None,
        "sampled_attributed": r.attributed_account,
        "mass_attributed": lp.get("attributed_account"),
        "sampled_control_keys_min_p": min((c.p_value for c in r.controls if c.model is None), default=None),
        "mass_control_keys_min_p": (lp.get("controls") or {}).get("smallest_p"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a make_distill_data.py output directory")
    ap.add_argument("--share", type=float, default=1.0, help="share of watermarked pairs in the student's data")
    ap.add_argument("--n", type=int, default=200, help="training pairs")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--method", default="lora")
    ap.add_argument("--student", type=Path, default=None, help="a student directory to scan instead of training one")
    ap.add_argument("--harvested", type=int, default=96, help="harvested prompts sent (the student's own)")
    ap.add_argument("--pool", type=int, default=96, help="built-in prompts of the harvested domains added")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-logprobs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-teacher", action="store_true", help="skip the untouched-teacher control")
    ap.add_argument("--keep", type=Path, default=None, help="keep the student and the answer caches here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from antidistill.models.local import LocalModel

    torch.set_num_threads(args.threads)
    settings = get_settings()
    meta = json.loads((args.data / "meta.json").read_text())
    master = MasterKey.from_text(meta["master_key"])  # the data set's public test key, not a secret
    attacker = meta["account"]
    config = WatermarkConfig.from_dict(meta["watermark"])
    wm, unwm = load_pairs(args.data / "wm_train.jsonl"), load_pairs(args.data / "unwm_train.jsonl")
    heldout = load_pairs(args.data / "wm_heldout.jsonl")[:20]
    keys = ScanKeys.from_master(master, [attacker, *DECOYS])
    pairs = mix(wm, unwm, args.share, args.n, seed=args.seed)
    harvested = [p.prompt for p in pairs if p.watermarked][: args.harvested]
    prompts = with_prompt_pool(harvested, args.pool, args.seed)
    print(
        f"{len(prompts)} prompts ({len(harvested)} harvested), {args.samples} samples, "
        f"{config.scheme} h={config.context_width}"
    )

    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    training: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="closed-power-") as tmp:
        work = args.keep or Path(tmp)
        suspects: list[tuple[str, float | None, Path | str]] = []
        student_dir = args.student
        if student_dir is None:
            student_dir = work / f"student-{args.share:g}"
            if not (student_dir / "config.json").is_file():
                model, tok = load_teacher(cache_dir=settings.cache_dir)
                res = train_student(
                    pairs, args.method, model=model, tokenizer=tok, epochs=args.epochs, seed=args.seed,
                    out_dir=student_dir, heldout=heldout,
                )  # fmt: skip
                training = {k: v for k, v in res.to_dict().items() if k != "losses"}
                print(
                    f"student: {res.examples} pairs x {res.epochs_done:.1f} epochs in {res.seconds:.0f} s, held-out "
                    f"loss {res.heldout_loss_before:.3f} -> {res.heldout_loss_after:.3f}",
                    flush=True,
                )
                del model
        label = f"student-{args.share:g}" if args.student is None else args.student.name
        suspects.append((label, args.share if args.student is None else None, student_dir))
        if not args.no_teacher:
            suspects.append(("teacher", None, "teacher"))
        for name, share, path in suspects:
            model, tok = load_suspect(str(path), cache_dir=settings.cache_dir)
            lm = LocalModel(model, tok, name=name)
            cache = work / f"cache-{name}"
            t0 = time.perf_counter()
            tokens = sample_into_cache(lm, prompts, args, cache, name)
            print(f"{name}: {tokens} new tokens sampled in {time.perf_counter() - t0:.0f} s", flush=True)
            for frac in (8, 4, 2, 1):
                sub = prompts[: max(1, len(prompts) // frac)]
                r = scan_prefix(sub, tok, keys, config, args, cache, name)
                rows.append(row(name, share, r, attacker) | {"prompts": len(sub)})
                print(
                    f"  {len(sub)} prompts: sampled p {rows[-1]['sampled_provider_p']:.3g} over "
                    f"{r.tokens_scored} tuples; mass p {rows[-1]['mass_provider_p']:.3g} over "
                    f"{rows[-1]['mass_positions']} positions",
                    flush=True,
                )
            del lm, model

    def g(v: Any) -> str:
        return "-" if v is None else f"{v:.2g}" if isinstance(v, float) else str(v)

    headers = ["suspect", "prompts", "answers", "suspect tokens", "tuples", "positions", "sampled p", "mass p"]
    headers += ["attacker p (sampled, corr.)", "attacker p (mass, corr.)", "controls min p (sampled / mass)"]
    lines = []
    for r in rows:
        line = [r["suspect"], r["prompts"], r["answers"], r["suspect_tokens"], r["sampled_tuples"]]
        line += [r["mass_positions"], g(r["sampled_provider_p"]), g(r["mass_provider_p"])]
        line += [g(r["sampled_attacker_p_corrected"]), g(r["mass_attacker_p_corrected"])]
        line.append(f"{g(r['sampled_control_keys_min_p'])} / {g(r['mass_control_keys_min_p'])}")
        lines.append(line)
    print()
    print(table(headers, lines))
    wall = time.perf_counter() - t_start
    print(f"\n{wall:.0f} s in all")
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"params": {**params, "watermark": meta["watermark"]}, "training": training, "rows": rows}
    path = write_json("closed_logprob_power", {**payload, "wall_s": round(wall, 1)}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
