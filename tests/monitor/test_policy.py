"""The policy file: parsing, validation with one clear line, decisions, and escalation only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from antidistill.errors import ConfigError
from antidistill.monitor.api import Assessment
from antidistill.monitor.policy import DEFAULT_POLICY_FILE, Policy, action_rank, escalates
from antidistill.store.api import Enforcement

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

POLICY = """
version: 1
name: Test terms
clauses:
  - {id: "4.1", title: Distillation, text: "You may not   distil our models."}
  - {id: 4.2, title: Bulk extraction, text: No bulk extraction.}
  - {id: "4.3", title: Accounts, text: No account farms.}
throttle: {rpm: 7}
rules:
  - {level: watch, action: flag, clause: "4.2"}
  - {level: alert, action: throttle, clause: "4.2", tpm: 900}
  - {level: severe, action: block, clause: "4.1"}
  - {level: alert, action: review, clause: "4.3", scope: cluster, min_cluster_size: 3, duration: 3600}
"""


TWO = ("traffic", "content")


def assess(level: str, cluster_size: int = 1, account: str = "acct_a", families: tuple[str, ...] = TWO) -> Assessment:
    return Assessment(
        account,
        "cl_1" if cluster_size > 1 else None,
        0.5,
        level,
        ("reason",),
        NOW,
        cluster_size=cluster_size,
        families=families,
    )


def test_parses_clauses_rules_and_defaults():
    p = Policy.from_yaml(POLICY, source="test.yaml")
    assert list(p.clauses) == ["4.1", "4.2", "4.3"]
    assert p.clauses["4.1"].text == "You may not distil our models."  # whitespace folded
    assert p.rules[1].rpm is None and p.rules[1].tpm == 900  # the rule's own limits replace the defaults
    assert p.rules[3].scope == "cluster" and p.rules[3].duration_s == 3600


def test_decisions_take_the_strictest_matching_rule():
    p = Policy.from_yaml(POLICY)
    assert p.decide(assess("none")) is None
    assert p.decide(assess("watch")).action == "flag"
    d = p.decide(assess("alert"))
    assert (d.action, d.clause.id, d.tpm, d.status) == ("throttle", "4.2", 900, 429)
    assert p.decide(assess("alert", cluster_size=2)).action == "throttle"  # cluster too small
    d = p.decide(assess("alert", cluster_size=3))
    assert (d.action, d.clause.id, d.until, d.status) == ("review", "4.3", NOW + timedelta(hours=1), 403)
    d = p.decide(assess("severe", cluster_size=5, families=("traffic", "linking")))
    assert (d.action, d.clause.id, d.families, d.fell_back) == ("block", "4.1", ("traffic", "linking"), False)


def test_a_block_needs_two_families_and_one_family_is_held_for_review():
    p = Policy.from_yaml(POLICY)  # names no min_families: a block demands two by default
    assert (p.rules[2].min_families, p.rules[2].otherwise) == (2, "review")
    assert (p.rules[0].min_families, p.rules[1].min_families) == (0, 0)
    d = p.decide(assess("severe", families=("content",)))
    assert (d.action, d.clause.id, d.status, d.fell_back) == ("review", "4.1", 403, True)
    assert p.decide(assess("severe", families=())).action == "review"
    # the same family twice is one family
    assert p.decide(assess("severe", families=("content", "content"))).action == "review"
    for two in (("traffic", "linking"), ("traffic", "content"), ("content", "release")):
        assert p.decide(assess("severe", families=two)).action == "block"
    # a stricter policy, and one that turns the requirement off
    strict = Policy.from_yaml(POLICY.replace('clause: "4.1"}', 'clause: "4.1", min_families: 3, otherwise: throttle}'))
    d = strict.decide(assess("severe", families=TWO))
    assert (d.action, d.clause.id, d.tpm) == ("throttle", "4.2", 900)  # the first throttle rule in the file names it
    assert strict.decide(assess("severe", families=("traffic", "content", "linking"))).action == "block"
    loose = Policy.from_yaml(POLICY.replace('clause: "4.1"}', 'clause: "4.1", min_families: 0}'))
    assert loose.decide(assess("severe", families=())).action == "block"
    # a rule whose fallback is none does not apply without its families: a milder rule decides
    none = Policy.from_yaml(POLICY.replace('clause: "4.1"}', 'clause: "4.1", otherwise: none}'))
    assert none.decide(assess("severe", families=("content",))).action == "throttle"


def test_the_shipped_policy_is_valid_and_maps_levels_as_documented():
    p = Policy.default()
    assert p.source == str(DEFAULT_POLICY_FILE)
    assert [p.decide(assess(level)).action for level in ("watch", "alert", "severe")] == ["flag", "throttle", "block"]
    # the shipped policy blocks on two independent families only; one holds the account for review
    assert p.decide(assess("severe", families=("content",))).action == "review"
    assert p.decide(assess("severe", cluster_size=3, families=("traffic", "linking"))).action == "block"
    assert p.decide(assess("alert", cluster_size=3)).action in ("review", "block")
    for clause in p.clauses.values():
        assert len(clause.text) > 40 and clause.title


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("level: severe", "level: critical"), "rules[2].level must be one of watch, alert, severe"),
        (lambda s: s.replace("action: block", "action: ban"), "rules[2].action must be one of flag, throttle, review"),
        (lambda s: s.replace('action: block, clause: "4.1"', "action: block"), "rules[2].clause is missing"),
        (lambda s: s.replace('clause: "4.1"}', 'clause: "9.9"}'), "rules[2].clause '9.9' is not one of the policy's"),
        (lambda s: s.replace("scope: cluster", "scope: planet"), "rules[3].scope must be account or cluster"),
        (lambda s: s.replace("min_cluster_size: 3", "min_cluster_size: 1"), "min_cluster_size must be an integer >= 2"),
        (lambda s: s.replace("tpm: 900", "tpm: -1"), "rules[1].tpm must be a positive integer"),
        (lambda s: s.replace("throttle: {rpm: 7}", "").replace(", tpm: 900", ""), "a throttle needs rpm or tpm"),
        (
            lambda s: s.replace('action: block, clause: "4.1"', 'action: block, clause: "4.1", rpm: 3'),
            "rpm/tpm apply only to action throttle",
        ),
        (lambda s: s.replace("version: 1", "version: 2"), "version must be 1"),
        (
            lambda s: s.replace('clause: "4.1"}', 'clause: "4.1", min_families: 5}'),
            "rules[2].min_families must be an integer from 0 to 4",
        ),
        (
            lambda s: s.replace('clause: "4.1"}', 'clause: "4.1", otherwise: block}'),
            "rules[2].otherwise must be milder than the rule's action block",
        ),
        (
            lambda s: s.replace('clause: "4.1"}', 'clause: "4.1", otherwise: ban}'),
            "rules[2].otherwise must be one of none, flag",
        ),
        (
            lambda s: s.replace('clause: "4.1"}', 'clause: "4.1", min_families: 0, otherwise: review}'),
            "otherwise needs min_families of at least 1",
        ),
        (lambda s: s + "extra: 1\n", "unknown top-level field(s): extra"),
        (lambda s: s.replace("text: No account farms.", "text: ''"), "clause 4.3: text must be a non-empty string"),
        (lambda s: s.replace('id: "4.3"', 'id: "4.1"'), "duplicate clause id '4.1'"),
        (lambda s: s.split("rules:")[0] + "rules: []\n", "rules must be a non-empty list"),
        (lambda s: s.replace("rules:\n", "rules:\n  - [oops\n"), "is not valid YAML (line"),
    ],
)
def test_invalid_policies_fail_with_one_clear_line(edit, message):
    with pytest.raises(ConfigError) as info:
        Policy.from_yaml(edit(POLICY), source="p.yaml")
    text = str(info.value)
    assert message in text and text.startswith("policy p.yaml")
    assert "\n" not in text


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        Policy.from_yaml("- just\n- a list\n")
    with pytest.raises(ConfigError, match="policy file not found"):
        Policy.load(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text(POLICY)
    assert Policy.load(tmp_path / "p.yaml").name == "Test terms"


def state(action: str, level: str = "alert", set_by: str = "monitor", until: datetime | None = None) -> Enforcement:
    return Enforcement("acct_a", action, level, "4.2", NOW, until=until, set_by=set_by)


def test_actions_only_escalate():
    p = Policy.from_yaml(POLICY)
    flag, throttle, block = (p.decide(assess(lv)) for lv in ("watch", "alert", "severe"))
    assert escalates(None, flag, NOW)
    assert escalates(state("flag"), throttle, NOW) and escalates(state("throttle"), block, NOW)
    assert not escalates(state("throttle"), throttle, NOW)  # the same action again: nothing new
    assert not escalates(state("block"), throttle, NOW) and not escalates(state("block"), flag, NOW)
    assert not escalates(state("review"), throttle, NOW)
    # a lapsed action no longer holds anything back
    assert escalates(state("block", until=NOW - timedelta(seconds=1)), throttle, NOW)
    assert sorted(["block", "flag", "review", "throttle", "none"], key=action_rank) == [
        "none",
        "flag",
        "throttle",
        "review",
        "block",
    ]


def test_after_an_admin_clear_only_a_higher_level_acts_again():
    p = Policy.from_yaml(POLICY)
    cleared = state("none", level="alert", set_by="admin")
    assert not escalates(cleared, p.decide(assess("watch")), NOW)
    assert not escalates(cleared, p.decide(assess("alert")), NOW)
    assert escalates(cleared, p.decide(assess("severe")), NOW)
