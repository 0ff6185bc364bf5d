"""A harvest spread over a hydra of accounts: the pooled cluster test against every single-key test.

A campaign of ``--accounts`` accounts (default 50) harvests ``--per-account`` watermarked answers each (default 1,
``--max-tokens`` long), each marked with its own account's key (and the provider key). A student is distilled
from the harvest mixed with as many unwatermarked answers (``unwm_train.jsonl`` of the distill data set), with the
same recipe as ``benchmarks/radioactivity.py``, and scanned in open mode with the harvest as fed text. Candidates:
the hydra's accounts, ten other customers, and the hydra as one cluster. The question is whether the pooled
statistic (the green counts of all member keys summed: exactly Binomial(K n, gamma) under the null) finds the
campaign when no single account's key is significant after correction. The untouched teacher is scanned the same
way as the control.

Run: ``.venv/bin/python benchmarks/radioactivity_cluster.py`` (``--accounts 50 --per-account 1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from antidistill.forensics.scan import ScanKeys, load_suspect, scan_open
from antidistill.keys import MasterKey
from antidistill.models.local import LocalModel
from antidistill.redteam.data import Pair, load_pairs
from antidistill.redteam.harvest import generate_prompts
from antidistill.redteam.train import load_teacher, train_student
from antidistill.settings import get_settings
from antidistill.watermark.marker import MarkKeys

DECOYS = [f"customer-{i:03d}" for i in range(10)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="distill data directory (default: the cache's v1)")
    ap.add_argument("--accounts", type=int, default=50)
    ap.add_argument("--per-account", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=25, help="generation batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    settings = get_settings()
    data = args.data or settings.cache_dir / "distill-data" / "v1"
    meta = json.loads((data / "meta.json").read_text())
    master = MasterKey.from_text(meta["master_key"])  # the public test key of the data set, not a secret
    hydra = [f"hydra-{i:03d}" for i in range(args.accounts)]
    used = {
        p.prompt
        for name in ("wm_train", "unwm_train", "wm_heldout", "unwm_heldout")
        for p in load_pairs(data / f"{name}.jsonl")
    }
    prompts = [p for p in generate_prompts(1440, seed=args.seed + 99) if p not in used]
    n = args.accounts * args.per_account
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} unused prompts for {n} answers")
    prompts = prompts[:n]
    owners = [hydra[i % args.accounts] for i in range(n)]
    t0 = time.perf_counter()
    lm = LocalModel.load(cache_dir=settings.cache_dir)
    harvest: list[Pair] = []
    for i in range(0, n, args.batch):
        ps, os_ = prompts[i : i + args.batch], owners[i : i + args.batch]
        marks = [MarkKeys(master.account_key(o), master.provider_key()) for o in os_]
        outs = lm.generate(ps, marks, max_new_tokens=args.max_tokens, temperature=0.7, seed=args.seed + i)
        harvest += [Pair(p, c.text, watermarked=True) for p, c in zip(ps, outs, strict=True)]
        print(f"generated {len(harvest)}/{n}", flush=True)
    gen_s = time.perf_counter() - t0
    unwm = load_pairs(data / "unwm_train.jsonl")[:n]
    train = [*harvest, *unwm]
    keys = ScanKeys.from_master(master, [*hydra, *DECOYS], {"hydra": hydra})
    fed = [(p.prompt, p.response) for p in harvest]
    with tempfile.TemporaryDirectory(prefix="radioactivity-cluster-") as tmp:
        model, tok = load_teacher(cache_dir=settings.cache_dir)
        res = train_student(
            train,
            "lora",
            model=model,
            tokenizer=tok,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            out_dir=Path(tmp) / "student",
        )
        del model
        print(
            f"student: {res.examples} pairs x {res.epochs_done:.1f} epochs in {res.seconds:.0f} s, training loss "
            f"{res.losses[0]:.3f} -> {res.losses[-1]:.3f}",
            flush=True,
        )
        student, stok = load_suspect(str(Path(tmp) / "student"), cache_dir=settings.cache_dir)
        r = scan_open(
            student, stok, fed, keys, lm.watermark.config, suspect="hydra-student", control_models={"teacher": lm.model}
        )
    rows = []
    single = [a for a in r.accounts if a.account in set(hydra)]
    best_single = min(single, key=lambda a: a.p_corrected)
    cluster = r.clusters[0] if r.clusters else None
    teacher = [c for c in r.controls if c.model == "teacher"]
    rows.append(
        [
            "student",
            r.tokens_scored,
            f"{r.provider.p_value:.2g}",
            f"{best_single.p_corrected:.2g}",
            sum(a.p_corrected <= r.alpha for a in single),
            f"{cluster.p_corrected:.2g}" if cluster else "-",
            r.attributed_cluster or "-",
            f"{teacher[0].p_value:.2g}" if teacher else "-",
        ]
    )
    print()
    print(
        table(
            [
                "suspect",
                "tuples",
                "provider p",
                "best single account p (corr.)",
                f"accounts significant at {r.alpha:g}",
                "pooled cluster p (corr.)",
                "attributed cluster",
                "teacher control p",
            ],
            rows,
        )
    )
    payload = {
        "params": {**vars(args), "data": str(data), "hydra": len(hydra), "decoys": DECOYS},
        "generation_s": gen_s,
        "training": {k: v for k, v in res.to_dict().items() if k != "losses"},
        "scan": r.to_dict(),
    }
    path = write_json("radioactivity_cluster", json.loads(json.dumps(payload, default=str)), args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
