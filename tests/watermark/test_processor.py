"""WatermarkLogitsProcessor: +delta exactly on each row's green list, red and unmarked rows untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor
from tests.synthetic import TEST_MASTER

VOCAB = 40
ALICE, BOB, CAROL = (TEST_MASTER.account_key(a) for a in ("alice", "bob", "carol"))
P1, P2 = TEST_MASTER.provider_key(1), TEST_MASTER.provider_key(2)


def expected_scores(wm: Watermark, row_keys, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The oracle, one row and one token at a time through ``is_green`` (not ``green_mask``)."""
    h = wm.config.context_width
    out = scores.clone()
    for r, keys in enumerate(row_keys):
        if keys is None:
            continue
        ctx = input_ids[r, -h:].numpy()[None, :]
        key = keys.account.value
        if keys.provider is not None and wm.position_kinds(ctx, keys.provider.value)[0]:
            key = keys.provider.value
        same_ctx = np.repeat(ctx, VOCAB, axis=0)
        green = wm.scheme.is_green(np.array([key], dtype=U64), same_ctx, np.arange(VOCAB), VOCAB)[0]
        out[r, torch.from_numpy(green)] += wm.config.delta
    return out


@pytest.mark.parametrize("width", [1, 2])
def test_mixed_batch_matches_the_oracle_exactly(width):
    rng = np.random.default_rng(30)
    torch.manual_seed(30)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", context_width=width, delta=2.5))
    row_keys = [MarkKeys(ALICE, P1), MarkKeys(BOB), None, MarkKeys(CAROL, P2), MarkKeys(ALICE, P1)]
    proc = WatermarkLogitsProcessor(wm, row_keys)
    kinds_seen = []
    for _ in range(40):
        input_ids = torch.from_numpy(rng.integers(0, VOCAB, size=(len(row_keys), 6)))
        scores = torch.randn(len(row_keys), VOCAB)
        before = scores.clone()
        out = proc(input_ids, scores)
        assert torch.equal(scores, before)  # the input is not modified in place
        assert out.dtype == scores.dtype and out.shape == scores.shape
        assert torch.equal(out, expected_scores(wm, row_keys, input_ids, scores))
        assert torch.equal(out[2], scores[2])  # the None row is untouched
        for r in (0, 1, 3, 4):
            # +delta (in the scores' own float arithmetic) on some, not all, tokens; the rest bit-identical
            changed = out[r] != scores[r]
            assert torch.equal(out[r][changed], scores[r][changed] + 2.5)
            assert 0 < int(changed.sum()) < VOCAB
        kinds_seen.append(wm.position_kinds(input_ids[0:1, -width:].numpy(), P1.value)[0])
    assert any(kinds_seen) and not all(kinds_seen)  # both provider and account positions were exercised


def test_provider_positions_use_the_provider_list_in_every_account():
    # at a provider position, alice's and bob's rows (same provider key) get the same green list
    rng = np.random.default_rng(31)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1"))
    proc = WatermarkLogitsProcessor(wm, [MarkKeys(ALICE, P1), MarkKeys(BOB, P1)])
    same, total_provider = 0, 0
    for _ in range(60):
        tok = int(rng.integers(0, VOCAB))
        input_ids = torch.tensor([[tok], [tok]])
        out = proc(input_ids, torch.zeros(2, VOCAB))
        is_provider = wm.position_kinds(np.array([[tok]]), P1.value)[0]
        identical = torch.equal(out[0], out[1])
        assert identical == is_provider
        total_provider += int(is_provider)
        same += int(identical)
    assert 0 < total_provider < 60 and same == total_provider


def test_row_without_provider_is_marked_with_its_account_key_everywhere():
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.9))
    proc = WatermarkLogitsProcessor(wm, [MarkKeys(ALICE, P1), MarkKeys(BOB)])
    for tok in range(VOCAB):
        out = proc(torch.tensor([[tok], [tok]]), torch.zeros(2, VOCAB))
        bob = wm.scheme.green_mask(np.array([BOB.value], dtype=U64), np.array([[tok]]), VOCAB)[0]
        assert np.array_equal(out[1].numpy() > 0, bob)


