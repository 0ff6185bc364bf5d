"""The evidence report's parts: typed evidence (exact JSON round trip), the verdict on small hand-built evidence,
autoescaping of everything that comes from outside, and templates an installation overrides."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest

from antidistill.errors import InputError
from antidistill.forensics import report as rep
from antidistill.forensics.report.evidence import (
    FORMAT,
    AuditHead,
    AuditSection,
    CitedClause,
    ControlEntry,
    Evidence,
    ExchangeSection,
    KeyControls,
    MonitorSection,
    PolicySection,
    ScanEntry,
    ScanSource,
    Subject,
    SubjectResult,
    TestResult,
    Timeline,
    Verification,
)
from antidistill.forensics.report.verdict import Verdict, control_table, decide
from antidistill.forensics.report.wording import summarize
from antidistill.workflows.report import make_report
from tests.forensics.test_report import T0, Install, check_package, exchange, parse, run


@pytest.fixture
def inst(tmp_path):
    # as in test_report: the database in RAM where there is some (no fsync per append)
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base, prefix="antidistill-evidence-") as d:
        i = Install(Path(d), tmp_path)
        yield i
        i.store.close()


# ---- small hand-built evidence -------------------------------------------------------------------------
def scan(
    role: str = "suspect",
    p: float | None = 0.5,
    subject_p: float | None = None,
    alpha: float = 1e-3,
    controls: tuple[ControlEntry, ...] = (),
    key_controls: KeyControls | None = None,
    name: str = "suspect-model",
) -> ScanEntry:
    """A scan entry with only what the verdict reads set to something that matters."""
    subj = (
        None
        if subject_p is None
        else SubjectResult(
            green=60,
            n=100,
            fraction=0.6,
            expected_fraction=0.25,
            p_value=subject_p,
            p_corrected=subject_p,
            z=8.0,
            key_id="acct:a:v1",
            kind="account",
            id="acct_a",
            computed_by="scan",
        )
    )
    return ScanEntry(
        role=role,
        source=ScanSource(path=f"{name}.json", sha256="ab" * 32, bytes=10),
        suspect=name,
        mode="open",
        alpha=alpha,
        gamma=0.25,
        p_value=p,
        significant=p is not None and p <= alpha,
        verdict=None,
        texts=3,
        tokens_seen=200,
        tokens_scored=100,
        skipped={},
        provider=TestResult(
            green=40, n=100, fraction=0.4, expected_fraction=0.25, p_value=p, p_corrected=None, z=3.0, key_id=None
        ),
        subject_result=subj,
        subject_p=subject_p,
        subject_significant=subject_p is not None and subject_p <= alpha,
        best_account="acct_a",
        attributed_account=None,
        attributed_cluster=None,
        accounts_tested=1,
        controls=controls,
        key_controls=key_controls,
        controls_ok=not any(c.significant for c in controls),
        curve=(),
        parameters={"alpha": alpha},
        raw={},
    )


def evidence(*scans: ScanEntry, audit_ok: bool = True, cited: tuple[CitedClause, ...] = ()) -> Evidence:
    """The smallest evidence: one account without traffic, a verified (or failed) log, no monitor."""
    return Evidence(
        format=FORMAT,
        generated_at="2025-03-04T09:00:00Z",
        antidistill_version="0.1.0",
        subject=Subject("account", "acct_a", ("acct_a",)),
        accounts=(),
        exchanges=ExchangeSection(
            count=0,
            listed=0,
            truncated=False,
            prompt_tokens=0,
            completion_tokens=0,
            first=None,
            last=None,
            endpoints={},
            client_addrs={},
            user_agents={},
            statuses={},
            unwatermarked=0,
            timeline=Timeline(bin=None, bins=()),
            items=(),
        ),
        audit=AuditSection(
            verification=Verification(
                ok=audit_ok,
                records=5,
                checkpoints=0,
                first_bad_seq=None if audit_ok else 3,
                first_bad_response_id=None,
                problem=None if audit_ok else "hash mismatch",
                details={},
            ),
            head=AuditHead(seq=5, hash="00" * 32, last_checkpoint_seq=0, signed_at=None, signature=None),
            checkpoint_every=1000,
            public_key=None,
            public_key_fingerprint=None,
            public_keys_seen=(),
            checkpoints_total=0,
            checkpoints_covering=0,
            checkpoints=(),
            subject_records=0,
            subject_records_unsigned=0,
            reverify=(),
        ),
        monitor=MonitorSection(
            available=False,
            note="no monitor data",
            alerts=(),
            highest_level=None,
            max_risk=None,
            enforcement={},
            actions=(),
        ),
        scans=scans,
        policy=PolicySection(
            available=bool(cited), name=None, source=None, clauses_breached=cited, clauses_total=None, note=None
        ),
    )


def model_control(p: float) -> ControlEntry:
    return ControlEntry(
        name="model:base",
        kind="model",
        model="base",
        key=None,
        green=30,
        tokens_scored=100,
        p_value=p,
        p_corrected=p,
        significant=p <= 1e-3,
    )


# ---- the verdict ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scans", "outcome"),
    [
        ((), "not_tested"),
        ((scan(p=1e-9, subject_p=1e-6),), "attributed"),
        ((scan(p=1e-9, subject_p=0.2),), "ours_not_attributed"),
        ((scan(p=0.3, subject_p=0.4),), "not_shown"),
        ((scan(p=0.3, subject_p=0.4), scan(p=1e-5, subject_p=1e-4, name="second")), "attributed"),
        ((scan(role="control", p=0.6),), "not_tested"),  # a control scan is not a suspect
        ((scan(p=2e-3, subject_p=2e-3, alpha=1e-2),), "attributed"),  # each scan's own threshold
    ],
)
def test_verdict_of_hand_built_evidence(scans, outcome):
    assert decide(evidence(*scans)) == Verdict(outcome, controls_ok=True, audit_ok=True)


def test_verdict_reports_failed_controls_and_audit():
    failed_model = scan(p=1e-9, subject_p=1e-9, controls=(model_control(1e-6),))
    v = decide(evidence(failed_model))
    assert v.outcome == "attributed" and not v.controls_ok and v.audit_ok
    keys = KeyControls(count=8, min_p=1e-5, min_p_corrected=8e-5, significant=True)
    assert not decide(evidence(scan(key_controls=keys))).controls_ok
    assert not decide(evidence(scan(role="control", p=1e-6))).controls_ok  # a control scan that came out significant
    v = decide(evidence(scan(p=1e-9, subject_p=1e-9), audit_ok=False))
    assert v.outcome == "attributed" and not v.audit_ok
    rows = control_table(evidence(scan(controls=(model_control(0.4),), key_controls=keys)))
    assert [(r.path, r.is_keys) for r in rows] == [("scans.0.controls.0", False), ("scans.0.key_controls", True)]


def test_summary_of_hand_built_evidence():
    s = summarize(evidence(scan(p=1e-9, subject_p=1e-9, controls=(model_control(1e-6),)), audit_ok=False))
    assert s.verdict == "attributed" and not s.controls_ok
    assert "must be reviewed" in s.headline and s.headline.endswith("failed verification (see below).")
    assert [c.about for c in s.confidence] == ["subject", "ours"] and all(c.significant for c in s.confidence)
    topics = [f.topic for f in s.findings]
    assert topics == ["harvest", "model", "attribution", "controls", "monitor", "audit"]
    assert next(f for f in s.findings if f.topic == "controls").text.startswith("Warning: 1 of 1")
    s = summarize(evidence())
    assert s.verdict == "not_tested" and s.confidence == () and "no suspect model was tested" in s.headline


# ---- typed evidence <-> report.json --------------------------------------------------------------------
def test_hand_built_evidence_round_trips():
    clause = CitedClause(
        id="4.1", title="No distillation", text="…", cited_by=("block of acct_a",), quoted_text_differs=True
    )
    ev = evidence(scan(p=1e-9, subject_p=1e-7, controls=(model_control(0.4),)), cited=(clause,))
    ev = dataclasses.replace(ev, summary=summarize(ev))
    data = ev.to_json()
    assert json.loads(json.dumps(data)) == data  # plain JSON: lists, dicts, str, numbers, bools, null
    assert Evidence.from_json(data) == ev and Evidence.from_json(data).to_json() == data
    assert data["policy"]["clauses_breached"][0]["quoted_text_differs"] is True
    plain = dataclasses.replace(clause, quoted_text_differs=False).to_json()
    assert "quoted_text_differs" not in plain  # written only when it says something, as before
    assert "summary" not in evidence().to_json()  # a draft has no summary yet


def test_from_json_names_the_missing_field():
    data = evidence().to_json()
    del data["audit"]["verification"]["ok"]
    with pytest.raises(ValueError, match="Verification: missing field 'ok'"):
        Evidence.from_json(data)
    with pytest.raises(ValueError, match="Subject: expected a JSON object"):
        Subject.from_json(["acct_a"])  # type: ignore[arg-type]


def test_real_report_json_round_trips(inst, tmp_path):
    inst.alerts()
    suspect = inst.write_scan(tmp_path, "s.json", inst.scan(inst.harvester, "student"))
    control = inst.write_scan(tmp_path, "c.json", inst.scan(None, "independent", seed=2))
    files, ev = make_report(
        inst.store,
        tmp_path / "out",
        cluster="cl_harvest",
        scan_files=[suspect],
        control_files=[control],
        now=T0 + timedelta(days=3),
    )
    data = json.loads(files.json.read_text(encoding="utf-8"))
    typed = Evidence.from_json(data)
    assert typed.to_json() == data == ev
    assert rep.evidence_json(typed) == files.json.read_text(encoding="utf-8")  # byte for byte
    # the typed view is the same evidence, not a copy of dicts
    assert isinstance(typed.scans[0].subject_result, SubjectResult) and typed.scans[0].subject_result.kind == "cluster"
    assert typed.monitor.alerts[0].at is not None and typed.monitor.actions[0].action == "throttle"
    assert typed.audit.checkpoints[0].covers[1] == typed.audit.checkpoints[0].seq
    assert typed.summary is not None and typed.summary.verdict == ev["summary"]["verdict"] == decide(typed).outcome
    # gathering again gives the same typed evidence, whose JSON is the file's
    subject = rep.resolve_subject(inst.store, cluster="cl_harvest")
    again = rep.gather(
        inst.store,
        subject,
        scans=[rep.load_scan(suspect)],
        control_scans=[rep.load_scan(control)],
        policy=rep.load_policy(),
        now=T0 + timedelta(days=3),
    )
    assert again == typed and Evidence.from_json(again.to_json()) == again
    assert rep.control_rows(typed) == rep.control_rows(data)


# ---- autoescaping --------------------------------------------------------------------------------------
HOSTILE = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"


def test_everything_from_outside_is_escaped(inst, tmp_path):
    """A prompt, an account name, registration details and a scan's names carrying markup are shown as text."""
    acct, _, _ = inst.store.create_account("<b>Evil</b> Co", metadata={"organisation": HOSTILE, "<k>": "v"})
    inst.store.append_audit(exchange(1, acct.id, f"acct:{acct.id}:v1", T0))
    entry = exchange(2, acct.id, f"acct:{acct.id}:v1", T0 + timedelta(minutes=5))
    inst.store.append_audit(
        dataclasses.replace(entry, request={"messages": [{"role": "user", "content": HOSTILE}]}, user_agent=HOSTILE)
    )
    data = inst.scan(acct.id, HOSTILE)
    data["parameters"]["<param>"] = HOSTILE
    files, ev = make_report(
        inst.store, tmp_path / "out", account=acct.id, scan_files=[inst.write_scan(tmp_path, "s.json", data)]
    )
    _, html_text, page = check_package(files)  # among its checks: no <script anywhere in the page
    assert ev["exchanges"]["items"][1]["prompt_excerpt"] == HOSTILE  # the JSON keeps the text as it was
    assert "&lt;script&gt;" in html_text and "<img src=x" not in html_text and "<b>Evil" not in html_text
    assert HOSTILE in page.visible and "<b>Evil</b> Co" in page.visible  # shown as text, unchanged
    assert ("exchanges.items.1.prompt_excerpt", json.dumps(HOSTILE, ensure_ascii=False)) in page.fields


