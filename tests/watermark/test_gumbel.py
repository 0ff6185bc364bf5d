"""The sampling members (``gumbel``, ``gumbel-dual``, ``tournament``, ``markllm-exp``): exact nulls, no distortion,
power, diversity.

Exactness is checked where it can fail: the per-tuple score of text written without the key must be Exp(1)
(so the sum over n distinct tuples is Gamma(n, 1)), p-values of one text under random keys must be uniform,
the Gamma tail must match the closed form far out, and tails of real sums of scheme scores must match it too.
Distortion-freeness: over random keys (and coins), the chosen token must be distributed as the model's
probabilities. MarkLLM's EXP implementation is the peer oracle for the sampling rule, the score and the p-value.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from antidistill.detection import Detector
from antidistill.detection.stats import clopper_pearson, gamma_sf
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64, Workspace
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor
from antidistill.watermark.schemes import get_scheme

NATIVE = ["gumbel", "gumbel-dual"]
SAMPLING = [*NATIVE, "tournament"]


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=n, dtype=U64, endpoint=False)


def distinct_text(rng: np.random.Generator, length: int, vocab: int = 49152) -> list[int]:
    """A random token sequence whose bigrams are all distinct (so every position is one scored tuple)."""
    while True:
        ids = rng.integers(0, vocab, size=length).tolist()
        if len(set(itertools.pairwise(ids))) == length - 1:
            return ids


# ---- the null -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NATIVE)
def test_pair_scores_of_unmarked_tuples_are_exp1(name):
    rng = np.random.default_rng(1)
    s = get_scheme(name, 0.25, 2)
    keys = random_keys(rng, 40)
    ctx = rng.integers(0, 49152, size=(500, 2))
    toks = rng.integers(0, 49152, size=500)
    scores = s.pair_scores(keys, ctx, toks, None).ravel()  # 20,000 tuples
    assert stats.kstest(scores, "expon").pvalue > 1e-3
    assert abs(scores.mean() - 1.0) < 4 * 1 / math.sqrt(len(scores))


@pytest.mark.parametrize("name", [*SAMPLING, "kgw-entropy"])
def test_p_values_of_one_text_are_uniform_over_random_keys(name):
    rng = np.random.default_rng(2)
    cfg = WatermarkConfig(scheme=name, provider_fraction=0.0)
    det = Detector(cfg, 49152)
    pairs = det.pairs(distinct_text(rng, 150))
    keys = random_keys(rng, 3000)
    totals = det.scheme.score_sums(keys, pairs.contexts, pairs.tokens, 49152)
    p = np.asarray(det.scheme.p_value(totals, len(pairs), 49152))
    if name in NATIVE:
        assert stats.kstest(p, "uniform").pvalue > 1e-3  # continuous null: exactly uniform
    for alpha in (0.01, 0.05, 0.2):  # discrete (binomial) nulls are super-uniform: never above alpha
        lo, _ = clopper_pearson(int((p <= alpha).sum()), len(p), 0.999)
        assert lo <= alpha


@pytest.mark.parametrize(("n", "p_target"), [(1, 1e-5), (10, 1e-12), (100, 1e-30), (400, 1e-100), (64, 1e-200)])
def test_gamma_tail_matches_the_closed_form_far_out(n, p_target):
    # For integer n, P(Gamma(n, 1) >= s) = exp(-s) * sum_{k<n} s^k / k!, summed here in log space.
    s = float(stats.gamma.isf(p_target, n)) if p_target > 1e-290 else None
    assert s is not None
    terms = [k * math.log(s) - math.lgamma(k + 1) for k in range(n)]
    top = max(terms)
    exact = math.exp(-s + top + math.log(sum(math.exp(t - top) for t in terms)))
    got = gamma_sf(s, n)
    assert got == pytest.approx(exact, rel=1e-8)
    assert got == pytest.approx(p_target, rel=1e-6)


@pytest.mark.parametrize("name", NATIVE)
def test_tails_of_real_score_sums_match_gamma(name):
    # 200,000 random keys scored on one 8-tuple text: the sum's tail at 1e-2, 1e-3, 1e-4 is Gamma(8, 1)'s.
    rng = np.random.default_rng(3)
    s = get_scheme(name, 0.25, 1)
    ctx = rng.integers(0, 49152, size=(8, 1))
    toks = rng.integers(0, 49152, size=8)
    totals = s.score_sums(random_keys(rng, 200_000), ctx, toks, None)
    for alpha in (1e-2, 1e-3, 1e-4):
        q = float(stats.gamma.isf(alpha, 8))
        k = int((totals >= q).sum())
        lo, hi = clopper_pearson(k, len(totals), 0.9999)
        assert lo <= alpha <= hi, (alpha, k)


def test_the_dual_maximum_squared_is_uniform():
    rng = np.random.default_rng(4)
    s = get_scheme("gumbel-dual", 0.25, 1)
    scores = s.pair_scores(random_keys(rng, 50), rng.integers(0, 999, (400, 1)), rng.integers(0, 999, 400), None)
    m2 = -np.expm1(-scores.ravel())  # 1 - exp(-score) = max(u_A, u_B) ** 2
    assert stats.kstest(m2, "uniform").pvalue > 1e-3


# ---- no distortion -------------------------------------------------------------------------------------------
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.07, 0.03])


@pytest.mark.parametrize("name", SAMPLING)
def test_the_chosen_token_is_distributed_as_the_model_says(name):
    rng = np.random.default_rng(5)
    s = get_scheme(name, 0.25, 1)
    n = 30_000
    probs = np.tile(PROBS, (n, 1))
    keys = random_keys(rng, n)
    ctx = rng.integers(0, 49152, size=(n, 1))
    coins = rng.random(n)
    chosen = s.choose(probs, keys, ctx, coins, Workspace())
    counts = np.bincount(chosen, minlength=len(PROBS))
    assert stats.chisquare(counts, PROBS * n).pvalue > 1e-3


def test_tokens_with_zero_probability_are_never_chosen():
    rng = np.random.default_rng(6)
    s = get_scheme("gumbel", 0.25, 1)
    probs = np.tile(np.array([0.0, 0.5, 0.0, 0.5]), (2000, 1))
    chosen = s.choose(probs, random_keys(rng, 2000), rng.integers(0, 9, (2000, 1)))
    assert set(chosen.tolist()) == {1, 3}


def test_plain_gumbel_is_deterministic_and_the_dual_key_is_not():
    # The diversity problem, in one context: a fixed key gives one answer; two keys, picked by a coin, give two.
    rng = np.random.default_rng(7)
    probs = np.tile(np.full(50, 1 / 50), (400, 1))
    keys = np.full(400, 12345, dtype=U64)
    ctx = np.full((400, 1), 77)
    coins = rng.random(400)
    plain = get_scheme("gumbel", 0.25, 1).choose(probs, keys, ctx, coins)
    dual = get_scheme("gumbel-dual", 0.25, 1).choose(probs, keys, ctx, coins)
    tour = get_scheme("tournament", 0.25, 1).choose(probs, keys, ctx, coins)
    assert len(set(plain.tolist())) == 1
    assert len(set(dual.tolist())) == 2
    assert len(set(tour.tolist())) > 10  # the tournament's draw stays random: many answers
    with pytest.raises(ValueError, match="coin"):
        get_scheme("gumbel-dual", 0.25, 1).choose(probs, keys, ctx, None)


# ---- power, and only under the right key --------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLING)
def test_text_sampled_with_the_key_is_detected_and_other_keys_are_not(name):
    rng = np.random.default_rng(8)
    cfg = WatermarkConfig(scheme=name, context_width=1, provider_fraction=0.0)
    s = Watermark(cfg).scheme
    key = WatermarkKey("k", None, 1, 0xDEADBEEF12345678)
    ids = [int(rng.integers(0, 200))]
    for _ in range(200):  # each step a fresh, fairly flat distribution over 200 tokens
        p = rng.dirichlet(np.full(200, 0.3))[None, :]
        tok = s.choose(p, np.array([key.value], dtype=U64), np.array([[ids[-1]]]), rng.random(1))
        ids.append(int(tok[0]))
    det = Detector(cfg, 200)
    assert det.score(ids, key).p_value < 1e-10
    others = [det.score(ids, WatermarkKey("o", None, 1, int(v))).p_value for v in random_keys(rng, 200)]
    assert min(others) > 1e-4
    if name in NATIVE:
        assert stats.kstest(others, "uniform").pvalue > 1e-3


# ---- the processor --------------------------------------------------------------------------------------------
def test_the_processor_chooses_for_sampled_marked_rows_and_biases_greedy_ones():
    from antidistill.keys import MasterKey

    mk = MasterKey(b"g" * 32)
    mark = MarkKeys(mk.account_key("a"), mk.provider_key())
    proc = WatermarkLogitsProcessor(Watermark(WatermarkConfig(scheme="gumbel")), [mark, None, mark])
    proc.set_row_sampling([0.7, 0.7, 0.0], [1.0, 1.0, 1.0])
    torch.manual_seed(0)
    scores = torch.randn(3, 300)
    out = proc(torch.tensor([[4, 5, 6], [4, 5, 6], [4, 5, 6]]), scores.clone())  # the default width: 3
    assert int(torch.isfinite(out[0]).sum()) == 1  # the marked, sampled row: only the chosen token is left
    assert torch.equal(out[1], scores[1])  # unmarked row untouched
    # greedy row: a sampling mark cannot apply, the green-list fallback does (+delta on its green list)
    bias = out[2] - scores[2]
    assert torch.all((bias.abs() < 1e-5) | ((bias - 3.0).abs() < 1e-5))
    assert 0.15 < float((bias > 1).float().mean()) < 0.35


def test_the_processor_respects_top_p():
    from antidistill.keys import MasterKey

    mk = MasterKey(b"h" * 32)
    proc = WatermarkLogitsProcessor(
        Watermark(WatermarkConfig(scheme="gumbel", context_width=1, provider_fraction=0.0)),
        [MarkKeys(mk.account_key("a"))] * 64,
        temperature=1.0,
        top_p=0.5,
    )
    scores = torch.log(torch.tensor([0.45, 0.3, 0.15, 0.1])).repeat(64, 1)
    ctx = torch.arange(64)[:, None]
    chosen = proc(ctx, scores).argmax(dim=-1)
    assert set(chosen.tolist()) <= {0, 1}  # the nucleus of 0.5 is the two most likely tokens


# ---- repeated-context masking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLING)
def test_a_context_repeated_in_the_answer_is_sampled_unmarked(name):
    from antidistill.keys import MasterKey

    mk = MasterKey(b"m" * 32)
    mark = MarkKeys(mk.account_key("a"), mk.provider_key())
    proc = WatermarkLogitsProcessor(Watermark(WatermarkConfig(scheme=name)), [mark, mark], temperature=0.7)
    torch.manual_seed(1)
    scores = torch.randn(2, 300)
    first = proc(torch.tensor([[0, 1, 2, 5], [0, 1, 2, 6]]), scores.clone())  # contexts: the last 3 tokens
    assert all(int(torch.isfinite(first[i]).sum()) == 1 for i in range(2))  # new contexts: marked
    again = proc(torch.tensor([[9, 1, 2, 5], [0, 1, 2, 7]]), scores.clone())
    assert torch.equal(again[0], scores[0])  # row 0 saw context (1, 2, 5) before: left to the sampler
    assert int(torch.isfinite(again[1]).sum()) == 1  # row 1's context (1, 2, 7) is new
    # the history belongs to the row: a caller that keeps it sees it carried over a batch change
    history: set[tuple[int, ...]] = {(3, 4, 9)}
    proc.set_row_keys([mark], [history])
    proc.set_row_sampling([0.7], [1.0])
    assert torch.equal(proc(torch.tensor([[3, 4, 9]]), scores[:1].clone()), scores[:1])
    proc(torch.tensor([[3, 4, 8]]), scores[:1].clone())
    assert history == {(3, 4, 9), (3, 4, 8)}


def test_the_detector_scores_the_first_occurrence_of_each_context_only():
    ids = [1, 2, 3, 2, 4, 2, 3, 5]  # context (2,) at positions 2, 4, 6 with tokens 3, 4, 3
    fresh = Detector(WatermarkConfig(scheme="gumbel", context_width=1)).pairs(ids)
    assert fresh.positions.tolist() == [1, 2, 3, 5]  # contexts (1,), (2,), (3,), (4,): first occurrences only
    unmasked = WatermarkConfig(scheme="markllm-exp", provider_fraction=0.0)  # a member without the mask
    every_pair = Detector(unmasked).pairs(ids)
    assert every_pair.positions.tolist() == [1, 2, 3, 4, 5, 7]
    # p-values over random keys stay uniform with the selection (it does not depend on the key)
    rng = np.random.default_rng(4)
    text = rng.integers(0, 50, size=400).tolist()  # a small vocabulary: many repeated contexts
    det = Detector(WatermarkConfig(scheme="gumbel", context_width=1, provider_fraction=0.0))
    assert len(det.pairs(text)) == 50 == len({(t,) for t in text[:-1]})
    ps = [det.score(text, WatermarkKey("o", None, 1, int(v))).p_value for v in random_keys(rng, 400)]
    assert stats.kstest(ps, "uniform").pvalue > 1e-3


def _chain(rng: np.random.Generator, vocab: int = 60) -> np.ndarray:
    """A toy language model: each token's next-token distribution, peaked on a few tokens (as real text is)."""
    return rng.dirichlet(np.full(vocab, 0.05), size=vocab)


