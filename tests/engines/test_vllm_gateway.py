"""The gateway in front of vLLM, end to end (slow; skipped unless ``make vllm`` made ``.venv-vllm``).

Real parts only: the package's vLLM engine with the plugin (tests/engines/conftest.py), the gateway started as
``antidistill serve --backend vllm --upstream-url http://HOST:PORT/v1`` (same master key, its own SQLite audit log),
and the official ``openai`` SDK as the client.

1. 4 accounts x 16 requests, 32 at a time, half of them streamed, at the SDK's default temperature (1): at least
   90 % of the completions of >= 128 tokens are found marked one by one by the forensic reading of their audit
   records (each record's own configuration); attribution among the 4 accounts and 8 decoys (Bonferroni) never
   names a wrong account and names the right one for most completions one by one (see below); pooled over each
   account's completions, the provider test and the attribution are beyond doubt for every account; the gateway's
   sample check detects at least 90 % of what it checks and raises no alarm. One run of this version: 50 of 50
   detected, attributed and passing the provider test alone.
2. A request sent to the engine directly without antidistill arguments is refused (400); a gateway that records
   another configuration than the engine marks with gets the engine's refusal as an OpenAI 400 (plain and streamed),
   audited.
3. An engine *without* the plugin (eager: it serves a few requests only) behind a second gateway: its completions
   carry no mark, and the gateway's alarm fires (metric and log line) after 3 of them.

Under the default ``gumbel-dual`` (h = 3, repeated contexts unmarked) one answer carries fewer scored pairs than
under the green list this test was first written for: one fresh-clone run had a 64-80-token answer at p 2.3e-3. So
the answers are 128-160 tokens, where 94 of 95 demo answers of 160 tokens were detected one by one at 1e-3 and 76 of
95 attributed among 10 candidates (stop 23); the floors are 90 % detected, 60 % provider test alone, 60 % attributed,
never a wrong account, and each account's answers pooled beyond doubt. The figures below were measured under the
green list.

Why not "every completion attributed" (nor "every completion passes the provider test alone"): 64-80 tokens give
~60 distinct pairs, half at provider positions (the provider test), half at account positions (attribution, tested
against 12 keys at a corrected 1e-3). Most answers clear both by orders of magnitude; a low-entropy one (a list, a
repetition) now and then does not. Measured here (four runs, 245 long completions): every one detected (worst
combined p 3e-6); provider test alone <= 1e-3 for all but two (1.3e-3, 1.5e-3); attribution one by one 60 of 64,
52 of 59, 59 of 60 and 62 of 62, the own key ranked first in all but one and never a wrong account named (the
misses: ~16 of ~28 pairs green at corrected p 1e-3 to 4e-2). The own key's green share at account positions was
0.70-0.73 and the other accounts' 0.25 (chance): the engine marks each row with its own account's key; the misses
are the power of ~28 pairs. The per-completion floors below (90 % provider, 75 % attribution) keep this test from
failing on that chance.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from antidistill.detection.results import DetectionReport
from antidistill.forensics.records import detect_record
from antidistill.keys import KeyRing, MasterKey
from antidistill.watermark.config import WatermarkConfig

from .conftest import MASTER_HEX, VLLM_PYTHON, start_engine, start_gateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm (make vllm)"),
]

ALPHA = 1e-3
MIN_TOKENS = 128
MAX_TOKENS = 160
DECOYS = [f"decoy-{i}" for i in range(8)]  # accounts that never asked: attribution must never name them
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how rain forms, step by step.",
    "Describe a busy market in a small town on a Saturday morning.",
    "Why do cats purr? Give several possible reasons.",
    "Write a letter to a friend about your first week in a new city.",
    "Explain the difference between weather and climate to a child.",
    "Tell the story of a robot who learns to cook.",
    "What are the benefits of learning a second language?",
    "Describe the life cycle of a butterfly.",
    "Write a short poem about autumn leaves, then explain its images.",
    "How does a bicycle stay upright while moving?",
    "Give advice to someone starting their first garden.",
    "Describe a journey by train through the mountains.",
    "Explain what a volcano is and why it erupts.",
    "Write a diary entry of a sailor on a long voyage.",
    "What makes a good friend? Discuss a few qualities.",
]


@pytest.fixture
def bare_engine(exported_model, tmp_path_factory):
    """An engine without the plugin (eager: ~40 s to start here; started once the other tests are done, so that
    its start does not take the CPU from their traffic)."""
    engine = start_engine(exported_model, tmp_path_factory.mktemp("vllm-bare"), plugin=False, eager=True)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def gateway(vllm_engine, tmp_path_factory, model_cache_dir):
    gw = start_gateway(vllm_engine, tmp_path_factory.mktemp("gw-vllm"), model_cache_dir)
    yield gw
    gw.stop()


def _ask(gw_v1: str, key: str, prompt: str, stream: bool, max_tokens: int = MAX_TOKENS, **extra) -> tuple[str, int]:
    """One chat completion through the SDK (its default temperature): (response id, completion tokens)."""
    messages = [{"role": "user", "content": prompt}]
    with openai.OpenAI(base_url=gw_v1, api_key=key, max_retries=0, timeout=900) as sdk:
        if not stream:
            r = sdk.chat.completions.create(model="smollm2", messages=messages, max_tokens=max_tokens, **extra)
            return r.id, r.usage.completion_tokens
        chunks = list(
            sdk.chat.completions.create(
                model="smollm2",
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
        )
        return chunks[0].id, chunks[-1].usage.completion_tokens


def test_every_long_completion_is_marked_attributed_and_checked(gateway, tokenizer):
    accounts = dict(gateway.account(f"vllm-e2e-{i}") for i in range(4))
    jobs = [(acct, key, p, i % 2 == 1) for acct, key in accounts.items() for i, p in enumerate(PROMPTS)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda j: (j[0], *_ask(gateway.url + "/v1", j[1], j[2], j[3])), jobs))
    elapsed = time.monotonic() - t0
    tokens = sum(n for _, _, n in answers)
    print(f"\n64 requests, {tokens} tokens through the gateway in {elapsed:.0f} s", file=sys.stderr)

    records = {r["response_id"]: r for r in gateway.records()}
    ring = KeyRing(MasterKey.from_text(MASTER_HEX))
    candidates = [*accounts, *DECOYS]
    reports: dict[str, list[DetectionReport]] = {a: [] for a in accounts}
    for account, rid, n in answers:
        rec = records[rid]
        assert rec["status"] == 200 and rec["account_id"] == account
        assert rec["watermark"]["marked_by"] == "engine" and rec["watermark"]["key_id"] == f"acct:{account}:v1"
        assert WatermarkConfig.from_dict(rec["watermark"]["config"]) == WatermarkConfig()
        if n < MIN_TOKENS:
            continue
        (report,) = detect_record(rec, tokenizer, ring, accounts=candidates, alpha=ALPHA).reports
        if "too short to test" in str(report):
            # a repetition loop: >= 64 tokens but too few distinct pairs to test (the gateway's check skips it too)
            continue
        assert isinstance(report, DetectionReport), (rid, report)
        assert report.provider is not None
        assert report.account in (account, None), (rid, report.attribution)  # never a wrong account
        reports[account].append(report)
    long = sum(map(len, reports.values()))
    detected = sum(r.watermarked for rs in reports.values() for r in rs)
    named = sum(r.account == account for account, rs in reports.items() for r in rs)
    provider_ok = sum(r.provider is not None and r.provider.p_value <= ALPHA for rs in reports.values() for r in rs)
    print(
        f"{long} completions of >= {MIN_TOKENS} tokens: {detected} detected, {provider_ok} pass the provider test "
        "alone, "
        f"{named} attributed one by one (the others: no account named)",
        file=sys.stderr,
    )
    for account, rs in reports.items():
        print(
            f"  {account}: {len(rs)} long, worst p {max(r.p_value for r in rs):.1e}, worst provider p "
            f"{max(r.provider.p_value for r in rs if r.provider):.1e}, attribution (corrected) worst "
            f"{max(r.p_value_corrected or 1.0 for r in rs):.1e} best {min(r.p_value_corrected or 1.0 for r in rs):.1e}",
            file=sys.stderr,
        )
    assert long >= 48, f"only {long} of 64 completions reached {MIN_TOKENS} tokens"
    assert detected >= 0.9 * long, f"only {detected} of {long} detected one by one"
    assert provider_ok >= 0.6 * long, f"only {provider_ok} of {long} pass the provider test alone"
    assert named >= 0.6 * long, f"only {named} of {long} attributed to their account"

    # all of an account's answers together: attributed to it beyond doubt
    for account in accounts:
        own = [r for r in records.values() if r["account_id"] == account]
        joined = {**own[0], "completion": ["\n\n".join(t for r in own for t in r["completion"])]}
        (pooled,) = detect_record(joined, tokenizer, ring, accounts=candidates, alpha=ALPHA).reports
        assert isinstance(pooled, DetectionReport) and pooled.total_tokens > 1000
        assert pooled.provider is not None and pooled.provider.p_value < 1e-12, (account, pooled.provider)
        assert pooled.account == account and pooled.p_value_corrected < 1e-12, (account, pooled.attribution)
        print(
            f"  {account} pooled ({pooled.total_tokens} tokens): provider p {pooled.provider.p_value:.1e}, "
            f"attribution p (corrected) {pooled.p_value_corrected:.1e}",
            file=sys.stderr,
        )

    # the gateway's own sample check (every long completion here) saw the same
    deadline = time.monotonic() + 60
    while gateway.metric("antidistill_engine_mark_checked_total") < long and time.monotonic() < deadline:
        time.sleep(0.5)
    checked = gateway.metric("antidistill_engine_mark_checked_total")  # it checks from its own, shorter minimum
    assert checked >= long
    assert gateway.metric("antidistill_engine_mark_detected_total") >= 0.9 * checked
    assert gateway.metric("antidistill_engine_mark_alarm") == 0.0


def test_the_engine_refuses_unmarked_requests_and_a_mismatched_configuration(
    vllm_engine, gateway, tmp_path_factory, model_cache_dir
):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5}
    req = urllib.request.Request(
        vllm_engine.base + "/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as direct:
        urllib.request.urlopen(req, timeout=60)
    assert direct.value.code == 400
    assert "antidistill_account" in json.load(direct.value)["error"]["message"]

    # a gateway that would record delta 2 where the engine marks with delta 3: refused, not recorded as marked
    other = start_gateway(
        vllm_engine, tmp_path_factory.mktemp("gw-mismatch"), model_cache_dir, ANTIDISTILL_WATERMARK_DELTA="2.0"
    )
    try:
        account, key = other.account("vllm-mismatch")
        with openai.OpenAI(base_url=other.url + "/v1", api_key=key, max_retries=0) as sdk:
            for stream in (False, True):
                with pytest.raises(openai.BadRequestError) as refused:
                    sdk.chat.completions.create(**body, stream=stream)
                assert "but this engine marks with" in refused.value.body["message"]
        statuses = [r["status"] for r in other.records() if r["account_id"] == account]
        assert statuses == [400, 400]
    finally:
        other.stop()


def test_the_alarm_fires_when_the_engine_runs_without_the_plugin(bare_engine, tmp_path_factory, model_cache_dir):
    print(f"\nvLLM without the plugin ready {bare_engine.wait_ready():.0f} s after its start", file=sys.stderr)
    gw = start_gateway(
        bare_engine, tmp_path_factory.mktemp("gw-bare"), model_cache_dir, ANTIDISTILL_VERIFY_ALARM_MISSES="3"
    )
    try:
        _, key = gw.account("vllm-bare")
        with ThreadPoolExecutor(3) as pool:
            # min_tokens (vLLM's, passed through): just long enough to be checked (this engine decodes eagerly)
            n = MIN_TOKENS + 2
            done = list(
                pool.map(
                    lambda p: _ask(gw.url + "/v1", key, p, False, max_tokens=n, extra_body={"min_tokens": n}),
                    PROMPTS[:3],
                )
            )
        assert all(n >= MIN_TOKENS for _, n in done)
        deadline = time.monotonic() + 60
        while gw.metric("antidistill_engine_mark_alarm") != 1.0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert gw.metric("antidistill_engine_mark_missed_total") == 3.0
        assert gw.metric("antidistill_engine_mark_alarm") == 1.0
        log = gw.log_path.read_text()
        assert "ALARM" in log and bare_engine.base in log and "--logits-processors" in log
        assert MASTER_HEX not in log
        print(next(line for line in log.splitlines() if "ALARM" in line), file=sys.stderr)
    finally:
        gw.stop()
