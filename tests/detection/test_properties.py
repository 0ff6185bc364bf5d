"""Property tests (hypothesis): p-values, repetition invariance, distinct pairs, config round trips."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antidistill.detection import Detector
from antidistill.detection.detector import distinct_pairs
from antidistill.detection.stats import binomial_sf, gamma_sf
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import MAX_CONTEXT_WIDTH, WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.nulls import weighted_gamma_sf
from antidistill.watermark.schemes import get_scheme, scheme_class, scheme_names

#: the green-list members of the family
GREEN_LIST = [n for n in scheme_names() if scheme_class(n).kind == "bias"]

# The autouse environment fixture is function-scoped but holds nothing an example could change.
settings.register_profile(
    "antidistill", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("antidistill")

probabilities = st.floats(min_value=1e-6, max_value=1 - 1e-6, allow_nan=False)
keys = st.integers(min_value=0, max_value=2**64 - 1).map(
    lambda v: WatermarkKey(key_id=f"k{v % 1000}", account=None, version=1, value=v)
)
widths = st.integers(min_value=1, max_value=MAX_CONTEXT_WIDTH)


def token_lists(min_size: int = 0, max_size: int = 60, vocab: int = 8):
    return st.lists(st.integers(min_value=0, max_value=vocab - 1), min_size=min_size, max_size=max_size)


# ---- p-values ----------------------------------------------------------------------------------------------
@given(g=st.integers(-5, 400), n=st.integers(0, 400), p=probabilities)
def test_p_value_is_a_probability(g, n, p):
    v = binomial_sf(g, n, p)
    assert 0.0 <= v <= 1.0
    if g <= 0:
        assert v == 1.0
    if g > n:
        assert v == 0.0


@given(n=st.integers(0, 500), p=probabilities)
def test_p_value_is_non_increasing_in_the_green_count(n, p):
    sf = binomial_sf(np.arange(-1, n + 3), np.full(n + 4, n), p)
    assert np.all(np.diff(sf) <= 0.0)


@given(g=st.integers(1, 200), n=st.integers(1, 300), p=probabilities)
def test_p_value_is_non_decreasing_in_the_number_of_pairs(g, n, p):
    # more pairs can only make g greens easier to reach by chance
    assert binomial_sf(g, n + 1, p) >= binomial_sf(g, n, p) * (1 - 1e-12)


@given(seq=token_lists(), key=keys, width=widths, scheme=st.sampled_from(scheme_names()))
def test_score_is_consistent(seq, key, width, scheme):
    cfg = WatermarkConfig(scheme=scheme, context_width=width, provider_fraction=0.0)
    det = Detector(cfg, vocab_size=8)
    r = det.score(seq, key)
    # members that pad the context (vLLM's) score the first `width` tokens too
    assert r.tokens_scored <= (len(seq) if det.scheme.pads_context else max(0, len(seq) - width))
    assert 0.0 <= r.p_value <= 1.0
    if det.scheme.kind == "bias":
        assert 0 <= r.green <= r.tokens_scored
        assert r.p_value == (binomial_sf(r.green, r.tokens_scored, det.gamma) if r.tokens_scored else 1.0)
    elif scheme == "tournament":  # the sum of `layers` fair bits per tuple
        assert 0 <= r.green <= r.tokens_scored * cfg.layers
        expected = binomial_sf(r.green, r.tokens_scored * cfg.layers, 0.5) if r.tokens_scored else 1.0
        assert r.p_value == expected
    elif scheme == "vllm-dual-gumbel":  # vLLM's weighted pair of Exp(1) scores: the exact weighted-Gamma tail
        assert r.green >= 0.0
        expected = weighted_gamma_sf(r.green, r.tokens_scored, cfg.key_b_probability) if r.tokens_scored else 1.0
        assert r.p_value == expected
    else:  # Gumbel-max: Exp(1) scores, a Gamma(n, 1) sum
        assert r.green >= 0.0
        assert r.p_value == (gamma_sf(r.green, r.tokens_scored) if r.tokens_scored else 1.0)


# ---- repetition --------------------------------------------------------------------------------------------
@given(unit=token_lists(min_size=1, max_size=30), k=st.integers(2, 6), key=keys, width=widths)
def test_repeating_a_periodic_text_changes_nothing(unit, k, key, width):
    # seq = unit repeated enough to be longer than a window: seq * k has no pair seq lacks
    reps = max(2, math.ceil((width + 1) / len(unit)) + 1)
    seq = unit * reps
    det = Detector(WatermarkConfig(scheme="antidistill-v1", context_width=width, provider_fraction=0.0))
    assert det.score(seq * k, key) == det.score(seq, key)


@given(seq=token_lists(min_size=1), k=st.integers(2, 6), key=keys, width=widths)
def test_repeating_any_text_adds_only_the_pairs_across_the_join(seq, k, key, width):
    det = Detector(WatermarkConfig(scheme="antidistill-v1", context_width=width, provider_fraction=0.0))
    expected = det.score_pairs(distinct_pairs(seq + seq[:width], width), key) if len(seq) > width else None
    got = det.score(seq * k, key)
    if expected is not None:
        assert got == expected
        assert got.tokens_scored - det.score(seq, key).tokens_scored <= width
    long = seq * k
    assert got.tokens_scored <= len({tuple(long[i : i + width + 1]) for i in range(len(long) - width)})


@given(seq=token_lists(max_size=80), width=widths)
def test_distinct_pairs_are_the_set_of_windows(seq, width):
    p = distinct_pairs(seq, width)
    windows = [tuple(seq[i : i + width + 1]) for i in range(len(seq) - width)]
    got = [(*c, t) for c, t in zip(p.contexts.tolist(), p.tokens.tolist(), strict=True)]
    assert len(got) == len(set(got)) == len(set(windows))
    assert set(got) == set(windows)
    assert p.positions.tolist() == sorted(p.positions.tolist())
    for w, pos in zip(got, p.positions.tolist(), strict=True):
        assert tuple(seq[pos - width : pos + 1]) == w
        assert windows.index(w) == pos - width  # the first occurrence
    assert p.length == len(seq)


# ---- the core ----------------------------------------------------------------------------------------------
@given(data=st.data(), scheme=st.sampled_from(GREEN_LIST), width=widths, gamma=st.sampled_from([0.1, 0.25, 0.5]))
@settings(max_examples=40)
def test_is_green_count_green_and_green_mask_agree(data, scheme, width, gamma):
    vocab = 16
    s = get_scheme(scheme, gamma, width)
    key_vals = np.array(data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5)), dtype=U64)
    n = data.draw(st.integers(0, 20))
    ctx = np.array(
        data.draw(
            st.lists(st.lists(st.integers(0, vocab - 1), min_size=width, max_size=width), min_size=n, max_size=n)
        ),
        dtype=np.int64,
    ).reshape(n, width)
    toks = np.array(data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)), dtype=np.int64)
    flags = s.is_green(key_vals, ctx, toks, vocab)
    assert flags.shape == (len(key_vals), n)
    chunk = data.draw(st.integers(1, 64))
    assert np.array_equal(s.count_green(key_vals, ctx, toks, vocab, chunk_elems=chunk), flags.sum(axis=1))
    for i in range(n):
        mask = s.green_mask(key_vals, np.repeat(ctx[i : i + 1], len(key_vals), axis=0), vocab)
        assert np.array_equal(mask[:, toks[i]], flags[:, i])


# ---- the configuration -------------------------------------------------------------------------------------
valid_configs = st.one_of(
    st.builds(
        WatermarkConfig,
        scheme=st.just("antidistill-v1"),
        gamma=st.floats(min_value=1e-9, max_value=1 - 1e-9, exclude_min=True, exclude_max=True),
        delta=st.floats(min_value=0.0, max_value=100.0),
        context_width=widths,
        provider_fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    ),
    st.builds(
        WatermarkConfig.interop,
        gamma=st.floats(min_value=0.01, max_value=0.99),
        delta=st.floats(min_value=0.0, max_value=100.0),
        context_width=widths,
    ),
)


@given(cfg=valid_configs)
def test_config_round_trips(cfg):
    d = cfg.to_dict()
    assert WatermarkConfig.from_dict(d) == cfg
    assert WatermarkConfig.from_dict(d).to_dict() == d


not_numbers = st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
bad_values = {
    "gamma": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan), not_numbers),
    "delta": st.one_of(
        st.floats(max_value=0.0, exclude_max=True),
        st.floats(min_value=100.0, exclude_min=True),
        st.just(math.nan),
        not_numbers,
    ),
    "context_width": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=MAX_CONTEXT_WIDTH + 1),
        st.booleans(),
        st.floats(allow_nan=False),
        not_numbers.filter(lambda v: v is not None),  # None: the member's default width
    ),
    "provider_fraction": st.one_of(
        st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0), st.just(math.nan), not_numbers
    ),
}


@given(data=st.data(), field=st.sampled_from(sorted(bad_values)))
def test_invalid_values_raise_value_error_naming_the_field(data, field):
    value = data.draw(bad_values[field])
    try:
        WatermarkConfig(**{field: value})
    except ValueError as exc:
        assert str(exc).startswith(f"{field} ")
    else:
        raise AssertionError(f"{field}={value!r} was accepted")