@pytest.mark.parametrize("name", SAMPLING)
def test_masking_keeps_a_fixed_key_out_of_loops(name):
    """Under one key and h = 1 the keyed choice depends on the previous token only; a plain mark revisits the
    same continuations (the answer cycles). The masked processor's answer is as varied as unmarked sampling."""
    from antidistill.keys import MasterKey

    rng = np.random.default_rng(11)
    table = _chain(rng)
    mark = MarkKeys(MasterKey(b"l" * 32).account_key("a"))
    wm = Watermark(WatermarkConfig(scheme=name, context_width=1, provider_fraction=0.0))
    key = np.array([mark.account.value], dtype=U64)

    def run(kind: str, seed: int) -> int:
        gen = np.random.default_rng(seed)
        torch.manual_seed(seed)
        proc = WatermarkLogitsProcessor(wm, [mark], temperature=1.0)
        ids = [0]
        for _ in range(300):
            p = table[ids[-1]]
            if kind == "plain":  # the scheme's own choice at every step, no mask
                ids.append(int(wm.scheme.choose(p[None, :], key, np.array([[ids[-1]]]), gen.random(1))[0]))
                continue
            logits = torch.log(torch.from_numpy(p)).float()[None, :]
            if kind == "masked":
                logits = proc(torch.tensor([[ids[-1]]]), logits)
            ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=None)[0]))
        return len(set(itertools.pairwise(ids)))

    unmarked = np.mean([run("unmarked", s) for s in range(6)])
    masked = np.mean([run("masked", s) for s in range(6)])
    plain = np.mean([run("plain", s) for s in range(6)])
    assert masked > 0.85 * unmarked
    if name == "gumbel":  # deterministic given the previous token: the answer is a cycle of a few bigrams
        assert plain < 0.5 * unmarked


