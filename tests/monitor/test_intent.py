"""The reasoning-demand recogniser: shipped weights are the fit of the shipped data, the old phrases are still
recognised, paraphrases are, hard negatives are not, and the window score equals its definition."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from antidistill.errors import InputError
from antidistill.monitor.features import demands_reasoning
from antidistill.monitor.intent import (
    PHRASES,
    PROBES,
    TRAIN_FILE,
    WEIGHTS_FILE,
    WINDOW_WORDS,
    ReasoningIntent,
    phrase_demands,
    read_examples,
    window_features,
    windows,
)
from antidistill.monitor.templates import normalise

HELDOUT = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "reasoning_intent_heldout.tsv"


def _score_by_definition(r: ReasoningIntent, norm: str) -> float:
    """The best window's bias + w·x, from the feature counts (the training side's featurisation)."""
    words = norm.split()
    return max(
        r.bias + math.fsum(r.weights.get(f, 0.0) * v for f, v in window_features(ws).items())
        for ws in windows(words, r.window_words)
    )


def test_shipped_weights_are_the_fit_of_the_shipped_data():
    pytest.importorskip("sklearn")
    from antidistill.monitor.intent import fit

    doc = json.loads(WEIGHTS_FILE.read_text(encoding="utf-8"))
    fresh = fit(read_examples(TRAIN_FILE))
    assert fresh["examples"] == doc["examples"] and fresh["windows"] == doc["windows"]
    assert fresh["bias"] == pytest.approx(doc["bias"], abs=1e-3)
    assert set(fresh["weights"]) ^ set(doc["weights"]) <= {
        k for k, v in {**fresh["weights"], **doc["weights"]}.items() if abs(v) < 2e-3
    }
    for k, v in doc["weights"].items():
        assert fresh["weights"].get(k, 0.0) == pytest.approx(v, abs=1e-3), k


def test_fit_is_deterministic_and_learns_its_training_set():
    pytest.importorskip("sklearn")
    from antidistill.monitor.intent import fit

    ex = read_examples(TRAIN_FILE)
    a, b = fit(ex), fit(ex)
    assert a == b
    r = ReasoningIntent.from_dict(a)
    right = sum(r.demands(normalise(t)) == bool(y) for y, t in ex)
    assert right / len(ex) >= 0.97


def test_window_score_equals_its_definition():
    r = ReasoningIntent.shipped()
    rng = random.Random(5)
    vocab = [w for _, t in read_examples(TRAIN_FILE) for w in normalise(t).split()]
    for n in (1, 3, WINDOW_WORDS - 1, WINDOW_WORDS, WINDOW_WORDS + 1, 37):
        for _ in range(20):
            norm = " ".join(rng.choice(vocab) for _ in range(n))
            assert r.score(norm) == pytest.approx(_score_by_definition(r, norm), abs=1e-9)
    assert r.score("") == float("-inf") and not r.demands("")


def test_batch_scores_equal_one_at_a_time_bit_for_bit():
    # the monitor scores a worker's batch of prompts at once; the verdicts must not depend on it
    r = ReasoningIntent.from_dict(json.loads(WEIGHTS_FILE.read_text(encoding="utf-8")))  # a fresh word cache
    rng = random.Random(8)
    vocab = [w for _, t in read_examples(TRAIN_FILE) for w in normalise(t).split()] + ["zyzzyva", "qqqx", "0"]
    texts = [
        " ".join(rng.choice(vocab) for _ in range(n))
        for n in (0, 1, 2, WINDOW_WORDS - 1, WINDOW_WORDS, WINDOW_WORDS + 1, 23, 80)
        for _ in range(15)
    ]
    rng.shuffle(texts)
    for size in (1, 7, len(texts)):
        got = [s for i in range(0, len(texts), size) for s in r.scores([t.split() for t in texts[i : i + size]])]
        assert got == [r.score(t) for t in texts]  # exactly: the same sums in the same order
    assert r.scores([]).shape == (0,)


@pytest.mark.parametrize("phrase", PHRASES)
def test_every_old_phrase_in_a_demand_is_still_recognised(phrase):
    for carrier in ("Solve the puzzle below. {p}.", "{p}, then give the answer."):
        text = carrier.format(p=phrase)
        assert phrase_demands(normalise(text))
        assert demands_reasoning(normalise(text)), text


def test_every_old_phrase_holds_a_probe_word():
    assert all(any(w in p for w in PROBES) for p in PHRASES)


PARAPHRASES = (
    "Don't stop at the answer. I need every inference you make on the way, in order.",
    "Narrate how you crack it as you go, then state the result.",
    "Before concluding, write down the whole line of argument that gets you there.",
    "A bag holds 4 red and 6 blue marbles; two are drawn. P(both red)? Show how you get it.",
    "Put each stage of your calculation on its own line and say why it holds.",
    "Answer only after you have reasoned it out in writing, all of it.",
    "I'm checking the logic, not the number: make every move of it visible.",
    "Go through this slowly and describe what you are thinking at each point.",
)


def test_paraphrased_demands_are_recognised():
    # written for this test, not taken from the training set; one miss in eight is tolerated (the held-out
    # benchmark reports the rate with its interval)
    r = ReasoningIntent.shipped()
    missed = [r.explain(normalise(t)) for t in PARAPHRASES if not demands_reasoning(normalise(t))]
    assert len(missed) <= 1, missed


@pytest.mark.parametrize(
    "text",
    [
        "explain the theory of relativity",
        "think of a name for my cat",
        "step up the volume",
        "reason for leaving a job",
        "walk the dog",
        "What's a good reason to visit Norway in winter?",
        "Give me step-by-step instructions to bake sourdough bread.",
        "Classify this ticket as billing, bug or other. Reply with the label only.",
        "A train travels 120 km in 2 hours. How fast is it going?",
    ],
)
def test_hard_negatives_are_not_demands(text):
    norm = normalise(text)
    assert not demands_reasoning(norm), ReasoningIntent.shipped().explain(norm)


def test_long_text_does_not_add_up_to_a_demand():
    # one faintly positive word every third word: no window of three holds a demand, the text as a whole would
    r = ReasoningIntent({"w:step": 1.0}, bias=-2.5, window_words=3)
    spread = " ".join(["step x y"] * 10)
    assert r.score(spread) == pytest.approx(-1.5)
    assert not r.demands(spread)
    assert r.bias + 10 * 1.0 > 0  # what a bag of words over the whole text would say
    assert r.demands("x step step step y")


def test_better_than_the_phrase_list_on_the_heldout_set():
    ex = read_examples(HELDOUT)
    pos = [normalise(t) for y, t in ex if y]
    neg = [normalise(t) for y, t in ex if not y]
    assert len(pos) >= 80 and len(neg) >= 100
    recall = sum(map(demands_reasoning, pos)) / len(pos)
    old_recall = sum(map(phrase_demands, pos)) / len(pos)
    false_pos = sum(map(demands_reasoning, neg)) / len(neg)
    assert recall >= old_recall + 0.5
    assert false_pos <= 0.1


def test_heldout_is_not_training_data():
    train = {normalise(t) for _, t in read_examples(TRAIN_FILE)}
    assert not train & {normalise(t) for _, t in read_examples(HELDOUT)}


def test_bad_files_and_documents_name_the_problem(tmp_path):
    bad = tmp_path / "x.tsv"
    bad.write_text("# c\n1\tok\n2\tnope\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 3"):
        read_examples(bad)
    with pytest.raises(InputError, match="'bias'"):
        ReasoningIntent.from_dict({"char_ngrams": [3, 4], "weights": {}, "window_words": 10})
    with pytest.raises(InputError, match="window_words"):
        ReasoningIntent({}, 0.0, window_words=0)


def test_fit_command_checks_the_shipped_file(capsys):
    pytest.importorskip("sklearn")
    from antidistill.monitor.intent import main

    assert main(["fit", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main([]) == 2
