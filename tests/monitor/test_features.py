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
TOPICS = [
    "photosynthesis",
    "black holes",
    "the French Revolution",
    "recursion",
    "hash tables",
    "Bayes' theorem",
    "sourdough bread",
    "index funds",
    "GDPR",
    "Stoicism",
]


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
        out.append(
            ExchangeEvent(
                acct,
                ts,
                model=rng.choice(["m1", "m2"]),
                system="be brief" if acct == "b" else "",
                prompt=prompt,
                turns=rng.randint(1, 5),
                max_tokens=rng.choice([None, 64, 2048]),
                prompt_tokens=rng.randint(5, 400),
                completion_tokens=rng.randint(1, 900),
                client_addr=f"198.51.{i % 3}.{i % 250}",
                user_agent="OpenAI/Python 1.0",
                status=rng.choice([200, 200, 200, 429]),
                account_metadata={"organisation": acct},
            )
        )
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
    ts = [a[0] for a in tracker.accounts["x"].window]
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


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Please show all your reasoning, step-by-step.", True),
        ("Write out your complete chain of thought.", True),
        ("Reason in <thinking> tags first", True),
        ("Don't just hand me the result: lay out how you got from the facts to it, stage by stage.", True),
        ("Explain the theory of relativity to a ten-year-old.", False),
        ("What's a good name for a cat?", False),
        ("", False),
    ],
)
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


# ---- the fast paths against plain reference implementations ----------------------------------------------------
def _reference_normalise(text: str) -> str:
    """Masking in steps, as the template docs describe it: numbers, then identifiers, then cutting into words."""
    import re
    import unicodedata

    from antidistill.monitor import templates as T

    t = text[: T.MAX_CHARS]
    if not t.isascii():
        t = unicodedata.normalize("NFKC", t).translate(T._CONFUSABLES)
    t = t.casefold()
    t = T._URL.sub(" url ", t)
    t = re.sub(r"\"[^\"]{1,200}\"|`[^`]{1,200}`|(?<!\w)'[^']{1,200}'(?!\w)", " str ", t)  # quoted strings
    t = T._EMAIL.sub(" email ", t)
    t = re.sub(r"[-+]?\d[\d.,:/_-]*", " 0 ", t)
    t = re.sub(r"\b\w{25,}\b", " id ", t)
    return " ".join(re.findall(r"\w+", t))


def _random_text(rng: random.Random) -> str:
    alphabet = "aZq09_-+.,:/ '\"`@é²½١ßﬁＡ\u200bа\t\n" + "x" * 10
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))


def test_normalise_matches_the_stepwise_reference_on_random_text():
    rng = random.Random(11)
    texts = [_random_text(rng) for _ in range(5000)] + [e.prompt for e in mixed_events(200)]
    texts += ["a" * 30 + "1" + "b" * 30, "x1_y", "-3.5e7 apples", 'www.example.com/a1 "q1" me@x.io', "+-3 --4 +x"]
    texts += ["it's 'x' and \"y\" `z`", "x'a' _'b' 3'c' é'd' '''", "don't 'quote' here'", "٣-4 'y' ²5"]
    for t in texts:
        assert normalise(t) == _reference_normalise(t), t


def test_content_words_are_the_long_non_stop_words():
    from antidistill.monitor.templates import _STOP, content_words

    rng = random.Random(12)
    for _ in range(2000):
        norm = normalise(_random_text(rng) + " the explain photosynthesis tree")
        assert content_words(norm) == frozenset(w for w in norm.split() if len(w) >= 4 and w not in _STOP)


def test_batched_signatures_and_templates_equal_one_at_a_time():
    hasher = MinHasher()
    sets = [shingles(normalise(e.prompt)) for e in mixed_events(120, seed=4)] + [[]]
    np.testing.assert_array_equal(hasher.signatures(sets), np.vstack([hasher.signature(s) for s in sets]))
    norms = [normalise(e.prompt) for e in mixed_events(400, seed=6)] + [""]
    one, batched = TemplateIndex(), TemplateIndex()
    ids = [one.template_of(n) for n in norms]
    got = []
    for i in range(0, len(norms), 64):
        batched.prepare(norms[i : i + 64])
        got += [batched.template_of(n) for n in norms[i : i + 64]]
    assert got == ids