def test_render_html_escapes_evidence_given_directly():
    ev = evidence(scan(p=1e-9, subject_p=1e-9, name=HOSTILE))
    ev = dataclasses.replace(ev, summary=summarize(ev))
    html_text = rep.render_html(ev)
    parse(html_text)
    assert "<script" not in html_text and "<img src=x" not in html_text
    assert rep.render_html(ev.to_json()) == html_text  # typed or JSON: the same page
    with pytest.raises(ValueError, match="no summary"):
        rep.render_html(evidence())


# ---- templates an installation overrides ---------------------------------------------------------------
def test_template_dir_takes_precedence(inst, tmp_path):
    d = tmp_path / "letterhead"
    d.mkdir()
    (d / "letterhead.html").write_text(
        '<p class="letterhead">Example Legal LLP, case {{ ev.subject.id }}: {{ ev.accounts[0].name }}</p>',
        encoding="utf-8",
    )
    (d / "style.css").write_text(
        "{% include 'builtin/style.css' %}\n.letterhead { font-variant: small-caps; }\n", encoding="utf-8"
    )
    acct, _, _ = inst.store.create_account("<i>Quiet</i> Co")
    files, ev = make_report(inst.store, tmp_path / "out", account=acct.id, template_dir=d)
    _, html_text, page = check_package(files)
    assert f"Example Legal LLP, case {acct.id}: <i>Quiet</i> Co" in page.visible
    assert "&lt;i&gt;Quiet" in html_text  # an installation's template is autoescaped too
    assert ".letterhead { font-variant: small-caps; }" in html_text and "border-collapse" in html_text
    assert "What we found" in page.visible  # the rest is the shipped report

    # a page of one's own extends the shipped one and overrides a block
    (d / "report.html").write_text(
        '{% extends "builtin/report.html" %}{% block footer %}<footer>Privileged and '
        "confidential</footer>{% endblock %}",
        encoding="utf-8",
    )
    files = rep.write_report(ev, tmp_path / "out2", template_dir=d)
    _, html_text, page = check_package(files)
    assert page.visible.endswith("Privileged and confidential") and "Example Legal LLP" in page.visible
    assert "Example Legal LLP" not in rep.render_html(ev)  # without the directory: the shipped templates


