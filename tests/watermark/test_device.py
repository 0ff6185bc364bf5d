"""The device kernels (torch) are the numpy core, bit for bit: green masks, uniforms, chosen tokens, and the
processor's output whichever path it takes. Run here on CPU tensors; ``benchmarks/marking_device.py`` repeats the
processor check on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from antidistill.errors import InputError
from antidistill.watermark import device
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64, EntropyKGWScheme, HashScheme, HFLefthashScheme, Workspace, fmix64
from antidistill.watermark.gumbel import DualGumbelScheme, GumbelScheme, MarkLLMExpScheme, row_uniforms
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor, final_probs
from antidistill.watermark.tournament import TournamentScheme
from tests.synthetic import TEST_MASTER

CPU = torch.device("cpu")
VOCABS = [5, 1003, 4096]  # 1003: not a multiple of 8 (no vector-width tail may be lost)


def random_rows(rng: np.random.Generator, b: int, h: int, v: int) -> tuple[np.ndarray, np.ndarray]:
    """(B,) uint64 keys over the whole 64-bit range (high bit set about half the time) and (B, h) contexts."""
    keys = rng.integers(0, 2**64, size=b, dtype=np.uint64)
    keys[0] = U64(2**64 - 1)  # extremes too
    if b > 1:
        keys[1] = U64(0)
    return keys, rng.integers(0, max(v, 2**17), size=(b, h), dtype=np.int64)


def random_probs(rng: np.random.Generator, b: int, v: int) -> torch.Tensor:
    """Final distributions as the processor makes them: peaked and flat rows, top-p truncation, exact zeros."""
    logits = torch.from_numpy(rng.standard_normal((b, v)) * rng.uniform(0.5, 8.0, size=(b, 1))).float()
    if v > 10:
        logits[:, : v // 10] = float("-inf")  # tokens the model rules out
    top_p = torch.from_numpy(rng.choice([1.0, 0.9, 0.5, 0.05], size=b)).float()
    return final_probs(logits, torch.full((b,), 0.8), top_p)


def test_signed_keeps_the_bits():
    for v in (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0xFF51AFD7ED558CCD):
        assert np.array([device.signed(v)], dtype=np.int64).view(np.uint64)[0] == U64(v)
    with pytest.raises(InputError, match="value"):
        device.signed(2**64)


def test_logical_shift_and_mixing_match_uint64():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**64, size=10_000, dtype=np.uint64)
    t = device.as_int64(x)
    for s in (1, 11, 33, 63):
        assert np.array_equal(device.shift_right(t, s).numpy().view(np.uint64), x >> U64(s))
    # fmix64 = the first xor-shift, then the rest (as the kernels split it)
    pre = device.as_int64(x ^ (x >> U64(33)))
    assert np.array_equal(device._mix_tail(pre).numpy().view(np.uint64), fmix64(x))


@pytest.mark.parametrize("scheme_cls", [HashScheme, EntropyKGWScheme])
@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.1, 0.3, 0.75, 0.999])  # multiples of 2**-33 and not
def test_green_masks_equal_the_core(scheme_cls, gamma):
    rng = np.random.default_rng(int(gamma * 1000))
    for v in VOCABS:
        for b in (1, 2, 7, 33):
            for h in (1, 3):
                scheme = scheme_cls(gamma, h)
                keys, ctx = random_rows(rng, b, h, v)
                got = device.green_mask(scheme, keys, ctx, v, CPU)
                assert got.dtype == torch.bool and got.shape == (b, v)
                assert np.array_equal(got.numpy(), scheme.green_mask(keys, ctx, v))


@pytest.mark.parametrize("scheme", [GumbelScheme(0.25, 3), DualGumbelScheme(0.25, 3)], ids=lambda s: s.name)
def test_uniforms_equal_the_core(scheme):
    rng = np.random.default_rng(2)
    for v in VOCABS:
        keys, ctx = random_rows(rng, 9, 3, v)
        coins = rng.random(9)
        race = scheme.race_keys(keys, coins)
        want = row_uniforms(race, ctx, v, Workspace())
        got = device.uniforms(race, ctx, v, CPU)
        assert got.dtype == torch.float64
        assert np.array_equal(got.numpy(), want)  # bit for bit, not allclose


@pytest.mark.parametrize("scheme", [GumbelScheme(0.25, 3), DualGumbelScheme(0.25, 2)], ids=lambda s: s.name)
def test_chosen_tokens_equal_the_core(scheme):
    rng = np.random.default_rng(3)
    for v in VOCABS:
        for b in range(1, 34, 4):
            keys, ctx = random_rows(rng, b, scheme.context_width, v)
            probs = random_probs(rng, b, v)
            coins = rng.random(b)
            got = device.choose(scheme, probs, keys, ctx, coins)
            assert got.dtype == torch.int64 and got.shape == (b,)
            want = scheme.choose(probs.numpy(), keys, ctx, coins)
            assert np.array_equal(got.numpy(), want)
            assert bool((probs[torch.arange(b), got] > 0).all())  # never a token of probability 0


def test_dual_coins_pick_the_key():
    scheme = DualGumbelScheme(0.25, 1)
    rng = np.random.default_rng(4)
    keys, ctx = random_rows(rng, 64, 1, 1000)
    probs = random_probs(rng, 64, 1000)
    low, high = (
        device.choose(scheme, probs, keys, ctx, np.full(64, 0.1)),
        device.choose(scheme, probs, keys, ctx, np.full(64, 0.9)),
    )
    assert not torch.equal(low, high)  # the coin matters, and as in the core
    assert np.array_equal(high.numpy(), scheme.choose(probs.numpy(), keys, ctx, np.full(64, 0.9)))
    with pytest.raises(InputError, match="coin"):
        device.choose(scheme, probs, keys, ctx, None)


def test_a_wrong_constant_is_caught(monkeypatch):
    """The equality tests are sharp: one flipped bit of a multiplier changes the masks."""
    scheme = HashScheme(0.25, 1)
    rng = np.random.default_rng(5)
    keys, ctx = random_rows(rng, 8, 1, 1003)
    monkeypatch.setattr(device, "_M2", device._M2 ^ 1)
    assert not np.array_equal(
        device.green_mask(scheme, keys, ctx, 1003, CPU).numpy(), scheme.green_mask(keys, ctx, 1003)
    )


def test_which_members_have_kernels():
    assert device.supported(HashScheme(0.25, 1)) and device.supported(EntropyKGWScheme(0.25, 1))
    assert device.supported(GumbelScheme(0.25, 3)) and device.supported(DualGumbelScheme(0.25, 3))
    for other in (HFLefthashScheme(0.25, 1), MarkLLMExpScheme(0.25, 1), TournamentScheme(0.25, 3)):
        assert not device.supported(other)
    with pytest.raises(InputError, match="no device"):
        device.green_mask(HFLefthashScheme(0.25, 1), np.zeros(1, dtype=U64), np.zeros((1, 1)), 10, CPU)
    with pytest.raises(InputError, match="no device"):
        device.choose(MarkLLMExpScheme(0.25, 1), torch.ones(1, 10) / 10, np.zeros(1, dtype=U64), np.zeros((1, 1)))


def test_token_table_is_cached_per_vocabulary():
    assert device.token_table(1003, CPU) is device.token_table(1003, CPU)
    assert device.token_table(1004, CPU).shape == (1004,)


ROW_KEYS = [
    MarkKeys(TEST_MASTER.account_key("alice"), TEST_MASTER.provider_key(1)),
    MarkKeys(TEST_MASTER.account_key("bob")),
    None,
    MarkKeys(TEST_MASTER.account_key("carol"), TEST_MASTER.provider_key(2)),
    MarkKeys(TEST_MASTER.account_key("alice"), TEST_MASTER.provider_key(1)),
    MarkKeys(TEST_MASTER.account_key("dave"), TEST_MASTER.provider_key(1)),
]


@pytest.mark.parametrize(
    "config",
    [
        WatermarkConfig(scheme="antidistill-v1", context_width=1),
        WatermarkConfig(scheme="antidistill-v1", context_width=2, gamma=0.3, delta=2.5),
        WatermarkConfig(scheme="kgw-entropy", entropy_threshold=1.0),
        WatermarkConfig(scheme="gumbel", context_width=1),
        WatermarkConfig(scheme="gumbel-dual"),
        WatermarkConfig(scheme="tournament"),  # no kernel: both paths are the host's
    ],
    ids=lambda c: f"{c.scheme}-h{c.context_width}",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_processor_device_path_equals_host_path(config, dtype, monkeypatch):
    """Two processors, one forced onto the device kernels: identical logits at every step, with greedy rows (the
    green-list fallback), top-p rows, repeated contexts (masked) and seeded coins in the batch."""
    wm = Watermark(config)
    v = 1003
    rng = np.random.default_rng(6)
    temps, top_ps = [0.8, 0.0, 1.0, 0.7, 1.3, 0.9], [1.0, 1.0, 0.9, 0.5, 1.0, 0.95]

    def processor(on_device: bool) -> WatermarkLogitsProcessor:
        proc = WatermarkLogitsProcessor(wm, ROW_KEYS, on_device=on_device)
        gens = [torch.Generator().manual_seed(i) if i % 2 else None for i in range(len(ROW_KEYS))]
        proc.set_row_sampling(temps, top_ps, gens)
        return proc

    calls = {"green_mask": 0, "choose": 0}
    for name in calls:
        kernel = getattr(device, name)

        def counted(*args, _kernel=kernel, _name=name, **kwargs):
            calls[_name] += 1
            return _kernel(*args, **kwargs)

        monkeypatch.setattr(device, name, counted)
    host, dev, auto = processor(False), processor(True), processor(None)
    for step in range(12):
        ids = torch.from_numpy(rng.integers(0, 8 if step % 3 else v, size=(len(ROW_KEYS), 5)))  # small ids: repeats
        scores = (torch.randn(len(ROW_KEYS), v) * 4).to(dtype)
        state = torch.random.get_rng_state()  # unseeded rows' coins come from torch's global generator
        a = host(ids, scores)
        torch.random.set_rng_state(state)
        before = dict(calls)
        torch.random.set_rng_state(state)
        c = auto(ids, scores)  # logits on the CPU: the default is the host path
        assert calls == before
        torch.random.set_rng_state(state)
        b = dev(ids, scores)
        assert a.dtype == b.dtype == dtype
        assert torch.equal(a, b), f"step {step}"
        assert torch.equal(a, c)
        assert torch.equal(a[2], scores[2])  # the unmarked row
    # the forced processor did run the kernels (the tournament has none: its greedy row's fallback mask does)
    assert calls["green_mask"] > 0
    assert (calls["choose"] > 0) == (wm.scheme.kind == "sample" and config.scheme != "tournament")