# ---- the peer oracle: MarkLLM's EXP -----------------------------------------------------------------------
class _IdsTokenizer:
    """The one tokenizer call MarkLLM's EXP detector makes, on texts that are space-separated token ids."""

    def encode(self, text, return_tensors=None, add_special_tokens=False):
        return torch.tensor([[int(t) for t in text.split()]])


def _markllm(tmp_path, prefix: int, key: int, vocab: int):
    exp = pytest.importorskip("markllm.watermark.exp.exp")
    tconf = pytest.importorskip("markllm.utils.transformers_config")
    path = tmp_path / "EXP.json"
    config = {
        "algorithm_name": "EXP",
        "prefix_length": prefix,
        "hash_key": key,
        "threshold": 1e-4,
        "sequence_length": 0,
        "top_k": 0,
    }
    path.write_text(json.dumps(config))
    return exp.EXP(str(path), tconf.TransformersConfig(None, _IdsTokenizer(), vocab_size=vocab, device="cpu"))


@pytest.mark.parametrize("prefix", [1, 2])
def test_markllm_is_the_oracle_for_sampling_scores_and_p_values(tmp_path, prefix):
    vocab, key = 1000, 15485863
    peer = _markllm(tmp_path, prefix, key, vocab)
    cfg = WatermarkConfig(scheme="markllm-exp", context_width=prefix, provider_fraction=0.0)
    ours = Watermark(cfg).scheme
    rng = np.random.default_rng(9)
    gen = torch.Generator().manual_seed(0)
    ids = rng.integers(1, vocab, size=prefix).tolist()
    for _ in range(120):
        probs = torch.softmax(torch.randn(1, vocab, generator=gen) * 2.5, dim=-1)
        peer.utils.seed_rng(torch.tensor(ids))
        u = torch.rand(vocab, generator=peer.utils.rng)
        theirs = int(peer.utils.exp_sampling(probs, u[None, :]).item())
        mine = int(ours.choose(probs.double().numpy(), np.array([key], dtype=U64), np.array([ids[-prefix:]]))[0])
        assert mine == theirs  # the same token at every step
        ids.append(mine)
    text = " ".join(map(str, ids))
    det = Detector(cfg, vocab)
    r = det.score(ids, WatermarkKey("hashing-key", None, 0, key))
    peer_p = peer.detect_watermark(text)["score"]
    tuples = len({tuple(ids[i : i + prefix + 1]) for i in range(len(ids) - prefix)})
    if tuples == len(ids) - prefix:  # MarkLLM scores every position; ours each distinct tuple once
        assert r.p_value == pytest.approx(peer_p, rel=1e-4)
    assert r.p_value < 1e-8 and peer_p < 1e-8
    # and a text the peer never marked: both see nothing
    plain = rng.integers(1, vocab, size=121).tolist()
    p_plain = det.score(plain, WatermarkKey("hashing-key", None, 0, key)).p_value
    assert p_plain == pytest.approx(peer.detect_watermark(" ".join(map(str, plain)))["score"], rel=1e-4)


def test_tournament_rounds_sum_fair_bits():
    # the tournament's tuple score is the sum of `layers` fair bits: Binomial(layers, 1/2) for unmarked text
    rng = np.random.default_rng(10)
    s = get_scheme("tournament", 0.25, 1, layers=12)
    scores = s.pair_scores(random_keys(rng, 40), rng.integers(0, 999, (500, 1)), rng.integers(0, 999, 500), None)
    counts = np.bincount(scores.ravel().astype(int), minlength=13)
    assert stats.chisquare(counts, stats.binom.pmf(np.arange(13), 12, 0.5) * scores.size).pvalue > 1e-3


def test_tournament_layers_are_validated():
    assert WatermarkConfig(scheme="tournament").layers == 16
    assert WatermarkConfig(scheme="tournament", layers=4).to_dict()["layers"] == 4
    for bad in (0, 33, 2.5, True):
        with pytest.raises(ValueError, match="layers"):
            WatermarkConfig(scheme="tournament", layers=bad)
    with pytest.raises(ValueError, match="tournament only"):
        WatermarkConfig(scheme="gumbel", layers=4)
