"""vLLM with the plugin, end to end (slow; skipped unless ``make vllm`` made ``.venv-vllm``).

The embedded model is exported with ``antidistill model export``, a vLLM OpenAI server is started from
``.venv-vllm`` on it with the master key in its environment only (once for the package: tests/engines/conftest.py),
two accounts ask at once (two rows of one batch), and the completions' token ids are detected and attributed with
the keys derived here. A request without ``vllm_xargs`` is refused. The plugin is named in ``--logits-processors``
*and* installed as an entry point, so vLLM builds it twice: exactly one copy may mark (the engine log says so once).

Here (2 shared cores): the server starts in about 100 s; 160 tokens for each of the two rows take about 45 s.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from antidistill.detection.detector import Detector
from antidistill.keys import MasterKey
from antidistill.watermark.config import WatermarkConfig

from .conftest import MASTER_HEX, VLLM_PYTHON

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm (make vllm)"),
]


def _post(url: str, body: dict, timeout: float = 600) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def engine(vllm_engine):
    """The package's engine (tests/engines/conftest.py): started once for every module that needs it."""
    return vllm_engine.base, vllm_engine.log_path


def _ask(
    base: str, account: str | None, prompt: str, max_tokens: int = 100, seed: int | None = None
) -> tuple[int, dict]:
    body: dict = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "return_token_ids": True,
    }
    if seed is not None:
        body["seed"] = seed  # the engine's sampler and the plugin's coins (gumbel-dual) are seeded from it
    if account is not None:
        body["vllm_xargs"] = {
            "antidistill_account": account,
            "antidistill_key_version": 1,
            "antidistill_provider_version": 1,
        }
    return _post(f"{base}/v1/chat/completions", body)


def test_two_accounts_in_one_batch_are_detected_and_attributed(engine):
    base, log_path = engine
    prompts = {"alice": "Write a short story about a lighthouse keeper.", "bob": "Explain how rain forms, in detail."}
    answers: dict[str, tuple[int, dict]] = {}
    t0 = time.monotonic()
    # the engine marks with the default member (gumbel-dual, h = 3): 160 tokens, seeded, so that the test is the
    # same every run (at 100 unseeded tokens its per-text power at these thresholds is not certain)
    threads = [
        threading.Thread(target=lambda a=a, p=p: answers.__setitem__(a, _ask(base, a, p, 160, seed=11)))
        for a, p in prompts.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"2 completions in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    master = MasterKey.from_text(MASTER_HEX)
    detector = Detector(WatermarkConfig())  # what the engine was started with
    candidates = [master.account_key(a) for a in ("alice", "bob", "carol", "dave", "erin")]
    for account, (status, body) in answers.items():
        assert status == 200, body
        choice = body["choices"][0]
        tokens = choice["token_ids"]  # contexts inside the answer: the prompt's tokens are never marked
        assert len(tokens) >= 100, choice
        score = detector.score(tokens, master.account_key(account), master.provider_key(1))
        result = detector.attribute(tokens, candidates, provider=master.provider_key(1))
        print(account, len(tokens), score.p_value, result.account, result.p_value_corrected, file=sys.stderr)
        assert score.p_value < 1e-6
        assert result.account == account
    # built twice (entry point + --logits-processors), marking once
    log = log_path.read_text()
    assert log.count("antidistill marks with") == 1
    assert log.count("another copy marks, this one stands by") == 1


def test_a_request_without_antidistill_arguments_is_refused(engine):
    base, _ = engine
    status, body = _ask(base, None, "Hello", max_tokens=5)
    assert status == 400
    assert "antidistill_account" in body["error"]["message"]
    status, body = _ask(base, "alice", "Hello", max_tokens=5)
    assert status == 200
