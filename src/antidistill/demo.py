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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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


# ---- texts too short to test ----------------------------------------------------------------------------------
# The embedded model sometimes falls into a repetition loop ("🔵🔵🔵…", "a tale, a tale, …"): 160 tokens that
# hold ten distinct (context, token) pairs. Which completion does depends on the keys, so on the master key of the
# installation. Such a text cannot be tested (fewer than MIN_PAIRS pairs: the detector refuses it) or is tested
# with little power. The demo generates it again with another seed; what stays short is reported and counted
# apart, never checked and never an abort. Only the pair count decides, never a detection result, so every check
# that remains is as strict as before and still fails when the watermark does not work.

#: Distinct pairs a marked text needs before the demo checks that it is detected. At the green fraction the
#: embedded model's marked answers reach (about 0.7 at delta 3, see ``watermark/config.py``) a 64-pair text is
#: detected at alpha 1e-3 with probability above 0.999 (provider test and attribution among the demo's ten
#: candidate keys, Fisher-combined; simulated); at 0.6, about 0.97; 32 pairs would give 0.90 and 0.54.
DEMO_MIN_PAIRS = 64
#: further tries, each with another seed, for a text with fewer distinct pairs than it needs
REGENERATE_ATTEMPTS = 2

Row = tuple[str, str | None, str]  # (label, account or None for an unmarked completion, prompt)
T = TypeVar("T")


def pairs_needed(account: str | None, min_pairs: int) -> int:
    """Distinct pairs a demo text needs: a marked one enough for power, an unmarked control enough to be tested
    at all (a false positive must never happen, however short the text)."""
    return max(DEMO_MIN_PAIRS, min_pairs) if account else min_pairs


def regenerate_short(items: list[T], counts: list[int], need: Sequence[int],
                     redo: Callable[[list[int], int], Sequence[T]], count: Callable[[T], int],
                     attempts: int = REGENERATE_ATTEMPTS) -> list[int]:
    """Generate again every item with fewer distinct pairs than it needs, up to ``attempts`` times.

    ``redo(indices, attempt)`` returns new items for those indices (``attempt`` = 1, 2, … picks another seed);
    each index keeps the try with the most pairs. ``items`` and ``counts`` are updated in place. Returns the
    indices that were generated again.
    """
    weak = [i for i in range(len(items)) if counts[i] < need[i]]
    again = list(weak)
    for attempt in range(1, attempts + 1):
        if not weak:
            break
        for i, item in zip(weak, redo(weak, attempt), strict=True):
            n = count(item)
            if n > counts[i]:
                items[i], counts[i] = item, n
        weak = [i for i in weak if counts[i] < need[i]]
    return again


def demo_rows(per_account: int, unmarked: int) -> list[Row]:
    """Stage 2's rows: ``per_account`` prompts of each account, then ``unmarked`` prompts served unmarked."""
    rows: list[Row] = []
    for acct, prompts in PROMPTS.items():
        rows += [(acct, acct, p) for p in prompts[:per_account]]
    plain = PROMPTS["alice"][:2] + PROMPTS["bob"]
    rows += [("unwatermarked", None, p) for p in plain[:unmarked]]
    return rows


def demo_detector(lm: Any, ring: Any, accounts: Sequence[str] = tuple(PROMPTS)) -> Any:
    """A detector with the provider keys and every key of ``accounts`` and of the decoy accounts as candidates."""
    from antidistill.detection.detector import Detector
    from antidistill.detection.text import TextDetector

    candidates = [k for a in accounts for k in ring.account_keys(a)]
    candidates += [ring.account_key(f"customer-{i:04d}") for i in range(DECOY_ACCOUNTS)]
    return TextDetector(lm.tokenizer, Detector(lm.watermark.config, vocab_size=lm.vocab_size),
                        ring.provider_keys(), candidates, DEMO_ALPHA)


@dataclass
class Served:
    """What stage 2 served: one completion per row, and the distinct pairs of each (as the detector counts them).

    Args:
        rows: ``(label, account or None, prompt)``.
        completions: the completions, in row order (a regenerated row holds its longest try).
        pairs: distinct (context, token) pairs of each completion's text.
        regenerated: the rows generated again because they had fewer pairs than they need.
    """

    rows: list[Row]
    completions: list[Any]
    pairs: list[int]
    regenerated: list[int]


