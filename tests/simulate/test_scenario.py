"""Plans without a gateway: determinism, the train/held-out separation, virtual limits, every persona's traffic."""

from __future__ import annotations

import random
from dataclasses import asdict, fields

import pytest

from antidistill.simulate import prompts as P
from antidistill.simulate.personas import ATTACKERS, BENIGN, PERSONAS, PlannedRequest
from antidistill.simulate.scenario import SCALES, Scenario, enforce_limits
from antidistill.simulate.world import TIERS, Draw, VirtualLimits, World

from .conftest import limit_violations, tiny


def test_same_seed_same_plan_and_other_seed_other_plan():
    a, b = tiny(seed=11).build(), tiny(seed=11).build()
    assert a.requests == b.requests
    assert a.accounts == b.accounts
    c = tiny(seed=12).build()
    assert [r.messages for r in c.requests] != [r.messages for r in a.requests]
    # the order of ``counts`` does not matter either
    reordered = tiny(seed=11, counts=dict(reversed(list(tiny().counts.items())))).build()
    assert reordered.requests == a.requests


def test_every_persona_sends_in_the_tiny_scenario_and_the_small_scale():
    for plan, kinds in ((tiny().build(), set(PERSONAS)), (Scenario.from_scale("small", seed=3).build(), None)):
        counts = plan.counts()
        assert set(counts) == (kinds or set(SCALES["small"].counts))
        assert all(c["requests"] > 0 for c in counts.values()), counts
        assert {a.role for a in plan.accounts} == {"benign", "attacker"}


def test_plan_is_time_ordered_within_the_scenario_and_turns_follow_each_other():
    plan = tiny().build()
    times = [r.t for r in plan.requests]
    assert times == sorted(times)
    start, end = plan.scenario.start, plan.scenario.start + plan.scenario.days * 86400
    assert all(start <= t < end for t in times)
    turns: dict[str, list[PlannedRequest]] = {}
    for r in plan.requests:
        if r.conversation:
            turns.setdefault(r.conversation, []).append(r)
    assert turns, "casual users hold multi-turn conversations"
    for conv in turns.values():
        assert [r.turn for r in conv] == list(range(len(conv)))
        assert all(len(r.messages) >= 2 * r.turn + 1 for r in conv)


def test_draw_keeps_the_splits_on_disjoint_bands():
    train_bands, held_bands = set(), set()
    for seed in range(80):
        tr, ho = Draw(random.Random(seed), "train"), Draw(random.Random(seed), "heldout")
        train_bands.add(int(tr.uniform(0, 8)))
        held_bands.add(int(ho.uniform(0, 8)))
        assert int(tr.uniform(10, 90)) // 10 - 1 in Draw.TRAIN_BANDS
        assert int(ho.uniform(10, 90)) // 10 - 1 not in Draw.TRAIN_BANDS
    assert train_bands == {0, 3, 4, 7} and held_bands == {1, 2, 5, 6}  # same mean band: no volume shift
    train_ints = {Draw(random.Random(s), "train").log_integer(20, 500) for s in range(300)}
    held_ints = {Draw(random.Random(s), "heldout").log_integer(20, 500) for s in range(300)}
    assert not train_ints & held_ints
    assert min(train_ints | held_ints) >= 20 and max(train_ints | held_ints) <= 500
    small_train = {Draw(random.Random(s), "train").integer(1, 3) for s in range(100)}
    small_held = {Draw(random.Random(s), "heldout").integer(1, 3) for s in range(100)}
    assert small_train and small_held and not small_train & small_held


@pytest.mark.parametrize("name", list(PERSONAS))
def test_train_and_heldout_persona_parameters_never_coincide(name):
    cls = PERSONAS[name]
    values: dict[str, dict[str, set]] = {"train": {}, "heldout": {}}
    for split in values:
        for seed in range(12):
            world = World(seed, split, Scenario().start, 7)
            params = asdict(cls.draw(Draw(random.Random(f"t:{seed}"), split), world))
            for k, v in params.items():
                if isinstance(v, float) and k != "tz_hours":  # time zones are categorical (not split)
                    values[split].setdefault(k, set()).add(v)
    numeric = values["train"].keys()
    assert numeric, f"{name} draws numeric parameters"
    for k in numeric:
        assert not values["train"][k] & values["heldout"][k], k


def test_template_pools_are_split():
    for pool in (P.HARVEST_TEMPLATES, P.COT_DEMANDS, P.SWEEP_TEMPLATES, P.RAG_TEMPLATES):
        tr, ho = P.split_pool(pool, "train"), P.split_pool(pool, "heldout")
        assert tr and ho and not set(tr) & set(ho) and set(tr) | set(ho) == set(pool)
    train = {r.messages[-1]["content"] for r in tiny(seed=1).build().requests if r.purpose == "harvest"}
    held = {r.messages[-1]["content"] for r in tiny(seed=1, split="heldout").build().requests if r.purpose == "harvest"}
    assert train and held and not train & held
    with pytest.raises(ValueError, match="split"):
        P.split_pool(["a"], "test")