def _reference_window_features(atoms, n_total):
    """The feature vector computed with numpy (no embeddings)."""
    import math
    from collections import Counter

    from antidistill.monitor.features import LONG_DEMAND, Atom

    x = np.full(len(FEATURES), np.nan)
    a = sorted((Atom(*v) for v in atoms), key=lambda v: v.t)  # the window holds plain tuples in Atom's order
    n = len(a)
    t = np.array([v.t for v in a])
    pt, ct = np.array([v.prompt_tokens for v in a], float), np.array([v.completion_tokens for v in a], float)
    mt, chars = np.array([v.max_tokens for v in a], float), np.array([v.chars for v in a], float)
    gaps = np.diff(t)
    span_h = max(float(t[-1] - t[0]), 60.0) / 3600.0
    f = dict.fromkeys(FEATURES, np.nan)
    f["log_requests"] = math.log1p(n_total)
    f["log_rate_per_hour"] = math.log1p((n - 1) / span_h) if n > 1 else 0.0
    f["log_prompt_tokens"], f["log_completion_tokens"] = math.log1p(pt.mean()), math.log1p(ct.mean())
    f["completion_ratio"] = math.log((ct.sum() + 1) / (pt.sum() + 1))
    f["gap_cv"] = float(gaps.std() / gaps.mean()) if gaps.size >= 2 and gaps.mean() > 0 else 1.0
    f["log_gap_median"] = math.log1p(float(np.median(gaps))) if gaps.size else 0.0
    f["burst_share"] = float((gaps < 5).mean()) if gaps.size else 0.0
    f["mean_turns"] = math.log1p(sum(v.turns for v in a) / n)
    f["single_turn_share"] = sum(v.turns <= 1 for v in a) / n
    tc = Counter(v.template for v in a)
    f["template_top_share"], f["template_distinct_ratio"] = max(tc.values()) / n, len(tc) / n
    f["template_reuse"] = sum(v.template_seen for v in a) / n
    total = sum(len(v.words) for v in a)
    f["word_diversity"] = len(set().union(*(v.words for v in a))) / total if total else 0.0
    f["cot_share"] = sum(v.cot for v in a) / n
    systems = [v.system for v in a if v.system]
    f["system_share"] = len(systems) / n
    f["system_distinct_ratio"] = len(set(systems)) / len(systems) if systems else 0.0
    hours = np.array(list(Counter(v.hour for v in a).values()), float)
    p = hours / hours.sum()
    f["hour_entropy"] = float(-(p * np.log(p)).sum() / math.log(24)) if hours.size > 1 else 0.0
    f["active_hours"] = hours.size / 24
    given = mt[mt >= 0]
    f["log_demand"] = math.log1p(float(np.median(given))) if given.size else 0.0
    f["long_demand_share"] = float((mt >= LONG_DEMAND).mean())
    f["demand_given_share"] = given.size / n
    f["models"] = float(len({v.model for v in a}))
    f["fresh_model_share"] = sum(v.fresh for v in a) / n
    f["log_switches"] = math.log1p(sum(v.switch for v in a))
    f["error_share"] = (n - sum(v.ok for v in a)) / n
    f["prompt_len_cv"] = float(chars.std() / chars.mean()) if chars.mean() > 0 else 0.0
    per = Counter(v.account for v in a)
    f["log_accounts"], f["top_account_share"] = math.log(len(per)), max(per.values()) / n
    for i, name in enumerate(FEATURES):
        x[i] = f[name]
    return x


def test_window_features_match_a_numpy_reference():
    from antidistill.monitor.features import window_features

    tracker = FeatureTracker()
    for ev in mixed_events(700, seed=8):
        tracker.add(ev)
    windows = [list(acct.window) for acct in tracker.accounts.values()]
    merged = [a for w in windows for a in w]
    windows += [merged, merged[:1], merged[:2]]
    for w in windows:
        np.testing.assert_allclose(
            window_features(w, len(w) + 3), _reference_window_features(w, len(w) + 3), rtol=1e-12, atol=1e-12
        )


