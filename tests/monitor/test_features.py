"""Features: incremental equals batch, templates, reasoning markers, model freshness."""

from __future__ import annotations

import random
import zlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from antidistill.monitor.api import ExchangeEvent
from antidistill.monitor.features import (
    FEATURES,
    INDEX,
    WINDOW,
    FeatureTracker,
    batch_features,
    demands_reasoning,
)
from antidistill.monitor.templates import MinHasher, TemplateIndex, normalise, shingles

T0 = datetime(2026, 2, 2, tzinfo=UTC)
TOPICS = ["photosynthesis", "black holes", "the French Revolution", "recursion", "hash tables", "Bayes' theorem",
          "sourdough bread", "index funds", "GDPR", "Stoicism"]


def mixed_events(n: int, seed: int = 0) -> list[ExchangeEvent]:
    rng = random.Random(seed)
    out = []
    t = T0
    for i in range(n):
        acct = rng.choice(["a", "b", "c", "d"])
        t += timedelta(seconds=rng.expovariate(1 / 30))
        ts = t - timedelta(seconds=rng.choice([0, 0, 0, 500]))  # some clocks go backwards
        if acct == "a":
            prompt = f"Explain {rng.choice(TOPICS)} step by step, showing all of your reasoning."
        else:
            prompt = " ".join(rng.choice([*TOPICS, "why", "how", "is", "good", "today"]) for _ in range(6))
        out.append(ExchangeEvent(acct, ts, model=rng.choice(["m1", "m2"]), system="be brief" if acct == "b" else "",
                                 prompt=prompt, turns=rng.randint(1, 5), max_tokens=rng.choice([None, 64, 2048]),
                                 prompt_tokens=rng.randint(5, 400), completion_tokens=rng.randint(1, 900),
                                 client_addr=f"198.51.{i % 3}.{i % 250}", user_agent="OpenAI/Python 1.0",
                                 status=rng.choice([200, 200, 200, 429]), account_metadata={"organisation": acct}))
    return out


def test_incremental_equals_batch_beyond_the_window():
    events = mixed_events(5 * WINDOW + 57)
    tracker = FeatureTracker()
    for ev in events:
        tracker.add(ev)
    batch = batch_features(events)
    assert set(batch) == set(tracker.accounts)
    for acct, x in batch.items():
        np.testing.assert_array_equal(tracker.features(acct), x)
        assert len(x) == len(FEATURES)
    assert tracker.accounts["a"].n > WINDOW  # the window really slid


def test_template_reuse_and_reasoning_markers_separate_a_harvester():
    events = mixed_events(600, seed=3)
    f = batch_features(events)
    a, c = f["a"], f["c"]
    assert a[INDEX["template_top_share"]] > 0.9 > c[INDEX["template_top_share"]]
    assert a[INDEX["cot_share"]] == 1.0 and c[INDEX["cot_share"]] == 0.0
    assert f["b"][INDEX["system_share"]] == 1.0


def test_backwards_clock_keeps_time_monotone_inside_an_account():
    tracker = FeatureTracker()
    for k, dt in enumerate([0, 100, 50, -1000, 200]):
        tracker.add(ExchangeEvent("x", T0 + timedelta(seconds=dt), prompt=f"q{k}"))
    ts = [a.t for a in tracker.accounts["x"].window]
    assert ts == sorted(ts)
    assert np.isfinite(tracker.features("x")).sum() >= len(FEATURES) - 2


def test_fresh_model_share_uses_release_times():
    release = T0 + timedelta(days=2)
    tracker = FeatureTracker({"new": release.timestamp()})
    for h in range(40):
        tracker.add(ExchangeEvent("p", T0 + timedelta(hours=h), model="old" if h < 48 else "new"))
    for h in range(40):
        tracker.add(ExchangeEvent("p", release + timedelta(hours=1, minutes=h), model="new"))
    x = tracker.features("p")
    assert x[INDEX["fresh_model_share"]] == pytest.approx(0.5)
    assert x[INDEX["log_switches"]] > 0


@pytest.mark.parametrize("text,expected", [
    ("Please show all your reasoning, step-by-step.", True),
    ("Write out your complete chain of thought.", True),
    ("Reason in <thinking> tags first", True),
    ("What's a good name for a cat?", False),
    ("", False),
])
def test_reasoning_markers(text, expected):
    assert demands_reasoning(normalise(text)) is expected


def test_minhash_matches_datasketch():
    from datasketch import MinHash

    sh = shingles(normalise("Explain the theory of relativity to a 10 year old, in 3 sentences"))
    ref = MinHash(num_perm=15, seed=1, hashfunc=zlib.crc32)
    ref.update_batch(sh)
    np.testing.assert_array_equal(MinHasher().signature(sh), ref.hashvalues)


def test_templates_survive_confusables_and_numbers():
    ti = TemplateIndex()
    base = ti.template("Explain photosynthesis in 300 words, step by step, with every intermediate step.")[0]
    spoof = ti.template("Ехрlаin photosynthesis in 42 words, step by step, with every intermediate step.")[0]
    wide = ti.template("Ｅｘｐｌａｉｎ photosynthesis in 7 words, step by step, with every intermediate step.")[0]
    other = ti.template("my cat keeps knocking glasses off the table, what can I do?")[0]
    assert base == spoof == wide != other


def test_cluster_window_counts_its_accounts():
    events = mixed_events(400, seed=3)
    tracker = FeatureTracker()
    for ev in events:
        tracker.add(ev)
    one = tracker.features("a")
    assert one[INDEX["log_accounts"]] == 0.0 and one[INDEX["top_account_share"]] == 1.0
    from antidistill.monitor.features import window_features

    merged = [a for acct in tracker.accounts.values() for a in acct.window]
    x = window_features(merged, len(merged))
    busiest = max(len(acct.window) for acct in tracker.accounts.values())
    assert x[INDEX["log_accounts"]] == pytest.approx(np.log(4))
    assert x[INDEX["top_account_share"]] == pytest.approx(busiest / len(merged))


def test_repeated_prompts_encode_like_fresh_ones():
    # the encoder caches per prompt text; a second encoder without that history must give the same atoms
    events = mixed_events(300, seed=5)
    events += [ExchangeEvent(e.account_id, e.ts + timedelta(hours=1), prompt=e.prompt) for e in events[:100]]
    warm = FeatureTracker()
    for ev in events:
        warm.add(ev)
    cold = FeatureTracker()
    for ev in events:
        cold.encoder._texts.clear()
        cold.add(ev)
    for acct in warm.accounts:
        assert list(warm.accounts[acct].window) == list(cold.accounts[acct].window)
