"""The top-logprob mass statistic of closed scans: a valid null on never-issued keys, the positions it scores, and
its power beside the sampled-token statistic on the same answers, through a real HTTP endpoint and the answer
cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from antidistill.errors import InputError
from antidistill.forensics.closed import RunOptions
from antidistill.forensics.endpoint import CACHE_FILE
from antidistill.forensics.logprobs import (
    MassTuples,
    TokenReader,
    chernoff_p,
    mass_statistic,
    parse_cached,
    parse_logprobs,
)
from antidistill.forensics.scan import ScanKeys, scan_closed
from antidistill.gateway.server import BackgroundServer
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.forensics.endpoints import logprob_suspect_app
from tests.synthetic import TEST_MASTER

VOCAB = 49_152
PROMPTS = [f"Tell me about topic number {i}." for i in range(10)]


def _random_tuples(h: int, n: int, rng: np.random.Generator) -> MassTuples:
    m = MassTuples(h)
    positions: list[tuple[int | None, dict[int, float]]] = []
    for _ in range(n):
        k = int(rng.integers(2, 20))
        toks = rng.choice(VOCAB, k, replace=False)
        w = rng.dirichlet(np.full(k, 0.3))
        positions.append((int(rng.integers(0, VOCAB)), dict(zip(toks.tolist(), w.tolist(), strict=True))))
    m.add_positions(positions, ())
    return m


@pytest.mark.parametrize("scheme", ["antidistill-v1", "gumbel-dual"])
def test_the_null_holds_on_never_issued_keys(scheme):
    """3,000 random keys over one suspect's positions: the share of p-values at or below alpha stays below alpha
    (plus three binomial standard errors), at every alpha tried: the Chernoff bound is valid, and conservative."""
    cfg = WatermarkConfig(scheme=scheme)
    sch = Watermark(cfg).scheme
    rng = np.random.default_rng(7)
    m = _random_tuples(1, 600, rng)  # h = 1 contexts drawn at random: distinct with overwhelming probability
    keys = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    p = mass_statistic(sch, keys, m, VOCAB).p_values
    for alpha in (0.01, 0.05, 0.2, 0.5):
        assert (p <= alpha).mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p)), alpha
    assert (p <= 0.5).mean() > 0.05  # not degenerate: the bound is not simply 1


def test_the_bound_is_above_the_exact_tail_for_plain_tuples():
    sch = Watermark(WatermarkConfig(scheme="antidistill-v1")).scheme
    for n, green in ((50, 30), (200, 90), (400, 200)):
        exact = float(sch.p_value(green, n, VOCAB))
        assert exact <= float(chernoff_p(sch, np.ones(n), np.array([float(green)]), VOCAB)[0]) <= 1.0


def test_positions_skip_the_opening_prompt_contexts_and_unreadable_tokens_and_pool_repeats():
    m = MassTuples(2)
    kept = m.add_positions(
        [
            (1, {5: 1.0}),  # opening (t < h)
            (2, {5: 1.0}),  # opening
            (3, {7: 0.2, 8: 0.6}),  # context (1, 2): in the prompt
            (4, {9: 1.0}),  # context (2, 3): kept
            (None, {9: 0.5, 5: 0.5}),  # context (3, 4): kept
            (6, {9: 1.0}),  # context (4, None): unreadable
            (1, {}),  # context (None, 6): unreadable
            (2, {5: 1.0}),  # context (6, 1)
            (3, {5: 1.0}),  # context (1, 2): in the prompt
        ],
        {(1, 2)},
    )
    assert kept == 3 and m.positions == 3 and m.contexts == [(2, 3), (3, 4), (6, 1)]
    assert m.skipped == {"prompt_context": 2, "unreadable": 2, "opening": 2}
    # a context seen before adds its (renormalised) weights to the same tuples: each tuple is scored once
    assert m.add_positions([(2, {5: 1.0}), (3, {5: 1.0}), (4, {9: 0.1, 4: 0.3})], ()) == 1
    ctx, tok, w = m.flat()
    rows = {(tuple(c), int(t)): round(float(x), 6) for c, t, x in zip(ctx.tolist(), tok, w, strict=True)}
    assert rows == {((2, 3), 9): 1.25, ((2, 3), 4): 0.75, ((3, 4), 9): 0.5, ((3, 4), 5): 0.5, ((6, 1), 5): 1.0}
    assert m.positions == 4 and math.isclose(w.sum(), m.positions)


def test_pooled_weights_keep_the_null():
    """Contexts that recur many times (weights summed far above 1) keep the bound valid."""
    sch = Watermark(WatermarkConfig(scheme="antidistill-v1")).scheme
    rng = np.random.default_rng(3)
    m = MassTuples(1)
    for _ in range(40):  # 40 answers over a 30-token vocabulary of contexts: every context recurs
        toks = rng.integers(0, 30, 60)
        m.add_positions(
            [
                (
                    int(t),
                    {
                        int(c): float(p)
                        for c, p in zip(rng.choice(40, 5, replace=False), rng.dirichlet(np.ones(5)), strict=True)
                    },
                )
                for t in toks
            ],
            (),
        )
    assert m.flat()[2].max() > 5
    p = mass_statistic(sch, rng.integers(0, 2**63, 2000, dtype=np.uint64), m, VOCAB).p_values
    for alpha in (0.01, 0.05, 0.2):
        assert (p <= alpha).mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(p)), alpha


def test_parsing_what_an_endpoint_or_the_cache_sends(tokenizer):
    assert parse_logprobs(None) is None
    raw = [
        {
            "token": " the",
            "logprob": -0.1,
            "top_logprobs": [{"token": " the", "logprob": -0.1}, {"token": "x", "logprob": 1.0}],
        },
        {"token": " cat", "logprob": -0.2, "top_logprobs": [{"token": " cat", "logprob": float("nan")}]},
        {"token": 5, "top_logprobs": []},  # malformed: the list ends here
        {"token": " dog", "logprob": -0.2, "top_logprobs": []},
    ]
    assert parse_logprobs(raw) == [(" the", [(" the", -0.1)]), (" cat", [])]
    assert parse_logprobs(5) is None and parse_logprobs("text") is None and parse_logprobs({"a": 1}) is None
    assert parse_cached([[" the", [[" the", -0.1]]]]) == [(" the", [(" the", -0.1)])]
    with pytest.raises(TypeError):
        parse_cached("nope")
    with pytest.raises(ValueError):
        parse_cached([[" the", [[" the", 1000.0]]]])  # an edited cache line: refused, not an overflow later
    read = TokenReader(tokenizer, VOCAB)
    the = tokenizer.encode(" the", add_special_tokens=False)
    assert read(" the") == the[0] and read("token_id:17") == 17 and read("token_id:x") is None
    assert read("token_id:999999") is None and read(" antidisestablishmentarianism") is None and read("") is None
    assert TokenReader(tokenizer)("token_id:99999999999999999999") is None  # bounded by the tokenizer's size


def _keys() -> ScanKeys:
    return ScanKeys.from_master(TEST_MASTER, ["alice", "bob", "carol"])


def _scan(url, tokenizer, top_logprobs=8, **kw):
    return scan_closed(
        url,
        PROMPTS,
        tokenizer,
        _keys(),
        WatermarkConfig(scheme="gumbel-dual"),
        model_name="suspect-1",
        samples=2,
        max_tokens=48,
        top_logprobs=top_logprobs,
        **kw,
    )


def test_a_tilted_suspect_is_found_and_attributed_by_its_logprobs_and_an_untilted_one_is_not(tokenizer, tmp_path):
    """The same answers scored both ways: the mass statistic finds a suspect that leans only slightly toward bob's
    mark (tilt 0.25) with far more confidence than the sampled tokens do; an untilted suspect stays uniform. The
    cache keeps the logprobs: re-scored with the server gone, the statistic is the same."""
    wm = Watermark(WatermarkConfig(scheme="gumbel-dual"))
    bob = MarkKeys(TEST_MASTER.account_key("bob"), TEST_MASTER.provider_key())
    app = logprob_suspect_app(tokenizer, wm, bob, tilt=0.25)
    with BackgroundServer(app) as srv:
        url = srv.url + "/v1"
        marked = _scan(url, tokenizer, run=RunOptions(cache_dir=tmp_path / "c"))
    assert all(b.get("logprobs") is True and b.get("top_logprobs") == 8 for b in app.state.requests)
    lp = marked.logprob
    assert lp is not None and lp["texts_with_logprobs"] == lp["texts"] == 20 and lp["positions"] > 600
    assert lp["provider"]["p_value"] < 1e-6 and lp["attributed_account"] == "bob"
    assert lp["accounts"][0]["p_corrected"] < 1e-4
    assert lp["provider"]["p_value"] < marked.provider.p_value / 100  # more power than one draw per position
    assert lp["controls"]["below_alpha"] == 0
    assert "Top-logprob mass statistic" in marked.verdict
    again = _scan(url, tokenizer, run=RunOptions(cache_dir=tmp_path / "c", from_cache=True))
    assert again.logprob["provider"]["p_value"] == lp["provider"]["p_value"]
    assert '"logprobs"' in (tmp_path / "c" / CACHE_FILE).read_text()

    with BackgroundServer(logprob_suspect_app(tokenizer, wm, None)) as srv:
        clean = _scan(srv.url + "/v1", tokenizer).logprob
    assert clean["provider"]["p_value"] > 1e-3 and clean["attributed_account"] is None
    assert all(a["p_corrected"] > 1e-3 for a in clean["accounts"])


def test_top_logprobs_out_of_range_is_one_line(tokenizer):
    with pytest.raises(InputError, match="top_logprobs"):
        _scan("http://127.0.0.1:9/v1", tokenizer, top_logprobs=21)


def test_cli_scan_top_logprobs(capsys, tokenizer, tmp_path, shared_cache_env):
    """``antidistill scan --suspect-url … --top-logprobs K`` prints the mass statistic beside the sampled-token one
    and puts it in ``--json``; the option is refused outside closed mode in one line."""
    from antidistill.keys import MasterKey
    from antidistill.settings import get_settings
    from tests.forensics.test_cli_scan import assert_one_line_error
    from tests.forensics.test_cli_scan import run as run_cli

    run_cli(capsys, "keys", "init")
    master = MasterKey.load(get_settings(), create=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    wm = Watermark(WatermarkConfig(scheme="gumbel-dual"))
    app = logprob_suspect_app(tokenizer, wm, MarkKeys(master.account_key("acct_x"), master.provider_key()), tilt=0.5)
    argv = ["scan", "--prompts", str(prompts), "--account", "acct_x", "--account", "acct_y", "--samples", "2"]
    argv += ["--max-tokens", "40", "--scheme", "gumbel-dual", "--top-logprobs", "6"]
    with BackgroundServer(app) as srv:
        code, out, err = run_cli(capsys, *argv, "--suspect-url", srv.url + "/v1")
        assert code == 0, err
        assert "top-logprob mass" in out and "acct_x: corrected p" in out, out
        code, out, err = run_cli(capsys, *argv, "--suspect-url", srv.url + "/v1", "--from-cache", "--json")
    assert code == 0, err
    lp = json.loads(out)["logprob"]
    assert lp["attributed_account"] == "acct_x" and lp["provider"]["p_value"] < 1e-6
    code, _, err = run_cli(capsys, "scan", "--suspect-model", "teacher", "--top-logprobs", "4")
    assert_one_line_error(code, err, "--top-logprobs apply to closed mode")


def test_early_stopping_makes_the_mass_statistic_not_evidence(tokenizer):
    """The run stops when the sampled tokens' sequential p under our keys crosses a threshold: a key-dependent
    stopping time, so the mass statistic's fixed-n p-values are reported as not valid, with no attribution."""
    wm = Watermark(WatermarkConfig(scheme="gumbel-dual"))
    bob = MarkKeys(TEST_MASTER.account_key("bob"), TEST_MASTER.provider_key())
    with BackgroundServer(logprob_suspect_app(tokenizer, wm, bob, tilt=1.0)) as srv:
        r = _scan(srv.url + "/v1", tokenizer, run=RunOptions(stop_at=1e-3))
    assert r.sequential is not None and r.logprob is not None and not r.logprob["valid"]
    assert r.logprob["attributed_account"] is None and "NOT valid" in r.verdict


def test_members_seeded_by_part_of_the_context_are_refused(tokenizer):
    with pytest.raises(InputError, match="seeded by the whole context"):
        scan_closed(
            "http://127.0.0.1:9/v1",
            PROMPTS,
            tokenizer,
            _keys(),
            WatermarkConfig(scheme="hf-lefthash", context_width=2, provider_fraction=0.0),
            top_logprobs=4,
        )
