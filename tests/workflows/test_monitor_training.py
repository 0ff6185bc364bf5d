"""A small end to end: train on small training-split simulations, evaluate on a held-out one driven through the
real gateway; attackers are caught and benign accounts are not."""

from __future__ import annotations

import json

import pytest

from antidistill.monitor.pipeline import MANIFEST_FILE, MODEL_FILE, Monitor, monitor_dir
from antidistill.settings import get_settings
from antidistill.workflows.monitor_eval import check_heldout, evaluate_run
from antidistill.workflows.monitor_training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from antidistill.settings import Settings

    s = Settings(env="test", data_dir=tmp_path_factory.mktemp("data"))
    manifest = train(s, seeds=(11, 12, 13), calibration_seeds=(21, 22), scale="small")
    return s, manifest


def test_training_writes_artefacts_and_a_manifest(trained):
    s, _ = trained
    d = monitor_dir(s)
    assert (d / MODEL_FILE).is_file()
    saved = json.loads((d / MANIFEST_FILE).read_text())
    assert saved["train_seeds"] == [11, 12, 13] and saved["calibration_seeds"] == [21, 22]
    assert saved["calibration_max_risk_by_persona"]
    assert saved["split"] == "train" and 0 < saved["thresholds"]["watch"] <= saved["thresholds"]["alert"]
    mon = Monitor.load(s)
    assert mon.scorer.trained and mon.scorer.thresholds == saved["thresholds"]


def test_the_supervised_model_keeps_the_known_directions(trained):
    import numpy as np

    from antidistill.monitor.features import INDEX
    from antidistill.monitor.train import MONOTONE

    s, manifest = trained
    assert manifest["train_extra_personas"]
    scorer = Monitor.load(s).scorer
    rng = np.random.default_rng(0)
    base = np.nan_to_num(scorer.benign_median) + rng.normal(0, 0.3, (40, len(scorer.benign_median)))
    for name, sign in MONOTONE.items():
        X = np.repeat(base, 9, axis=0)
        X[:, INDEX[name]] = np.tile(np.linspace(-1, 6, 9), len(base))
        p = scorer._supervised_proba(scorer._matrix(X)).reshape(len(base), 9)
        assert (np.diff(p, axis=1) * sign >= -1e-12).all(), name


def canonical_distiller(max_tokens: int, seed: int = 7) -> list:
    """The held-out canonical distiller: ~70 templated exercises a day for a week at human-looking times, each
    demanding the full step-by-step reasoning (487 requests)."""
    import random
    from datetime import UTC, datetime, timedelta

    from antidistill.monitor.api import ExchangeEvent

    rng = random.Random(seed)
    t0 = datetime(2026, 5, 4, tzinfo=UTC)
    events = []
    for day in range(7):
        for h in sorted(rng.uniform(8, 22) for _ in range(70 if day < 6 else 67)):
            prompt = (
                f"Exercise {len(events) + 1}: given x = {rng.randint(2, 99)} and y = {rng.randint(2, 99)}, find "
                f"{rng.randint(2, 9)}x^2 - {rng.randint(2, 9)}y. Show your full step-by-step reasoning first."
            )
            events.append(
                ExchangeEvent(
                    "canon",
                    t0 + timedelta(days=day, hours=h),
                    model="m",
                    max_tokens=max_tokens,
                    prompt=prompt,
                    prompt_tokens=60,
                    completion_tokens=700,
                )
            )
    return events


@pytest.mark.parametrize("max_tokens", [1024, 512])
def test_the_canonical_distiller_reaches_alert_whatever_the_model_learnt(trained, max_tokens):
    """The rules call it decisive (one template, every request demanding the reasoning): the trained model may
    have learnt that the simulator's attackers ask for long answers, but the floor holds at max_tokens 512 too."""
    s, _ = trained
    mon = Monitor.load(s)
    mon.observe_many(canonical_distiller(max_tokens))
    mon.flush()
    a = mon.assess("canon")
    assert a.level in ("alert", "severe"), a
    assert a.scores["own_floor"] >= mon.scorer.thresholds["alert"]
    assert "step-by-step reasoning" in a.reasons[0] and a.families == ("content",)


