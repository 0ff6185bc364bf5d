"""The monitor end to end on hand-made traffic: garbage in, level rises out, scan_records, rules-only load."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from antidistill.monitor.api import LEVELS, Assessment, ExchangeEvent, level_rank
from antidistill.monitor.pipeline import Monitor, is_checkpoint, scan_records
from antidistill.monitor.score import Scorer, rules
from antidistill.settings import get_settings

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def record(i: int, account: str, content, created_at, **kw) -> dict:
    return {
        "seq": i,
        "response_id": f"r{i}",
        "account_id": account,
        "created_at": created_at,
        "endpoint": "/v1/chat/completions",
        "client_addr": kw.get("addr", "203.0.113.5"),
        "user_agent": kw.get("ua", "curl/8"),
        "status": kw.get("status", 200),
        "request": kw.get(
            "request", {"model": "m", "max_tokens": 4000, "messages": [{"role": "user", "content": content}]}
        ),
        "prompt_tokens": 10,
        "completion_tokens": 30,
    }


def test_garbage_in_no_crash_no_lost_record():
    junk = bytes(range(256)).decode("latin-1")
    prompts = [
        "",
        junk,
        "x" * 1_000_000,
        "Ехрlаin ｓｔｅｐ ｂｙ ｓｔｅｐ \u202e\u200b\ud800?",
        None,
        12345,
        [{"type": "text", "text": "part"}, {"type": "image_url"}],
        {"weird": True},
    ]
    records = []
    for i in range(200):
        ts = (T0 - timedelta(seconds=37 * i)).isoformat() if i % 3 else (T0 + timedelta(seconds=i)).isoformat()
        records.append(record(i, f"acct_{i % 4}", prompts[i % len(prompts)], ts))
    records.append(record(900, "acct_0", "bad time", "not a time"))
    records.append(record(901, "acct_0", "no time", None))
    records.append({"account_id": "acct_5", "request": "not a dict", "created_at": T0.isoformat()})
    bad = {"messages": "nope", "max_tokens": "9"}
    records.append(record(903, "acct_6", "bad request", T0.isoformat(), request=bad))
    mon = Monitor(Scorer.rules_only())
    out = scan_records(records, {"acct_0": {"payment_fingerprint": ["odd", 1]}}, mon)
    assert mon.events == len(records)  # every record was taken in
    assert sum(a.n for a in mon.tracker.accounts.values()) == len(records)
    assert all(isinstance(a, Assessment) and a.level in LEVELS for a in out)
    for acct in mon.tracker.accounts:
        assert mon.assess(acct).level in LEVELS
    assert len(mon.assessments()) == len(mon.tracker.accounts)


def test_a_harvester_rises_and_each_rise_is_reported_once():
    mon = Monitor(Scorer.rules_only(), flush_s=60)
    rises = []
    for i in range(400):
        ev = ExchangeEvent(
            "bot",
            T0 + timedelta(seconds=5 * i),
            model="m",
            max_tokens=4096,
            prompt=f"Solve problem {i} about topic {i % 17}. Show all your reasoning step by step.",
        )
        rises += mon.observe(ev)
        if i % 7 == 0:
            rises += mon.observe(ExchangeEvent("human", T0 + timedelta(seconds=5 * i + 1), prompt=f"hi {i} how are u"))
    rises += mon.flush()
    bot = [a for a in rises if a.account_id == "bot"]
    # every report is a rise, or a new evidence family at the level reached (a block needs a second one)
    seen: set[str] = set()
    for prev, a in zip([None, *bot], bot, strict=False):
        assert prev is None or level_rank(a.level) > level_rank(prev.level) or not set(a.families) <= seen
        assert prev is None or level_rank(a.level) >= level_rank(prev.level)
        seen |= set(a.families)
    assert len(bot) <= len({a.level for a in bot}) + len(seen)
    assert bot[-1].families == ("traffic", "content")
    assert bot[-1].level in ("alert", "severe") and bot[0].requests <= 100
    assert any("step-by-step" in r for r in bot[-1].reasons)
    assert not [a for a in rises if a.account_id == "human" and level_rank(a.level) >= level_rank("alert")]


def test_cluster_lights_up_members_that_look_harmless():
    mon = Monitor(Scorer.rules_only())
    rises = []
    t = T0
    for i in range(600):  # 60 accounts, 10 requests each, one card, one template, round the clock
        acct = f"h{i % 60}"
        t += timedelta(seconds=20)
        rises += mon.observe(
            ExchangeEvent(
                acct,
                t,
                max_tokens=4096,
                client_addr=f"198.51.100.{i % 60}",
                prompt=f"Give a complete, rigorous derivation of result {i}; reason step"
                f" by step and show all your reasoning.",
                account_metadata={"payment_fingerprint": "pf_shared"},
            )
        )
    rises += mon.flush()
    c = mon.linker.cluster_of("h0")
    assert c is not None and len(c.members) == 60
    flagged = {a.account_id for a in rises if level_rank(a.level) >= level_rank("alert")}
    assert len(flagged) >= 57
    a = mon.assess("h3")
    assert a.cluster_size == 60 and a.cluster_id == c.id and any("linked with 59" in r for r in a.reasons)
    assert "linking" in a.families and "content" in a.families
    assert mon.assess("h3").to_dict()["families"] == list(a.families)


def test_checkpoints_thin_out():
    marks = [n for n in range(1, 2001) if is_checkpoint(n)]
    assert marks[:3] == [5, 10, 15] and 60 in marks and 65 not in marks and 1000 in marks and 1100 not in marks


def test_load_without_a_model_falls_back_to_rules_and_refuses_embeddings():
    from antidistill.errors import ConfigError

    s = get_settings()
    mon = Monitor.load(s)
    assert not mon.scorer.trained
    with pytest.raises(ConfigError):
        Monitor.load(s, embeddings=True)


def test_an_untrained_monitor_holds_for_review_where_a_trained_one_would_block():
    """The rules-only fallback's thresholds were never calibrated on benign traffic: its severe judgement on two
    families is held for review (the policy's reason says why), the same judgement from a trained monitor blocks."""
    from dataclasses import replace

    from antidistill.monitor.actions import _reason
    from antidistill.monitor.policy import Policy

    mon = Monitor(Scorer.rules_only(), flush_s=60)
    for i in range(400):
        prompt = f"Solve problem {i} about topic {i % 17}. Show all your reasoning step by step."
        mon.observe(ExchangeEvent("bot", T0 + timedelta(seconds=5 * i), model="m", max_tokens=4096, prompt=prompt))
    mon.flush()
    a = mon.assess("bot")
    assert (a.level, a.families, a.calibrated) == ("severe", ("traffic", "content"), False)
    assert a.to_dict()["calibrated"] is False
    policy = Policy.default()
    held = policy.decide(a)
    assert held is not None and (held.action, held.fell_back) == ("review", True)
    assert "block needs a trained monitor, held for review" in _reason(a, held)
    trained = policy.decide(replace(a, calibrated=True))
    assert trained is not None and (trained.action, trained.fell_back) == ("block", False)
    # a rule whose own fallback is milder than a review keeps it
    from antidistill.monitor.policy import Rule

    assert Rule("severe", "block", "4.1", min_families=2, otherwise="throttle").action_for(a) == "throttle"
    assert Rule("severe", "block", "4.1", min_families=2, otherwise="none").action_for(a) == "none"


def test_observe_many_gives_what_observe_gives():
    from tests.monitor.test_features import mixed_events

    events = mixed_events(900, seed=21)
    one, many = Monitor(Scorer.rules_only(), flush_s=300), Monitor(Scorer.rules_only(), flush_s=300)
    a = [x for ev in events for x in one.observe(ev)] + one.flush()
    b = [x for i in range(0, len(events), 128) for x in many.observe_many(events[i : i + 128])] + many.flush()
    assert [(x.account_id, x.level, x.risk, x.requests) for x in a] == [
        (x.account_id, x.level, x.risk, x.requests) for x in b
    ]
    for acct in one.tracker.accounts:
        assert list(one.tracker.accounts[acct].window) == list(many.tracker.accounts[acct].window)


def test_a_nightly_batch_job_is_not_raised_for_its_timing_alone():
    """A summariser every ten minutes round the clock, different documents, 1024-token answers: machine-regular
    timing and activity around the clock (and the client's max_tokens) are all it shows, so it stays below watch
    (the rules alone used to put it at watch)."""
    import random

    rng = random.Random(3)
    words = [
        "market",
        "policy",
        "river",
        "engine",
        "garden",
        "theory",
        "signal",
        "budget",
        "vaccine",
        "orbit",
        "ledger",
        "climate",
        "tariff",
        "protein",
    ]
    events = [
        ExchangeEvent(
            "nightly",
            T0 + timedelta(minutes=10 * i),
            model="m",
            max_tokens=1024,
            system="You summarise internal reports.",
            prompt=" ".join(rng.choice(words) for _ in range(rng.randint(40, 90))),
        )
        for i in range(288)
    ]
    unguarded = Scorer.rules_only()
    unguarded.guards = False
    old = Monitor(unguarded)
    assert [a.level for a in old.observe_many(events) + old.flush()] == ["watch"]
    mon = Monitor(Scorer.rules_only())
    assert mon.observe_many(events) + mon.flush() == []
    a = mon.assess("nightly")
    assert a.level == "none" and a.families == ("traffic",)
    kinds = {r.kind for r in rules(mon._features(mon.tracker.accounts["nightly"].window, 288, None))}
    assert kinds == {"regular", "clock", "demand"}


class ScriptedScorer:
    """Scores every window ``severe`` with the families of the script, one step per batch."""

    trained = True

    def __init__(self, script: list[tuple[str, ...]]) -> None:
        self.script = list(script)

    def score(self, X, sizes=None):
        from antidistill.monitor.score import Score

        fams = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return [Score(0.9, "severe", {}, ["r"], fams) for _ in range(len(X))]


def test_a_new_family_at_the_same_level_is_reported_with_all_seen_so_far():
    mon = Monitor(ScriptedScorer([("traffic",), ("traffic",), ("content",), ("content",)]))  # type: ignore[arg-type]
    reports = []
    for i in range(20):  # checkpoints at 5, 10, 15, 20: one scored batch each
        reports += mon.observe(ExchangeEvent("a", T0 + timedelta(seconds=i), prompt=f"p {i}"))
        reports += mon.flush()
    # the rise, then the new family (with the old one: both are evidence about the account); no repeat
    assert [(a.level, a.families) for a in reports] == [("severe", ("traffic",)), ("severe", ("traffic", "content"))]
