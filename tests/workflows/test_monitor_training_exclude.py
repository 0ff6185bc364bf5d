"""``monitor train --exclude-kind``: the left-out kind is absent from every simulation training and
calibration see, and the manifest says so."""

from __future__ import annotations

import json

import pytest

from antidistill.errors import InputError
from antidistill.settings import Settings, get_settings
from antidistill.workflows import monitor_training
from antidistill.workflows.monitor_training import training_scenario


def test_training_scenario_leaves_the_kind_out_and_keeps_the_rest():
    kept = training_scenario("small", 11, 0.3, {"stealthy_harvester": 2}, frozenset())
    assert kept.counts["bulk_harvester"] == 1 and kept.counts["stealthy_harvester"] == 3
    out = training_scenario("small", 11, 0.3, {"bulk_harvester": 2}, frozenset({"bulk_harvester", "hydra"}))
    assert "bulk_harvester" not in out.counts and "hydra" not in out.counts
    personas = {a.persona for a in out.build().accounts}
    assert "bulk_harvester" not in personas and "hydra" not in personas and "stealthy_harvester" in personas


def test_train_never_sees_the_excluded_kind(tmp_path, monkeypatch):
    seen: list[set[str]] = []
    real_collect, real_benign = monitor_training.collect_rows, monitor_training.benign_max_risks

    def collect(plan, *a, **kw):
        seen.append({acc.persona for acc in plan.accounts})
        return real_collect(plan, *a, **kw)

    def benign(plan, *a, **kw):
        seen.append({acc.persona for acc in plan.accounts})
        return real_benign(plan, *a, **kw)

    monkeypatch.setattr(monitor_training, "collect_rows", collect)
    monkeypatch.setattr(monitor_training, "benign_max_risks", benign)
    s = Settings(env="test", data_dir=tmp_path)
    manifest = monitor_training.train(
        s, seeds=(11, 12), calibration_seeds=(21,), scale="small", days=0.3, exclude_kinds=("cot_extractor",)
    )
    assert len(seen) == 3 and all("cot_extractor" not in p and "bulk_harvester" in p for p in seen)
    assert manifest["excluded_kinds"] == ["cot_extractor"]
    assert "cot_extractor" not in manifest["train_extra_personas"]
    assert all("cot_extractor" not in c for c in manifest["calibration_max_risk_by_persona"])
    with pytest.raises(InputError, match="wizard"):
        monitor_training.train(s, seeds=(11,), calibration_seeds=(21,), scale="small", exclude_kinds=("wizard",))


def test_cli_exclude_kind_reaches_the_manifest(tmp_path, monkeypatch, capsys):
    from antidistill.cli import main

    monkeypatch.setenv("ANTIDISTILL_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        main(
            [
                "monitor", "train", "--seeds", "11", "--calibration-seeds", "21", "--scale", "small", "--days", "0.3",
                "--exclude-kind", "hydra", "--exclude-kind", "release_pivot", "--json",
            ]
        )  # fmt: skip
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["excluded_kinds"] == ["hydra", "release_pivot"]
    saved = json.loads((tmp_path / "monitor" / "manifest.json").read_text())
    assert saved["excluded_kinds"] == ["hydra", "release_pivot"]


def test_perturbed_training_perturbs_every_second_seed_and_never_calibration(tmp_path, monkeypatch):
    seen: list[tuple[str, bool, int]] = []
    real_collect, real_benign = monitor_training.collect_rows, monitor_training.benign_max_risks

    def collect(plan, *a, **kw):
        seen.append(("fit", plan.scenario.perturb, plan.scenario.seed))
        return real_collect(plan, *a, **kw)

    def benign(plan, *a, **kw):
        seen.append(("calibrate", plan.scenario.perturb, plan.scenario.seed))
        return real_benign(plan, *a, **kw)

    monkeypatch.setattr(monitor_training, "collect_rows", collect)
    monkeypatch.setattr(monitor_training, "benign_max_risks", benign)
    s = Settings(env="test", data_dir=tmp_path)
    manifest = monitor_training.train(
        s, seeds=(11, 12, 13), calibration_seeds=(21,), scale="small", days=0.3, perturbed=True
    )
    assert seen == [("fit", False, 11), ("fit", True, 12), ("fit", False, 13), ("calibrate", False, 21)]
    assert manifest["perturbed"] is True
    assert [x["perturbed"] for x in manifest["simulations"] if x["purpose"] == "fit"] == [False, True, False]


def test_perturbed_paraphrases_keep_to_their_split():
    import random

    from antidistill.simulate.prompts import COT_DEMANDS, PARAPHRASED_DEMANDS, paraphrase_demands, split_pool

    stock = COT_DEMANDS[0]
    for split in ("train", "heldout"):
        got = {paraphrase_demands(f"Q. {stock}", random.Random(i), split) for i in range(200)}
        allowed = {f"Q. {p}" for p in split_pool(PARAPHRASED_DEMANDS, split)}
        assert got <= allowed and len(got) > 1