def test_bad_template_dir_is_input_error(inst, tmp_path):
    with pytest.raises(InputError, match="template directory not found"):
        make_report(inst.store, tmp_path / "out", account=inst.harvester, template_dir=tmp_path / "nope")
    d = tmp_path / "broken"
    d.mkdir()
    (d / "letterhead.html").write_text("{% if %}", encoding="utf-8")
    with pytest.raises(InputError, match=r"letterhead\.html, line 1"):
        make_report(inst.store, tmp_path / "out", account=inst.harvester, template_dir=d)
    assert not (tmp_path / "out").exists()  # checked before anything is written
    (d / "letterhead.html").write_text("{{ ev.no_such_field }}", encoding="utf-8")
    with pytest.raises(InputError, match="no_such_field"):
        make_report(inst.store, tmp_path / "out", account=inst.harvester, template_dir=d)


@pytest.fixture
def cli_env(inst, monkeypatch):
    from antidistill.settings import get_settings

    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", bytes(range(32)).hex())
    get_settings.cache_clear()
    return inst


def test_cli_template_dir(cli_env, tmp_path, capsys):
    inst = cli_env
    d = tmp_path / "tpl"
    d.mkdir()
    (d / "letterhead.html").write_text("<p>Example Legal LLP</p>", encoding="utf-8")
    code, out, err = run(
        capsys,
        "report",
        "--account",
        inst.harvester,
        "--out",
        tmp_path / "pkg",
        "--template-dir",
        d,
        "--json",
        "--database-url",
        inst.url,
    )
    assert code == 0, err
    assert "Example Legal LLP" in Path(json.loads(out)["html"]).read_text(encoding="utf-8")
    code, out, err = run(
        capsys,
        "report",
        "--account",
        inst.harvester,
        "--out",
        tmp_path / "pkg2",
        "--template-dir",
        tmp_path / "missing",
        "--database-url",
        inst.url,
    )
    assert code == 2 and [ln for ln in err.splitlines() if ln.strip()] == [
        f"error: template directory not found: {tmp_path / 'missing'}"
    ]


def test_shipped_templates_are_package_data():
    from importlib.resources import files

    tpl = files("antidistill.forensics.report") / "templates"
    names = {p.name for p in tpl.iterdir()}
    assert {"report.html", "style.css", "letterhead.html"} <= names
    assert all(n.endswith((".html", ".css")) for n in names)  # what pyproject's package-data ships
