"""The green-list core, on a tiny vocabulary with seeded generators. Contract tests run over every scheme."""

from __future__ import annotations

import numpy as np
import pytest

from antidistill.detection.stats import clopper_pearson
from antidistill.watermark.core import (
    U64,
    GreenListScheme,
    HashScheme,
    HFLefthashScheme,
    context_hash,
    fmix64,
    provider_positions,
    threshold,
    token_hash,
    token_hash_table,
)
from antidistill.watermark.schemes import get_scheme, scheme_class, scheme_names

VOCAB = 40
MASK64 = 2**64 - 1


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=n, dtype=np.uint64)


def fmix64_reference(x: int) -> int:
    """MurmurHash3's fmix64, in plain Python integers."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & MASK64
    x ^= x >> 33
    return x


#: the green-list members (the Gumbel-max members have their own tests in test_gumbel.py)
GREEN_LIST_SCHEMES = [n for n in scheme_names() if scheme_class(n).kind == "bias"]


@pytest.fixture(params=GREEN_LIST_SCHEMES)
def scheme_name(request) -> str:
    return request.param


# ---- the 64-bit mixer --------------------------------------------------------------------------------------
def test_fmix64_matches_the_reference():
    rng = np.random.default_rng(1)
    xs = [0, 1, 2, 2**63, MASK64, *(int(v) for v in random_keys(rng, 50))]
    got = fmix64(np.array(xs, dtype=U64))
    assert [int(v) for v in got] == [fmix64_reference(x) for x in xs]


def test_fmix64_has_no_collisions_on_1e5_inputs():
    rng = np.random.default_rng(2)
    counting = np.arange(100_000, dtype=U64)
    for xs in (counting, random_keys(rng, 100_000), counting << U64(40)):
        assert len(np.unique(fmix64(xs))) == len(xs)


def test_fmix64_avalanche():
    # flipping one input bit flips about half of the output bits
    rng = np.random.default_rng(3)
    xs = random_keys(rng, 2000)
    base = fmix64(xs)
    for bit in (0, 17, 40, 63):
        diff = base ^ fmix64(xs ^ U64(1 << bit))
        flipped = np.unpackbits(diff.view(np.uint8)).reshape(len(xs), 64).sum(axis=1)
        assert 31.0 < flipped.mean() < 33.0


def test_fmix64_out_argument():
    xs = np.arange(10, dtype=U64)
    copy = xs.copy()
    res = fmix64(xs)
    assert np.array_equal(xs, copy)  # no out: input untouched
    out = np.empty_like(xs)
    assert fmix64(xs, out=out) is out and np.array_equal(out, res)
    assert fmix64(xs, out=xs) is xs and np.array_equal(xs, res)


def test_threshold():
    assert int(threshold(0.25)) == 2**62
    assert int(threshold(0.5)) == 2**63
    assert int(threshold(1.0)) == MASK64
    assert int(threshold(0.0)) == 0


def test_token_hash_table_is_cached_and_read_only():
    table = token_hash_table(VOCAB)
    assert table is token_hash_table(VOCAB)
    assert np.array_equal(table, token_hash(np.arange(VOCAB)))
    assert len(np.unique(table)) == VOCAB
    with pytest.raises(ValueError):
        table[0] = 0


# ---- context hashing ---------------------------------------------------------------------------------------
def test_context_hash_is_order_sensitive():
    rng = np.random.default_rng(4)
    ctx = rng.integers(0, VOCAB, size=(500, 2))
    ctx = ctx[ctx[:, 0] != ctx[:, 1]]
    assert np.all(context_hash(ctx) != context_hash(ctx[:, ::-1]))
    ctx3 = np.array([[1, 2, 3], [3, 2, 1], [2, 1, 3], [1, 3, 2], [2, 3, 1], [3, 1, 2]])
    assert len(np.unique(context_hash(ctx3))) == 6


def test_context_hash_is_width_sensitive():
    # the same trailing tokens at different widths, including a leading token 0, all hash differently
    hashes = [
        context_hash(np.array([[7]]))[0],
        context_hash(np.array([[7, 7]]))[0],
        context_hash(np.array([[0, 7]]))[0],
        context_hash(np.array([[0, 0, 7]]))[0],
        context_hash(np.array([[0, 0, 0, 7]]))[0],
        context_hash(np.array([[0]]))[0],
    ]
    assert len(set(int(h) for h in hashes)) == len(hashes)


def test_context_hash_has_no_collisions_on_all_width_2_contexts():
    a, b = np.meshgrid(np.arange(300), np.arange(300))
    ctx = np.stack([a.ravel(), b.ravel()], axis=1)
    assert len(np.unique(context_hash(ctx))) == len(ctx)


def test_context_hash_needs_2d_contexts():
    with pytest.raises(ValueError, match="2-D"):
        context_hash(np.array([1, 2, 3]))


# ---- the contract of every scheme --------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5])
def test_green_fraction_is_gamma(scheme_name, gamma):
    rng = np.random.default_rng(5)
    scheme = get_scheme(scheme_name, gamma, 1)
    n_ctx = 2000
    mask = scheme.green_mask(random_keys(rng, n_ctx), rng.integers(0, VOCAB, size=(n_ctx, 1)), VOCAB)
    assert mask.shape == (n_ctx, VOCAB) and mask.dtype == bool
    p0 = scheme.null_probability(VOCAB)
    per_row = mask.sum(axis=1)
    if scheme_name == "hf-lefthash":
        # a permutation prefix: exactly int(V * gamma) green tokens in every context
        assert np.all(per_row == int(VOCAB * gamma))
    else:
        lo, hi = clopper_pearson(int(mask.sum()), mask.size, 0.999)
        assert lo <= p0 <= hi
        # rows are Binomial(V, gamma): neither all-or-nothing (correlated) nor too regular
        ratio = per_row.var() / (VOCAB * p0 * (1 - p0))
        assert 0.8 < ratio < 1.2
    # every token is green about equally often (no token is favoured across contexts)
    per_token = mask.mean(axis=0)
    assert np.all(np.abs(per_token - p0) < 5 * np.sqrt(p0 * (1 - p0) / n_ctx))


@pytest.mark.parametrize("width", [1, 2, 3])
def test_is_green_agrees_with_green_mask(scheme_name, width):
    rng = np.random.default_rng(6)
    scheme = get_scheme(scheme_name, 0.25, width)
    keys = random_keys(rng, 30)
    ctx = rng.integers(0, VOCAB, size=(30, width))
    mask = scheme.green_mask(keys, ctx, VOCAB)
    for b in range(len(keys)):
        same_ctx = np.repeat(ctx[b : b + 1], VOCAB, axis=0)
        flags = scheme.is_green(keys[b : b + 1], same_ctx, np.arange(VOCAB), VOCAB)
        assert flags.shape == (1, VOCAB)
        assert np.array_equal(flags[0], mask[b])


def test_is_green_shape_is_keys_by_pairs(scheme_name):
    rng = np.random.default_rng(7)
    scheme = get_scheme(scheme_name, 0.25, 1)
    keys, ctx, toks = random_keys(rng, 3), rng.integers(0, VOCAB, (11, 1)), rng.integers(0, VOCAB, 11)
    flags = scheme.is_green(keys, ctx, toks, VOCAB)
    assert flags.shape == (3, 11)
    for k in range(3):  # each row is that key alone
        assert np.array_equal(flags[k], scheme.is_green(keys[k : k + 1], ctx, toks, VOCAB)[0])


@pytest.mark.parametrize("chunk_elems", [1, 36, 37, 38, 3 * 37 + 1, 1 << 18])
def test_count_green_equals_is_green_sum(scheme_name, chunk_elems):
    rng = np.random.default_rng(8)
    scheme = get_scheme(scheme_name, 0.25, 2)
    n_keys = 1000 if scheme_name == "antidistill-v1" else 9  # hf-lefthash costs a permutation per key
    keys = random_keys(rng, n_keys)
    ctx, toks = rng.integers(0, VOCAB, (37, 2)), rng.integers(0, VOCAB, 37)
    expected = scheme.is_green(keys, ctx, toks, VOCAB).sum(axis=1)
    got = scheme.count_green(keys, ctx, toks, VOCAB, chunk_elems=chunk_elems)
    assert got.shape == (n_keys,) and np.array_equal(got, expected)
    # the base class's generic chunking agrees as well
    assert np.array_equal(GreenListScheme.count_green(scheme, keys, ctx, toks, VOCAB, chunk_elems), expected)


def test_count_green_with_no_pairs(scheme_name):
    scheme = get_scheme(scheme_name, 0.25, 1)
    no_ctx, no_tok = np.zeros((0, 1), np.int64), np.zeros(0, np.int64)
    got = scheme.count_green(np.array([1, 2, 3], dtype=U64), no_ctx, no_tok, VOCAB)
    assert np.array_equal(got, [0, 0, 0])


def test_different_keys_give_different_green_lists(scheme_name):
    rng = np.random.default_rng(9)
    scheme = get_scheme(scheme_name, 0.25, 1)
    ctx = np.arange(1, VOCAB).reshape(-1, 1)  # token 0 seeds hf-lefthash with 0 whatever the key: skip it
    k1, k2 = random_keys(rng, 2)
    m1 = scheme.green_mask(np.full(len(ctx), k1, U64), ctx, VOCAB)
    m2 = scheme.green_mask(np.full(len(ctx), k2, U64), ctx, VOCAB)
    assert not np.any(np.all(m1 == m2, axis=1))  # no context has the same list under both keys
    # and the two keys' lists are independent: both green about gamma^2 of the time
    p0 = scheme.null_probability(VOCAB)
    lo, hi = clopper_pearson(int((m1 & m2).sum()), m1.size, 0.999)
    assert lo <= p0 * p0 <= hi


def test_different_contexts_give_different_green_lists(scheme_name):
    rng = np.random.default_rng(10)
    scheme = get_scheme(scheme_name, 0.25, 1)
    key = random_keys(rng, 1)
    ctx = np.arange(1, VOCAB).reshape(-1, 1)
    masks = scheme.green_mask(np.repeat(key, len(ctx)), ctx, VOCAB)
    assert len({m.tobytes() for m in masks}) == len(ctx)


def test_green_lists_are_deterministic(scheme_name):
    scheme = get_scheme(scheme_name, 0.25, 2)
    keys = np.array([123, 2**63 + 5], dtype=U64)
    ctx = np.array([[3, 4], [5, 6]])
    first = scheme.green_mask(keys, ctx, VOCAB).copy()
    assert np.array_equal(first, scheme.green_mask(keys.copy(), ctx.copy(), VOCAB))


def test_null_probability():
    assert get_scheme("antidistill-v1", 0.25, 1).null_probability(None) == 0.25
    hf = get_scheme("hf-lefthash", 0.3, 1)
    assert hf.null_probability(VOCAB) == int(VOCAB * 0.3) / VOCAB
    assert hf.null_probability(1000) == 0.3
    with pytest.raises(ValueError, match="vocabulary size"):
        hf.null_probability(None)
    with pytest.raises(ValueError, match="vocabulary size"):
        hf.is_green(np.array([1], U64), np.array([[1]]), np.array([2]), None)


# The hash scheme written out in plain Python integers, with its constants spelled out: these are frozen,
# since changing any of them would silently change every green list and orphan every mark already served.
GOLDEN, TOKEN_SALT, CONTEXT_SALT, SLOT_SALT = (
    0x9E3779B97F4A7C15,
    0x243F6A8885A308D3,
    0x13198A2E03707344,
    0xA4093822299F31D0,
)


def reference_token_hash(t: int) -> int:
    return fmix64_reference((t * GOLDEN + TOKEN_SALT) & MASK64)


def reference_context_hash(ctx: list[int]) -> int:
    x = (CONTEXT_SALT + len(ctx)) & MASK64
    for j, c in enumerate(ctx):
        x = fmix64_reference(x ^ ((c * GOLDEN + j + 1) & MASK64))
    return x


def reference_is_green(key: int, ctx: list[int], tok: int, gamma: float) -> bool:
    thr = min(int(gamma * 2**64), MASK64)
    return fmix64_reference(key ^ reference_context_hash(ctx) ^ reference_token_hash(tok)) < thr


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.3, 0.5])  # thresholds on and off a multiple of 2**31
def test_hash_scheme_matches_the_reference(gamma, width):
    rng = np.random.default_rng(13)
    scheme = HashScheme(gamma, width)
    keys = [int(k) for k in random_keys(rng, 5)]
    ctx = rng.integers(0, VOCAB, size=(60, width))
    toks = rng.integers(0, VOCAB, size=60)
    expected = np.array(
        [[reference_is_green(k, c.tolist(), int(t), gamma) for c, t in zip(ctx, toks, strict=True)] for k in keys]
    )
    assert np.array_equal(scheme.is_green(np.array(keys, U64), ctx, toks), expected)
    counts = scheme.count_green(np.array(keys, U64), ctx, toks, chunk_elems=100)
    assert np.array_equal(counts, expected.sum(axis=1))
    masks = scheme.green_mask(np.array(keys[:1] * 60, U64), ctx, VOCAB)
    for i in range(0, 60, 7):
        ref = [reference_is_green(keys[0], ctx[i].tolist(), t, gamma) for t in range(VOCAB)]
        assert masks[i].tolist() == ref
    assert [int(v) for v in context_hash(ctx[:5])] == [reference_context_hash(c.tolist()) for c in ctx[:5]]
    assert [int(v) for v in token_hash(toks[:5])] == [reference_token_hash(int(t)) for t in toks[:5]]


def test_provider_positions_match_the_reference():
    rng = np.random.default_rng(14)
    ctx = rng.integers(0, VOCAB, size=(200, 1))
    pkey = int(random_keys(rng, 1)[0])
    slot = fmix64_reference(pkey ^ SLOT_SALT)
    for fraction in (0.3, 0.5):
        thr = int(fraction * 2**64)
        expected = [fmix64_reference(reference_context_hash(c.tolist()) ^ slot) < thr for c in ctx]
        assert provider_positions(pkey, context_hash(ctx), fraction).tolist() == expected


def test_green_mask_with_a_reused_workspace_is_bit_identical():
    # generation reuses one workspace across steps and batch shapes: every call must equal a fresh computation
    from antidistill.watermark.core import Workspace

    rng = np.random.default_rng(15)
    ws = Workspace()
    for gamma in (0.25, 0.3):
        scheme = HashScheme(gamma, 2)
        for batch, vocab in [(8, VOCAB), (3, VOCAB), (8, 2 * VOCAB), (1, 7), (16, VOCAB)]:
            keys, ctx = random_keys(rng, batch), rng.integers(0, vocab, size=(batch, 2))
            fresh = scheme.green_mask(keys, ctx, vocab)
            reused = scheme.green_mask(keys, ctx, vocab, ws)
            assert reused.shape == (batch, vocab) and np.array_equal(reused, fresh)


def test_hf_lefthash_uses_only_the_last_context_token():
    scheme = HFLefthashScheme(0.25, 3)
    keys = np.array([99, 99], dtype=U64)
    m = scheme.green_mask(keys, np.array([[1, 2, 5], [7, 8, 5]]), VOCAB)
    assert np.array_equal(m[0], m[1])


def test_get_scheme_caches_and_validates():
    assert get_scheme("antidistill-v1", 0.25, 1) is get_scheme("antidistill-v1", 0.25, 1)
    assert get_scheme("antidistill-v1", 0.25, 1) is not get_scheme("antidistill-v1", 0.25, 2)
    assert isinstance(get_scheme("hf-lefthash", 0.25, 1), HFLefthashScheme)
    with pytest.raises(ValueError, match="scheme must be one of"):
        get_scheme("nope", 0.25, 1)


# ---- provider positions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_provider_positions_fraction(fraction):
    rng = np.random.default_rng(11)
    ctx_h = context_hash(rng.integers(0, 10**6, size=(20_000, 1)))
    kinds = provider_positions(int(random_keys(rng, 1)[0]), ctx_h, fraction)
    lo, hi = clopper_pearson(int(kinds.sum()), len(kinds), 0.999)
    assert lo <= fraction <= hi


def test_provider_positions_depend_on_the_provider_key():
    rng = np.random.default_rng(12)
    ctx_h = context_hash(rng.integers(0, 10**6, size=(5000, 1)))
    a = provider_positions(1, ctx_h, 0.5)
    b = provider_positions(2, ctx_h, 0.5)
    agree = float((a == b).mean())
    assert 0.45 < agree < 0.55  # independent splits agree half of the time


def test_provider_fraction_zero_marks_no_provider_position():
    ctx_h = context_hash(np.arange(1000).reshape(-1, 1))
    assert not provider_positions(12345, ctx_h, 0.0).any()
