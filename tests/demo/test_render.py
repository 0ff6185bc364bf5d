"""The renderer: text helpers, and a failed check shows as FAILED with its figures."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from antidistill.demo.checks import Check
from antidistill.demo.render import Renderer, short_id, shorten
from antidistill.demo.stages.detection import Pooled
from antidistill.demo.stages.gateway import GatewayAnswer, GatewayResult
from antidistill.store.api import VerifyResult


def test_text_helpers():
    assert short_id("acct_0123456789abcdef") == "acct_01234567…"
    assert short_id("short") == "short"
    assert shorten("a  b\n c") == "a b c"
    assert len(shorten("x" * 200, 20)) == 20


def gateway_result(records: int, ok: bool) -> GatewayResult:
    answer = GatewayAnswer(
        "alice-corp",
        "acct_a",
        "chatcmpl-1",
        90,
        "checked",
        1e-9,
        "acct_a",
        "alice-corp",
        1e-6,
        True,
        Check("gateway answer for alice-corp", True),
    )
    short = GatewayAnswer("bob-labs", "acct_b", "(stream)", 3, "too short")
    return GatewayResult(
        "http://127.0.0.1:1",
        2.0,
        (answer, short),
        (("bob-labs", 3, 3),),
        16,
        1,
        1,
        1,
        0,
        5,
        1,
        VerifyResult(True, records, 0),
        (Pooled("alice-corp", "acct_a", 1, 45, "acct_a", 1e-6, "alice-corp", Check("alice-corp: pooled", True)),),
        Check("at least three gateway answers tested", False),
        Check("most gateway answers detected", True),
        Check("audit chain", ok),
    )


def render(result) -> str:
    r = Renderer(Console(file=io.StringIO(), width=200))
    r.show(result)
    return r.console.file.getvalue()


def test_the_gateway_stage_shows_each_answer_and_the_audit_check():
    out = render(gateway_result(6, True))
    assert (
        "6. Gateway 2 concurrent openai-SDK clients (one streaming) served in 2.0 s through http://127.0.0.1:1/v1"
    ) in out
    assert "1 answer(s) had too few distinct token pairs" in out and "bob-labs (3 → 3)" in out
    line = "alice-corp chatcmpl-1             p = 1e-09, marked, attributed to alice-corp (corrected p = 1e-06) ok"
    assert line in out
    assert (
        "alice-corp's 1 answers together (45 distinct pairs on the account's positions): attributed to alice-corp"
        in out
    )
    assert "not tested: too short (3 distinct token pairs, at least 16 are needed)" in out
    assert "audit log: 6 records (5 requests + 1 stream openings), 0 signed checkpoints, chain verifies ok" in out
    assert "FAILED" in render(gateway_result(7, False))


def test_an_unknown_result_is_an_error():
    with pytest.raises(TypeError, match="no way to show a str"):
        Renderer(Console(file=io.StringIO())).show("text")