def serve_stage(console: Console, lm: Any, ring: Any, td: Any, rows: list[Row], max_tokens: int, seed: int
                ) -> Served:
    """Stage 2: one batch, each row marked with its own account's key (or unmarked); rows too short to test are
    generated again with another seed."""
    from antidistill.watermark.marker import MarkKeys

    marks = [MarkKeys(ring.account_key(a), ring.provider_key()) if a else None for _, a, _ in rows]
    n_unmarked = sum(1 for _, a, _ in rows if a is None)
    t0 = time.perf_counter()
    with console.status(f"Stage 2: generating {len(rows)} completions in one batch…"):
        completions = lm.generate([p for _, _, p in rows], marks, max_new_tokens=max_tokens,
                                  min_new_tokens=max_tokens, seed=seed)
    dt = time.perf_counter() - t0
    n_tok = sum(len(c.token_ids) for c in completions)
    console.print(f"[bold]2. Serve[/] {len(rows)} completions ({len(rows) - n_unmarked} marked for "
                  f"{' and '.join(PROMPTS)}, {n_unmarked} unmarked), {n_tok} tokens in {dt:.1f} s "
                  f"({n_tok / max(dt, 1e-9):.0f} tokens/s, one batch)")

    def redo(indices: list[int], attempt: int) -> list[Any]:
        with console.status(f"Stage 2: generating {len(indices)} completion(s) again…"):
            return lm.generate([rows[i][2] for i in indices], [marks[i] for i in indices],
                               max_new_tokens=max_tokens, min_new_tokens=max_tokens, seed=seed + attempt)

    pairs = [td.pair_count(c.text) for c in completions]
    before = list(pairs)
    need = [pairs_needed(a, td.min_pairs) for _, a, _ in rows]
    again = regenerate_short(completions, pairs, need, redo, lambda c: td.pair_count(c.text))
    if again:
        what = ", ".join(f"{rows[i][0]} ({before[i]} → {pairs[i]})" for i in again)
        left = sum(1 for i in again if pairs[i] < need[i])
        console.print(f"   {len(again)} completion(s) fell into a repetition loop, too few distinct token pairs to "
                      f"test (a marked text needs {DEMO_MIN_PAIRS}), and were generated again with another seed: "
                      f"{what}" + (f"; {left} still short, counted apart below" if left else ""), highlight=False)
    return Served(rows, completions, pairs, again)


def detect_stage(console: Console, td: Any, served: Served) -> list[Check]:
    """Stage 3: detect and attribute every completion; texts too short to test, or marked texts too short to test
    with power, are shown and counted apart, not checked."""
    checks: list[Check] = []
    table = Table(title=f"3. Detect and attribute (alpha {DEMO_ALPHA:g}, {len(td.candidates)} candidate accounts)")
    for col in ("served to", "pairs", "p-value", "verdict", "attributed to", "corrected p", "check"):
        table.add_column(col)
    marked = powered = attributed = wrong = controls = apart = 0
    for (label, acct, _), c, n in zip(served.rows, served.completions, served.pairs, strict=True):
        marked += acct is not None
        if n < td.min_pairs:
            apart += 1
            table.add_row(label, str(n), "-", "too short", "-", "-", "[yellow]not tested[/]")
            continue
        r = td.detect(c.text)
        cells = (label, str(n), f"{r.p_value:.2g}", "marked" if r.watermarked else "clean", r.account or "-",
                 f"{r.p_value_corrected:.2g}")
        if acct is not None and n < pairs_needed(acct, td.min_pairs):
            apart += 1
            table.add_row(*cells, "[yellow]under-powered[/]")
            continue
        # a marked text must be detected and never pinned on the wrong account; one that is detected but too
        # short to single out its account among the candidates is a lack of power, counted below, not an error
        ok = (r.watermarked and r.account in (acct, None)) if acct else (not r.watermarked and r.account is None)
        if acct:
            powered += 1
            attributed += r.account == acct
            wrong += r.account not in (acct, None)
        else:
            controls += 1
        checks.append(Check(f"{label}: {c.text[:30]!r}", ok))
        table.add_row(*cells, _verdict(ok))
    console.print(table)
    if apart:
        console.print(f"   {apart} completion(s) too short to test, or marked with fewer than {DEMO_MIN_PAIRS} "
                      "distinct token pairs (too little power): reported, not checked", highlight=False)
    if marked:
        ok = 3 * powered >= 2 * marked
        checks.append(Check("most marked completions long enough to test", ok))
        console.print(f"   {powered} of {marked} marked completions long enough to test with power {_verdict(ok)}",
                      highlight=False)
        ok = powered > 0 and 3 * attributed >= 2 * powered
        checks.append(Check("most marked completions attributed", ok))
        console.print(f"   {attributed} of {powered} marked completions tested attributed to the right account, "
                      f"{wrong} to a wrong one {_verdict(ok)}", highlight=False)
    if any(a is None for _, a, _ in served.rows):
        ok = controls > 0
        checks.append(Check("unmarked completions tested", ok))
        if not ok:
            console.print(f"   no unmarked completion long enough to test {_verdict(ok)}")
    sample = served.completions[0].text.strip().replace("\n", " ")
    console.print(f"   e.g. {served.rows[0][0]}'s first completion: [italic]{sample[:160]}…[/]", highlight=False)
    return checks


