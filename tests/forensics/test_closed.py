"""Closed mode against real HTTP endpoints (uvicorn) with the openai SDK: a marked suspect, the project's gateway
with the fake backend (unmarked), and a suspect that only copies its prompt."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from antidistill.errors import InputError
from antidistill.forensics.scan import ScanKeys, scan_closed
from antidistill.gateway.server import BackgroundServer
from antidistill.models.fake import _WORDS
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.forensics.endpoints import suspect_app
from tests.forensics.helpers import green_words, word_tokens
from tests.gateway.conftest import free_port, start_gateway
from tests.synthetic import TEST_MASTER

CONFIG = WatermarkConfig(scheme="antidistill-v1")
WM = Watermark(CONFIG)
PROMPTS = [f"Tell me about topic number {i}." for i in range(8)]
ACCOUNTS = ["alice", "bob", "carol"] + [f"user-{i}" for i in range(7)]


def _keys() -> ScanKeys:
    return ScanKeys.from_master(TEST_MASTER, ACCOUNTS, {"ab": ["alice", "bob"]})


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        WatermarkConfig(scheme="kgw-entropy", entropy_threshold=1.0),
        WatermarkConfig(scheme="gumbel"),
        WatermarkConfig(scheme="gumbel-dual"),
        WatermarkConfig(scheme="tournament"),
    ],
    ids=lambda c: c.scheme,
)
def test_marked_suspect_is_detected_and_attributed(tokenizer, config):
    # a student that learnt bob's mark, whatever the member: the closed-mode scan finds it and names bob
    mark = MarkKeys(TEST_MASTER.account_key("bob"), TEST_MASTER.provider_key())
    app = suspect_app(tokenizer, Watermark(config), mark)
    with BackgroundServer(app) as srv:
        r = scan_closed(
            srv.url + "/v1",
            PROMPTS,
            tokenizer,
            _keys(),
            config,
            model_name="suspect-1",
            samples=2,
            max_tokens=40,
            max_prompts=6,
            temperature=0.5,
            seed=3,
        )
    assert len(app.state.requests) == 12  # the budget: 6 prompts x 2 samples
    assert {b["seed"] for b in app.state.requests} == {3, 4}
    assert all(b["max_tokens"] == 40 and b["temperature"] == 0.5 for b in app.state.requests)
    budget = r.parameters["budget"]
    assert budget["requests"] == 12 and budget["prompts_sent"] == 6 and budget["max_completion_tokens"] == 480
    assert budget["completion_tokens_used"] == 480
    assert r.mode == "closed" and "suspect-1" in r.suspect
    assert r.significant and r.provider.p_value < 1e-6
    assert r.attributed_account == "bob" and r.best_account.p_corrected < 1e-4
    assert r.accounts[1].p_corrected > 1e-3
    assert r.clusters[0].cluster_id == "ab" and r.clusters[0].p_value < 1e-3
    assert r.controls_ok and len(r.controls) >= 10
    assert r.tokens_scored <= r.tokens_seen


def test_unmarked_gateway_is_not_accused(tmp_path, tokenizer):
    from antidistill.store.sql import Store

    store = Store.open(f"sqlite:///{tmp_path / 'gw.db'}")
    try:
        with start_gateway(tmp_path, store) as gw:
            _, api_key, _ = gw.account("scanner")
            with openai.OpenAI(base_url=gw.v1, api_key=api_key, max_retries=0) as client:
                r = scan_closed(
                    client, PROMPTS, tokenizer, _keys(), CONFIG, model_name="antidistill-fake", samples=3, max_tokens=64
                )
    finally:
        store.close()
    assert r.parameters["budget"]["requests"] == 24
    assert r.tokens_scored > 150
    assert not r.significant and r.p_value > 1e-3 and r.attributed_account is None
    assert r.controls_ok and "No evidence" in r.verdict


def test_copying_the_prompt_is_not_evidence(tokenizer):
    """Prompts that quote our watermarked outputs, echoed back: every tuple occurs in the prompt, none is
    scored (scored, they would be green: the prompts are marked)."""
    mark = MarkKeys(TEST_MASTER.account_key("bob"), TEST_MASTER.provider_key())
    vocab = word_tokens(tokenizer, _WORDS)
    rng = np.random.default_rng(5)
    prompts = [green_words(tokenizer, WM, mark, vocab, 60, rng) for _ in range(5)]
    with BackgroundServer(suspect_app(tokenizer, WM, mark, echo=True)) as srv:
        r = scan_closed(srv.url + "/v1", prompts, tokenizer, _keys(), CONFIG, model_name="suspect-1")
    assert r.tokens_seen > 250 and r.tokens_scored <= 5
    assert r.skipped["in-prompt"] >= r.tokens_seen - 5
    assert not r.significant


def test_unreachable_endpoint_is_one_clear_error(tokenizer):
    with pytest.raises(InputError, match="cannot reach"):
        scan_closed(f"http://127.0.0.1:{free_port()}/v1", PROMPTS, tokenizer, _keys(), CONFIG)
    with pytest.raises(InputError, match="no prompts"):
        scan_closed("http://127.0.0.1:1/v1", [], tokenizer, _keys(), CONFIG)
