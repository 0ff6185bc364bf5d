"""The informed distiller's attacks: the green-pair estimator on synthetic marked and unmarked text, the filter, the
loss mask, the reverse bias, the paraphrase path and the ``distill attack`` command's errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binom

from antidistill.errors import InputError
from antidistill.redteam.attacks import (
    GreenEstimate,
    GreenPair,
    ReverseBias,
    ReverseBiasedLM,
    estimate_green,
    estimate_green_shift,
    filter_pairs,
    loss_mask,
    paraphrase_pairs,
)
from antidistill.redteam.data import Pair, load_pairs, save_pairs
from antidistill.redteam.train import IGNORE, encode_pair, train_student
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark

from ..synthetic import TEST_MASTER, sample, uniform_tokens
from .conftest import run_cli, tiny_llama, tiny_pairs

V = 40


def _green(wm: Watermark, key: int, prefix: tuple[int, ...], token: int) -> bool:
    mask = wm.green_mask(np.array([prefix]), np.array([key], dtype=np.uint64), None, V)
    return bool(mask[0, token])


def test_estimator_recovers_planted_green_pairs():
    wm = Watermark(WatermarkConfig(scheme="antidistill-v1", gamma=0.25, delta=3.0, provider_fraction=0.0))
    account = TEST_MASTER.account_key("distiller")
    rng = np.random.default_rng(1)
    harvest = sample(rng, wm, account, None, length=200, vocab_size=V, batch=100)
    reference = sample(rng, wm, None, None, length=200, vocab_size=V, batch=100)
    est = estimate_green(list(harvest), list(reference), (1,), alpha=1e-3, min_count=3)
    assert est.tested["1"] > 400
    flagged = {(p.prefix, p.token) for p in est.pairs}
    truly = [_green(wm, account.value, pre, tok) for pre, tok in flagged]
    # precision: the flagged pairs are green (a few false flags at alpha 1e-3 of the tested pairs)
    assert sum(truly) >= 0.95 * len(truly)
    # recall: most of the green pairs of the vocabulary (10 per prefix) are found from 20k tokens
    n_green = sum(_green(wm, account.value, (a,), b) for a in range(V) for b in range(V))
    assert sum(truly) >= 0.6 * n_green
    # the bias estimate of green pairs is positive and near delta's order of magnitude
    assert np.median([p.bias for p in est.pairs]) > 1.0


def test_estimator_flags_unmarked_text_at_most_at_its_error_rate():
    rng = np.random.default_rng(2)
    alpha = 0.01
    for _ in range(3):
        a = list(uniform_tokens(rng, 400, 12, batch=60))
        b = list(uniform_tokens(rng, 400, 12, batch=60))
        est = estimate_green(a, b, (1, 2), alpha=alpha, min_count=3)
        tested = sum(est.tested.values())
        assert tested > 1000
        # the test is exact (conservative) on independent tokens: flags ~ at most Binomial(tested, alpha)
        assert len(est.pairs) <= binom.ppf(0.999, tested, alpha)


def test_estimator_bad_arguments():
    with pytest.raises(InputError, match="alpha"):
        estimate_green([[1, 2]], [[1, 2]], alpha=0.0)
    with pytest.raises(InputError, match="context widths"):
        estimate_green([[1, 2]], [[1, 2]], (0,))
    with pytest.raises(InputError, match="min_count"):
        estimate_green([[1, 2]], [[1, 2]], min_count=0)


def _estimate(pairs: list[tuple[tuple[int, ...], int]], widths=(1,)) -> GreenEstimate:
    return GreenEstimate(
        tuple(widths),
        0.01,
        3,
        [GreenPair(p, t, 1.0, 1e-4, 10, 1) for p, t in pairs],
        {str(h): 100 for h in widths},
        1000,
        1000,
    )


def test_positions_share_and_round_trip(tmp_path):
    est = _estimate([((5,), 6), ((1, 2), 3)], widths=(1, 2))
    ids = [5, 6, 1, 2, 3, 6, 5, 7]
    assert est.positions(ids).tolist() == [False, True, False, False, True, False, False, False]
    assert est.positions(ids, start=1).tolist()[1] is False  # its prefix lies before the start
    assert est.share(ids) == pytest.approx(2 / 7)
    back = GreenEstimate.load(est.save(tmp_path / "g.json"))
    assert back.to_dict() == est.to_dict()
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="not a green-pair estimate"):
        GreenEstimate.load(tmp_path / "bad.json")


def test_filter_drops_answers_rich_in_green_pairs(tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    est = _estimate([((vocab["are"],), vocab["red"]), ((vocab["are"],), vocab["happy"])])
    pairs = [
        Pair("q1", "the cats are red and the cats are happy", "stop"),  # 2 green of 8 scored
        Pair("q2", "the cats are blue and the rivers are blue", "stop"),  # none
    ]
    res = filter_pairs(pairs, tiny_tokenizer, est, max_share=0.1)
    assert [p.prompt for p in res.kept] == ["q2"] and [p.prompt for p in res.dropped] == ["q1"]
    assert res.shares == pytest.approx([2 / 8, 0.0])
    assert len(filter_pairs(pairs, tiny_tokenizer, est, max_share=0.25).kept) == 2


def test_loss_mask_takes_the_loss_off_green_tokens_only(tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    est = _estimate([((vocab["are"],), vocab["red"])])
    pair = Pair("tell me about red cats", "the cats are red and the cats are happy", "stop")
    plain = encode_pair(tiny_tokenizer, pair, 64)
    masked = encode_pair(tiny_tokenizer, pair, 64, loss_mask(est))
    assert plain is not None and masked is not None and plain.input_ids == masked.input_ids
    diff = [i for i, (a, b) in enumerate(zip(plain.labels, masked.labels, strict=True)) if a != b]
    assert len(diff) == 1 and masked.labels[diff[0]] == IGNORE and plain.labels[diff[0]] == vocab["red"]
    assert masked.labels[-1] == tiny_tokenizer.eos_token_id  # the end of the answer keeps its loss


def test_train_student_reports_masked_tokens(tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    est = _estimate([((vocab["are"],), vocab[c]) for c in ("red", "blue", "happy")])
    pairs = tiny_pairs(16, seed=3)
    res = train_student(
        pairs,
        "full",
        model=tiny_llama(len(tiny_tokenizer)),
        tokenizer=tiny_tokenizer,
        epochs=1,
        max_len=64,
        loss_mask=loss_mask(est),
    )
    expected = sum(
        int(est.positions(tiny_tokenizer(p.response, add_special_tokens=False)["input_ids"]).sum()) for p in pairs
    )
    assert expected > 0 and res.params["loss_masked_tokens"] == expected


def test_reverse_bias_processor_and_wrapped_model():
    import torch

    est = _estimate([((5,), 2), ((7, 5), 3)], widths=(1, 2))
    scores = ReverseBias(est, 2.5)(torch.tensor([[7, 5], [1, 4]]), torch.zeros(2, 6))
    assert scores[0].tolist() == [0.0, 0.0, -2.5, -2.5, 0.0, 0.0] and scores[1].abs().sum() == 0

    class Zeros:
        def __call__(self, input_ids, attention_mask=None, **kw):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 6))

    out = ReverseBiasedLM(Zeros(), est, 1.0)(torch.tensor([[7, 5, 5, 1]]), torch.ones(1, 4))
    assert out.logits[0, 1].tolist() == [0, 0, -1, -1, 0, 0]  # after "7 5": both widths
    assert out.logits[0, 2].tolist() == [0, 0, -1, 0, 0, 0]  # after "5 5": h = 1 only
    assert out.logits[0, 0].abs().sum() == 0 and out.logits[0, 3].abs().sum() == 0
    with pytest.raises(InputError, match="delta"):
        ReverseBias(est, -1.0)


class Bigram:
    """A model whose next-token logits depend on the last token only: ``table[last token]`` (plus ``noise``, drawn
    afresh at every position and call)."""

    def __init__(self, table, noise: float = 0.0, seed: int = 0):
        import torch

        self.table, self.noise = table, noise
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids, attention_mask=None, **kw):
        import torch

        logits = self.table[input_ids].clone()
        if self.noise:
            logits += self.noise * torch.randn(logits.shape, generator=self.gen)
        return SimpleNamespace(logits=logits)


def _word_pairs(tokenizer, n: int, length: int, seed: int) -> list[Pair]:
    rng = np.random.default_rng(seed)
    words = sorted(w for w in tokenizer.get_vocab() if not w.startswith("<") and not w.isdigit())[:30]
    return [Pair(f"q{i}", " ".join(rng.choice(words, length)), "length") for i in range(n)]


def test_shift_estimate_finds_what_the_student_moved_toward(tiny_tokenizer):
    import torch

    vocab = len(tiny_tokenizer)
    gen = torch.Generator().manual_seed(1)
    before = torch.randn(vocab, vocab, generator=gen)
    green = torch.rand(vocab, vocab, generator=gen) < 0.25  # green[prev, token]: the list the student learnt
    after = Bigram(before + 1.0 * green, noise=0.3, seed=2)
    pairs = _word_pairs(tiny_tokenizer, 60, 40, seed=3)
    est = estimate_green_shift(Bigram(before), after, tiny_tokenizer, pairs, (1, 2), min_count=5, max_prefixes=64)
    assert est.tested["1"] > 0 and est.reference_tokens == 0 and "before and after" in est.reference
    truth = [bool(green[p.prefix[-1], p.token]) for p in est.pairs]
    assert len(truth) > 100 and np.mean(truth) >= 0.95  # what it flags is what the student learnt
    h1 = {(p.prefix[0], p.token) for p in est.pairs if len(p.prefix) == 1}
    prefixes = {p for p, _ in h1}
    # recall over the candidates (tokens of mean probability >= min_prob) after the prefixes it read
    cand = [
        (a, t)
        for a in prefixes
        for t in range(vocab)
        if green[a, t] and torch.softmax(before[a] + green[a], 0)[t] >= 1e-3
    ]
    assert np.mean([c in h1 for c in cand]) >= 0.8
    assert all(p.bias >= 0.2 and p.p_value <= 1e-3 for p in est.pairs)
    # a student that moved nothing beyond noise: at most about alpha of the tested pairs flagged
    null = estimate_green_shift(Bigram(before), Bigram(before, noise=0.3, seed=5), tiny_tokenizer, pairs, (1,),
                                min_count=5, min_shift=0.0, alpha=0.01, max_prefixes=64)  # fmt: skip
    assert len(null.pairs) <= max(3, 3 * 0.01 * null.tested["1"])
    with pytest.raises(InputError, match="min_count"):
        estimate_green_shift(Bigram(before), after, tiny_tokenizer, pairs, min_count=1)
    with pytest.raises(InputError, match="widths"):
        estimate_green_shift(Bigram(before), after, tiny_tokenizer, pairs, (0,))


class FakeLM:
    """Echoes the last line of each request upper-cased (a stand-in for the unmarked model)."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, marks, max_new_tokens=128, temperature=0.7, seed=None):
        self.calls.append((list(prompts), list(marks)))
        return [SimpleNamespace(text=" " + p.splitlines()[-1].upper() + " ", finish_reason="stop") for p in prompts]