def controls_stage(console: Console, td: Any, served: Served, seed: int) -> list[Check]:
    """Stages 4 and 5: human-written text is not flagged (also repeated 20 times); a marked completion hidden in
    human text is found."""
    checks: list[Check] = []
    try:
        from antidistill.detection.corpus import human_samples

        humans = human_samples(8, seed=seed)
    except Exception as exc:  # the corpus is built from text on this machine; say so if there is none
        console.print(f"[yellow]4. Human text: skipped ({exc})[/]")
        return checks
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

    # 5. a marked passage hidden in human text: the first marked completion long enough to test with power
    pick = next(((label, c.text.strip()) for (label, acct, _), c, n in
                 zip(served.rows, served.completions, served.pairs, strict=True)
                 if acct is not None and n >= pairs_needed(acct, td.min_pairs)), None)
    if pick is None:
        checks.append(Check("marked span in human text", False))
        console.print(f"[bold]5. Mixed text[/] no marked completion long enough to hide {_verdict(False)}")
        return checks
    who, marked = pick
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
    console.print(f"[bold]5. Mixed text[/] {who}'s completion inside {len(mixed)} characters of human text: "
                  f"{where} {_verdict(found)}")
    return checks


def run_demo(console: Console, model: str | None = None, max_tokens: int = 160, seed: int = 7, quick: bool = False,
             report_dir: str | Path | None = None) -> bool:
    """Run every stage, print what happens, and return whether every check passed.

    Args:
        quick: shrink every stage (fewer, shorter completions; a smaller harvest) to fit a few minutes.
        report_dir: where stage 8 writes the evidence report (default: ``demo-report`` in the data directory).
    """
    from antidistill.demo_stages import DemoSizes, run_stages
    from antidistill.keys import KeyRing
    from antidistill.models.local import LocalModel
    from antidistill.settings import get_settings

    settings = get_settings()
    sizes = DemoSizes.for_mode(quick, max_tokens)
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

    # 2-5. serve, detect and attribute, human-written controls, a marked passage in human text
    ring = KeyRing.open(settings)
    td = demo_detector(lm, ring)
    rows = demo_rows(2, 2) if quick else demo_rows(3, 3)  # quick: fewer completions
    served = serve_stage(console, lm, ring, td, rows, sizes.serve_tokens, seed)
    checks += detect_stage(console, td, served)
    checks += controls_stage(console, td, served, seed)

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
    """Stage 6: the gateway with the same model, four concurrent SDK clients, attribution, audit verification.

    An answer with too few distinct token pairs to test with power is asked again (another seed); what stays
    short is reported and counted apart, like stage 3's completions.
    """
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from openai import OpenAI

    from antidistill.demo_stages import _demo_settings
    from antidistill.gateway import create_app
    from antidistill.gateway.server import BackgroundServer
    from antidistill.models.local_backend import LocalBackend
    from antidistill.settings import get_settings
    from antidistill.store.sql import Store

    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="antidistill-demo-") as tmp:
        # a throwaway gateway: watermarking on, no monitor, no Redis, its own database, whatever the environment
        # says for the real one; completions are marked with the keys of `ring`, the installation's
        settings = _demo_settings(get_settings(), Path(tmp), backend="local")
        store = Store.open(settings.database_url, settings=settings)
        try:
            accounts = [store.create_account(name, rpm=60, metadata={"organisation": org})
                        for name, org in (("alice-corp", "Alice Corp"), ("bob-labs", "Bob Labs"))]
            td = demo_detector(lm, ring, [a.id for a, _, _ in accounts])
            app = create_app(settings, backend=LocalBackend(lm), store=store, keyring=ring)
            sent = 0
            with console.status("Stage 6: gateway up, four SDK clients asking at once…"), \
                    BackgroundServer(app) as srv:

                def ask(i: int, attempt: int = 0) -> tuple[str, str, str]:
                    account, api_key, _ = accounts[i % 2]
                    client = OpenAI(base_url=srv.url + "/v1", api_key=api_key, max_retries=0, timeout=600)
                    request = dict(model=lm.name, messages=[{"role": "user", "content": GATEWAY_PROMPTS[i]}],
                                   max_tokens=max_tokens, temperature=0.7, seed=seed + i + 100 * attempt)
                    if i == 3:  # one streaming client
                        parts = client.chat.completions.create(**request, stream=True)
                        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
                        return account.id, "(stream)", text
                    r = client.chat.completions.create(**request)
                    return account.id, r.id, r.choices[0].message.content or ""

                def ask_all(indices: list[int], attempt: int) -> list[tuple[str, str, str]]:
                    nonlocal sent
                    sent += len(indices)
                    with ThreadPoolExecutor(len(indices)) as pool:
                        return list(pool.map(lambda i: ask(i, attempt), indices))

                t0 = time.perf_counter()
                answers = ask_all(list(range(len(GATEWAY_PROMPTS))), 0)
                dt = time.perf_counter() - t0
                pairs = [td.pair_count(text) for _, _, text in answers]
                before = list(pairs)
                need = [pairs_needed(a, td.min_pairs) for a, _, _ in answers]
                again = regenerate_short(answers, pairs, need, ask_all, lambda a: td.pair_count(a[2]))
            console.print(f"[bold]6. Gateway[/] {len(answers)} concurrent openai-SDK clients (one streaming) "
                          f"served in {dt:.1f} s through {srv.url}/v1")
            names = {a.id: a.name for a, _, _ in accounts}
            if again:
                what = ", ".join(f"{names[answers[i][0]]} ({before[i]} → {pairs[i]})" for i in again)
                console.print(f"   {len(again)} answer(s) had too few distinct token pairs to test with power (at "
                              f"least {DEMO_MIN_PAIRS}) and were asked again with another seed: {what}",
                              highlight=False)
            attributed = wrong = tested = 0
            for (acct_id, rid, text), n in zip(answers, pairs, strict=True):
                who = f"   {names[acct_id]:<10} {rid[:22]:<22}"
                if n < td.min_pairs:
                    # the model chose a very short answer: too few tokens to test is a fact, not a failure
                    console.print(f"{who} not tested: too short ({n} distinct token pairs, at least "
                                  f"{td.min_pairs} are needed)", highlight=False)
                    continue
                r = td.detect(text)
                got = names.get(r.account, r.account or "-")
                line = (f"{who} p = {r.p_value:.2g}, attributed to {got} (corrected p = "
                        f"{r.p_value_corrected:.2g})")
                if n < DEMO_MIN_PAIRS:
                    console.print(f"{line} [yellow]under-powered ({n} distinct token pairs): reported, not "
                                  "checked[/]", highlight=False)
                    continue
                # detected, and never pinned on a wrong account; too little text to single out the account
                # is a lack of power, counted below
                ok = r.watermarked and r.account in (acct_id, None)
                tested += 1
                attributed += r.account == acct_id
                wrong += r.account not in (acct_id, None)
                console.print(f"{line} {_verdict(ok)}", highlight=False)
                checks.append(Check(f"gateway answer for {names[acct_id]}", ok))
            checks.append(Check("at least three gateway answers tested", tested >= 3))
            ok = tested > 0 and 2 * attributed >= tested
            checks.append(Check("most gateway answers attributed", ok))
            console.print(f"   {attributed} of {tested} answers tested attributed to the right account, {wrong} to a "
                          f"wrong one {_verdict(ok)}", highlight=False)
            v = store.verify_audit()
            ok = v.ok and v.records == sent
            checks.append(Check("audit chain", ok))
            console.print(f"   audit log: {v.records} records ({sent} requests), {v.checkpoints} signed checkpoints, "
                          f"chain {'verifies' if v.ok else 'BROKEN: ' + str(v.problem)} {_verdict(ok)}",
                          highlight=False)
        finally:
            store.close()
    return checks
