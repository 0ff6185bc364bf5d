"""Radioactivity: scan p-value against the share of watermarked data in a student's training set.

The experiment of Sander et al. (2024), on this machine's scale. One attacker account harvested watermarked
answers (``wm_train.jsonl``); other answers of the same teacher came without a mark (``unwm_train.jsonl``, different
prompts). For each share (default 100%, 25%, 5%, 1%) a training set of ``--n`` pairs is mixed with exactly that
share of watermarked pairs, a student is distilled from it with the red team's trainer (the teacher fine-tuned,
``--method``), and the student is scanned:

* open mode (reading mode): the harvested exchanges of the attacker that ended up in the training set, i.e. what
  our audit log holds for the account, are fed through the student; its top-1 predictions are scored under the
  ``prefix-pairs`` exclusion, every candidate key tested;
* closed mode (``--closed-prompts N``): the student is served unmarked through the gateway
  (``watermark=False``) and queried with N of the harvested prompts; its completions are scored.

Controls, scanned exactly the same way: a student trained on unwatermarked data only (fed the same harvested
texts it never saw), the untouched teacher, and for every scan the never-issued control keys and the other
candidate accounts' keys (a student of account A's data must not be attributed to B).

The data set comes from ``benchmarks/make_distill_data.py`` (public test master key, in ``meta.json``).

Run: ``.venv/bin/python benchmarks/radioactivity.py`` (``--n 200 --epochs 3 --closed-prompts 24``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from antidistill.forensics.scan import ScanKeys, ScanReport, load_suspect, scan_closed, scan_open
from antidistill.keys import MasterKey
from antidistill.redteam.data import Pair, load_pairs, mix
from antidistill.redteam.train import load_teacher, train_student
from antidistill.settings import get_settings
from antidistill.watermark.config import WatermarkConfig

#: other customers' accounts tested beside the attacker (their keys never marked anything the students saw)
DECOYS = [f"customer-{i:03d}" for i in range(10)]


def _summary(name: str, share: float | None, r: ScanReport, attacker: str) -> dict[str, Any]:
    acct = {a.account: a for a in r.accounts}
    att = acct.get(attacker)
    others = [a for a in r.accounts if a.account != attacker]
    return {
        "model": name,
        "share": share,
        "mode": r.mode,
        "texts": r.texts,
        "tokens_seen": r.tokens_seen,
        "tokens_scored": r.tokens_scored,
        "p_value": r.p_value,
        "provider_p": r.provider.p_value if r.provider else None,
        "provider_green_fraction": r.provider.green_fraction if r.provider else None,
        "attacker_p_corrected": att.p_corrected if att else None,
        "attributed_account": r.attributed_account,
        "significant": r.significant,
        "other_accounts_min_p": min((a.p_value for a in others), default=None),
        "other_accounts_p": {a.account: a.p_value for a in others},
        "control_keys_p": [c.p_value for c in r.controls if c.key is not None],
        "control_models_p": {c.model or c.name: c.p_value for c in r.controls if c.key is None},
        "controls_ok": r.controls_ok,
        "curve": [
            {"tokens": c.tokens_scored, "provider_p": c.provider_p, "best_account_p": c.best_account_p} for c in r.curve
        ],
        "seconds": r.seconds,
    }


def _closed(student: Any, tok: Any, prompts: list[str], keys: ScanKeys, config: WatermarkConfig, args) -> ScanReport:
    """Serve ``student`` unmarked through the gateway (as the distiller would host it) and scan it closed."""
    from antidistill.gateway import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.keys import KeyRing
    from antidistill.models.local import LocalModel
    from antidistill.models.local_backend import LocalBackend
    from antidistill.store.sql import Store

    settings = get_settings().model_copy(update={"watermark": False, "backend": "local"})
    with tempfile.TemporaryDirectory(prefix="radioactivity-serve-") as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'suspect.db'}", settings=settings)
        try:
            _, api_key, _ = store.create_account("scanner")
            lm = LocalModel(student, tok, name="suspect")
            backend = LocalBackend(lm)
            app = create_app(settings, backend=backend, store=store, keyring=KeyRing(MasterKey(b"\x01" * 32)))
            with BackgroundServer(app) as srv:
                return scan_closed(
                    srv.url + "/v1",
                    prompts,
                    tok,
                    keys,
                    config,
                    model_name="suspect",
                    api_key=api_key,
                    samples=1,
                    temperature=args.temperature,
                    max_tokens=args.closed_tokens,
                    seed=args.seed,
                )
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="distill data directory (default: the cache's v1)")
    ap.add_argument("--shares", default="1,0.25,0.05,0.01")
    ap.add_argument("--n", type=int, default=200, help="training pairs per student")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--method", default="lora")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--closed-prompts", type=int, default=24, help="0: no closed-mode scans")
    ap.add_argument("--closed-shares", default="1,0.05", help="shares scanned in closed mode too")
    ap.add_argument("--closed-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-teacher", action="store_true", help="skip the untouched-teacher control")
    ap.add_argument("--no-control-student", action="store_true", help="skip the unwatermarked student")
    ap.add_argument("--k", type=int, default=None, help="blocks trained/adapted (lora, last-k)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    settings = get_settings()
    data = args.data or settings.cache_dir / "distill-data" / "v1"
    meta = json.loads((data / "meta.json").read_text())
    master = MasterKey.from_text(meta["master_key"])  # the public test key of the data set, not a secret
    attacker = meta["account"]
    config = WatermarkConfig.from_dict(meta["watermark"])
    wm = load_pairs(data / "wm_train.jsonl")
    unwm = load_pairs(data / "unwm_train.jsonl")
    heldout = load_pairs(data / "wm_heldout.jsonl")[:20]
    keys = ScanKeys.from_master(master, [attacker, *DECOYS])
    shares = [float(s) for s in args.shares.split(",")]
    closed_shares = {float(s) for s in args.closed_shares.split(",") if s} if args.closed_prompts else set()
    print(f"data: {len(wm)} watermarked, {len(unwm)} unwatermarked pairs from {data}; n = {args.n} per student")

    rows: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="radioactivity-") as tmp:
        plan: list[tuple[str, float]] = [(f"student-{s:g}", s) for s in shares]
        if not args.no_control_student:
            plan.append(("student-unwatermarked", 0.0))
        # the control student is fed the harvest of the 25% student (texts it never saw)
        fed_for_control: list[Pair] = []
        for name, share in plan:
            pairs = mix(wm, unwm, share, args.n, seed=args.seed)
            harvest = [p for p in pairs if p.watermarked]
            if share == 0.25 or (not fed_for_control and share > 0):
                fed_for_control = harvest
            fed = harvest if share > 0 else fed_for_control
            model, tok = load_teacher(cache_dir=settings.cache_dir)
            t0 = time.perf_counter()
            res = train_student(
                pairs,
                args.method,
                model=model,
                tokenizer=tok,
                epochs=args.epochs,
                lr=args.lr,
                seed=args.seed,
                out_dir=Path(tmp) / name,
                heldout=heldout,
                k=args.k,
            )
            info = res.to_dict()
            losses = info.pop("losses", None) or []
            info["loss_first_last"] = [losses[:3], losses[-3:]]
            training.append({"model": name, "share": share, **info, "wall_s": time.perf_counter() - t0})
            print(
                f"{name}: trained {res.examples} pairs x {res.epochs_done:.1f} epochs in {res.seconds:.0f} s, "
                f"held-out loss {res.heldout_loss_before:.3f} -> {res.heldout_loss_after:.3f}, "
                f"training loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f}",
                flush=True,
            )
            del model
            student, stok = load_suspect(str(Path(tmp) / name), cache_dir=settings.cache_dir)
            r = scan_open(student, stok, [(p.prompt, p.response) for p in fed], keys, config, suspect=name)
            rows.append(_summary(name, share, r, attacker))
            print(
                f"  open: {r.tokens_scored} tuples, p = {r.p_value:.3g}, attributed {r.attributed_account}", flush=True
            )
            if share in closed_shares or (share == 0.0 and closed_shares):
                prompts = [p.prompt for p in fed][: args.closed_prompts]
                r = _closed(student, stok, prompts, keys, config, args)
                rows.append(_summary(name, share, r, attacker))
                print(f"  closed: {r.tokens_scored} tuples, p = {r.p_value:.3g}", flush=True)
            del student
        if not args.no_teacher:
            teacher, ttok = load_suspect("teacher", cache_dir=settings.cache_dir)
            fed = mix(wm, unwm, 1.0, args.n, seed=args.seed)
            r = scan_open(teacher, ttok, [(p.prompt, p.response) for p in fed], keys, config, suspect="teacher")
            rows.append(_summary("teacher (untouched)", None, r, attacker))
            print(f"teacher: {r.tokens_scored} tuples, p = {r.p_value:.3g}", flush=True)
            if closed_shares:
                r = _closed(teacher, ttok, [p.prompt for p in fed][: args.closed_prompts], keys, config, args)
                rows.append(_summary("teacher (untouched)", None, r, attacker))
                print(f"  closed: {r.tokens_scored} tuples, p = {r.p_value:.3g}", flush=True)

    print()
    print(
        table(
            [
                "model",
                "share",
                "mode",
                "texts",
                "tuples scored",
                "p (overall)",
                "provider p",
                "attacker p (corr.)",
                "attributed",
                "min p, 10 other accounts",
            ],
            [
                [
                    r["model"],
                    "-" if r["share"] is None else f"{r['share']:.0%}",
                    r["mode"],
                    r["texts"],
                    r["tokens_scored"],
                    f"{r['p_value']:.2g}",
                    f"{r['provider_p']:.2g}",
                    f"{r['attacker_p_corrected']:.2g}",
                    r["attributed_account"] or "-",
                    f"{r['other_accounts_min_p']:.2g}",
                ]
                for r in rows
            ],
        )
    )
    controls = [(r["model"], r["mode"], r["p_value"]) for r in rows if r["share"] in (None, 0.0)]
    controls += [
        (f"{r['model']} vs {acct}", r["mode"], p)
        for r in rows
        if r["share"] == 1.0
        for acct, p in r["other_accounts_p"].items()
    ]
    print(
        f"\n{len(controls)} controls (models never trained on the attacker's marks, or keys that never marked "
        f"their data): p-values {', '.join(f'{p:.2g}' for _, _, p in controls)}"
    )
    payload = {
        "params": {
            **vars(args),
            "data": str(data),
            "attacker": attacker,
            "decoys": DECOYS,
            "watermark": meta["watermark"],
        },
        "training": training,
        "rows": rows,
        "controls": [{"name": n, "mode": m, "p_value": p} for n, m, p in controls],
        "wall_s": time.perf_counter() - t_start,
    }
    path = write_json("radioactivity", json.loads(json.dumps(payload, default=str)), args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