def test_paraphrase_keeps_prompts_order_and_records_the_original():
    pairs = [Pair(f"p{i}", "x" * (5 - i) + f" answer {i}", "length", record={"model": "m"}) for i in range(5)]
    lm = FakeLM()
    out = paraphrase_pairs(lm, pairs, batch_size=2, template="Rewrite:\n{text}")
    assert [p.prompt for p in out] == [p.prompt for p in pairs]
    assert [p.response for p in out] == [p.response.upper() for p in pairs]
    assert all(p.finish_reason == "stop" and p.record["attack"] == "paraphrase" for p in out)
    assert [p.record["original_response"] for p in out] == [p.response for p in pairs]
    assert out[0].record["model"] == "m"
    assert len(lm.calls) == 3 and all(m is None for _, marks in lm.calls for m in marks)  # never marked
    with pytest.raises(InputError, match="text"):
        paraphrase_pairs(lm, pairs, template="no placeholder")


@pytest.mark.slow
def test_paraphrase_with_the_real_unmarked_model():
    from antidistill.models.local import LocalModel

    lm = LocalModel.load()
    pairs = [
        Pair("What is the capital of France?", "The capital of France is Paris.", "stop"),
        Pair("Name a colour.", "Blue is a colour, like the sky on a clear day.", "stop"),
    ]
    out = paraphrase_pairs(lm, pairs, max_new_tokens=24, seed=0)
    assert [p.prompt for p in out] == [p.prompt for p in pairs]
    # a 135M model may copy a short answer verbatim: only that each rewrite exists and records its original
    assert all(p.response.strip() for p in out)
    assert [p.record["original_response"] for p in out] == [p.response for p in pairs]
    assert all(p.finish_reason in ("stop", "length") for p in out)


