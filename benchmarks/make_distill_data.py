"""The distillation data set for the radioactivity experiments: teacher answers, watermarked and not.

What it writes (JSONL, the same records as ``antidistill distill harvest``, plus ``key_id``), into
``<cache_dir>/distill-data/<name>/`` (never into git):

* ``wm_train.jsonl``: answers marked with the account key of ``ATTACKER`` (and the provider key), derived from
  the fixed test master key below, so a scan can re-derive every key from ``meta.json``;
* ``unwm_train.jsonl``: unmarked answers to *different* prompts;
* ``wm_heldout.jsonl`` / ``unwm_heldout.jsonl``: held-out answers (prompts in neither training file), to
  measure a student's loss on teacher outputs before and after training;
* ``meta.json``: master key (a test key, public on purpose), key ids, watermark config, sampling, sizes.

All prompts come from one permutation of :func:`antidistill.redteam.harvest.generate_prompts`, split into four
disjoint sets (see ``main``). Generation uses :meth:`LocalModel.generate` directly in large batches (the gateway
would only add HTTP overhead); rows are the same as the gateway serves: ``MarkKeys(account key, provider key)``, the
default watermark config. Held-out sets are generated first, then training batches alternate between the
watermarked and the unwatermarked set, so a partial run is already usable. Re-running resumes: prompts
already in a file are skipped.

Run: ``nice -n 5 .venv/bin/python benchmarks/make_distill_data.py`` (``--n-train 400 --n-heldout 40``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Spinning OpenMP threads slow every step several-fold when other processes want the cores (see antidistill.cli).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from antidistill.keys import MasterKey
from antidistill.models.local import LocalModel
from antidistill.redteam.harvest import TASKS, TOPICS, done_prompts, generate_prompts
from antidistill.settings import get_settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys

#: A fixed, public test master key: the data set's keys are reproducible from it (never use it in production).
TEST_MASTER_KEY = "6c1f0a9e3b7d25c48e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7"
ATTACKER = "attacker-001"
PROMPT_SEED = 20261129


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="v1", help="data set name (a directory under the cache)")
    ap.add_argument("--out-dir", help="write here instead of <cache_dir>/distill-data/<name>")
    ap.add_argument("--n-train", type=int, default=400, help="training answers per set (watermarked, unmarked)")
    ap.add_argument("--n-heldout", type=int, default=40, help="held-out answers per set")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (batch i uses seed + i)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--model", help="model path (default: the embedded model)")
    ap.add_argument("--scheme", default=None, help="watermark scheme member (default: the served default)")
    return ap.parse_args(argv)


def _write(f, records: list[dict]) -> None:
    for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = get_settings()
    out = Path(args.out_dir) if args.out_dir else settings.cache_dir / "distill-data" / args.name
    out.mkdir(parents=True, exist_ok=True)
    config = WatermarkConfig(scheme=args.scheme) if args.scheme else WatermarkConfig()
    master = MasterKey.from_text(TEST_MASTER_KEY)
    account, provider = master.account_key(ATTACKER), master.provider_key()
    mark = MarkKeys(account, provider)

    nh, nt = args.n_heldout, args.n_train
    if 2 * (nh + nt) > len(TOPICS) * len(TASKS):
        raise SystemExit(f"at most {len(TOPICS) * len(TASKS)} distinct prompts in all")
    # Training prompts come from the head of one fixed permutation, held-out ones from its tail, each pair
    # interleaved: a later run with a larger --n-train extends the sets and they stay disjoint.
    perm = generate_prompts(len(TOPICS) * len(TASKS), seed=PROMPT_SEED)
    tail = perm[::-1]
    sets = {  # name -> (prompts, marked)
        "wm_heldout": (tail[0 : 2 * nh : 2], True),
        "unwm_heldout": (tail[1 : 2 * nh : 2], False),
        "wm_train": (perm[0 : 2 * nt : 2], True),
        "unwm_train": (perm[1 : 2 * nt : 2], False),
    }
    meta = {
        "master_key": TEST_MASTER_KEY,
        "account": ATTACKER,
        "account_key_id": account.key_id,
        "provider_key_id": provider.key_id,
        "watermark": config.to_dict(),
        "prompt_seed": PROMPT_SEED,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "sampling_seed": args.seed,
        "sizes_planned": {k: len(v[0]) for k, v in sets.items()},
        "files": {k: f"{k}.jsonl" for k in sets},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    # the work list: held-out first, then training batches alternating between the two sets
    todo: dict[str, list[str]] = {}
    for name, (ps, _) in sets.items():
        done = done_prompts(out / f"{name}.jsonl")
        todo[name] = [p for p in ps if p not in done]
    batches: list[tuple[str, list[str]]] = []
    for name in ("wm_heldout", "unwm_heldout"):
        ps = todo[name]
        batches += [(name, ps[i : i + args.batch_size]) for i in range(0, len(ps), args.batch_size)]
    wm = [
        ("wm_train", todo["wm_train"][i : i + args.batch_size])
        for i in range(0, len(todo["wm_train"]), args.batch_size)
    ]
    un = [
        ("unwm_train", todo["unwm_train"][i : i + args.batch_size])
        for i in range(0, len(todo["unwm_train"]), args.batch_size)
    ]
    for i in range(max(len(wm), len(un))):
        batches += ([wm[i]] if i < len(wm) else []) + ([un[i]] if i < len(un) else [])
    total = sum(len(b) for _, b in batches)
    print(f"output: {out}\n{total} answers to generate in {len(batches)} batches", flush=True)
    if not batches:
        return 0

    lm = LocalModel.load(args.model, settings.cache_dir, config)
    t0 = time.perf_counter()
    n_done = tokens = 0
    files = {name: open(out / f"{name}.jsonl", "a", encoding="utf-8") for name in sets}  # noqa: SIM115
    try:
        for bi, (name, ps) in enumerate(batches):
            marked = sets[name][1]
            seed = args.seed + bi + (1000 if marked else 0)
            comps = lm.generate(
                ps,
                [mark if marked else None] * len(ps),
                max_new_tokens=args.max_tokens,
                temperature=args.temperature,
                seed=seed,
            )
            recs = []
            for j, (p, c) in enumerate(zip(ps, comps, strict=True)):
                recs.append(
                    {
                        "prompt": p,
                        "response": c.text,
                        "model": lm.name,
                        "response_id": f"local-{name}-{seed}-{j}",
                        "usage": {
                            "prompt_tokens": c.prompt_tokens,
                            "completion_tokens": len(c.token_ids),
                            "total_tokens": c.prompt_tokens + len(c.token_ids),
                        },
                        "finish_reason": c.finish_reason,
                        "key_id": c.key_id,
                    }
                )
                tokens += len(c.token_ids)
            _write(files[name], recs)
            n_done += len(ps)
            dt = time.perf_counter() - t0
            print(
                f"[{time.strftime('%H:%M:%S')}] batch {bi + 1}/{len(batches)} {name}: {n_done}/{total} answers, "
                f"{tokens / dt:.0f} tok/s, eta {(total - n_done) * dt / n_done / 60:.1f} min",
                flush=True,
            )
    finally:
        for f in files.values():
            f.close()
    sizes = {name: len(done_prompts(out / f"{name}.jsonl")) for name in sets}
    meta["sizes"] = sizes
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {sizes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
