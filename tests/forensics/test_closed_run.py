"""Closed scans against a real HTTP endpoint (uvicorn): concurrency, HTTP 429 with Retry-After, the answer cache
(resume after a kill, re-scoring without queries, a truncated last line), early stopping and the budget plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from antidistill.errors import InputError
from antidistill.forensics.closed import RunOptions
from antidistill.forensics.endpoint import CACHE_FILE, AnswerCache
from antidistill.forensics.scan import ScanKeys, scan_closed
from antidistill.gateway.server import BackgroundServer
from antidistill.keys import MasterKey
from antidistill.settings import get_settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.forensics.endpoints import suspect_app
from tests.forensics.test_cli_scan import run as run_cli
from tests.gateway.conftest import free_port
from tests.synthetic import TEST_MASTER

CONFIG = WatermarkConfig(scheme="antidistill-v1")
PROMPTS = [f"Tell me about topic number {i}." for i in range(12)]
MARK = MarkKeys(TEST_MASTER.account_key("bob"), TEST_MASTER.provider_key())


def _keys() -> ScanKeys:
    return ScanKeys.from_master(TEST_MASTER, ["alice", "bob", "carol"], {"ab": ["alice", "bob"]})


def _scan(url, tokenizer, config=CONFIG, prompts=PROMPTS, **run):
    return scan_closed(
        url,
        prompts,
        tokenizer,
        _keys(),
        config,
        model_name="suspect-1",
        samples=2,
        max_tokens=24,
        run=RunOptions(**run),
    )


def test_concurrent_querying_is_faster_and_scores_the_same(tokenizer, tmp_path):
    app = suspect_app(tokenizer, Watermark(CONFIG), MARK, delay=0.2)
    with BackgroundServer(app) as srv:
        t0 = time.perf_counter()
        one = _scan(srv.url + "/v1", tokenizer, prompts=PROMPTS[:8], concurrency=1, cache_dir=tmp_path / "c1")
        t1 = time.perf_counter()
        eight = _scan(srv.url + "/v1", tokenizer, prompts=PROMPTS[:8], concurrency=8, cache_dir=tmp_path / "c8")
        t8 = time.perf_counter() - t1
    # 16 requests at 200 ms: about 3.2 s one at a time, about 0.4 s eight at a time
    assert (t1 - t0) > 3.0 and t8 < (t1 - t0) / 3, (t1 - t0, t8)
    assert len(app.state.answered) == 32
    assert eight.p_value == one.p_value and eight.tokens_scored == one.tokens_scored
    assert eight.sequential == one.sequential


def test_http_429_is_retried_after_its_retry_after(tokenizer):
    app = suspect_app(tokenizer, Watermark(CONFIG), MARK, limited=3, retry_after=0.3)
    with BackgroundServer(app) as srv:
        r = _scan(srv.url + "/v1", tokenizer, prompts=PROMPTS[:4], concurrency=4)
    assert r.parameters["budget"]["retries_after_429"] == 3 and r.parameters["budget"]["requests"] == 8
    answered = {(p, s): t for p, s, t in app.state.answered}
    assert len(answered) == 8
    for prompt, seed, t_429 in app.state.limited:
        assert answered[(prompt, seed)] - t_429 >= 0.29  # waited as asked, then answered


def test_other_http_errors_are_one_line(tokenizer):
    with pytest.raises(InputError, match="cannot reach the suspect endpoint"):
        _scan(f"http://127.0.0.1:{free_port()}/v1", tokenizer, concurrency=4)
    with (
        BackgroundServer(suspect_app(tokenizer, Watermark(CONFIG), MARK)) as srv,
        pytest.raises(InputError, match="HTTP 404"),
    ):
        _scan(srv.url + "/nowhere/v1", tokenizer, concurrency=4)


def test_rescoring_from_the_cache_sends_nothing(tokenizer, tmp_path):
    app = suspect_app(tokenizer, Watermark(CONFIG), MARK)
    with BackgroundServer(app) as srv:
        url = srv.url + "/v1"
        first = _scan(url, tokenizer, cache_dir=tmp_path, concurrency=4)
        again = _scan(url, tokenizer, cache_dir=tmp_path, concurrency=4)  # the same command: the cache answers
    assert len(app.state.answered) == 24 and again.parameters["budget"]["answers_from_cache"] == 24
    assert again.p_value == first.p_value
    # the server is gone: re-score under another member and only the cache is read
    other = _scan(url, tokenizer, WatermarkConfig(scheme="gumbel"), cache_dir=tmp_path, from_cache=True)
    assert other.parameters["watermark"]["scheme"] == "gumbel" and other.tokens_scored > 100
    assert not other.significant  # bob's green-list mark is no Gumbel mark
    with pytest.raises(InputError, match="24 of 24 answers are not in the cache"):
        scan_closed(
            url,
            PROMPTS,
            tokenizer,
            _keys(),
            CONFIG,
            samples=2,
            max_tokens=99,
            run=RunOptions(cache_dir=tmp_path, from_cache=True),
        )
    text = (tmp_path / CACHE_FILE).read_text()
    assert "suspect-1" in text and TEST_MASTER.account_key("bob").key_id not in text


def test_a_truncated_last_line_is_dropped(tmp_path):
    app_cache = AnswerCache(tmp_path)
    assert app_cache.answers == {}
    good = json.dumps({"key": "k1", "texts": ["hello"], "completion_tokens": 1})
    (tmp_path / CACHE_FILE).write_text(good + "\n" + '{"key": "k2", "tex', encoding="utf-8")
    cache = AnswerCache(tmp_path)
    assert list(cache.answers) == ["k1"]
    assert (tmp_path / CACHE_FILE).read_text() == good + "\n"  # the next append starts on a fresh line
    (tmp_path / CACHE_FILE).write_text("not json\n" + good + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1 is not a cached answer"):
        AnswerCache(tmp_path)


def test_early_stopping_is_stated_and_uses_the_sequential_p(tokenizer):
    prompts = [f"Question {i}?" for i in range(30)]
    marked = suspect_app(tokenizer, Watermark(CONFIG), MARK)
    with BackgroundServer(marked) as srv:
        r = _scan(srv.url + "/v1", tokenizer, prompts=prompts, stop_at=1e-6, concurrency=4)
    assert r.parameters["budget"]["requests"] < 60 and "early stopping" in r.stopping_rule
    assert r.sequential["fixed_n_valid"] is False and r.p_value == r.sequential["p_value"] <= 1e-6
    assert r.significant and r.attributed_account == "bob"
    assert "NOT valid evidence" in r.verdict and "stays valid under stopping" in r.verdict
    unmarked = suspect_app(tokenizer, Watermark(CONFIG), None)
    with BackgroundServer(unmarked) as srv:
        r = _scan(srv.url + "/v1", tokenizer, prompts=prompts[:10], stop_at=1e-6, concurrency=4)
    assert r.parameters["budget"]["requests"] == 20 and "not reached" in r.stopping_rule
    assert not r.significant and r.sequential["fixed_n_valid"] is True and r.sequential["p_value"] > 1e-3


def test_plan_only_prints_the_budget(capsys, tokenizer, tmp_path, shared_cache_env):
    run_cli(capsys, "keys", "init")
    master = MasterKey.load(get_settings(), create=False)  # the scan's own keys: a suspect marked with them
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    app = suspect_app(tokenizer, Watermark(CONFIG), MarkKeys(master.account_key("x"), master.provider_key()))
    with BackgroundServer(app) as srv:
        code, _, err = run_cli(
            capsys,
            "scan",
            "--suspect-url",
            srv.url + "/v1",
            "--prompts",
            str(prompts),
            "--account",
            "acct_x",
            "--samples",
            "2",
            "--max-tokens",
            "24",
            "--pilot",
            "3",
            "--plan-only",
            "--price-per-1k-tokens",
            "0.5",
            "--scheme",
            CONFIG.scheme,
        )
    assert code == 0, err
    assert len(app.state.answered) == 6  # the pilot alone: 3 prompts x 2 samples
    assert "plan: to reach p <= 1e-06" in err and "queries" in err and "at the given price" in err, err[-1500:]
    assert "normal approximation" in err and "requests 6/24" in err


def test_a_killed_scan_resumes_from_the_cache_without_asking_twice(capsys, tokenizer, tmp_path, shared_cache_env):
    run_cli(capsys, "keys", "init")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    cache = tmp_path / "cache"
    app = suspect_app(tokenizer, Watermark(CONFIG), MARK)
    argv = ["scan", "--suspect-url", "", "--prompts", str(prompts), "--account", "acct_x", "--samples", "2",
            "--max-tokens", "24", "--concurrency", "4", "--cache", str(cache), "--json"]  # fmt: skip
    with BackgroundServer(app) as srv:
        argv[2] = srv.url + "/v1"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "antidistill", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _wait(lambda: len(app.state.answered) >= 8, proc)
        app.state.hold = True  # the requests after these wait: the scan is midway
        _wait(lambda: _lines(cache) >= len(app.state.answered), proc)
        first = {(p, s) for p, s, _ in app.state.answered}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with open(cache / CACHE_FILE, "a", encoding="utf-8") as f:
            f.write('{"key": "cut sh')  # a line cut short by the kill
        app.state.hold = False
        time.sleep(0.3)  # the held requests of the dead process finish (nobody reads them)
        resumed_at = time.monotonic()
        code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    second = [(p, s) for p, s, t in app.state.answered if t > resumed_at]
    assert 8 <= len(first) < 24 and len(second) == len(set(second))
    assert not first & set(second) and first | set(second) == {(p, s) for p in PROMPTS for s in (0, 1)}
    r = json.loads(out)
    assert r["parameters"]["budget"]["answers_from_cache"] == len(first) and r["parameters"]["budget"]["requests"] == 24


def _lines(cache: Path) -> int:
    f = cache / CACHE_FILE
    return f.read_text().count("\n") if f.exists() else 0


def _wait(cond, proc, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the scan exited early: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_the_prompt_pool_adds_prompts_of_the_harvested_domains():
    from antidistill.redteam.harvest import generate_prompts
    from antidistill.workflows.scan import with_prompt_pool

    pool = generate_prompts(5, seed=1)
    out = with_prompt_pool(["Harvested?", pool[0]], 5, seed=1)
    assert out == ["Harvested?", *pool]  # harvested first, each prompt once
    with pytest.raises(InputError, match="prompt pool"):
        with_prompt_pool([], -1)


def test_retry_after_reads_either_header():
    # the wait a 429 names, in seconds: retry-after-ms first, else retry-after (the scan and the harvester share it)
    from types import SimpleNamespace

    from antidistill.errors import retry_after

    def refused(headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after(refused({"retry-after": "7"})) == 7.0
    assert retry_after(refused({"retry-after-ms": "250", "retry-after": "7"})) == 0.25
    assert retry_after(refused({"retry-after-ms": "soon", "retry-after": "3"})) == 3.0
    assert retry_after(refused({"retry-after": "-4"})) == 0.0
    assert retry_after(refused({})) is None and retry_after(ValueError("no response")) is None