def _tiny_model_dir(tiny_tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_llama(len(tiny_tokenizer)).save_pretrained(str(base))
    tiny_tokenizer.save_pretrained(str(base))
    return base


def test_cli_estimate_then_filter_and_train_with_mask(tiny_tokenizer, tmp_path, capsys):
    base = _tiny_model_dir(tiny_tokenizer, tmp_path)
    harvest = [Pair(f"q{i}", "the cats are red and the cats are red", "stop") for i in range(20)]
    harvest += [Pair(f"r{i}", "the ships are blue", "stop") for i in range(5)]
    ref = [
        Pair(f"q{i}", f"the cats are {c} and the cats are happy", "stop") for i, c in enumerate(["blue", "white"] * 10)
    ]
    save_pairs(harvest, tmp_path / "h.jsonl")
    save_pairs(ref, tmp_path / "ref.jsonl")
    common = ("--data", str(tmp_path / "h.jsonl"), "--model", str(base))
    code, stdout, err = run_cli(
        capsys, "distill", "attack", "--method", "estimate", *common,
        "--reference", str(tmp_path / "ref.jsonl"), "--out", str(tmp_path / "g.json"), "--alpha", "0.01", "--json",
    )  # fmt: skip
    assert code == 0, err
    est = GreenEstimate.load(tmp_path / "g.json")
    vocab = tiny_tokenizer.get_vocab()
    assert ((vocab["are"],), vocab["red"]) in {(p.prefix, p.token) for p in est.pairs}
    assert json.loads(stdout)["flagged"] == len(est.pairs)
    code, stdout, err = run_cli(
        capsys, "distill", "attack", "--method", "filter", *common, "--greens", str(tmp_path / "g.json"),
        "--max-share", "0.1", "--out", str(tmp_path / "f.jsonl"), "--json",
    )  # fmt: skip
    assert code == 0, err
    kept = load_pairs(tmp_path / "f.jsonl")
    assert {p.response for p in kept} == {"the ships are blue"} and json.loads(stdout)["dropped"] == 20
    code, stdout, err = run_cli(
        capsys, "distill", "train", "--data", str(tmp_path / "h.jsonl"), "--out", str(tmp_path / "s"),
        "--model", str(base), "--method", "full", "--max-len", "64", "--mask-green", str(tmp_path / "g.json"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["params"]["loss_masked_tokens"] >= 40


def test_cli_shift_reads_what_a_student_moved_toward(tiny_tokenizer, tmp_path, capsys):
    base = _tiny_model_dir(tiny_tokenizer, tmp_path)
    harvest = [Pair(f"q{i}", "the cats are red and the dogs are red", "stop") for i in range(24)]
    save_pairs(harvest, tmp_path / "h.jsonl")
    code, _, err = run_cli(
        capsys, "distill", "train", "--data", str(tmp_path / "h.jsonl"), "--out", str(tmp_path / "s"),
        "--model", str(base), "--method", "full", "--max-len", "64", "--epochs", "3", "--lr", "1e-2",
    )  # fmt: skip
    assert code == 0, err
    code, stdout, err = run_cli(
        capsys, "distill", "attack", "--method", "shift", "--data", str(tmp_path / "h.jsonl"), "--model", str(base),
        "--after", str(tmp_path / "s"), "--out", str(tmp_path / "shift.json"), "--context-widths", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    est = GreenEstimate.load(tmp_path / "shift.json")
    vocab = tiny_tokenizer.get_vocab()
    assert ((vocab["are"],), vocab["red"]) in {(p.prefix, p.token) for p in est.pairs}
    assert json.loads(stdout)["flagged"] == len(est.pairs) and est.reference_tokens == 0
    # the estimate drives the filter like any other
    code, _, err = run_cli(
        capsys, "distill", "attack", "--method", "filter", "--data", str(tmp_path / "h.jsonl"), "--model", str(base),
        "--greens", str(tmp_path / "shift.json"), "--max-share", "1", "--out", str(tmp_path / "f.jsonl"),
    )  # fmt: skip
    assert code == 0, err


def test_cli_sample_serves_a_student_with_and_without_the_reverse_bias(tiny_tokenizer, tmp_path, capsys):
    from collections import Counter

    base = _tiny_model_dir(tiny_tokenizer, tmp_path)
    (tmp_path / "prompts.txt").write_text("tell me about red cats\n\ntell me about blue dogs\n", encoding="utf-8")
    common = ("distill", "sample", "--model", str(base), "--prompts", str(tmp_path / "prompts.txt"))
    common += ("--max-tokens", "16", "--temperature", "0")
    code, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "plain.jsonl"))
    assert code == 0, err
    plain = load_pairs(tmp_path / "plain.jsonl")
    # the word the student writes most after its first token, estimated green after every token
    word, seen = Counter(w for p in plain for w in p.response.split()[1:]).most_common(1)[0]
    tid = tiny_tokenizer.get_vocab()[word]
    pairs = [GreenPair((t,), tid, 1.0, 0.0, 9, 1) for t in range(len(tiny_tokenizer))]
    GreenEstimate((1,), 0.01, 1, pairs, {"1": len(pairs)}, 10, 10).save(tmp_path / "g.json")
    code, stdout, err = run_cli(
        capsys, *common, "--out", str(tmp_path / "rb.jsonl"), "--greens", str(tmp_path / "g.json"),
        "--reverse-delta", "100", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["reverse_bias"] is True and json.loads(stdout)["prompts"] == 2
    rb = load_pairs(tmp_path / "rb.jsonl")
    assert [p.prompt for p in rb] == ["tell me about red cats", "tell me about blue dogs"] == [p.prompt for p in plain]
    assert all(p.record["attack"] == "reverse-bias" and p.record["reverse_delta"] == 100 for p in rb)
    assert seen > 0 and all(word not in p.response.split()[1:] for p in rb)  # decoded away from it
    code, _, err = run_cli(capsys, *common[:4], "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"))
    assert code == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1


def test_cli_errors_are_one_line(tiny_tokenizer, tmp_path, capsys):
    base = _tiny_model_dir(tiny_tokenizer, tmp_path)
    capsys.readouterr()  # saving the model may draw a progress bar
    save_pairs(tiny_pairs(4), tmp_path / "h.jsonl")
    cases = [
        (("--method", "magic", "--data", str(tmp_path / "h.jsonl")), "--method must be one of"),
        (("--method", "estimate", "--data", str(tmp_path / "missing.jsonl"), "--reference", str(tmp_path / "h.jsonl")),
         "cannot read"),
        (("--method", "estimate", "--data", str(tmp_path / "h.jsonl")), "exactly one of --reference"),
        (("--method", "filter", "--data", str(tmp_path / "h.jsonl"), "--greens", str(tmp_path / "h.jsonl")),
         "not valid JSON"),
        (("--method", "estimate", "--data", str(tmp_path / "h.jsonl"), "--reference", str(tmp_path / "h.jsonl"),
          "--context-widths", "one"), "--context-widths"),
        (("--method", "shift", "--data", str(tmp_path / "h.jsonl")), "needs --after"),
        (("--method", "estimate", "--data", str(tmp_path / "h.jsonl"), "--after", str(base)), "--after needs"),
        (("--method", "shift", "--data", str(tmp_path / "h.jsonl"), "--after", str(base), "--reference-from-model"),
         "no --reference"),
        (("--method", "shift", "--data", str(tmp_path / "h.jsonl"), "--after", str(tmp_path / "nowhere")), "nowhere"),
    ]  # fmt: skip
    for args, msg in cases:
        code, _, err = run_cli(capsys, "distill", "attack", *args, "--out", str(tmp_path / "o"), "--model", str(base))
        assert code == 2, (args, err)
        assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