def test_account_only_config_ignores_the_provider_key():
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0))
    with_p = WatermarkLogitsProcessor(wm, [MarkKeys(ALICE, P1)])
    without = WatermarkLogitsProcessor(wm, [MarkKeys(ALICE)])
    for tok in range(VOCAB):
        ids, scores = torch.tensor([[tok]]), torch.zeros(1, VOCAB)
        assert torch.equal(with_p(ids, scores), without(ids, scores))


def test_all_rows_unmarked_returns_scores_unchanged():
    proc = WatermarkLogitsProcessor(Watermark(WatermarkConfig(scheme="antidistill-v1")), [None, None])
    scores = torch.randn(2, VOCAB)
    assert torch.equal(proc(torch.tensor([[1, 2], [3, 4]]), scores), scores)


def test_too_short_input_is_left_alone():
    proc = WatermarkLogitsProcessor(
        Watermark(WatermarkConfig(scheme="antidistill-v1", context_width=3)), [MarkKeys(ALICE)]
    )
    scores = torch.randn(1, VOCAB)
    assert torch.equal(proc(torch.tensor([[1, 2]]), scores), scores)
    assert not torch.equal(proc(torch.tensor([[1, 2, 3]]), scores), scores)


@pytest.mark.parametrize("scheme", ["antidistill-v1", "gumbel-dual"])
def test_only_contexts_inside_the_answer_are_marked(scheme):
    # answer_start: the prompt's length. The answer's first h tokens have contexts reaching into the prompt (the
    # chat template's tail, the same for every prompt of an account): they are left to the sampler.
    proc = WatermarkLogitsProcessor(
        Watermark(WatermarkConfig(scheme=scheme, context_width=3)), [MarkKeys(ALICE)], temperature=1.0, answer_start=5
    )
    scores = torch.randn(1, VOCAB)
    for length in range(5, 8):  # answers of 0, 1, 2 tokens
        assert torch.equal(proc(torch.arange(length)[None, :], scores), scores), length
    assert not torch.equal(proc(torch.arange(8)[None, :], scores), scores)  # 3 answer tokens: a whole context


def test_mismatched_batch_size_raises():
    proc = WatermarkLogitsProcessor(
        Watermark(WatermarkConfig(scheme="antidistill-v1")), [MarkKeys(ALICE), None, MarkKeys(BOB)]
    )
    with pytest.raises(ValueError, match="batch has 4 rows but 3 row keys"):
        proc(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, VOCAB))
    with pytest.raises(ValueError, match="batch has 2 rows"):
        proc(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, VOCAB))


def test_set_row_keys_switches_rows():
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0))
    proc = WatermarkLogitsProcessor(wm, [MarkKeys(ALICE), None])
    ids, scores = torch.tensor([[5], [5]]), torch.zeros(2, VOCAB)
    first = proc(ids, scores)
    proc.set_row_keys([None, MarkKeys(ALICE)])
    second = proc(ids, scores)
    assert torch.equal(first[0], second[1]) and torch.equal(first[1], second[0])
    assert torch.equal(second[0], scores[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_keeps_the_score_dtype(dtype):
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0, delta=2.0))
    proc = WatermarkLogitsProcessor(wm, [MarkKeys(ALICE)])
    scores = torch.ones(1, VOCAB, dtype=dtype)
    out = proc(torch.tensor([[7]]), scores)
    assert out.dtype == dtype
    green = wm.scheme.green_mask(np.array([ALICE.value], dtype=U64), np.array([[7]]), VOCAB)[0]
    assert torch.equal(out[0], torch.where(torch.from_numpy(green), 3.0, 1.0).to(dtype))


def test_negative_infinity_stays_negative_infinity():
    # tokens masked out by an earlier processor (-inf) must stay impossible, green or not
    proc = WatermarkLogitsProcessor(
        Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0)), [MarkKeys(ALICE)]
    )
    scores = torch.full((1, VOCAB), -float("inf"))
    scores[0, 3] = 0.0
    out = proc(torch.tensor([[7]]), scores)
    assert torch.isinf(out[0, torch.arange(VOCAB) != 3]).all()
    assert torch.isfinite(out[0, 3])
