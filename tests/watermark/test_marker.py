"""Watermark: which key marks each position (provider or account), and the green lists that follow."""

from __future__ import annotations

import numpy as np
import pytest

from antidistill.detection.stats import clopper_pearson
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.marker import Watermark
from tests.synthetic import TEST_MASTER

VOCAB = 40


def contexts(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    return rng.integers(0, VOCAB, size=(n, width))


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_row_keys_pick_the_provider_exactly_at_provider_positions(width, fraction):
    rng = np.random.default_rng(20)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", context_width=width, provider_fraction=fraction))
    n = 3000
    ctx = contexts(rng, n, width)
    account = np.array([TEST_MASTER.account_key(f"a{i % 7}").value for i in range(n)], dtype=U64)
    provider = TEST_MASTER.provider_key()
    keys = wm.row_keys(ctx, account, np.full(n, provider.value, dtype=U64))
    kinds = wm.position_kinds(ctx, provider.value)
    assert kinds.dtype == bool and kinds.shape == (n,)
    assert np.all(keys[kinds] == U64(provider.value))
    assert np.array_equal(keys[~kinds], account[~kinds])
    # the split is a function of the context alone; distinct contexts are provider positions w.p. fraction
    uniq, first = np.unique(ctx, axis=0, return_index=True)
    lo, hi = clopper_pearson(int(kinds[first].sum()), len(first), 0.999)
    if len(first) > 200:
        assert lo <= fraction <= hi
    for c in uniq[:20]:
        same = np.all(ctx == c, axis=1)
        assert len(set(kinds[same].tolist())) == 1


def test_rows_with_different_provider_versions_split_by_their_own_key():
    rng = np.random.default_rng(21)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1"))
    n = 2000
    ctx = contexts(rng, n, 1)
    account = np.full(n, TEST_MASTER.account_key("alice").value, dtype=U64)
    p1, p2 = TEST_MASTER.provider_key(1), TEST_MASTER.provider_key(2)
    which = rng.random(n) < 0.5
    provider = np.where(which, U64(p1.value), U64(p2.value)).astype(U64)
    keys = wm.row_keys(ctx, account, provider)
    k1, k2 = wm.position_kinds(ctx, p1.value), wm.position_kinds(ctx, p2.value)
    expected = np.where(which, np.where(k1, U64(p1.value), account), np.where(k2, U64(p2.value), account))
    assert np.array_equal(keys, expected.astype(U64))
    assert not np.array_equal(k1, k2)  # the two versions do split differently


def test_provider_fraction_zero_never_uses_the_provider():
    rng = np.random.default_rng(22)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0))
    n = 2000
    ctx = contexts(rng, n, 1)
    account = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    provider = np.full(n, TEST_MASTER.provider_key().value, dtype=U64)
    assert np.array_equal(wm.row_keys(ctx, account, provider), account)
    assert not wm.position_kinds(ctx, TEST_MASTER.provider_key().value).any()


def test_no_provider_key_means_account_everywhere():
    rng = np.random.default_rng(23)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.9))
    ctx = contexts(rng, 500, 1)
    account = rng.integers(0, 2**64, size=500, dtype=np.uint64)
    assert np.array_equal(wm.row_keys(ctx, account, None), account)
    assert not wm.position_kinds(ctx, None).any()


def test_row_keys_does_not_modify_its_input():
    rng = np.random.default_rng(24)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1"))
    ctx = contexts(rng, 200, 1)
    account = rng.integers(0, 2**64, size=200, dtype=np.uint64)
    before = account.copy()
    wm.row_keys(ctx, account, np.full(200, 77, dtype=U64))
    assert np.array_equal(account, before)


def test_green_mask_is_the_scheme_under_the_row_keys():
    rng = np.random.default_rng(25)
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", gamma=0.3, context_width=2))
    ctx = contexts(rng, 300, 2)
    account = rng.integers(0, 2**64, size=300, dtype=np.uint64)
    provider = np.full(300, TEST_MASTER.provider_key().value, dtype=U64)
    mask = wm.green_mask(ctx, account, provider, VOCAB)
    keys = wm.row_keys(ctx, account, provider)
    assert np.array_equal(mask, wm.scheme.green_mask(keys, ctx, VOCAB))
    # and it differs from the account-only lists exactly on provider rows
    account_only = wm.scheme.green_mask(account, ctx, VOCAB)
    kinds = wm.position_kinds(ctx, TEST_MASTER.provider_key().value)
    differs = np.any(mask != account_only, axis=1)
    assert np.array_equal(differs, kinds)


def test_watermark_defaults_and_shared_scheme():
    a, b = Watermark(WatermarkConfig(scheme="antidistill-v1")), Watermark(WatermarkConfig(scheme="antidistill-v1"))
    assert a.config == WatermarkConfig(scheme="antidistill-v1")
    assert a.scheme is b.scheme