def test_labels_carry_ground_truth_without_leaking_into_names_or_metadata():
    plan = tiny().build()
    assert {a.persona for a in plan.accounts} == set(PERSONAS)
    for a in plan.accounts:
        assert a.role == ("benign" if a.persona in BENIGN else "attacker")
        assert a.persona not in a.name and a.role not in str(a.metadata)
        assert {"payment_fingerprint", "signup_source", "signup_at"} <= set(a.metadata)
        assert a.limits == TIERS[a.tier]
    hydra = [a for a in plan.accounts if a.persona == "hydra"]
    assert len(hydra) == 20 and len({a.campaign for a in hydra}) == 1
    team = [a for a in plan.accounts if a.persona == "research_team"]
    assert len(team) >= 3 and len({a.metadata["organisation"] for a in team}) == 1
    assert set(ATTACKERS) == {a.persona for a in plan.accounts if a.role == "attacker"}


def test_hydra_members_stay_under_every_virtual_limit_even_when_pushed():
    # a hydra that wants far more than its tier allows: the plan holds each member back
    sc = tiny(
        seed=3,
        days=2.0,
        counts={"hydra": 1},
        hydra_daily_budget=None,
        overrides={"hydra": {"per_member_per_day": 4000.0, "max_tokens": 3000, "sync": 1.0}},
    )
    plan = sc.build()
    members = {a.key: a for a in plan.accounts}
    assert len(members) == 20
    by_member: dict[str, list[PlannedRequest]] = {}
    for r in plan.requests:
        by_member.setdefault(r.account, []).append(r)
    assert len(by_member) == 20
    for key, reqs in by_member.items():
        limits = members[key].limits
        assert not limit_violations([r.t for r in reqs], [r.cost() for r in reqs], limits), key
        # pushed hard, a free member reaches its daily token limit: the limit binds, it is not just unreached
        used = sum(r.cost() for r in reqs) / sc.days
        if members[key].tier == "free":
            assert used > 0.5 * limits.tokens_per_day
    # and in an ordinary scenario (drawn parameters) as well
    plan = tiny().build()
    tiers = {a.key: a.limits for a in plan.accounts}
    for key in tiers:
        reqs = [r for r in plan.requests if r.account == key]
        assert not limit_violations([r.t for r in reqs], [r.cost() for r in reqs], tiers[key])


def test_enforce_limits_moves_requests_later_keeping_order_and_conversation_gaps():
    def req(t, conv=None, turn=0):
        return PlannedRequest(
            t,
            "a",
            "chat",
            "m",
            ({"role": "user", "content": "hi"},),
            None,
            10,
            None,
            False,
            "ua",
            "1.2.3.4",
            "x",
            conv,
            turn,
        )

    reqs = [req(1000.0 + i * 0.1) for i in range(10)] + [req(1001.5, "c", 0), req(1031.5, "c", 1)]
    out = enforce_limits(reqs, VirtualLimits(rpm=5), end=10_000)
    assert len(out) == len(reqs)
    assert not limit_violations([r.t for r in out], [r.cost() for r in out], VirtualLimits(rpm=5))
    assert [r.t for r in out] == sorted(r.t for r in out)
    c0, c1 = (r for r in out if r.conversation == "c")
    assert c1.t - c0.t >= 30.0 - 1e-6
    # nothing lands after the end; a request that can never pass is dropped
    assert all(r.t < 1100 for r in enforce_limits(reqs, VirtualLimits(rpm=5), end=1100))
    assert enforce_limits([req(0.0)], VirtualLimits(tpm=5), end=100) == []


def test_new_model_release_pivot_and_benign_adoption():
    plan = Scenario.from_scale("small", seed=2).build()
    (release,) = [r for r in plan.releases if r["model"] == "atlas-2"]
    at = release["released_at"]
    assert plan.scenario.start < at < plan.scenario.start + plan.scenario.days * 86400
    persona = {a.key: a.persona for a in plan.accounts}
    assert all(r.model != "atlas-2" for r in plan.requests if r.t < at)
    pivot_new = [r for r in plan.requests if persona[r.account] == "release_pivot" and r.model == "atlas-2"]
    assert pivot_new and min(r.t for r in pivot_new) - at < 86400
    pivot_after = [
        r for r in plan.requests if persona[r.account] == "release_pivot" and r.t > min(x.t for x in pivot_new)
    ]
    assert all(r.model == "atlas-2" for r in pivot_after)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"days": 0}, "days"),
        ({"days": float("nan")}, "days"),
        ({"split": "test"}, "split"),
        ({"counts": {"wizard": 1}}, "unknown persona"),
        ({"counts": {"casual": -1}}, "counts"),
        ({"hydra_members": (30, 20)}, "hydra_members"),
        ({"volume": 0}, "volume"),
        ({"seed": "x"}, "seed"),
        ({"overrides": {"nobody": {}}}, "overrides"),
        ({"persona_volume": {"casual": 0}}, "persona_volume"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        Scenario(**kw)


def test_unknown_override_and_scale_are_refused():
    with pytest.raises(ValueError, match="unknown parameter"):
        tiny(overrides={"hydra": {"wings": 3}}).build()
    with pytest.raises(ValueError, match="scale"):
        Scenario.from_scale("huge")


def test_default_scale_is_a_week_with_hundreds_of_benign_accounts():
    spec = SCALES["default"]
    assert spec.days == 7 and spec.hydra_members == (20, 500)
    # every kind of the simulator's own (a described pattern is a persona file's)
    assert spec.counts["casual"] >= 300 and all(spec.counts[n] >= 1 for n in PERSONAS if n != "described")
    assert {f.name for f in fields(PlannedRequest)} >= {
        "t",
        "account",
        "model",
        "max_tokens",
        "temperature",
        "stream",
        "user_agent",
        "client_addr",
    }
