"""WatermarkConfig: defaults, validation that names the field, round trips, the interop preset."""

from __future__ import annotations

import dataclasses
import math

import pytest

from antidistill.errors import InputError
from antidistill.watermark import WatermarkConfig, scheme_names
from antidistill.watermark import config as config_module


def test_defaults_are_valid_and_documented():
    c = WatermarkConfig(scheme="antidistill-v1")
    assert c.scheme == "antidistill-v1"
    assert 0.0 < c.gamma < 1.0 and c.delta > 0.0 and c.context_width >= 1 and 0.0 < c.provider_fraction < 1.0
    # the module docstring explains every default ("``gamma = 0.25``: ..."): the two must not drift apart
    for name in ("gamma", "delta", "context_width", "provider_fraction"):
        assert f"``{name} = {getattr(c, name)}``" in config_module.__doc__


def test_is_frozen_and_hashable():
    c = WatermarkConfig(scheme="antidistill-v1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.gamma = 0.5  # type: ignore[misc]
    assert {c: 1}[WatermarkConfig(scheme="antidistill-v1")] == 1


@pytest.mark.parametrize(
    "config",
    [
        WatermarkConfig(scheme="antidistill-v1"),
        WatermarkConfig(scheme="antidistill-v1", gamma=0.5, delta=0.0, context_width=4, provider_fraction=0.0),
        WatermarkConfig(scheme="antidistill-v1", gamma=1e-3, delta=100.0, context_width=2, provider_fraction=0.999),
        WatermarkConfig.interop(gamma=0.3, delta=1.5, context_width=3),
    ],
)
def test_round_trip(config):
    d = config.to_dict()
    assert WatermarkConfig.from_dict(d) == config
    assert WatermarkConfig.from_dict(dict(d)).to_dict() == d


def test_from_dict_fills_defaults_and_rejects_unknown_fields():
    assert WatermarkConfig.from_dict({"gamma": 0.5}) == WatermarkConfig(gamma=0.5)
    with pytest.raises(ValueError, match="bias, seeding_scheme"):
        WatermarkConfig.from_dict({"gamma": 0.5, "seeding_scheme": "lefthash", "bias": 2.0})


def test_interop_preset():
    c = WatermarkConfig.interop(gamma=0.4, delta=3.0, context_width=2)
    got = (c.scheme, c.gamma, c.delta, c.context_width, c.provider_fraction)
    assert got == ("hf-lefthash", 0.4, 3.0, 2, 0.0)


def test_schemes():
    assert set(scheme_names()) == {
        "antidistill-v1",
        "hf-lefthash",
        "kgw-entropy",
        "gumbel",
        "gumbel-dual",
        "tournament",
        "markllm-exp",
        "vllm-gumbel",
        "vllm-dual-gumbel",
    }
    for name in scheme_names():
        assert WatermarkConfig(scheme=name, provider_fraction=0.0).scheme == name
    assert {n for n in scheme_names() if WatermarkConfig(scheme=n, provider_fraction=0.0).kind == "sample"} == {
        "gumbel",
        "gumbel-dual",
        "tournament",
        "markllm-exp",
        "vllm-gumbel",
        "vllm-dual-gumbel",
    }


@pytest.mark.parametrize("scheme", ["hf-lefthash", "markllm-exp"])
def test_single_key_schemes_refuse_a_provider_share(scheme):
    with pytest.raises(InputError, match="single-key"):
        WatermarkConfig(scheme=scheme, provider_fraction=0.5)


def test_entropy_threshold_belongs_to_kgw_entropy():
    c = WatermarkConfig(scheme="kgw-entropy", entropy_threshold=1.5)
    assert c.to_dict()["entropy_threshold"] == 1.5
    assert WatermarkConfig.from_dict(c.to_dict()) == c
    assert (
        "entropy_threshold" not in WatermarkConfig(scheme="antidistill-v1").to_dict()
    )  # records of other schemes read as before
    for bad in (-1.0, math.nan, 21.0, "1", True):
        with pytest.raises(InputError, match="entropy_threshold"):
            WatermarkConfig(scheme="kgw-entropy", entropy_threshold=bad)
    with pytest.raises(InputError, match="kgw-entropy only"):
        WatermarkConfig(scheme="gumbel", entropy_threshold=1.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scheme", "kgw"),
        ("scheme", ""),
        ("gamma", 0.0),
        ("gamma", 1.0),
        ("gamma", -0.1),
        ("gamma", math.nan),
        ("gamma", "0.25"),
        ("gamma", None),
        ("delta", -0.01),
        ("delta", 100.5),
        ("delta", math.inf),
        ("delta", math.nan),
        ("delta", "2"),
        ("context_width", 0),
        ("context_width", 5),
        ("context_width", 1.0),
        ("context_width", True),
        ("context_width", "1"),
        ("provider_fraction", 1.0),
        ("provider_fraction", -0.5),
        ("provider_fraction", math.nan),
        ("provider_fraction", None),
    ],
)
def test_invalid_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} "):
        WatermarkConfig(**{field: value})


def test_hf_lefthash_is_single_key():
    with pytest.raises(ValueError, match="provider_fraction"):
        WatermarkConfig(scheme="hf-lefthash", provider_fraction=0.5)
