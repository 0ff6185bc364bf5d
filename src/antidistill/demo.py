"""``antidistill demo``: the main job end to end on the embedded model.

Stages: load the model; serve watermarked completions for two accounts (one batch, each row with its own
account key); detect and attribute every completion among 1,000 accounts; check the controls (the model's
unwatermarked output and human-written text are not flagged); find a marked passage inside human text; then the
gateway: start it on a free port with the same model, create accounts, let several `openai` SDK clients talk to
it at once, detect and attribute their answers, and verify the audit chain. Stages 7 (Watch: the monitor and the
policy live) and 8 (Prove: harvest, distil, scan, evidence report) live in :mod:`antidistill.demo_stages`.
``quick`` shrinks every stage (:class:`~antidistill.demo_stages.DemoSizes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEMO_ALPHA = 1e-3
DECOY_ACCOUNTS = 8

PROMPTS = {
    "alice": [
        "Explain in detail how a refrigerator keeps food cold.",
        "Write a long story about a lighthouse keeper who finds a message in a bottle.",
        "Write a letter from a young sailor to her brother about her first voyage.",
    ],
    "bob": [
        "Explain why the sky is blue, with examples.",
        "Tell the story of a small village that wakes up to find the river has vanished.",
        "Describe the history of the bicycle and how it changed cities.",
    ],
}


@dataclass
class Check:
    label: str
    ok: bool


def _verdict(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[bold red]FAILED[/]"


def run_demo(console: Console, model: str | None = None, max_tokens: int = 160, seed: int = 7, quick: bool = False,
             report_dir: str | Path | None = None) -> bool:
    """Run every stage, print what happens, and return whether every check passed.

    Args:
        quick: shrink every stage (fewer, shorter completions; a smaller harvest) to fit a few minutes.
        report_dir: where stage 8 writes the evidence report (default: ``demo-report`` in the data directory).
    """
    from antidistill.demo_stages import DemoSizes, run_stages
    from antidistill.detection.detector import Detector
    from antidistill.detection.text import TextDetector
    from antidistill.keys import KeyRing
    from antidistill.models.local import LocalModel
    from antidistill.settings import get_settings
    from antidistill.watermark.marker import MarkKeys

    settings = get_settings()
    sizes = DemoSizes.for_mode(quick, max_tokens)
    max_tokens = sizes.serve_tokens
    started = time.perf_counter()
    checks: list[Check] = []
    console.rule("[bold]antidistill demo" + (" (quick)" if quick else ""))

    # 1. model
    with console.status("Stage 1: loading the embedded model (the first load converts the GGUF file)…"):
        lm = LocalModel.load(model or settings.model, settings.cache_dir)
    st = lm.load_stats
    how = "from the cache" if st and st.from_cache else "converted from GGUF and cached"
    console.print(f"[bold]1. Model[/] {lm.name}, {how} in {st.seconds:.1f} s" if st else f"[bold]1. Model[/] {lm.name}")
    cfg = lm.watermark.config
    console.print(f"   watermark: scheme {cfg.scheme}, gamma {cfg.gamma}, delta {cfg.delta}, "
                  f"context width {cfg.context_width}, provider share {cfg.provider_fraction}")

    # 2. serve
    ring = KeyRing.open(settings)
    rows: list[tuple[str, str | None, str]] = []  # (label, account, prompt)
    per_account = 2 if quick else 3  # quick: fewer completions
    for acct, prompts in PROMPTS.items():
        rows += [(acct, acct, p) for p in prompts[:per_account]]
    unmarked = PROMPTS["alice"][:2] + PROMPTS["bob"][:1 if not quick else 0]
    rows += [("unwatermarked", None, p) for p in unmarked]
    marks = [MarkKeys(ring.account_key(a), ring.provider_key()) if a else None for _, a, _ in rows]
    t0 = time.perf_counter()
    with console.status(f"Stage 2: generating {len(rows)} completions in one batch…"):
        completions = lm.generate([p for _, _, p in rows], marks, max_new_tokens=max_tokens,
                                  min_new_tokens=max_tokens, seed=seed)
    dt = time.perf_counter() - t0
    n_tok = sum(len(c.token_ids) for c in completions)
    console.print(f"[bold]2. Serve[/] {len(rows)} completions ({len(rows) - len(unmarked)} marked for alice and bob, "
                  f"{len(unmarked)} unmarked), {n_tok} tokens in {dt:.1f} s ({n_tok / dt:.0f} tokens/s, one batch)")

    # 3. detect and attribute
    candidates = [k for a in PROMPTS for k in ring.account_keys(a)]
    candidates += [ring.account_key(f"customer-{i:04d}") for i in range(DECOY_ACCOUNTS)]
    detector = Detector(cfg, vocab_size=lm.vocab_size)
    td = TextDetector(lm.tokenizer, detector, ring.provider_keys(), candidates, DEMO_ALPHA)
    table = Table(title=f"3. Detect and attribute (alpha {DEMO_ALPHA:g}, {len(candidates)} candidate accounts)")
    for col in ("served to", "tokens", "p-value", "verdict", "attributed to", "corrected p", "check"):
        table.add_column(col)
    marked = attributed = wrong = 0
    for (label, acct, _), c in zip(rows, completions, strict=True):
        r = td.detect(c.text)
        # a marked text must be detected and never pinned on the wrong account; one that is detected but too
        # short to single out its account among the candidates is a lack of power, counted below, not an error
        ok = (r.watermarked and r.account in (acct, None)) if acct else (not r.watermarked and r.account is None)
        if acct:
            marked += 1
            attributed += r.account == acct
            wrong += r.account not in (acct, None)
        checks.append(Check(f"{label}: {c.text[:30]!r}", ok))
        table.add_row(label, str(r.total_tokens), f"{r.p_value:.2g}", "marked" if r.watermarked else "clean",
                      r.account or "-", f"{r.p_value_corrected:.2g}", _verdict(ok))
    console.print(table)
    ok = 3 * attributed >= 2 * marked
    checks.append(Check("most marked completions attributed", ok))
    console.print(f"   {attributed} of {marked} marked completions attributed to the right account, {wrong} to a "
                  f"wrong one {_verdict(ok)}", highlight=False)
    sample = completions[0].text.strip().replace("\n", " ")
    console.print(f"   e.g. alice's first completion: [italic]{sample[:160]}…[/]", highlight=False)

    # 4. human-written controls
    try:
        from antidistill.detection.corpus import human_samples

        humans = human_samples(8, seed=seed)
    except Exception as exc:  # the corpus is built from text on this machine; say so if there is none
        console.print(f"[yellow]4. Human text: skipped ({exc})[/]")
        humans = []
    if humans:
        results = td.detect_many(humans)
        flagged = sum(1 for r in results if not isinstance(r, Exception) and r.watermarked)
        tested = sum(1 for r in results if not isinstance(r, Exception))
        ok = flagged == 0 and tested > 0
        checks.append(Check("human text", ok))
        console.print(f"[bold]4. Controls[/] {tested} human-written passages (manual pages, licences): "
                      f"{flagged} flagged {_verdict(ok)}")
        repeated = "\n\n".join([humans[0]] * 20)
        rep = td.detect(repeated)
        ok = not rep.watermarked
        checks.append(Check("repeated human text", ok))
        console.print(f"   one human paragraph repeated 20 times: p = {rep.p_value:.2g}, "
                      f"{'flagged' if rep.watermarked else 'not flagged'} {_verdict(ok)}")

        # 5. a marked passage hidden in human text
        marked = completions[0].text.strip()
        before, after = humans[1], humans[2]
        mixed = f"{before}\n\n{marked}\n\n{after}"
        start = len(before) + 2
        end = start + len(marked)
        r = td.detect(mixed)
        span = r.span
        found = bool(span and span.watermarked and span.start_char is not None
                     and span.start_char < end and span.end_char > start)
        checks.append(Check("marked span in human text", found))
        where = (f"chars {span.start_char}-{span.end_char} (true passage {start}-{end}), corrected p = "
                 f"{span.p_value_corrected:.2g}") if span else "no span"
        console.print(f"[bold]5. Mixed text[/] alice's completion inside {len(mixed)} characters of human text: "
                      f"{where} {_verdict(found)}")

    checks += _gateway_stage(console, lm, ring, seed, sizes.gateway_tokens)
    report = Path(report_dir) if report_dir else settings.data_dir / "demo-report"
    checks += run_stages(console, lm, sizes, seed, report)

    failed = [c for c in checks if not c.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(checks)} checks failed:[/] "
                      + "; ".join(c.label for c in failed), highlight=False)
        return False
    console.print(f"[bold green]All {len(checks)} checks passed[/] in {time.perf_counter() - started:.0f} s.")
    return True


GATEWAY_PROMPTS = [
    "Explain in detail how airplanes stay in the air.",
    "Write a long story about a fox who opens a bakery.",
    "Describe how a city water supply works, step by step.",
    "Write a detailed guide to learning to play the guitar.",
]


def _gateway_stage(console: Console, lm, ring, seed: int, max_tokens: int = 256) -> list[Check]:
    """Stage 6: the gateway with the same model, four concurrent SDK clients, attribution, audit verification."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from openai import OpenAI

    from antidistill.detection.detector import Detector
    from antidistill.detection.text import TextDetector
    from antidistill.errors import InputError
    from antidistill.gateway import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.models.local_backend import LocalBackend
    from antidistill.settings import get_settings
    from antidistill.store.sql import Store

    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="antidistill-demo-") as tmp:
        settings = get_settings().model_copy(update={"backend": "local"})
        store = Store.open(f"sqlite:///{Path(tmp) / 'gateway.db'}", settings=settings)
        try:
            accounts = [store.create_account(name, rpm=60, metadata={"organisation": org})
                        for name, org in (("alice-corp", "Alice Corp"), ("bob-labs", "Bob Labs"))]
            app = create_app(settings, backend=LocalBackend(lm), store=store, keyring=ring)
            with console.status("Stage 6: gateway up, four SDK clients asking at once…"), \
                    BackgroundServer(app) as srv:

                def ask(i: int) -> tuple[str, str, str]:
                    account, api_key, _ = accounts[i % 2]
                    client = OpenAI(base_url=srv.url + "/v1", api_key=api_key, max_retries=0, timeout=600)
                    if i == 3:  # one streaming client
                        parts = client.chat.completions.create(
                            model=lm.name, messages=[{"role": "user", "content": GATEWAY_PROMPTS[i]}],
                            max_tokens=max_tokens, temperature=0.7, seed=seed + i, stream=True)
                        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
                        return account.id, "(stream)", text
                    r = client.chat.completions.create(
                        model=lm.name, messages=[{"role": "user", "content": GATEWAY_PROMPTS[i]}],
                        max_tokens=max_tokens, temperature=0.7, seed=seed + i)
                    return account.id, r.id, r.choices[0].message.content or ""

                t0 = time.perf_counter()
                with ThreadPoolExecutor(4) as pool:
                    answers = list(pool.map(ask, range(4)))
                dt = time.perf_counter() - t0
            console.print(f"[bold]6. Gateway[/] {len(answers)} concurrent openai-SDK clients (one streaming) "
                          f"served in {dt:.1f} s through {srv.url}/v1")
            ids = [a.id for a, _, _ in accounts]
            candidates = [k for i in ids for k in ring.account_keys(i)]
            candidates += [ring.account_key(f"customer-{i:04d}") for i in range(DECOY_ACCOUNTS)]
            td = TextDetector(lm.tokenizer, Detector(lm.watermark.config, lm.vocab_size), ring.provider_keys(),
                              candidates, DEMO_ALPHA)
            names = {a.id: a.name for a, _, _ in accounts}
            attributed = wrong = 0
            for acct_id, rid, text in answers:
                try:
                    r = td.detect(text)
                    # detected, and never pinned on a wrong account; too little text to single out the account
                    # is a lack of power, counted below
                    ok = r.watermarked and r.account in (acct_id, None)
                    attributed += r.account == acct_id
                    wrong += r.account not in (acct_id, None)
                    got = names.get(r.account, r.account or "-")
                    console.print(f"   {names[acct_id]:<10} {rid[:22]:<22} p = {r.p_value:.2g}, attributed to "
                                  f"{got} (corrected p = {r.p_value_corrected:.2g}) {_verdict(ok)}", highlight=False)
                except InputError as exc:
                    # the model chose a very short answer: too few tokens to test is a fact, not a failure
                    console.print(f"   {names[acct_id]:<10} {rid[:22]:<22} not tested: {exc}", highlight=False)
                    continue
                checks.append(Check(f"gateway answer for {names[acct_id]}", ok))
            tested = sum(1 for c in checks if c.label.startswith("gateway answer"))
            checks.append(Check("at least three gateway answers tested", tested >= 3))
            ok = 2 * attributed >= tested
            checks.append(Check("most gateway answers attributed", ok))
            console.print(f"   {attributed} of {tested} answers attributed to the right account, {wrong} to a wrong "
                          f"one {_verdict(ok)}", highlight=False)
            v = store.verify_audit()
            ok = v.ok and v.records == len(answers)
            checks.append(Check("audit chain", ok))
            console.print(f"   audit log: {v.records} records, {v.checkpoints} signed checkpoints, chain "
                          f"{'verifies' if v.ok else 'BROKEN: ' + str(v.problem)} {_verdict(ok)}", highlight=False)
        finally:
            store.close()
    return checks
