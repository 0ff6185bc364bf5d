"""``vllm-gumbel`` and ``vllm-dual-gumbel``: vLLM's native marks, read by our detector.

vLLM's own code is the oracle (``vllm_oracle.py``, run by ``.venv-vllm``'s Python; skipped without it): the PRF's
uniforms must be bit-identical, and on sequences vLLM's own watermarker marked (with its repeated-context rule) our
detector must score the same tokens with the same summed score and p-value as vLLM's detector, for both algorithms,
several context widths and a wrong key. The nulls are checked without vLLM: p-values of random text over random
keys are uniform, and the dual-key tail matches numerical integration.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, special, stats

from antidistill.detection import Detector
from antidistill.errors import InputError
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.nulls import gamma_sf, weighted_gamma_sf
from antidistill.watermark.schemes import get_scheme, scheme_class, scheme_names
from antidistill.watermark.vllm_native import derive_key, philox4x32_10, vllm_uniforms

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
ORACLE = Path(__file__).with_name("vllm_oracle.py")
KEY, WRONG_KEY = 0x5EED_1234_ABCD_0042, 977
THRESHOLD = 1e-3
CASES = [
    {"algorithm": "gumbel", "context_width": 4, "seed": 1},
    {"algorithm": "gumbel", "context_width": 1, "seed": 2},  # contexts repeat: the dedup rule decides the scored set
    {"algorithm": "gumbel", "context_width": 6, "seed": 3},  # two Philox blocks of context
    {"algorithm": "dual_key_gumbel", "context_width": 4, "alpha": 0.1, "seed": 4},  # vLLM's defaults
    {"algorithm": "dual_key_gumbel", "context_width": 2, "alpha": 0.5, "seed": 5},  # vLLM's p-value is exact here
]
SCHEME = {"gumbel": "vllm-gumbel", "dual_key_gumbel": "vllm-dual-gumbel"}


def config(case: dict) -> WatermarkConfig:
    extra = {"key_b_probability": case["alpha"]} if case["algorithm"] == "dual_key_gumbel" else {}
    return WatermarkConfig(
        scheme=SCHEME[case["algorithm"]], context_width=case["context_width"], provider_fraction=0.0, **extra
    )


@pytest.fixture(scope="module")
def oracle() -> dict:
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM venv at {VLLM_PYTHON} (make vllm builds it)")
    spec = {
        "p_value_threshold": THRESHOLD,
        "wrong_key": WRONG_KEY,
        "cases": [{**c, "key": KEY, "vocab": 1000, "length": 80, "sequences": 3} for c in CASES],
        "uniform_seed": 0,
        "uniform_keys": [0, 1, KEY, 2**64 - 1],
        "uniform_widths": [1, 3, 4, 5, 9],
    }
    return run_oracle(spec)


def run_oracle(spec: dict) -> dict:
    """Run ``vllm_oracle.py`` on ``spec`` in ``.venv-vllm`` (offline, quiet) and return what it answers."""
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(ORACLE)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "VLLM_LOGGING_LEVEL": "ERROR", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict = json.loads(proc.stdout)
    return result


# ---- the PRF ----------------------------------------------------------------------------------------------------
def test_philox_known_answers():
    # Random123's known-answer vectors for Philox4x32-10 (kat_vectors: zero counter and key; all ones; pi digits)
    def run(counter, key):
        c = tuple(np.array([w], dtype=U64) for w in counter)
        k = tuple(np.array([w], dtype=U64) for w in key)
        return [int(w[0]) for w in philox4x32_10(c, k)]

    assert run((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = 0xFFFFFFFF
    assert run((ones,) * 4, (ones, ones)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    pi = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)
    assert run(pi, (0xA4093822, 0x299F31D0)) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_uniforms_are_bit_identical_to_vllm(oracle):
    for rec in oracle["uniforms"]:
        ours = vllm_uniforms(np.array([rec["key"]], dtype=U64), np.array(rec["contexts"]), np.array(rec["tokens"]))[0]
        np.testing.assert_array_equal(ours, np.array(rec["u"], dtype=np.float32).astype(np.float64))


def test_key_derivation():
    import hashlib

    digest = hashlib.sha256(b"key_a" + (12345).to_bytes(8, "big")).digest()
    assert derive_key(12345, b"key_a") == int.from_bytes(digest[:8], "big")
    assert derive_key(12345, b"key_a") != derive_key(12345, b"key_b")


# ---- vLLM's detector on vLLM's marks ----------------------------------------------------------------------------
@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c['algorithm']}-h{c['context_width']}" for c in CASES])
def test_our_detector_scores_vllm_marks_as_vllm_does(oracle, i):
    case = oracle["cases"][i]
    det = Detector(config(case))
    key, wrong = WatermarkKey.explicit(KEY), WatermarkKey.explicit(WRONG_KEY)
    exact_p_in_vllm = case["algorithm"] == "gumbel" or case["alpha"] in (0.0, 0.5, 1.0)
    for rec in case["marked"]:
        for k, theirs in ((key, rec["vllm"]), (wrong, rec["vllm_wrong_key"])):
            r = det.score(rec["ids"], k)
            assert r.tokens_scored == theirs["n"]
            assert r.green == pytest.approx(theirs["score"], rel=1e-12)
            if exact_p_in_vllm:
                assert r.p_value == pytest.approx(theirs["p_value"], rel=1e-9, abs=1e-300)
            else:  # vLLM: a Gamma with the null's mean and variance; ours: the exact tail (same statistic)
                assert r.p_value == pytest.approx(weighted_gamma_sf(r.green, r.tokens_scored, case["alpha"]))
            assert (r.p_value <= THRESHOLD) == theirs["watermarked"]
        assert rec["vllm"]["watermarked"] and not rec["vllm_wrong_key"]["watermarked"]
        # the whole verdict, as `antidistill detect --hashing-key` gives it
        report = det.detect(rec["ids"], candidates=[key], alpha=THRESHOLD, scan=False)
        assert report.watermarked and report.tokens_scored == rec["vllm"]["n"]
    for rec in case["unmarked"]:
        r = det.score(rec["ids"], key)
        assert r.tokens_scored == rec["vllm"]["n"] and r.green == pytest.approx(rec["vllm"]["score"], rel=1e-12)
        assert not rec["vllm"]["watermarked"] and r.p_value > THRESHOLD


def test_repeated_contexts_were_in_the_oracle_sequences(oracle):
    # the h = 1 case must exercise the dedup rule: some contexts recur, and fewer tokens are scored than generated
    case = next(c for c in oracle["cases"] if c["context_width"] == 1)
    assert all(rec["vllm"]["n"] < len(rec["ids"]) for rec in case["marked"])


def test_the_dual_key_p_values_differ_from_vllms_only_in_the_tail(oracle):
    # same statistic, different null: vLLM matches moments, ours is exact; in the bulk they agree closely
    case = next(c for c in oracle["cases"] if c["algorithm"] == "dual_key_gumbel" and c["alpha"] == 0.1)
    det = Detector(config(case))
    for rec in case["unmarked"]:
        r = det.score(rec["ids"], WatermarkKey.explicit(KEY))
        assert r.p_value == pytest.approx(rec["vllm"]["p_value"], abs=0.02)


# ---- exact nulls, without vLLM ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "extra"), [("vllm-gumbel", {}), ("vllm-dual-gumbel", {"key_b_probability": 0.1})])
def test_p_values_of_one_text_are_uniform_over_random_keys(name, extra):
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 49152, size=120).tolist()
    det = Detector(WatermarkConfig(scheme=name, provider_fraction=0.0, **extra))
    pairs = det.pairs(ids)
    assert len(pairs) == 120  # every token, the first four with padded contexts
    keys = rng.integers(0, 2**64, size=3000, dtype=U64, endpoint=False)
    sums = det.scheme.score_sums(keys, pairs.contexts, pairs.tokens, None)
    p = np.asarray(det.scheme.p_value(sums, len(pairs), None))
    assert stats.kstest(p, "uniform").pvalue > 1e-3
    assert abs(float(np.mean(p <= 0.01)) - 0.01) < 4 * math.sqrt(0.01 * 0.99 / len(p))


def test_unmarked_tuple_scores_are_exp1():
    rng = np.random.default_rng(3)
    s = get_scheme("vllm-gumbel", 0.25, 4)
    scores = s.pair_scores(
        rng.integers(0, 2**64, size=20, dtype=U64, endpoint=False),
        rng.integers(-1, 49152, size=(1000, 4)),
        rng.integers(0, 49152, size=1000),
        None,
    ).ravel()
    assert stats.kstest(scores, "expon").pvalue > 1e-3
    assert scores.max() <= -math.log(2.0**-24) + 1e-9  # 24-bit uniforms: one token's score is capped at 16.6


@pytest.mark.parametrize(("n", "s", "w"), [(1, 6.0, 0.1), (10, 40.0, 0.1), (100, 180.0, 0.1), (20, 45.0, 0.7)])
def test_weighted_gamma_tail_matches_numerical_integration(n, s, w):
    a, b = 1.0 - w, w

    def integrand(y: float) -> float:
        return float(stats.gamma.pdf(y, n) * special.gammaincc(n, max((s - b * y) / a, 0.0)))

    expected = integrate.quad(integrand, 0.0, np.inf, limit=500, epsabs=0.0, epsrel=1e-12)[0]
    assert weighted_gamma_sf(s, n, w) == pytest.approx(expected, rel=1e-9)


def test_weighted_gamma_edges():
    assert weighted_gamma_sf(7.0, 5, 0.0) == gamma_sf(7.0, 5) == weighted_gamma_sf(7.0, 5, 1.0)
    assert weighted_gamma_sf(3.0, 5, 0.5) == pytest.approx(gamma_sf(6.0, 10), rel=1e-14)
    assert weighted_gamma_sf(3.0, 0, 0.1) == 1.0
    got = weighted_gamma_sf(np.array([50.0, 80.0, 300.0]), np.array([50, 50, 100]), 0.1)
    assert got.shape == (3,) and got[0] > got[1] > 0 and got[2] < 1e-40
    with pytest.raises(InputError, match="weight"):
        weighted_gamma_sf(1.0, 2, 1.5)


# ---- the members' contract --------------------------------------------------------------------------------------
def test_members_are_read_only_single_key_and_refuse_to_generate():
    for name in ("vllm-gumbel", "vllm-dual-gumbel"):
        cls = scheme_class(name)
        assert name in scheme_names() and cls.single_key and not cls.generates and cls.pads_context
        with pytest.raises(InputError, match="read-only"):
            get_scheme(name, 0.25, 4).choose(np.full((1, 5), 0.2), np.array([1], dtype=U64), np.full((1, 4), -1))


def test_config_of_the_members():
    c = WatermarkConfig(scheme="vllm-dual-gumbel", provider_fraction=0.0)
    assert c.context_width == 4 and c.key_b_probability == 0.1 and not c.generates
    assert WatermarkConfig.from_dict(c.to_dict()) == c
    assert WatermarkConfig(scheme="vllm-gumbel", provider_fraction=0.0, context_width=16).context_width == 16
    assert "key_b_probability" not in WatermarkConfig().to_dict()
    with pytest.raises(InputError, match="key_b_probability applies"):
        WatermarkConfig(scheme="vllm-gumbel", provider_fraction=0.0, key_b_probability=0.2)
    with pytest.raises(InputError, match="key_b_probability must be"):
        WatermarkConfig(scheme="vllm-dual-gumbel", provider_fraction=0.0, key_b_probability=1.5)
    with pytest.raises(InputError, match="single-key"):
        WatermarkConfig(scheme="vllm-gumbel", provider_fraction=0.5)
    with pytest.raises(InputError, match=r"context_width must be in 1\.\.4"):
        WatermarkConfig(context_width=5)


def test_the_first_tokens_are_scored_with_padded_contexts():
    det = Detector(WatermarkConfig(scheme="vllm-gumbel", context_width=3, provider_fraction=0.0))
    pairs = det.pairs([5, 6, 7, 8])
    assert pairs.contexts.tolist() == [[-1, -1, -1], [-1, -1, 5], [-1, 5, 6], [5, 6, 7]]
    assert pairs.positions.tolist() == [0, 1, 2, 3] and pairs.length == 4
    # a repeated context is scored once (vLLM's dedup rule): [7, 7] recurs
    det1 = Detector(WatermarkConfig(scheme="vllm-gumbel", context_width=2, provider_fraction=0.0))
    assert det1.pairs([7, 7, 7, 7, 9]).tokens.tolist() == [7, 7, 7]