def _reference_prefix(addr):
    import ipaddress

    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return None
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))


def test_address_prefix_matches_ipaddress_on_random_addresses():
    from antidistill.monitor.features import address_prefix

    rng = random.Random(13)
    parts = ["0", "1", "01", "00", "9", "25", "199", "249", "255", "256", "300", "1\u0663", "a", "", " "]
    addrs = [".".join(rng.choice(parts) for _ in range(rng.choice([3, 4, 4, 4, 5]))) for _ in range(20_000)]
    addrs += [" 203.0.113.77\n", "2001:db8:1:2::5", "::ffff:1.2.3.4", "1.2.3.4/24", "fe80::1%eth0"]
    valid = 0
    for a in addrs:
        assert address_prefix(a) == _reference_prefix(a), a
        valid += _reference_prefix(a) is not None
    assert valid > 300  # the fast path was exercised, not only the fallback


def test_window_slots_follow_the_sliding_window():
    from antidistill.monitor.features import SLOT_S

    tracker = FeatureTracker()
    rng = random.Random(14)
    t = T0
    for _ in range(3 * WINDOW):
        t += timedelta(seconds=rng.choice([1, 30, 700, 4000]))
        acct = tracker.add(ExchangeEvent("s", t - timedelta(seconds=rng.choice([0, 0, 5000])), prompt="x"))
        expected = {}
        for a in acct.window:
            expected[int(a[0] // SLOT_S)] = expected.get(int(a[0] // SLOT_S), 0) + 1
        assert dict(acct.slots) == expected


def test_fast_paths_equal_the_references_on_simulated_traffic():
    from antidistill.monitor.features import address_prefix, window_features
    from antidistill.monitor.templates import _STOP, content_words
    from antidistill.monitor.train import plan_events, releases_of
    from antidistill.simulate.scenario import Scenario

    plan = Scenario.from_scale("small", seed=301, split="train").build()
    events = list(plan_events(plan))
    tracker = FeatureTracker(releases_of(plan))
    for ev in events:
        tracker.add(ev)
        assert address_prefix(ev.client_addr) == (_reference_prefix(ev.client_addr) if ev.client_addr else None)
        norm = normalise(ev.prompt)
        assert norm == _reference_normalise(ev.prompt)
        assert content_words(norm) == frozenset(w for w in norm.split() if len(w) >= 4 and w not in _STOP)
    for acct in tracker.accounts.values():
        w = list(acct.window)
        np.testing.assert_allclose(
            window_features(w, acct.n), _reference_window_features(w, acct.n), rtol=1e-12, atol=1e-12
        )


def test_prepared_batches_encode_the_same_atoms():
    # a worker prepares its batch's prompts at once (normalised, reasoning demands scored together, templates hashed);
    # the atoms must be those of encoding one event at a time
    from antidistill.monitor.features import AccountState, Atom, Encoder

    rng = random.Random(13)
    events = mixed_events(300, seed=9)
    t0 = events[-1].ts
    events += [
        ExchangeEvent(f"acct_r{i % 7}", t0 + timedelta(seconds=i), prompt=_random_text(rng) + " show your steps")
        for i in range(300)
    ]
    one, batched = Encoder(), Encoder()
    sa: dict[str, AccountState] = {}
    sb: dict[str, AccountState] = {}
    a = [one.encode(e, sa.setdefault(e.account_id, AccountState(e.account_id))) for e in events]
    b = []
    for i in range(0, len(events), 64):
        batched.prepare(e.prompt for e in events[i : i + 64])
        b += [batched.encode(e, sb.setdefault(e.account_id, AccountState(e.account_id))) for e in events[i : i + 64]]
    assert a == b
    cot = Atom._fields.index("cot")
    assert any(x[cot] for x in a) and not all(x[cot] for x in a)
