"""Stage 6, Gateway: the HTTP gateway with the same model on a free port, two accounts, four concurrent ``openai``
SDK clients (one streaming), every answer detected and attributed (each account's answers also together, as stage
3 does), and the gateway's audit log verified.

An answer with too few distinct token pairs to test with power is asked again (another seed); what stays short is
reported and counted apart, like stage 3's completions.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from openai import OpenAI

from antidistill.demo.checks import DEMO_MIN_PAIRS, Check, demo_detector, pairs_needed, regenerate_short
from antidistill.demo.context import DemoContext, throwaway_settings
from antidistill.demo.stages.detection import Pooled, Status, attribute_pooled
from antidistill.detection.text import TextDetector
from antidistill.files import private_dir
from antidistill.gateway import create_app
from antidistill.gateway.server import BackgroundServer
from antidistill.keys import KeyRing
from antidistill.models.local import LocalModel
from antidistill.models.local_backend import LocalBackend
from antidistill.store.api import VerifyResult, is_pending_record
from antidistill.store.sql import Store

GATEWAY_PROMPTS = [
    "Explain in detail how airplanes stay in the air.",
    "Write a long story about a fox who opens a bakery.",
    "Describe how a city water supply works, step by step.",
    "Write a detailed guide to learning to play the guitar.",
]
#: (name, organisation) of the two accounts; client ``i`` uses account ``i % 2``
GATEWAY_ACCOUNTS = (("alice-corp", "Alice Corp"), ("bob-labs", "Bob Labs"))
#: the client that streams its answer
STREAMING_CLIENT = 3

Answer = tuple[str, str, str]  # (account id, response id or "(stream)", text)


@dataclass(frozen=True)
class GatewayAnswer:
    """One answer of stage 6.

    Args:
        name, account: the account that asked (its name and id); request: the response id, or ``(stream)``.
        pairs: the answer's distinct (context, token) pairs.
        status: how it was treated (``too short``: not tested; ``under-powered``: reported, not checked).
        p_value, attributed, attributed_name, p_corrected: the detector's answer (``attributed``: an account id
            or ``None``; ``attributed_name``: its name where it is one of the stage's accounts, else the id or
            ``-``).
        detected: whether the answer was found marked.
        check: never pinned on a wrong account (detection is counted in the summary); only for a checked answer.
    """

    name: str
    account: str
    request: str
    pairs: int
    status: Status
    p_value: float | None = None
    attributed: str | None = None
    attributed_name: str | None = None
    p_corrected: float | None = None
    detected: bool | None = None
    check: Check | None = None


@dataclass(frozen=True)
class GatewayResult:
    """Stage 6's result.

    Args:
        url: where the gateway served; seconds: how long the concurrent clients took.
        answers: one per client, in client order (an answer asked again holds its longest try).
        asked_again: ``(account name, pairs of the first try, pairs kept)`` of each answer asked again.
        min_pairs: the fewest distinct pairs the detector tests.
        tested, detected, attributed, wrong: answers checked; of them detected; attributed to the right account
            (answer by answer); to a wrong one.
        pooled: each account's answers attributed together.
        sent: requests sent (retries included); stream_openings: the streams' opening records in the audit log.
        audit: the audit log's verification.
        enough_tested, most_detected, audit_chain: the stage's summary checks.
    """

    url: str
    seconds: float
    answers: tuple[GatewayAnswer, ...]
    asked_again: tuple[tuple[str, int, int], ...]
    min_pairs: int
    tested: int
    detected: int
    attributed: int
    wrong: int
    sent: int
    stream_openings: int
    audit: VerifyResult
    pooled: tuple[Pooled, ...]
    enough_tested: Check
    most_detected: Check
    audit_chain: Check

    @property
    def checks(self) -> tuple[Check, ...]:
        """One check per answer tested with power, one per account's answers together, then the summary checks."""
        per_answer = tuple(a.check for a in self.answers if a.check is not None)
        summary = (self.enough_tested, self.most_detected, self.audit_chain)
        return (*per_answer, *(p.check for p in self.pooled), *summary)


