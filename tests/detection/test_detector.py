"""The detector: calibration under the null, power on simulated marked text, attribution, scan, dedup.

Statistical tests use fixed seeds, so they are deterministic; their bounds are exact (Clopper-Pearson)
intervals around the exact size of the discrete test, so a wrong p-value, a missing correction or a
correlated hash moves the observed rate out of the interval.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest

from antidistill.detection import Detector
from antidistill.detection.detector import MIN_SCAN_WINDOW, distinct_pairs
from antidistill.detection.stats import binomial_sf, bonferroni, clopper_pearson
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.marker import Watermark
from tests.synthetic import TEST_MASTER, sample, uniform_tokens

VOCAB = 50
#: Explicit parameters, so that these tests do not move when the product's defaults are tuned.
MARKED = WatermarkConfig(scheme="antidistill-v1", gamma=0.25, delta=2.0, context_width=1, provider_fraction=0.5)
SINGLE = WatermarkConfig(scheme="antidistill-v1", gamma=0.25, delta=2.0, context_width=1, provider_fraction=0.0)
PROVIDER = TEST_MASTER.provider_key(1)
ACCOUNTS = [f"acct{i:03d}" for i in range(100)]
CANDIDATES = [TEST_MASTER.account_key(a) for a in ACCOUNTS]


@cache
def critical_green(n: int, gamma: float, alpha: float, tests: int = 1) -> int | None:
    """Smallest green count of n pairs the detector calls significant (after ``tests`` corrections)."""
    g = np.arange(n + 1)
    ok = np.array([bonferroni(float(binomial_sf(int(x), n, gamma)), tests) <= alpha for x in g])
    return int(g[ok][0]) if ok.any() else None


def exact_size(n: int, gamma: float, alpha: float, tests: int = 1) -> float:
    """P(the detector flags n null pairs) when ``tests`` independent keys are tried: the exact size."""
    g = critical_green(n, gamma, alpha, tests)
    if g is None:
        return 0.0
    per_key = float(binomial_sf(g, n, gamma))
    return 1.0 - (1.0 - per_key) ** tests


def n_windows(length: int, min_window: int = MIN_SCAN_WINDOW) -> int:
    """Windows of 2^k >= min_window tokens at quarter-window strides, as documented by ``scan_pairs``."""
    total, w = 0, min_window
    while w <= length:
        total += len(range(0, length - w + 1, max(1, w // 4)))
        w *= 2
    return total


def windows_of(seq, h: int) -> list[tuple[int, ...]]:
    return [tuple(int(t) for t in seq[i : i + h + 1]) for i in range(len(seq) - h)]


# ---- calibration under the null ----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.05, 0.01])
@pytest.mark.parametrize("config", [SINGLE, MARKED], ids=["single-key", "provider-split"])
def test_single_key_p_values_are_calibrated(alpha, config):
    rng = np.random.default_rng(50)
    det = Detector(config)
    n_seq = 2000
    seqs = uniform_tokens(rng, 101, VOCAB, batch=n_seq)
    hits, sizes = 0, []
    for i, seq in enumerate(seqs):
        key = TEST_MASTER.account_key(f"user{i}")
        res = det.score(seq, key, provider=TEST_MASTER.provider_key(i + 1))
        hits += res.p_value <= alpha
        sizes.append(exact_size(res.tokens_scored, det.gamma, alpha))
    lo, hi = clopper_pearson(int(hits), n_seq, 0.99)
    assert lo <= float(np.mean(sizes)) <= hi  # the observed rate is the exact size of the discrete test
    assert lo <= alpha  # and never significantly above alpha


def test_detect_on_innocent_text_is_calibrated():
    rng = np.random.default_rng(51)
    det = Detector(MARKED)
    alpha, n_seq = 0.05, 600
    flagged = attributed = 0
    for i in range(n_seq):
        seq = uniform_tokens(rng, 120, VOCAB)
        cands = [TEST_MASTER.account_key(f"s{i}-{j}") for j in range(10)]
        rep = det.detect(
            seq, provider_keys=[TEST_MASTER.provider_key(i + 1)], candidates=cands, alpha=alpha, scan=False
        )
        flagged += rep.watermarked
        attributed += rep.account is not None
    for k in (flagged, attributed):
        assert clopper_pearson(k, n_seq, 0.99)[0] <= alpha


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_attribution_over_1000_keys_is_calibrated(alpha):
    # a vocabulary large enough that independent texts share no pairs, so the fixed keys see fresh coins
    rng = np.random.default_rng(52)
    vocab, m, n_seq = 50_000, 1000, 1000
    det = Detector(SINGLE)
    cands = [TEST_MASTER.account_key(f"c{j}") for j in range(m)]
    hits, sizes = 0, []
    for _ in range(n_seq):
        pairs = det.pairs(uniform_tokens(rng, 81, vocab))
        res = det.attribute_pairs(pairs, cands, alpha)
        assert res.keys_tested == m
        assert res.p_value_corrected == bonferroni(res.best.p_value, m)
        hits += res.account is not None
        sizes.append(exact_size(len(pairs), det.gamma, alpha, m))
    lo, hi = clopper_pearson(int(hits), n_seq, 0.99)
    assert lo <= float(np.mean(sizes)) <= hi
    assert lo <= alpha


def test_scan_on_innocent_text_is_calibrated():
    # without the correction for the ~100 windows tried, most innocent texts would show a "significant" window
    rng = np.random.default_rng(53)
    det = Detector(SINGLE)
    key = TEST_MASTER.account_key("scan")
    alpha, n_seq = 0.05, 300
    flagged = 0
    for _ in range(n_seq):
        pairs = det.pairs(uniform_tokens(rng, 512, 5000))
        span = det.scan_pairs(pairs, det.green_flags(pairs, key), alpha)
        assert span.windows_tested == n_windows(512)
        flagged += span.watermarked
    assert clopper_pearson(flagged, n_seq, 0.99)[0] <= alpha


# ---- power -------------------------------------------------------------------------------------------------
def test_marked_text_is_flagged_and_attributed_among_100_accounts():
    rng = np.random.default_rng(54)
    det = Detector(MARKED)
    wm = Watermark(MARKED)
    for idx in (0, 17, 42, 99):
        key = CANDIDATES[idx]
        seq = sample(rng, wm, key, PROVIDER, 200, VOCAB)[0]
        rep = det.detect(seq, provider_keys=[PROVIDER], candidates=CANDIDATES)
        assert rep.watermarked and rep.p_value < 1e-10
        assert rep.account == ACCOUNTS[idx]
        assert rep.attribution.key_id == key.key_id
        assert rep.attribution.ranking[0].key_id == key.key_id
        assert rep.attribution.keys_tested == 100
        assert rep.p_value_corrected <= 1e-3
        # the runner-up is an ordinary innocent account
        assert rep.attribution.ranking[1].p_value > 1e-4
        assert rep.provider.key_id == "provider:v1" and rep.provider.p_value < 1e-6
        assert rep.total_tokens == 200


DUAL = WatermarkConfig(scheme="gumbel-dual", context_width=3, provider_fraction=0.5)


def test_texts_too_weak_one_by_one_are_attributed_together():
    # short gumbel-dual texts: most alone do not single out their account among 100, the ten pooled do
    rng = np.random.default_rng(60)
    det, wm = Detector(DUAL), Watermark(DUAL)
    key = CANDIDATES[7]
    texts = list(sample(rng, wm, key, PROVIDER, 12, 200, batch=10, logit_scale=3.0))
    alone = [det.attribute(t, CANDIDATES, PROVIDER).account for t in texts]
    together = det.attribute_many(texts, CANDIDATES, [PROVIDER])
    assert alone.count(None) >= 8 and together.account == ACCOUNTS[7] and together.p_value_corrected < 1e-6
    assert together.keys_tested == 100  # one provider version
    # a pair two texts share is one draw: the same text five times is that text once
    once, five = (
        det.attribute_many(texts[:1], CANDIDATES, [PROVIDER]),
        det.attribute_many(texts[:1] * 5, CANDIDATES, [PROVIDER]),
    )
    assert five.best == once.best and five.p_value_corrected == once.p_value_corrected


def test_pooled_attribution_of_innocent_texts_is_calibrated():
    rng = np.random.default_rng(61)
    det = Detector(DUAL)
    alpha, n_sets = 0.05, 400
    hits = 0
    for i in range(n_sets):
        texts = list(uniform_tokens(rng, 40, 5000, batch=4))
        cands = [TEST_MASTER.account_key(f"p{i}-{j}") for j in range(10)]
        r = det.attribute_many(texts, cands, [TEST_MASTER.provider_key(i + 1)], alpha)
        hits += r.account is not None
    assert clopper_pearson(hits, n_sets, 0.99)[0] <= alpha


def test_marking_account_not_among_candidates_is_not_attributed():
    rng = np.random.default_rng(55)
    det = Detector(MARKED)
    outsider = TEST_MASTER.account_key("outsider")
    for _ in range(3):
        seq = sample(rng, Watermark(MARKED), outsider, PROVIDER, 200, VOCAB)[0]
        rep = det.detect(seq, provider_keys=[PROVIDER], candidates=CANDIDATES)
        assert rep.account is None
        assert rep.attribution.account is None and rep.attribution.p_value_corrected > 1e-3
        # by design the provider test still recognises our mark
        assert rep.provider.p_value < 1e-6
        assert rep.watermarked


def test_innocent_text_is_not_flagged():
    rng = np.random.default_rng(56)
    det = Detector(MARKED)
    for _ in range(5):
        seq = sample(rng, Watermark(MARKED), None, None, 200, VOCAB)[0]  # same sampler, no mark
        rep = det.detect(seq, provider_keys=[PROVIDER], candidates=CANDIDATES)
        assert not rep.watermarked and rep.account is None
        assert rep.p_value > 1e-3


def test_rotated_keys_attribute_to_the_right_version():
    rng = np.random.default_rng(57)
    det = Detector(MARKED)
    p1, p2 = TEST_MASTER.provider_key(1), TEST_MASTER.provider_key(2)
    marker = TEST_MASTER.account_key("acct042", 2)
    seq = sample(rng, Watermark(MARKED), marker, p2, 250, VOCAB)[0]
    all_versions = [TEST_MASTER.account_key(a, v) for a in ACCOUNTS for v in (1, 2)]
    rep = det.detect(seq, provider_keys=[p1, p2], candidates=all_versions)
    assert rep.provider.key_id == "provider:v2"
    assert rep.account == "acct042" and rep.attribution.key_id == "acct:acct042:v2"
    assert rep.attribution.keys_tested == 2 * len(all_versions)  # every key under each provider version
    # the same text is not attributed by the old version of the account's key alone
    only_v1 = det.attribute(seq, [TEST_MASTER.account_key("acct042", 1)], provider=p2)
    assert only_v1.account is None


def test_single_key_config_power_and_attribution():
    rng = np.random.default_rng(58)
    det = Detector(SINGLE)
    key = CANDIDATES[7]
    seq = sample(rng, Watermark(SINGLE), key, None, 150, VOCAB)[0]
    rep = det.detect(seq, candidates=CANDIDATES)
    assert rep.watermarked and rep.account == ACCOUNTS[7]
    assert rep.provider is None
    assert rep.p_value == rep.p_value_corrected == rep.attribution.p_value_corrected
    assert rep.tokens_scored == rep.attribution.best.tokens_scored


def test_hf_lefthash_power():
    rng = np.random.default_rng(59)
    cfg = WatermarkConfig.interop(gamma=0.25, delta=2.0)
    det = Detector(cfg, vocab_size=VOCAB)
    key = WatermarkKey.explicit(15485863)
    seq = sample(rng, Watermark(cfg), key, None, 150, VOCAB)[0]
    assert det.detect(seq, candidates=[key]).watermarked
    assert not det.detect(seq, candidates=[WatermarkKey.explicit(15485867)]).watermarked
    assert det.gamma == int(VOCAB * 0.25) / VOCAB


# ---- windowed scan -----------------------------------------------------------------------------------------
def test_scan_finds_a_marked_span_inside_long_unmarked_text():
    rng = np.random.default_rng(60)
    vocab = 1000
    cfg = WatermarkConfig(scheme="antidistill-v1", gamma=0.25, delta=1.0, context_width=1, provider_fraction=0.0)
    det = Detector(cfg)
    key = CANDIDATES[3]
    before = uniform_tokens(rng, 1500, vocab)
    span = sample(rng, Watermark(cfg), key, None, 257, vocab, prefix=before)[0][1:]
    after = uniform_tokens(rng, 1700, vocab)
    seq = np.concatenate([before, span, after])
    true_start, true_end = len(before), len(before) + len(span)

    rep = det.detect(seq, candidates=[key])
    s = rep.span
    assert s is not None and s.watermarked
    assert s.start_token < true_end and s.end_token > true_start  # overlaps the true span
    overlap = min(s.end_token, true_end) - max(s.start_token, true_start)
    assert overlap >= 0.5 * (s.end_token - s.start_token)  # and lies mostly inside it
    assert not rep.watermarked  # the whole text is diluted below alpha: only the scan finds the span
    # the correction: exactly the documented windows, and the p-value multiplied by their number
    assert s.windows_tested == n_windows(len(seq))
    assert s.p_value_corrected == pytest.approx(min(1.0, s.p_value * s.windows_tested), rel=1e-12)
    assert s.p_value < s.p_value_corrected <= 1e-3
    # the window's counts are the distinct pairs whose first occurrence lies in it
    first: dict[tuple[int, ...], int] = {}
    for i, w in enumerate(windows_of(seq, 1)):
        first.setdefault(w, i + 1)
    inside = [w for w, pos in first.items() if s.start_token <= pos < s.end_token]
    green = det.scheme.is_green(
        np.array([key.value], U64), np.array([w[:1] for w in inside]), np.array([w[1] for w in inside])
    )[0]
    assert (s.tokens_scored, s.green) == (len(inside), int(green.sum()))
    assert s.p_value == pytest.approx(binomial_sf(s.green, s.tokens_scored, det.gamma), rel=1e-12)

    # with several candidates the scan is also corrected for the keys tried
    rep3 = det.detect(seq, candidates=[CANDIDATES[1], key, CANDIDATES[2]])
    assert rep3.span.windows_tested == 3 * n_windows(len(seq))
    assert rep3.span.p_value == s.p_value
    assert rep3.span.p_value_corrected == pytest.approx(min(1.0, 3 * s.p_value_corrected), rel=1e-12)


def test_scan_with_provider_keys_uses_provider_positions():
    rng = np.random.default_rng(61)
    vocab = 1000
    cfg = WatermarkConfig(scheme="antidistill-v1", gamma=0.25, delta=2.0, context_width=1, provider_fraction=0.5)
    det = Detector(cfg)
    before = uniform_tokens(rng, 1000, vocab)
    span = sample(rng, Watermark(cfg), CANDIDATES[0], PROVIDER, 257, vocab, prefix=before)[0][1:]
    seq = np.concatenate([before, span, uniform_tokens(rng, 1000, vocab)])
    rep = det.detect(seq, provider_keys=[PROVIDER])
    s = rep.span
    assert s.watermarked
    assert s.start_token < len(before) + len(span) and s.end_token > len(before)
    assert s.tokens_scored < s.end_token - s.start_token  # only provider positions are scored
    assert s.windows_tested == n_windows(len(seq))


def test_scan_is_corrected_for_the_provider_versions_tried():
    # the provider version scanned is the best of several, so its span is corrected for all of them
    rng = np.random.default_rng(68)
    vocab = 1000
    cfg = WatermarkConfig(scheme="antidistill-v1", gamma=0.25, delta=2.0, context_width=1, provider_fraction=0.5)
    det = Detector(cfg)
    versions = [TEST_MASTER.provider_key(v) for v in (1, 2, 3)]
    before = uniform_tokens(rng, 600, vocab)
    span = sample(rng, Watermark(cfg), CANDIDATES[0], versions[2], 200, vocab, prefix=before)[0][1:]
    seq = np.concatenate([before, span, uniform_tokens(rng, 600, vocab)])
    one = det.detect(seq, provider_keys=versions[2:]).span
    three = det.detect(seq, provider_keys=versions).span
    assert (three.start_token, three.end_token) == (one.start_token, one.end_token)
    assert three.p_value == one.p_value
    assert three.windows_tested == 3 * one.windows_tested == 3 * n_windows(len(seq))
    assert three.p_value_corrected == pytest.approx(min(1.0, 3 * one.p_value_corrected), rel=1e-12)


def test_scan_skips_short_text_and_can_be_disabled():
    det = Detector(SINGLE)
    key = CANDIDATES[0]
    assert det.detect(np.arange(2 * MIN_SCAN_WINDOW - 1) % VOCAB, candidates=[key]).span is None
    assert det.detect(np.arange(200) % VOCAB, candidates=[key]).span is not None
    assert det.detect(np.arange(200) % VOCAB, candidates=[key], scan=False).span is None


# ---- repeated text -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 2, 3])
def test_repeating_a_text_20_times_scores_exactly_its_distinct_pairs(width):
    rng = np.random.default_rng(62)
    cfg = WatermarkConfig(scheme="antidistill-v1", gamma=0.25, delta=2.0, context_width=width, provider_fraction=0.0)
    det = Detector(cfg)
    key = CANDIDATES[5]
    seq = sample(rng, Watermark(cfg), key, None, 100, VOCAB)[0]
    once = det.score(seq, key)
    many = det.score(np.tile(seq, 20), key)
    # independently: the pairs of seq*k (k >= 2) are those of seq plus at most `width` across the join
    expected = set(windows_of(np.concatenate([seq, seq[:width]]), width))
    ctx, toks = np.array([w[:-1] for w in expected]), np.array([w[-1] for w in expected])
    green = int(det.scheme.is_green(np.array([key.value], U64), ctx, toks).sum())
    assert (many.tokens_scored, many.green) == (len(expected), green)
    assert many.p_value == binomial_sf(many.green, many.tokens_scored, det.gamma)
    assert many == det.score(np.tile(seq, 2), key)
    assert 0 <= many.tokens_scored - once.tokens_scored <= width
    assert 0 <= many.green - once.green <= many.tokens_scored - once.tokens_scored
    assert once.p_value < 1e-6


def test_repeated_innocent_text_is_not_flagged():
    rng = np.random.default_rng(63)
    det = Detector(SINGLE)
    key = CANDIDATES[9]
    # an innocent text that happens to be a little green (z between 1.5 and 2.5), as some always are
    while True:
        seq = uniform_tokens(rng, 100, VOCAB)
        once = det.score(seq, key)
        if 1.5 < once.z < 2.5:
            break
    rep = det.detect(np.tile(seq, 20), candidates=[key])
    assert not rep.watermarked and rep.p_value > 1e-3
    assert rep.tokens_scored <= once.tokens_scored + 1
    # counting every repeat (what a detector without dedup does) would have called it marked
    assert binomial_sf(20 * once.green, 20 * once.tokens_scored, det.gamma) < 1e-6


# ---- pairs, exclusion, plumbing ----------------------------------------------------------------------------
def test_distinct_pairs_first_occurrences():
    p = distinct_pairs([5, 6, 5, 6, 7, 5, 6], 1)
    assert p.contexts.tolist() == [[5], [6], [6], [7]]
    assert p.tokens.tolist() == [6, 5, 7, 5]
    assert p.positions.tolist() == [1, 2, 4, 5]
    assert p.length == 7 and len(p) == 4
    p2 = distinct_pairs([1, 2, 3, 1, 2, 3, 1, 2, 4], 2)
    assert [(*c, t) for c, t in zip(p2.contexts.tolist(), p2.tokens.tolist(), strict=True)] == [
        (1, 2, 3),
        (2, 3, 1),
        (3, 1, 2),
        (1, 2, 4),
    ]
    assert p2.positions.tolist() == [2, 3, 4, 8]


def test_distinct_pairs_short_and_excluded():
    for seq in ([], [3]):
        p = distinct_pairs(seq, 1)
        assert len(p) == 0 and p.contexts.shape == (0, 1)
    p = distinct_pairs([1, 2, 3, 4], 1, exclude=[(2, 3), (9, 9)])
    assert p.tokens.tolist() == [2, 4]


def test_exclude_removes_pairs_from_every_test():
    rng = np.random.default_rng(64)
    det = Detector(SINGLE)
    key = CANDIDATES[0]
    seq = sample(rng, Watermark(SINGLE), key, None, 120, VOCAB)[0]
    full = det.detect(seq, candidates=[key])
    everything = windows_of(seq, 1)
    none_left = det.detect(seq, candidates=[key], exclude=everything)
    assert none_left.tokens_scored == 0 and none_left.p_value == 1.0 and not none_left.watermarked
    half = everything[: len(everything) // 2]
    part = det.detect(seq, candidates=[key], exclude=half)
    assert part.tokens_scored == len(set(everything) - set(half)) < full.tokens_scored


def test_score_with_provider_splits_positions():
    rng = np.random.default_rng(65)
    det = Detector(MARKED)
    key = CANDIDATES[1]
    seq = uniform_tokens(rng, 300, VOCAB)
    res = det.score(seq, key, provider=PROVIDER)
    pairs = det.pairs(seq)
    kinds = det.watermark.position_kinds(pairs.contexts, PROVIDER.value)
    keys = np.where(kinds, U64(PROVIDER.value), U64(key.value)).astype(U64)
    green = sum(
        bool(det.scheme.is_green(keys[i : i + 1], pairs.contexts[i : i + 1], pairs.tokens[i : i + 1]))
        for i in range(len(pairs))
    )
    assert (res.tokens_scored, res.green) == (len(pairs), green)
    assert res.key_id == f"{key.key_id}+{PROVIDER.key_id}"
    assert 0 < kinds.sum() < len(kinds)
    # without the provider key every pair is scored under the account key
    plain = det.score(seq, key)
    flags = det.scheme.is_green(np.array([key.value], U64), pairs.contexts, pairs.tokens)
    assert plain.green == int(flags.sum())


def test_attribution_ignores_provider_positions():
    # a text marked only on provider positions (e.g. any account's traffic) attributes to nobody
    rng = np.random.default_rng(66)
    det = Detector(MARKED)
    seq = sample(rng, Watermark(MARKED), TEST_MASTER.account_key("x"), PROVIDER, 300, VOCAB)[0]
    res = det.attribute(seq, CANDIDATES, provider=PROVIDER)
    n_account_positions = len(det.split(det.pairs(seq), PROVIDER)[1])
    assert res.best.tokens_scored == n_account_positions < len(det.pairs(seq))
    assert res.account is None


def test_report_is_replayable_and_carries_no_secret():
    rng = np.random.default_rng(67)
    det = Detector(MARKED)
    key = CANDIDATES[4]
    seq = sample(rng, Watermark(MARKED), key, PROVIDER, 150, VOCAB)[0]
    rep = det.detect(seq, provider_keys=[PROVIDER], candidates=CANDIDATES)
    assert rep.config == MARKED.to_dict()
    again = Detector(WatermarkConfig.from_dict(rep.config)).detect(seq, provider_keys=[PROVIDER], candidates=CANDIDATES)
    assert again == rep
    text = json.dumps(rep.to_dict())
    for k in [PROVIDER, *CANDIDATES]:
        assert str(k.value) not in text


def test_detect_argument_errors():
    det = Detector(SINGLE)
    with pytest.raises(ValueError, match="nothing to test"):
        det.detect([1, 2, 3])
    with pytest.raises(ValueError, match="nothing to test"):  # a single-key config has no provider test
        det.detect([1, 2, 3], provider_keys=[PROVIDER])
    for alpha in (0.0, 1.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            det.detect([1, 2, 3], candidates=CANDIDATES[:1], alpha=alpha)


def test_too_short_text():
    det = Detector(MARKED)
    rep = det.detect([7], provider_keys=[PROVIDER], candidates=CANDIDATES)
    assert rep.tokens_scored == 0 and rep.p_value == 1.0 and not rep.watermarked and rep.account is None
    res = det.score([], CANDIDATES[0])
    assert res.tokens_scored == 0 and res.p_value == 1.0 and not res.watermarked(0.5)
