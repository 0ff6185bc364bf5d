"""``antidistill simulate``: runs that write the truth and exit 0, bad input that gets one line and exit 2."""

from __future__ import annotations

import json

import pytest

from antidistill.cli import main
from antidistill.simulate import load_labels

from .conftest import ADMIN_TOKEN


def run(capsys, *argv):
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, needle):
    assert code == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], err


def test_run_in_process_writes_labels_and_exits_0(capsys, tmp_path):
    out = tmp_path / "sim"
    code, stdout, err = run(
        capsys, "simulate", "run", "--scale", "small", "--days", "0.05", "--seed", "5", "--out", str(out), "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["planned"] == summary["ok"] > 0
    labels = load_labels(out)
    assert len(labels) == summary["accounts"] and (out / "antidistill.db").exists()
    assert (out / "scenario.json").exists() and (out / "requests.jsonl").exists()
    # human output too, for the plan of the same scenario
    code, stdout, _ = run(capsys, "simulate", "plan", "--scale", "small", "--days", "0.05", "--seed", "5")
    assert code == 0 and "hydra" in stdout and f"{summary['planned']} requests" in stdout


def test_run_against_a_running_gateway(capsys, tmp_path, clock_gateway, monkeypatch):
    out = tmp_path / "ext"
    before = len(clock_gateway.audit())
    monkeypatch.setenv("ANTIDISTILL_ADMIN_TOKEN", ADMIN_TOKEN)
    code, stdout, err = run(
        capsys,
        "simulate",
        "run",
        "--scale",
        "small",
        "--days",
        "0.05",
        "--split",
        "heldout",
        "--out",
        str(out),
        "--base-url",
        clock_gateway.url,
        "--concurrency",
        "4",
        "--processes",
        "2",
    )  # driver processes, not just threads
    assert code == 0, err
    assert "requests answered 200" in stdout
    labels = load_labels(out)
    sent = sum(row["ok"] for row in labels)
    assert sent > 0 and len(clock_gateway.audit()) - before == sent
    ids = {a.id for a in clock_gateway.store.list_accounts()}
    assert {row["account_id"] for row in labels} <= ids
    assert json.loads((out / "scenario.json").read_text())["split"] == "heldout"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--split", "test"], "split must be"),
        (["--scale", "tiny"], "scale must be"),
        (["--days", "0"], "days must be"),
        (["--days", "400"], "days must be"),
        (["--base-url", "ftp://example"], "base URL"),
        (["--concurrency", "0"], "concurrency"),
        (["--seed", "x"], "seed"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(capsys, tmp_path, argv, needle):
    code, _, err = run(
        capsys, "simulate", "run", "--scale", "small", "--days", "0.05", "--out", str(tmp_path / "o"), *argv
    )
    assert_one_line_error(code, err, needle)


def test_refusals_from_the_gateway_and_the_filesystem_are_one_line(capsys, tmp_path, clock_gateway, monkeypatch):
    monkeypatch.delenv("ANTIDISTILL_ADMIN_TOKEN", raising=False)
    base = ["simulate", "run", "--scale", "small", "--days", "0.05"]
    code, _, err = run(
        capsys,
        *base,
        "--out",
        str(tmp_path / "a"),
        "--base-url",
        clock_gateway.url,
        "--admin-token",
        "wrong-" + "0" * 40,
    )
    assert_one_line_error(code, err, "refused to create an account (401)")
    assert "wrong-" not in err  # the token is never echoed
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "b"), "--base-url", clock_gateway.url)
    assert_one_line_error(code, err, "admin token")
    code, _, err = run(
        capsys, *base, "--out", str(tmp_path / "c"), "--base-url", "http://127.0.0.1:9", "--admin-token", ADMIN_TOKEN
    )
    assert_one_line_error(code, err, "cannot reach")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "labels.jsonl").write_text("{}\n")
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "d"))
    assert_one_line_error(code, err, "already holds a simulation")


def test_personas_lists_every_persona(capsys):
    code, stdout, _ = run(capsys, "simulate", "personas", "--json")
    rows = json.loads(stdout)
    assert code == 0 and len(rows) == 18
    assert {r["role"] for r in rows} == {"benign", "attacker"}
    assert sum(r["role"] == "attacker" for r in rows) == 9


def test_plan_with_perturb_changes_only_the_attackers(capsys):
    code, plain, err = run(capsys, "simulate", "plan", "--scale", "small", "--seed", "1029", "--days", "0.3", "--json")
    assert code == 0, err
    code, pert, err = run(
        capsys, "simulate", "plan", "--scale", "small", "--seed", "1029", "--days", "0.3", "--perturb", "--json"
    )
    assert code == 0, err
    a, b = json.loads(plain), json.loads(pert)
    assert a["summary"]["benign_requests"] == b["summary"]["benign_requests"]
    assert a["counts"]["casual"] == b["counts"]["casual"]
    assert a["summary"]["accounts"] == b["summary"]["accounts"]
    assert a["perturb"] is False and b["perturb"] is True and b["split"] == "train" and b["seed"] == 1029
