"""An informed distiller's attacks on the watermark: what each student keeps of the teacher against radioactivity.

One run, on the embedded model (SmolLM2-135M) marked with the served default watermark (or ``--scheme``,
``--context-width``, ``--provider-fraction``: the defender's settings, the columns of the robustness table) under
the keys of ``--accounts`` harvesting accounts (1 by default; with K, the harvest is split in K equal slices, each
answered under its own account key: per-account keys, which a distiller must estimate one by one):

1. **harvest**: marked answers to ``--prompts`` built-in instruction prompts (the harvester's prompts);
2. **reference**: the *unmarked* model's answers to the same prompts, the distiller's reference for the
   neutralisation estimate (here the unmarked model is the teacher itself: the attacker's best case, an open copy
   of the served model);
3. **held-out**: unmarked answers to ``--heldout`` other prompts: the held-out loss measures what a student keeps
   of the teacher's knowledge, not of its mark;
4. **students** (LoRA on the last 6 blocks, ``--epochs`` over the data or ``--budget`` seconds, whichever ends first):

   * ``none``: trained on the harvest as it is;
   * ``paraphrase``: on the harvest rewritten by the unmarked model (``distill attack --method paraphrase``);
   * ``neutralise-mask``: on the harvest with no loss on estimated-green tokens (``distill train --mask-green``);
   * ``neutralise-filter``: on the answers whose estimated-green share is at most ``--max-share`` (``distill
     attack --method filter``);
   * ``reverse-bias``: the ``none`` student decoded with ``-delta'`` on the tokens estimated green from the
     harvest against the reference (Pan et al. 2025, ``delta' = 2.5``; ``distill sample --greens``); scanned
     through :class:`~antidistill.redteam.attacks.ReverseBiasedLM`, the distribution it samples from;
   * ``shift-reverse-bias``: the same decoding with Pan et al.'s own estimate, what the ``none`` student moved
     toward against the teacher before training (``distill attack --method shift``);
   * ``mix``: half harvest, half unmarked answers to other prompts (``distill mix --share 0.5``);
   * ``shorter`` / ``longer``: the harvest with a quarter / twice the epochs and budget;
   * ``teacher``: the untrained model, for the baseline loss and task score (a control: not distilled).

For each: the held-out loss (nats per answer token; lower is closer to the teacher's answers), the capital-city
task score of ``watermark_compare.py`` (``--task-items`` questions, 16 tokens), and the open-mode scan
(``scan_open``, prefix-pair exclusion) fed the harvest as the defender's audit log holds it: its overall p, the
best harvesting account's corrected p and the attribution. With ``--closed-prompts N`` (and ``--closed-pool M``),
each suspect is also served as a closed endpoint would be: new answers to the harvest's first N prompts (and M
built-in prompts of its domains), ``--closed-samples`` each, with the top ``--top-logprobs`` candidates of every
step, scored by ``scan_closed`` from the answer cache (``closed_logprob_power.py``'s path): the scan's overall p
(sampled tokens: its best family, corrected for the families tested), the provider key's top-logprob mass p, and
the best harvesting account's corrected p under each statistic.

Run: ``.venv/bin/python benchmarks/distill_attacks.py`` (the default is a smoke scale, 32 answers of 64 tokens,
451 s on one thread of a shared core here; the unattacked student reaches only p = 3e-3 at that scale). The tables
in ``docs/robustness.md``: ``--prompts 64 --new-tokens 96 --epochs 4 --budget 180 --threads 1 --task-items 32
--closed-prompts 64`` (plus ``--scheme antidistill-v1`` and ``--accounts 4`` for the other columns). Toward the
real scale: ``--prompts 400 --new-tokens 200 --epochs 4 --budget 1800 --task-items 120 --threads 16``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import table, write_json
from antidistill.keys import MasterKey
from antidistill.models.local import LocalModel
from antidistill.redteam import attacks as atk
from antidistill.redteam.data import Pair, mix
from antidistill.redteam.harvest import generate_prompts
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys
from watermark_compare import TASK_TOKENS, task_correct, task_items

MASTER = MasterKey(b"antidistill/benchmarks/distill-attacks/public-key")
ACCOUNT = "harvester-001"
#: accounts that did not harvest: attribution must pick the harvester among them
DECOYS = [f"customer-{i:03d}" for i in range(10)]
ATTACKS = (
    "none",
    "paraphrase",
    "neutralise-mask",
    "neutralise-filter",
    "reverse-bias",
    "shift-reverse-bias",
    "mix",
    "shorter",
    "longer",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def answers(
    lm: LocalModel, prompts: Sequence[str], mark: MarkKeys | None, args: argparse.Namespace, seed: int
) -> list[Pair]:
    out: list[Pair] = []
    for b, s in enumerate(range(0, len(prompts), args.batch)):
        chunk = list(prompts[s : s + args.batch])
        got = lm.generate(
            chunk, [mark] * len(chunk), max_new_tokens=args.new_tokens, temperature=0.7, seed=seed * 1000 + b
        )
        out += [Pair(p, c.text, c.finish_reason) for p, c in zip(chunk, got, strict=True)]
    return out


def heldout_nll(model: Callable[..., Any], tokenizer: Any, pairs: Sequence[Pair], max_len: int) -> float:
    """Mean NLL per answer token of ``pairs`` under ``model`` (any callable returning ``.logits``)."""
    import torch

    from antidistill.redteam.train import IGNORE, collate, encode_pairs, length_batches

    examples = encode_pairs(tokenizer, pairs, max_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    with torch.inference_mode():
        for idx in length_batches(examples, 8):
            ids, mask, labels = collate([examples[i] for i in idx], int(pad))
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt = labels[:, 1:]
            keep = tgt != IGNORE
            total += float(torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum"))
            count += int(keep.sum())
    return total / max(count, 1)


def task_score(lm: LocalModel, items: Sequence[Any], extra: Sequence[Any], seed: int) -> float | None:
    if not items:
        return None
    correct: list[bool] = []
    for s in range(0, len(items), 32):
        chunk = list(items[s : s + 32])
        comps = lm.generate(
            [it.prompt for it in chunk],
            [None] * len(chunk),
            max_new_tokens=TASK_TOKENS,
            temperature=0.7,
            seed=seed * 1000 + s,
            logits_processor_extra=list(extra),
        )
        correct += [task_correct(it, c.text) for it, c in zip(chunk, comps, strict=True)]
    return float(np.mean(correct))


def closed_scan(
    lm: LocalModel,
    harvest: Sequence[Pair],
    config: WatermarkConfig,
    args: argparse.Namespace,
    work: Path,
    name: str,
    extra: Sequence[Any] = (),
) -> dict[str, Any]:
    """The suspect served as a closed endpoint: new answers to the harvest's first ``--closed-prompts`` prompts and
    ``--closed-pool`` built-in prompts of its domains, with the top ``--top-logprobs`` candidates of every step
    (``closed_logprob_power.sample_into_cache``), scored by ``scan_closed`` from the answer cache."""
    from antidistill.forensics.scan import ScanKeys
    from antidistill.workflows.scan import with_prompt_pool
    from closed_logprob_power import sample_into_cache, scan_prefix

    cargs = argparse.Namespace(
        samples=args.closed_samples, temperature=0.7, max_tokens=args.new_tokens, top_logprobs=args.top_logprobs,
        seed=args.seed, batch_size=args.batch,
    )  # fmt: skip
    prompts = with_prompt_pool([p.prompt for p in harvest[: args.closed_prompts]], args.closed_pool, args.seed)
    cache = work / f"cache-{name}"
    tokens = sample_into_cache(lm, prompts, cargs, cache, name, extra=extra, quiet=True)
    harvesters = harvesting_accounts(args.accounts)
    keys = ScanKeys.from_master(MASTER, [*harvesters, *DECOYS])
    r = scan_prefix(prompts, lm.tokenizer, keys, config, cargs, cache, name)
    lp = r.logprob or {}
    acct = {a.account: a.p_corrected for a in r.accounts}
    lp_acct = {a["account"]: a["p_corrected"] for a in lp.get("accounts", [])}
    return {
        "prompts": len(prompts),
        "suspect_tokens": tokens,
        "sampled_tuples": r.tokens_scored,
        "sampled_p": r.p_value,
        "sampled_attacker_p_corrected": smallest(acct, harvesters),
        "mass_positions": lp.get("positions"),
        "mass_p": (lp.get("provider") or {}).get("p_value"),
        "mass_attacker_p_corrected": smallest(lp_acct, harvesters),
        "attributed": r.attributed_account,
        "mass_attributed": lp.get("attributed_account"),
        "controls_ok": r.controls_ok,
    }


def harvesting_accounts(k: int) -> list[str]:
    """The accounts the distiller harvests through (the first is ``ACCOUNT``)."""
    return [ACCOUNT, *(f"harvester-{i:03d}" for i in range(2, k + 1))]


def smallest(p_by_account: dict[str, float], accounts: Sequence[str]) -> float | None:
    """The smallest corrected p of ``accounts`` (the best-attributed harvesting account), None if none was scored."""
    ps = [p_by_account[a] for a in accounts if p_by_account.get(a) is not None]
    return min(ps) if ps else None


def scan(
    model: Any, tokenizer: Any, harvest: Sequence[Pair], config: WatermarkConfig, harvesters: Sequence[str]
) -> dict[str, Any]:
    from antidistill.forensics.scan import ScanKeys, scan_open

    keys = ScanKeys.from_master(MASTER, [*harvesters, *DECOYS])
    r = scan_open(model, tokenizer, [(p.prompt, p.response) for p in harvest], keys, config, suspect="student")
    acct = {a.account: a.p_corrected for a in r.accounts}
    return {
        "p_value": r.p_value,
        "provider_p": r.provider.p_value if r.provider else None,
        "attacker_p_corrected": smallest(acct, harvesters),
        "attributed_account": r.attributed_account,
        "tuples_scored": r.tokens_scored,
        "controls_ok": r.controls_ok,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32, help="harvested prompts (answers the distiller trains on)")
    ap.add_argument("--heldout", type=int, default=16, help="held-out prompts (unmarked teacher answers)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens per answer")
    ap.add_argument("--batch", type=int, default=16, help="generation batch")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per student (at most)")
    ap.add_argument("--task-items", type=int, default=16, help="capital-city questions (0: no task score)")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset of " + ", ".join(ATTACKS))
    ap.add_argument("--alpha", type=float, default=1e-3, help="per-pair level of the green estimate")
    ap.add_argument("--max-share", type=float, default=0.1, help="neutralise-filter: largest green share kept")
    ap.add_argument("--reverse-delta", type=float, default=atk.DEFAULT_REVERSE_DELTA)
    ap.add_argument("--mix-share", type=float, default=0.5)
    ap.add_argument("--accounts", type=int, default=1, help="harvesting accounts (each its own key), the harvest split")
    ap.add_argument("--scheme", default=None, help="watermark scheme member (default: the served default)")
    ap.add_argument("--context-width", type=int, default=None, help="the mark's context width (default: the member's)")
    ap.add_argument("--provider-fraction", type=float, default=None, help="provider share (default: the config's)")
    ap.add_argument("--shift-min", type=float, default=atk.DEFAULT_MIN_SHIFT, help="shift estimate: least shift")
    ap.add_argument(
        "--closed-prompts", type=int, default=0, help="closed mode: harvested prompts asked (0: no closed scan)"
    )
    ap.add_argument("--closed-pool", type=int, default=0, help="closed mode: built-in prompts of the domains added")
    ap.add_argument("--closed-samples", type=int, default=1, help="closed mode: samples per prompt")
    ap.add_argument("--top-logprobs", type=int, default=20, help="closed mode: logprobs recorded per step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    bad = [a for a in args.attacks.split(",") if a not in ATTACKS]
    if bad:
        ap.error(f"unknown attacks {bad}; choose from {', '.join(ATTACKS)}")
    return args


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    import torch

    from antidistill.redteam.train import load_teacher, train_student

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = args.attacks.split(",")
    t_start = time.perf_counter()
    given = {"scheme": args.scheme, "context_width": args.context_width, "provider_fraction": args.provider_fraction}
    overrides = {k: v for k, v in given.items() if v is not None}
    config = WatermarkConfig(**overrides)
    work = Path(tempfile.mkdtemp(prefix="distill-attacks-"))
    lm = LocalModel.load(config=config)
    tok = lm.tokenizer
    harvesters = harvesting_accounts(args.accounts)
    marks = [MarkKeys(MASTER.account_key(a), MASTER.provider_key()) for a in harvesters]
    n_other = round(args.prompts * (1 - args.mix_share)) if "mix" in wanted else 0
    allp = generate_prompts(args.prompts + args.heldout + n_other, seed=args.seed)
    hp, held_p, other_p = (
        allp[: args.prompts],
        allp[args.prompts : args.prompts + args.heldout],
        allp[args.prompts + args.heldout :],
    )
    timings: dict[str, float] = {}

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        log(f"{name}: {timings[name]:.0f} s")
        return out

    def harvest_all() -> list[Pair]:
        # the harvest split across the accounts in equal slices, each answered under its own key
        cut = [round(i * len(hp) / len(marks)) for i in range(len(marks) + 1)]
        out: list[Pair] = []
        for i, m in enumerate(marks):
            out += answers(lm, hp[cut[i] : cut[i + 1]], m, args, seed=args.seed + 1 + 7919 * i)
        return out

    harvest = phase("harvest", harvest_all)
    reference = phase("reference", lambda: answers(lm, hp, None, args, seed=args.seed + 2))
    held = phase("heldout", lambda: answers(lm, held_p, None, args, seed=args.seed + 3))
    other = phase("other", lambda: answers(lm, other_p, None, args, seed=args.seed + 4)) if n_other else []
    estimate = phase(
        "estimate",
        lambda: atk.estimate_green(
            atk.encode_answers(tok, harvest),
            atk.encode_answers(tok, reference),
            (1, 2),
            alpha=args.alpha,
            reference_name="the unmarked model's answers to the harvest's prompts",
        ),
    )
    # how good is the estimate? the true green lists are ours to check (the distiller cannot)
    wm = lm.watermark
    h = config.context_width

    def precision(est: atk.GreenEstimate) -> float | None:
        """The share of flagged pairs (prefix at least h long) that are truly green where they occur (green lists
        only: a sampling scheme has no green list to check against)."""
        if config.kind != "bias":
            return None
        own = [p for p in est.pairs if len(p.prefix) >= h]

        def green(p: atk.GreenPair) -> bool:  # green under any harvesting account's mark where it occurs
            for m in marks:
                keys_arr = np.array([m.account.value], dtype=np.uint64)
                prov = np.array([m.provider.value], dtype=np.uint64) if m.provider else None
                if wm.green_mask(np.array([p.prefix[-h:]]), keys_arr, prov, lm.vocab_size)[0, p.token]:
                    return True
            return False

        truly = [green(p) for p in own]
        return float(np.mean(truly)) if truly else None

    est_info = {
        "tested": estimate.tested,
        "flagged": len(estimate.pairs),
        "flagged_by_width": estimate.to_dict()["flagged"],
        "precision_vs_true_green": precision(estimate),
        "harvest_green_share_mean": float(np.mean([estimate.share(x) for x in atk.encode_answers(tok, harvest)])),
    }
    log(f"estimate: {est_info}")
    items = task_items(args.task_items, args.seed) if args.task_items else []
    teacher_task = task_score(lm, items, (), args.seed)

    rows: dict[str, dict[str, Any]] = {
        "teacher": {
            "heldout_loss": heldout_nll(lm.model, tok, held, 256),
            "task": teacher_task,
            "scan": scan(lm.model, tok, harvest, config, harvesters),
            "train_pairs": 0,
        }
    }
    if args.closed_prompts or args.closed_pool:
        rows["teacher"]["closed"] = closed_scan(
            LocalModel(lm.model, tok, name="teacher"), harvest, config, args, work, "teacher"
        )
    log(f"teacher: {rows['teacher']}")

    def train(pairs: Sequence[Pair], mask: Any = None, scale: float = 1.0) -> tuple[Any, dict[str, Any]]:
        model, _ = load_teacher()
        res = train_student(
            pairs, "lora", model=model, tokenizer=tok, epochs=args.epochs * scale, max_seconds=args.budget * scale,
            seed=args.seed, loss_mask=mask,
        )  # fmt: skip
        info = {"steps": res.steps, "epochs_done": res.epochs_done, "seconds": res.seconds, "examples": res.examples}
        if "loss_masked_tokens" in res.params:
            info["loss_masked_tokens"] = res.params["loss_masked_tokens"]
        return model, info

    def measure(
        name: str, model: Any, pairs_n: int, info: dict[str, Any], extra: Sequence[Any] = (), scanned: Any = None
    ) -> None:
        t0 = time.perf_counter()
        student = LocalModel(model, tok, name=name)
        rows[name] = {
            "heldout_loss": heldout_nll(scanned or model, tok, held, 256),
            "task": task_score(student, items, extra, args.seed),
            "scan": scan(scanned or model, tok, harvest, config, harvesters),
            "train_pairs": pairs_n,
            "training": info,
        }
        if args.closed_prompts or args.closed_pool:
            rows[name]["closed"] = closed_scan(student, harvest, config, args, work, name, extra)
        rows[name]["measure_seconds"] = time.perf_counter() - t0
        log(f"{name}: {rows[name]}")

    base_student = None
    if {"none", "reverse-bias", "shift-reverse-bias"} & set(wanted):
        base_student, info = phase("train none", lambda: train(harvest))
        if "none" in wanted:
            measure("none", base_student, len(harvest), info)
        if "reverse-bias" in wanted:
            biased = atk.ReverseBiasedLM(base_student, estimate, args.reverse_delta)
            measure(
                "reverse-bias", base_student, len(harvest), {**info, "reverse_delta": args.reverse_delta},
                extra=[atk.ReverseBias(estimate, args.reverse_delta)], scanned=biased,
            )  # fmt: skip
        if "shift-reverse-bias" in wanted:
            # Pan et al.'s own estimate: what the student moved toward, teacher (before) against student (after)
            shift = phase(
                "shift estimate",
                lambda: atk.estimate_green_shift(
                    lm.model, base_student, tok, harvest, (1, 2), min_shift=args.shift_min
                ),
            )
            est_info["shift"] = {
                "tested": shift.tested,
                "flagged": len(shift.pairs),
                "flagged_by_width": shift.to_dict()["flagged"],
                "precision_vs_true_green": precision(shift),
            }
            log(f"shift estimate: {est_info['shift']}")
            measure(
                "shift-reverse-bias", base_student, len(harvest), {**info, "reverse_delta": args.reverse_delta},
                extra=[atk.ReverseBias(shift, args.reverse_delta)],
                scanned=atk.ReverseBiasedLM(base_student, shift, args.reverse_delta),
            )  # fmt: skip
        del base_student
    if "paraphrase" in wanted:
        para = phase(
            "paraphrase",
            lambda: atk.paraphrase_pairs(
                lm, harvest, batch_size=args.batch, max_new_tokens=args.new_tokens + 32, seed=args.seed
            ),
        )
        model, info = phase("train paraphrase", lambda: train(para))
        measure("paraphrase", model, len(para), info)
        rows["paraphrase"]["example"] = {"original": harvest[0].response[:200], "paraphrase": para[0].response[:200]}
        del model
    if "neutralise-mask" in wanted:
        model, info = phase("train neutralise-mask", lambda: train(harvest, atk.loss_mask(estimate)))
        measure("neutralise-mask", model, len(harvest), info)
        del model
    if "neutralise-filter" in wanted:
        res = atk.filter_pairs(harvest, tok, estimate, args.max_share)
        if res.kept:
            model, info = phase("train neutralise-filter", lambda: train(res.kept))
            measure("neutralise-filter", model, len(res.kept), {**info, "dropped": len(res.dropped)})
            del model
        else:
            rows["neutralise-filter"] = {"skipped": f"--max-share {args.max_share} drops every answer"}
    if "mix" in wanted:
        mixed = mix(harvest, other, args.mix_share, round(len(other) / (1 - args.mix_share)), seed=args.seed)
        model, info = phase("train mix", lambda: train(mixed))
        measure("mix", model, len(mixed), {**info, "share": args.mix_share})
        del model
    for name, scale in (("shorter", 0.25), ("longer", 2.0)):
        if name in wanted:  # a quarter of the epochs (and budget), or twice them
            model, info = phase(f"train {name}", lambda s=scale: train(harvest, scale=s))  # type: ignore[misc]
            measure(name, model, len(harvest), info)
            del model

    headers = [
        "attack",
        "pairs",
        "held-out loss",
        "vs teacher",
        "task",
        "open p",
        "account p (corr.)",
        "attributed",
        "tuples",
    ]
    closed_on = bool(args.closed_prompts or args.closed_pool)
    if closed_on:
        headers += ["closed tokens", "closed p (sampled / mass)", "closed account p (sampled / mass)"]
    base_loss = rows["teacher"]["heldout_loss"]
    out_rows = []
    for name, r in rows.items():
        if "scan" not in r:
            continue
        s = r["scan"]
        out_rows.append([
            name, r["train_pairs"], r["heldout_loss"], r["heldout_loss"] - base_loss,
            "-" if r["task"] is None else f"{r['task']:.0%}", s["p_value"], s["attacker_p_corrected"],
            "yes" if s["attributed_account"] in harvesters else "no", s["tuples_scored"],
        ])  # fmt: skip
        if closed_on:
            c = r["closed"]
            out_rows[-1] += [
                c["suspect_tokens"], f"{c['sampled_p']:.2g} / {c['mass_p']:.2g}",
                f"{c['sampled_attacker_p_corrected']:.2g} / {c['mass_attacker_p_corrected']:.2g}",
            ]  # fmt: skip
    print(table(headers, out_rows))
    total = time.perf_counter() - t_start
    print(f"\ngreen estimate: {est_info}\ntotal {total:.0f} s")
    path = write_json(
        "distill_attacks",
        {
            "args": vars(args),
            "watermark": config.to_dict(),
            "estimate": est_info,
            "rows": rows,
            "timings": timings,
            "seconds": total,
            "note": "closed-mode scans per row under 'closed'" if closed_on else "open-mode scans only",
        },
        args.out,
    )
    print(f"-> {path}")
    shutil.rmtree(work, ignore_errors=True)  # the closed scans' answer caches
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    sys.exit(main())