class _Clients:
    """The stage's ``openai`` SDK clients, one per prompt, asking a running gateway; counts the requests sent."""

    def __init__(self, ctx: DemoContext, lm: LocalModel, url: str, accounts: list[tuple[str, str]]) -> None:
        self.ctx, self.lm, self.url, self.accounts = ctx, lm, url, accounts
        self.sent = 0

    def ask(self, i: int, attempt: int = 0) -> Answer:
        account_id, api_key = self.accounts[i % len(self.accounts)]
        client = OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=600)
        request: dict[str, Any] = dict(
            model=self.lm.name,
            messages=[{"role": "user", "content": GATEWAY_PROMPTS[i]}],
            max_tokens=self.ctx.sizes.gateway_tokens,
            temperature=0.7,
            seed=self.ctx.seed + i + 100 * attempt,
        )
        if i == STREAMING_CLIENT:
            parts = client.chat.completions.create(**request, stream=True)
            return account_id, "(stream)", "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        r = client.chat.completions.create(**request)
        return account_id, r.id, r.choices[0].message.content or ""

    def ask_all(self, indices: list[int], attempt: int) -> list[Answer]:
        """Clients ``indices`` at once (``attempt`` > 0: asked again, with another seed)."""
        self.sent += len(indices)
        with ThreadPoolExecutor(len(indices)) as pool:
            return list(pool.map(lambda i: self.ask(i, attempt), indices))


def _test_answer(td: TextDetector, names: dict[str, str], answer: Answer, pairs: int) -> GatewayAnswer:
    """Test one answer of the account ``answer[0]`` (``names``: account id -> name)."""
    account, request, text = answer
    who = names[account]
    if pairs < td.min_pairs:  # the model chose a very short answer: too few tokens to test is a fact, not a failure
        return GatewayAnswer(who, account, request, pairs, "too short")
    r = td.detect(text)
    figures = (r.p_value, r.account, names.get(r.account or "", r.account or "-"), r.p_value_corrected, r.watermarked)
    if pairs < DEMO_MIN_PAIRS:
        return GatewayAnswer(who, account, request, pairs, "under-powered", *figures)
    # never pinned on a wrong account; not detected, or too little text to single out the account, is a lack of
    # power, counted in the summary (most detected) and made up for by the account's answers together
    ok = r.account in (account, None)
    return GatewayAnswer(
        who, account, request, pairs, "checked", *figures, check=Check(f"gateway answer for {who}", ok)
    )


def gateway_stage(ctx: DemoContext, lm: LocalModel, ring: KeyRing) -> GatewayResult:
    """Serve ``lm`` through a throwaway gateway marking with ``ring``'s keys, ask it, test the answers, verify."""
    # a throwaway gateway: watermarking on, no monitor, no Redis, its own database, whatever the environment says
    # for the real one; completions are marked with the keys of `ring`, the installation's
    settings = throwaway_settings(ctx.settings, private_dir(ctx.work / "gateway"), backend="local")
    store = Store.open(settings.database_url, settings=settings)
    try:
        created = [store.create_account(name, rpm=60, metadata={"organisation": org}) for name, org in GATEWAY_ACCOUNTS]
        names = {a.id: a.name for a, _, _ in created}
        td = demo_detector(lm, ring, list(names))
        app = create_app(settings, backend=LocalBackend(lm), store=store, keyring=ring)
        with ctx.screen.busy("Stage 6: gateway up, four SDK clients asking at once…"), BackgroundServer(app) as srv:
            clients = _Clients(ctx, lm, srv.url, [(a.id, key) for a, key, _ in created])
            t0 = time.perf_counter()
            answers = clients.ask_all(list(range(len(GATEWAY_PROMPTS))), 0)
            dt = time.perf_counter() - t0
            pairs = [td.pair_count(text) for _, _, text in answers]
            first = list(pairs)
            need = [pairs_needed(a, td.min_pairs) for a, _, _ in answers]
            again = regenerate_short(answers, pairs, need, clients.ask_all, lambda a: td.pair_count(a[2]))
        tested = tuple(_test_answer(td, names, a, n) for a, n in zip(answers, pairs, strict=True))
        checked = [t for t in tested if t.status == "checked"]
        detected = sum(bool(t.detected) for t in checked)
        attributed = sum(t.attributed == t.account for t in checked)
        wrong = sum(t.attributed not in (t.account, None) for t in checked)
        own: dict[str, list[str]] = {}
        for t, (account, _, text) in zip(tested, answers, strict=True):
            if t.status != "too short":
                own.setdefault(account, []).append(text)
        pooled = tuple(attribute_pooled(td, names[a], a, texts, names) for a, texts in own.items())
        v = store.verify_audit()
        # a stream is recorded twice: an opening (pending) record before its first token, then the exchange
        opened = sum(1 for r in store.iter_audit() if is_pending_record(r))
        result = GatewayResult(
            srv.url,
            dt,
            tested,
            tuple((names[answers[i][0]], first[i], pairs[i]) for i in again),
            td.min_pairs,
            len(checked),
            detected,
            attributed,
            wrong,
            clients.sent,
            opened,
            v,
            pooled,
            Check("at least three gateway answers tested", len(checked) >= 3),
            Check("most gateway answers detected", bool(checked) and 3 * detected >= 2 * len(checked)),
            Check("audit chain", v.ok and v.records - opened == clients.sent),
        )
    finally:
        store.close()
    ctx.screen.show(result)
    return result
