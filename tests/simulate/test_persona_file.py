"""Persona files: the shipped example parses, bad files are refused with one line naming the field, and a tiny
file runs through ``simulate eval``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from antidistill.errors import InputError
from antidistill.settings import get_settings
from antidistill.simulate.persona_file import load_persona_file, scenario_from_dict

from .test_cli import assert_one_line_error, run

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "personas.yaml"


def test_the_shipped_example_parses_into_a_heldout_scenario():
    sc = load_persona_file(EXAMPLE)
    assert sc.split == "heldout" and sc.seed >= 1028
    assert sc.counts["agent_loop"] == 2 and sc.overrides["agent_loop"]["max_tokens"] == 700
    plan = sc.build()
    loops = [a for a in plan.accounts if a.persona == "agent_loop"]
    assert len(loops) == 2 and all(a.params["max_tokens"] == 700 and a.params["per_day"] == 110.0 for a in loops)
    assert {r.max_tokens for r in plan.requests if r.account in {a.key for a in loops}} == {700}


def test_a_base_scale_sits_under_the_file_and_its_counts_are_replaced():
    sc = scenario_from_dict({"base": "small", "seed": 1040, "personas": [{"kind": "casual", "count": 3}]})
    assert sc.counts["casual"] == 3 and sc.counts["hydra"] == 1 and sc.days == 1.0
    assert sc.persona_volume  # the small scale's thinning comes with it


def test_lists_become_tuples_and_floats_accept_integers():
    sc = scenario_from_dict(
        {"personas": [{"kind": "bulk_harvester", "params": {"per_day": 500, "domains": ["science"]}}]}
    )
    assert sc.overrides["bulk_harvester"] == {"per_day": 500.0, "domains": ("science",)}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([1, 2], "mapping"),
        ({"personas": []}, "non-empty list"),
        ({"personas": [{"kind": "wizard"}]}, "personas[0].kind: unknown persona 'wizard'"),
        ({"personas": [{"kind": "casual"}, {"kind": "casual"}]}, "listed twice"),
        ({"personas": [{"kind": "casual", "count": -1}]}, "personas[0].count"),
        ({"personas": [{"kind": "casual", "colour": "red"}]}, "unknown field(s) colour"),
        ({"personas": [{"kind": "agent_loop", "params": {"speed": 3}}]}, "no parameter 'speed'"),
        ({"personas": [{"kind": "agent_loop", "params": {"per_day": "many"}}]}, "personas[0].params.per_day"),
        ({"personas": [{"kind": "agent_loop", "params": {"datacenter": 1}}]}, "datacenter must be a bool"),
        ({"personas": [{"kind": "casual"}], "days": 0}, "days must be in"),
        ({"personas": [{"kind": "casual"}], "split": "test"}, "split"),
        ({"personas": [{"kind": "casual"}], "base": "huge"}, "base must be"),
        ({"personas": [{"kind": "casual"}], "seeds": 3}, "unknown field(s) seeds"),
        ({"personas": [{"kind": "casual"}], "perturb": "yes"}, "perturb must be"),
    ],
)
def test_bad_files_are_refused_naming_the_field(doc, needle):
    with pytest.raises(InputError) as exc:
        scenario_from_dict(doc)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_cli_gives_one_line_and_exit_2_for_a_bad_file(capsys, tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("personas:\n  - kind: agent_loop\n    params: {per_dya: 3}\n")
    code, _, err = run(capsys, "simulate", "plan", "--personas", str(bad))
    assert_one_line_error(code, err, "per_dya")
    bad.write_text("personas: [kind: {\n")
    code, _, err = run(capsys, "simulate", "plan", "--personas", str(bad))
    assert_one_line_error(code, err, "not valid YAML")
    code, _, err = run(capsys, "simulate", "plan", "--personas", str(tmp_path / "missing.yaml"))
    assert_one_line_error(code, err, "not found")
    bad.write_text("personas:\n  - kind: casual\n    params: {profile: lunar}\n")
    code, _, err = run(capsys, "simulate", "plan", "--personas", str(bad))
    assert_one_line_error(code, err, "cannot be used")


def test_cli_eval_runs_a_tiny_persona_file_through_the_gateway(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    f = tmp_path / "mine.yaml"
    f.write_text(
        "seed: 1033\ndays: 0.25\npersonas:\n"
        "  - kind: casual\n    count: 6\n"
        "  - kind: bulk_harvester\n    params: {per_day: 800}\n"
        "  - kind: nightly_summariser\n    params: {docs_per_night: 40}\n"
    )
    try:
        code, out, err = run(capsys, "simulate", "eval", "--personas", str(f), "--out", str(tmp_path / "sim"), "--json")
    finally:
        get_settings.cache_clear()
    assert code == 0, err
    report = json.loads(out)
    assert report["seed"] == 1033 and report["split"] == "heldout"
    assert set(report["personas"]) == {"casual", "bulk_harvester", "nightly_summariser"}
    assert report["personas"]["casual"]["accounts"] == 6
    assert report["simulation"]["ok"] == report["simulation"]["requests"] > 100
    assert report["benign_fpr"]["alert"]["accounts"] == 7


def test_a_described_pattern_runs_with_its_own_prompts_turns_knobs_and_role():
    sc = scenario_from_dict(
        {
            "seed": 1034,
            "days": 2,
            "personas": [
                {
                    "kind": "described",
                    "count": 1,
                    "params": {
                        "role": "attacker",
                        "accounts": 2,
                        "per_day": 90,
                        "profile": "flat",
                        "prompts": ["Write the definitive tutorial on {t}.", "Everything about {t} vs {u}."],
                        "topics": ["tides", "glaciers"],
                        "system_prompt": "You are thorough.",
                        "turns": 3,
                        "followups": ["more on {t}"],
                        "gap_s": 12,
                        "max_tokens": 700,
                        "network": "cloud",
                        "user_agent": "my-script/1.0",
                        "tier": "tier2",
                        "shared_card": True,
                    },
                },
                {"kind": "casual", "count": 2},
            ],
        }
    )
    plan = sc.build()
    mine = [a for a in plan.accounts if a.persona == "described"]
    assert len(mine) == 2 and {a.role for a in mine} == {"attacker"} and mine[0].campaign
    assert mine[0].metadata["payment_fingerprint"] == mine[1].metadata["payment_fingerprint"]
    reqs = [r for r in plan.requests if r.account in {a.key for a in mine}]
    assert 200 <= len(reqs) <= 500  # 2 accounts x 90 a day x 2 days
    assert {r.max_tokens for r in reqs} == {700} and {r.user_agent for r in reqs} == {"my-script/1.0"}
    assert all(r.messages[0] == {"role": "system", "content": "You are thorough."} for r in reqs)
    firsts = {r.messages[1]["content"] for r in reqs if r.turn == 0}
    assert firsts <= {f"Write the definitive tutorial on {t}." for t in ("tides", "glaciers")} | {
        f"Everything about {t} vs {u}." for t in ("tides", "glaciers") for u in ("tides", "glaciers")
    }
    convs: dict[str, list[float]] = {}
    for r in reqs:
        convs.setdefault(r.conversation, []).append(r.t)
    assert all(len(ts) == 3 for ts in convs.values())
    assert {round(b - a, 2) for ts in convs.values() for a, b in itertools.pairwise(ts)} == {12.0}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"role": "spy"}, "described.role must be one of benign, attacker"),
        ({"network": "moon"}, "described.network"),
        ({"prompts": ["about {topic}"]}, "cannot be used"),
        ({"turns": "two"}, "params.turns must be a int"),
    ],
)
def test_a_bad_described_pattern_is_refused_in_one_line(params, needle, capsys, tmp_path):
    import yaml

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"personas": [{"kind": "described", "params": params}]}))
    code, _, err = run(capsys, "simulate", "plan", "--personas", str(f))
    assert_one_line_error(code, err, needle)
