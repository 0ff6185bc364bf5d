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
    found = []
    for (acct, _), o in zip(rows, outs[:6], strict=True):
        r = td.detect(o.text)  # from the text: retokenized, as a detector in the wild would see it
        found.append(r.p_value)
        assert r.account in (acct, None), (acct, r.attribution.ranking[:2])  # never another account
    # the default member (gumbel-dual, h = 3) detects most 128-token texts on their own at 1e-3, not every one (94 of
    # 95 at 160 tokens over 16 master keys, docs/watermark-schemes.md), and an account's texts together single it
    # out among the 50 where one text's account positions do not every time
    assert sum(p <= 1e-3 for p in found) >= 5, found
    for acct in accounts:
        own = [o.text for (a, _), o in zip(rows, outs[:6], strict=True) if a == acct]
        r = td.attribute_texts(own)
        assert r.account == acct and r.p_value_corrected <= 1e-3, (acct, r.ranking[:2])
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

    local_model.watermark = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0))
    try:
        outs = local_model.generate([PROMPTS[0], PROMPTS[0]], marks, max_new_tokens=64, min_new_tokens=64, seed=5)
    finally:
        local_model.watermark = local_model_wm
    d = Detector(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0))
    assert d.score(outs[0].token_ids, master.account_key("a")).p_value < 1e-4
    assert d.score(outs[0].token_ids, master.account_key("b")).p_value > 1e-3
    assert d.score(outs[1].token_ids, master.account_key("b")).p_value < 1e-4
    assert d.score(outs[1].token_ids, master.account_key("a")).p_value > 1e-3


@pytest.mark.parametrize("scheme", ["gumbel", "gumbel-dual", "tournament", "kgw-entropy"])
def test_every_new_member_marks_the_real_model(local_model, scheme):
    # The distortion-free and entropy-aware members on the real model, read back from the text as a detector
    # in the wild sees it: every marked answer is ours, no answer is pinned on the wrong account, unmarked
    # answers are not ours. Seeded: the same answers at every run.
    from antidistill.watermark.config import WatermarkConfig
    from antidistill.watermark.marker import Watermark

    cfg = WatermarkConfig(scheme=scheme, entropy_threshold=1.0 if scheme == "kgw-entropy" else 0.0)
    master = MasterKey(b"real-model-test-master-key-000002")
    accounts = ["acme", "globex"]
    marks = [MarkKeys(master.account_key(accounts[i % 2]), master.provider_key()) for i in range(4)] + [None]
    saved = local_model.watermark
    local_model.watermark = Watermark(cfg)
    try:
        outs = local_model.generate(PROMPTS[:5], marks, max_new_tokens=128, min_new_tokens=128, seed=5)
        entropies = local_model.step_entropies(PROMPTS[:5], [o.token_ids for o in outs])
    finally:
        local_model.watermark = saved
    det = Detector(cfg, local_model.vocab_size)
    candidates = [master.account_key(a) for a in accounts] + [master.account_key(f"decoy-{i}") for i in range(8)]
    td = TextDetector(local_model.tokenizer, det, [master.provider_key()], candidates, alpha=1e-3)
    reports = [td.detect(o.text) for o in outs[:4]]
    print(scheme, [f"{r.p_value:.1e}" for r in reports], [r.account for r in reports])
    for i, r in enumerate(reports):
        assert r.account in (None, accounts[i % 2]), (scheme, i, r.account)  # never the wrong account
    # Gumbel-max and entropy-aware KGW mark every 128-token answer at 1e-3. The dual key and the tournament
    # trade strength for diversity (see benchmarks/watermark_compare.py): most answers, and all at 0.05.
    detected = sum(r.watermarked for r in reports)
    assert detected == 4 if scheme in ("gumbel", "kgw-entropy") else detected >= 2, (scheme, detected)
    # at 0.05: every answer of the strong members, three of four of the weaker ones (the tournament's TPR at 200
    # tokens is ~92% at 1e-5 in the comparison table; a 128-token answer of low entropy can miss)
    assert sum(r.p_value < 0.05 for r in reports) >= (4 if scheme in ("gumbel", "kgw-entropy") else 3)
    assert any(r.account is not None for r in reports)
    assert not td.detect(outs[4].text).watermarked
    assert [len(e) for e in entropies] == [len(o.token_ids) for o in outs]
    if scheme == "kgw-entropy":
        # positions kept by the unmarked model's entropy: exact, and no weaker than scoring every position
        for o, ent in zip(outs[:4], entropies, strict=False):
            full = det.detect(o.token_ids, [master.provider_key()], scan=False)
            kept = det.detect(o.token_ids, [master.provider_key()], scan=False, keep=ent >= 1.0)
            assert kept.tokens_scored < full.tokens_scored
            assert kept.green_fraction > full.green_fraction
