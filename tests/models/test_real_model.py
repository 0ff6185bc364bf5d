"""The real embedded model, end to end: generate -> detect -> attribute (marked slow; runs in CI)."""

from __future__ import annotations

import time

import pytest

from antidistill.detection.detector import Detector
from antidistill.detection.text import TextDetector
from antidistill.keys import MasterKey
from antidistill.models.embedded import load_causal_lm, resolve_model
from antidistill.watermark.marker import MarkKeys

pytestmark = pytest.mark.slow

PROMPTS = [
    "Explain in detail how a refrigerator keeps food cold.",
    "Write a long story about a lighthouse keeper.",
    "Describe the water cycle step by step.",
    "Write a detailed guide to starting a vegetable garden.",
    "Describe the history of the bicycle.",
    "Explain why the sky is blue, with examples.",
]


def test_second_load_comes_from_the_cache(local_model, model_cache_dir):
    t0 = time.perf_counter()
    _, stats = load_causal_lm(resolve_model(), model_cache_dir)
    assert stats.from_cache
    assert time.perf_counter() - t0 < 10


def test_generate_detect_attribute(local_model):
    master = MasterKey(b"real-model-test-master-key-000001")
    accounts = ["acme", "globex", "initech"]
    rows = [(accounts[i % 3], p) for i, p in enumerate(PROMPTS)]
    marks = [MarkKeys(master.account_key(a), master.provider_key()) for a, _ in rows]
    marks += [None, None]
    prompts = [p for _, p in rows] + PROMPTS[:2]
    outs = local_model.generate(prompts, marks, max_new_tokens=128, min_new_tokens=128, seed=11)
    assert all(len(o.token_ids) == 128 for o in outs)
    assert all(o.key_id is not None for o in outs[:6]) and outs[6].key_id is None

    candidates = [master.account_key(a) for a in accounts]
    candidates += [master.account_key(f"decoy-{i}") for i in range(47)]  # attribution among 50 accounts
    td = TextDetector(
        local_model.tokenizer,
        Detector(local_model.watermark.config, local_model.vocab_size),
        [master.provider_key()],
        candidates,
        alpha=1e-3,
    )
    for (acct, _), o in zip(rows, outs[:6], strict=True):
        r = td.detect(o.text)  # from the text: retokenized, as a detector in the wild would see it
        assert r.watermarked, (acct, r.p_value)
        assert r.account == acct, (acct, r.attribution.ranking[:2])
    for o in outs[6:]:
        r = td.detect(o.text)
        assert not r.watermarked and r.account is None


def test_rows_with_different_accounts_do_not_mark_each_other(local_model):
    master = MasterKey(b"real-model-test-master-key-000002")
    marks = [MarkKeys(master.account_key("a")), MarkKeys(master.account_key("b"))]
    from antidistill.watermark.config import WatermarkConfig

    # provider_fraction 0: every position carries the account key, so cross-talk would show at once
    local_model_wm = local_model.watermark
    from antidistill.watermark.marker import Watermark

    local_model.watermark = Watermark(WatermarkConfig(provider_fraction=0.0))
    try:
        outs = local_model.generate([PROMPTS[0], PROMPTS[0]], marks, max_new_tokens=64, min_new_tokens=64, seed=5)
    finally:
        local_model.watermark = local_model_wm
    d = Detector(WatermarkConfig(provider_fraction=0.0))
    assert d.score(outs[0].token_ids, master.account_key("a")).p_value < 1e-4
    assert d.score(outs[0].token_ids, master.account_key("b")).p_value > 1e-3
    assert d.score(outs[1].token_ids, master.account_key("b")).p_value < 1e-4
    assert d.score(outs[1].token_ids, master.account_key("a")).p_value > 1e-3
