"""A whole simulation in process: the real gateway over HTTP, the audit log, and the ground truth beside it."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from antidistill.errors import InputError
from antidistill.settings import Settings
from antidistill.simulate import load_labels, load_scenario
from antidistill.simulate.personas import PERSONAS
from antidistill.store.api import is_pending_record
from antidistill.store.sql import Store
from antidistill.workflows.simulation import run_simulation

from .conftest import tiny


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    scenario = tiny()
    plan = scenario.build()
    result = run_simulation(scenario, out, concurrency=8, plan=plan)
    # the run's own master key (in out/gateway) signs the checkpoints: verify against it
    settings = Settings(env="test", data_dir=out / "gateway", cache_dir=out / "cache")
    with Store.open(result.store_url, settings=settings) as store:
        records = [r for r in store.iter_audit() if not is_pending_record(r)]  # one final record an exchange
        accounts = store.list_accounts()
        verified = store.verify_audit()
    return result, plan, records, accounts, verified


def _ts(v) -> float:
    dt = v if isinstance(v, datetime) else datetime.fromisoformat(v)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def test_every_request_was_answered_and_audited(sim):
    result, plan, records, _, verified = sim
    assert result.planned == len(plan.requests) > 100
    assert result.status_counts == {200: result.planned}
    assert len(records) == result.planned
    assert verified.ok and verified.checkpoints >= 1, verified
    assert (result.out_dir / "gateway" / "master.key").exists()
    assert result.requests_per_s > 0 and result.wall_s >= result.drive_s


def test_labels_match_the_accounts_in_the_store(sim):
    result, plan, _, accounts, _ = sim
    labels = load_labels(result.out_dir)
    assert labels == result.labels
    by_id = {a.id: a for a in accounts}
    assert {row["account_id"] for row in labels} == set(by_id)
    for row in labels:
        account = by_id[row["account_id"]]
        assert account.name == row["name"]
        assert account.metadata == {k: v for k, v in row["metadata"].items() if v is not None}
        assert account.rpm is None and account.tpm is None and account.tokens_per_day is None  # virtual limits
        assert row["role"] in ("benign", "attacker") and row["persona"] in PERSONAS
        assert row["limits"] and isinstance(row["params"], dict)
        assert row["persona"] not in json.dumps(account.metadata)
    per_account = plan.requests_per_account()
    assert all(row["requests"] == per_account.get(row["account_key"], 0) == row["ok"] for row in labels)
    sent = Counter()
    for row in labels:
        sent[row["persona"]] += row["ok"]
    assert set(sent) == set(PERSONAS) and all(sent.values()), sent  # every persona produced traffic
    campaigns = Counter(row["campaign"] for row in labels if row["persona"] == "hydra")
    assert list(campaigns.values()) == [20]


def test_audit_records_carry_the_virtual_clock_addresses_and_agents(sim):
    result, plan, records, _, _ = sim
    rows = [json.loads(line) for line in (result.out_dir / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == len(plan.requests)
    by_rid = {r["response_id"]: r for r in records}
    start, end = plan.scenario.start, plan.scenario.start + plan.scenario.days * 86400
    for row in rows:
        rec = by_rid[row["response_id"]]
        req = plan.requests[row["index"]]
        assert abs(_ts(rec["created_at"]) - req.t) < 0.002
        assert start <= req.t < end
        assert rec["client_addr"] == req.client_addr
        assert rec["user_agent"] == req.user_agent
        assert rec["request"]["model"] == req.model
        assert rec["account_id"] == row["account_id"]
        assert rec["endpoint"] == ("/v1/chat/completions" if req.endpoint == "chat" else "/v1/completions")
        if req.max_tokens is not None:
            assert rec["request"]["max_tokens"] == req.max_tokens
        assert bool(rec["request"].get("stream")) == req.stream
    assert {r["request"]["model"] for r in records} >= {"atlas-1", "atlas-2"}


def test_later_turns_carry_the_answers_the_gateway_gave(sim):
    result, plan, records, _, _ = sim
    rows = [json.loads(line) for line in (result.out_dir / "requests.jsonl").read_text().splitlines()]
    by_rid = {r["response_id"]: r for r in records}
    turn = {
        (plan.requests[r["index"]].conversation, plan.requests[r["index"]].turn): by_rid[r["response_id"]]
        for r in rows
        if plan.requests[r["index"]].conversation
    }
    later = [(conv, k) for conv, k in turn if k > 0]
    assert later
    for conv, k in later:
        messages = turn[(conv, k)]["request"]["messages"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert answers == [turn[(conv, j)]["completion"][0] for j in range(k)]


def test_scenario_json_records_releases_tiers_and_the_run(sim):
    result, plan, _, _, _ = sim
    scenario = load_scenario(result.out_dir)
    assert scenario["seed"] == 7 and scenario["split"] == "train" and scenario["days"] == 0.5
    assert [r["model"] for r in scenario["releases"]][-1] == "atlas-2"
    assert set(scenario["tiers"]) >= {"free", "tier1"}
    assert scenario["summary"]["requests"] == len(plan.requests)
    assert scenario["status_counts"] == {"200": len(plan.requests)}
    assert scenario["store_url"] == result.store_url


def test_a_directory_holding_a_simulation_is_not_reused(sim, tmp_path):
    result = sim[0]
    with pytest.raises(InputError, match="already holds a simulation"):
        run_simulation(tiny(), result.out_dir)
    with pytest.raises(InputError, match=r"no labels\.jsonl"):
        load_labels(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        run_simulation(tiny(), tmp_path / "file")


def test_refused_requests_are_recorded_once_not_retried(clock_gateway):
    from antidistill.simulate.driver import create_accounts_in_store, drive, labels

    plan = tiny(seed=2, counts={"casual": 3, "stealthy_harvester": 1}).build()
    ids = create_accounts_in_store(clock_gateway.store, plan.accounts)
    (blocked,) = [a.key for a in plan.accounts if a.persona == "stealthy_harvester"]
    clock_gateway.store.set_enabled(ids[blocked][0], False)
    before = len(clock_gateway.audit())
    result = drive(plan, clock_gateway.url, {k: v[1] for k, v in ids.items()}, concurrency=4)
    n_blocked = sum(r.account == blocked for r in plan.requests)
    assert n_blocked > 0
    assert result.status_counts == {200: len(plan.requests) - n_blocked, 403: n_blocked}
    assert len(clock_gateway.audit()) - before == len(plan.requests) - n_blocked
    rows = {row["account_key"]: row for row in labels(plan, ids, result)}
    assert rows[blocked]["ok"] == 0 and rows[blocked]["sent"] == rows[blocked]["requests"] == n_blocked