def test_heldout_seeds_are_refused_if_used_in_training(trained):
    from antidistill.errors import InputError

    s, _ = trained
    with pytest.raises(InputError, match="seed 21"):
        check_heldout(21, s)
    check_heldout(77, s)


def test_heldout_traffic_through_the_gateway(trained, tmp_path):
    from antidistill.simulate.scenario import Scenario
    from antidistill.workflows.simulation import run_simulation

    s, _ = trained
    # a hydra whose members pay with a few shared cards: linkable from one request a member, through the
    # metadata the store keeps (the subtler hydras need more traffic than a day; see `simulate eval`)
    scenario = Scenario.from_scale(
        "small", seed=77, split="heldout", overrides={"hydra": {"paid_share": 1.0, "cards_ratio": 0.01}}
    )
    run_simulation(scenario, tmp_path / "sim", processes=0)
    report = evaluate_run(tmp_path / "sim", s)
    att = {n: p for n, p in report["personas"].items() if p["role"] == "attacker"}
    single = [n for n in att if n != "hydra"]
    caught = sum(att[n]["detected"] for n in single)
    total = sum(att[n]["accounts"] for n in single)
    assert caught >= 0.7 * total, report["personas"]
    # a model trained on three one-day toy simulations: a loose bound (the real figures come from `simulate eval`)
    assert report["benign_fpr"]["alert"]["rate"] <= 0.1, report["benign_false_positives"]
    assert report["hydra_cluster_recall"] and report["hydra_cluster_recall"][0]["recall"] >= 0.8
    assert report["records"] > 500 and report["split"] == "heldout"
    # what the policy would do: the benign block rate apart from the alert rate, with its Wilson interval
    blocked = report["actions"]["benign"]["blocked"]
    assert blocked["of"] == report["benign_fpr"]["alert"]["accounts"]
    assert blocked["accounts"] <= report["actions"]["benign"]["held"]["accounts"]
    assert blocked["wilson95"][0] <= blocked["rate"] <= blocked["wilson95"][1]
    assert (
        sum(p["actions"].get("block", 0) for p in report["personas"].values() if p["role"] == "benign")
        == (blocked["accounts"])
    )


def test_cli_train_refuses_overlapping_seeds(tmp_path, monkeypatch, capsys):
    from antidistill.cli import main

    monkeypatch.setenv("ANTIDISTILL_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as exc:
        main(["monitor", "train", "--seeds", "1,2", "--calibration-seeds", "2", "--scale", "small"])
    assert exc.value.code == 2 and "differ" in capsys.readouterr().err


@pytest.mark.parametrize("batch_size", [16, 10**9])
def test_judgements_do_not_depend_on_how_late_the_scores_are_computed(trained, batch_size):
    """A busy worker scores many checkpoints at once; each judgement is still the one formed at its checkpoint,
    so a campaign goes through the levels (and the policy's graduated actions) it would have gone through live."""
    from antidistill.monitor.train import plan_events, releases_of
    from antidistill.simulate import Scenario

    s, _ = trained
    plan = Scenario.from_scale("small", seed=102, split="heldout").build()
    events = list(plan_events(plan))

    def rises(bs: int, flush_s: float) -> list[tuple]:
        m = Monitor.load(s, releases=releases_of(plan), batch_size=bs, flush_s=flush_s)
        out = m.observe_many(events) + m.flush()
        return [(a.account_id, a.level, round(a.risk, 12), a.requests, a.cluster_id, a.families) for a in out]

    live = rises(1, 600.0)
    raised = {r[0] for r in live}
    assert len(raised) >= 10 and any(r[4] for r in live)  # accounts and clusters were raised
    # some account went through a level below severe before reaching it (what the graduated policy acts on)
    assert any([r[1] for r in live if r[0] == a][:2] == ["alert", "severe"] for a in raised)
    assert rises(batch_size, float("inf")) == live
