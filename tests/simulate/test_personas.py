"""Contract tests over every persona (deterministic, valid plans on both splits), the newer kinds' defining
traits, and the perturbed scenario."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from dataclasses import asdict

import pytest

from antidistill.monitor.features import COT_PHRASES, demands_reasoning
from antidistill.monitor.intent import phrase_demands
from antidistill.monitor.templates import normalise
from antidistill.simulate import prompts as P
from antidistill.simulate.personas import PERSONAS
from antidistill.simulate.scenario import PERTURB_MAX_TOKENS, Scenario

from .conftest import NEWER


def one(kind: str, seed: int, split: str, days: float = 7.0, **kw) -> Scenario:
    return Scenario(seed=seed, days=days, counts={kind: 1}, split=split, **kw)


def text_of(r) -> str:
    if r.messages is None:
        return r.prompt or ""
    return "\n".join(str(m.get("content") or "") for m in r.messages)


@pytest.mark.parametrize("kind", list(PERSONAS))
@pytest.mark.parametrize(("split", "seed"), [("train", 101), ("heldout", 1028)])
def test_every_persona_draws_a_valid_plan_deterministically_from_its_seed(kind, split, seed):
    a, b = one(kind, seed, split, days=2.0).build(), one(kind, seed, split, days=2.0).build()
    assert a.requests == b.requests and a.accounts == b.accounts
    assert a.accounts and all(acct.persona == kind for acct in a.accounts)
    assert {acct.role for acct in a.accounts} == {PERSONAS[kind].role}
    keys = {acct.key for acct in a.accounts}
    start, end = a.scenario.start, a.scenario.start + a.scenario.days * 86400
    for r in a.requests:
        assert r.account in keys and start <= r.t < end
        assert (r.messages is None) != (r.prompt is None)
        assert r.max_tokens is None or r.max_tokens > 0
    other = one(kind, seed + 1, split, days=2.0).build()
    assert [asdict(x)["params"] for x in other.accounts] != [asdict(x)["params"] for x in a.accounts]


@pytest.mark.parametrize("kind", NEWER)
def test_newer_kinds_send_in_a_week_on_both_splits(kind):
    for split, seed in (("train", 5), ("heldout", 1029)):
        assert one(kind, seed, split).build().requests, (kind, split)


def test_the_paraphrased_demands_hold_no_stock_phrase():
    pool = (*P.PARAPHRASED_DEMANDS, *P.REASONING_SYSTEM_PROMPTS, *P.REFINE_TURNS)
    for text in pool:
        norm = normalise(text)
        assert not phrase_demands(norm), text  # the old phrase list's blind spot: the meaning-based test reads them
        assert not any(p in norm for p in COT_PHRASES), text
    # ... and the monitor recognises most of the paraphrased demands by meaning (measured: 8 of 10)
    assert sum(demands_reasoning(normalise(t)) for t in P.PARAPHRASED_DEMANDS) >= 0.7 * len(P.PARAPHRASED_DEMANDS)
    for pool in (P.PARAPHRASED_DEMANDS, P.REASONING_SYSTEM_PROMPTS, P.REFINE_TURNS, P.FARM_FOLLOWUPS):
        tr, ho = P.split_pool(pool, "train"), P.split_pool(pool, "heldout")
        assert tr and ho and not set(tr) & set(ho)


def test_reasoning_harvester_asks_for_reasoning_without_a_stock_phrase_under_a_system_prompt():
    plan = one("reasoning_harvester", 1030, "heldout").build()
    harvest = [r for r in plan.requests if r.purpose == "cot-harvest"]
    cover = [r for r in plan.requests if r.purpose == "cover"]
    assert harvest and cover
    assert all(r.messages[0]["role"] == "system" for r in harvest)
    assert not any(phrase_demands(normalise(text_of(r))) for r in harvest)  # no stock phrase
    assert sum(demands_reasoning(normalise(text_of(r))) for r in harvest) >= 0.5 * len(harvest)  # read by meaning
    assert all(r.max_tokens >= 1024 for r in harvest)


def test_agent_loop_is_one_account_of_five_to_eight_turn_conversations_near_800_a_week():
    totals = []
    for seed in range(3):
        plan = one("agent_loop", seed, "train").build()
        assert len(plan.accounts) == 1
        convs = Counter(r.conversation for r in plan.requests)
        assert None not in convs and all(5 <= n <= 8 for n in convs.values())
        totals.append(len(plan.requests))
    assert 350 <= statistics.median(totals) <= 1400, totals


def test_conversation_farm_is_about_forty_residential_accounts_with_weak_links():
    plan = one("conversation_farm", 1031, "heldout").build()
    accts = plan.accounts
    assert 30 <= len(accts) <= 50 and len({a.campaign for a in accts}) == 1
    cards = [a.metadata["payment_fingerprint"] for a in accts if a.metadata["payment_fingerprint"]]
    assert len(cards) == len(set(cards))  # no shared card
    by_acct: dict[str, set[str]] = {}
    for r in plan.requests:
        by_acct.setdefault(r.account, set()).add(".".join(r.client_addr.split(".")[:3]))
    prefixes = [p for ps in by_acct.values() for p in ps]
    assert len(set(prefixes)) > 0.6 * len(prefixes)  # members on their own home networks, hardly any shared /24
    assert max(r.turn for r in plan.requests) >= 2


def test_lab_cot_eval_runs_two_bursts_of_stock_reasoning_demands_at_1024_tokens():
    plan = one("lab_cot_eval", 7, "train").build()
    assert {r.max_tokens for r in plan.requests} == {1024}
    assert all(demands_reasoning(normalise(text_of(r))) for r in plan.requests)
    times = sorted(r.t for r in plan.requests)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(g > 6 * 3600 for g in gaps) == 1  # two bursts: one long pause between them


def test_nightly_summariser_starts_at_the_same_second_and_keeps_exact_gaps():
    plan = one("nightly_summariser", 3, "heldout").build()
    p = plan.accounts[0].params
    times = sorted(r.t for r in plan.requests)
    nights = sorted({round(t - (t - times[0]) % 86400, 3) for t in times})
    assert len(nights) >= 4
    starts = [min(t for t in times if t >= n) for n in nights]
    assert len({round(s % 86400, 2) for s in starts}) == 1  # cron: the same time of day every night
    run = [t for t in times if starts[0] <= t < starts[0] + 6 * 3600]
    assert max(abs((b - a) - p["gap_s"]) for a, b in itertools.pairwise(run)) < 0.01


def test_perturbation_changes_only_the_attackers_knobs():
    base = Scenario.from_scale("default", seed=1032, days=1.0, split="heldout")
    plain = base.build()
    pert = Scenario.from_scale("default", seed=1032, days=1.0, split="heldout", perturb=True).build()
    role = {a.key: a.role for a in plain.accounts}
    assert [a.key for a in pert.accounts] == [a.key for a in plain.accounts]
    benign = [r for r in plain.requests if role[r.account] == "benign"]
    assert benign == [r for r in pert.requests if role[r.account] == "benign"]
    att = [r for r in pert.requests if role[r.account] == "attacker"]
    lo, hi = PERTURB_MAX_TOKENS
    assert att and all(lo <= r.max_tokens <= hi for r in att)
    stock = [r for r in plain.requests if role[r.account] == "attacker" and any(d in text_of(r) for d in P.COT_DEMANDS)]
    assert stock, "the plain plan holds stock demands to paraphrase"
    assert not any(d in text_of(r) for r in att for d in P.COT_DEMANDS)
    # timing: the same accounts, their requests moved
    plain_t = {r.account: sorted(x.t for x in plain.requests if x.account == r.account) for r in att[:50]}
    pert_t = {k: sorted(x.t for x in att if x.account == k) for k in plain_t}
    assert any(plain_t[k] != pert_t[k] for k in plain_t)
    assert pert.scenario.to_dict()["perturb"] is True
