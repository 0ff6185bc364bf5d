"""The evidence report: a real store and audit log, real scan results, and the HTML checked against its JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import tempfile
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from antidistill.cli import main
from antidistill.detection.detector import distinct_pairs
from antidistill.detection.stats import binomial_sf
from antidistill.errors import InputError
from antidistill.forensics import report as rep
from antidistill.forensics.scan import ScanKeys, build_report
from antidistill.settings import Settings, get_settings
from antidistill.store.api import Alert, AuditEntry
from antidistill.store.sql import Store
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark
from antidistill.workflows.report import make_report
from tests.synthetic import TEST_MASTER, sample, uniform_tokens

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
VOCAB = 500
SECTIONS = {
    "format",
    "generated_at",
    "antidistill_version",
    "subject",
    "summary",
    "accounts",
    "exchanges",
    "audit",
    "monitor",
    "scans",
    "policy",
}


# ---- building a realistic installation ---------------------------------------------------------------
def exchange(i: int, account_id: str, key_id: str, at: datetime) -> AuditEntry:
    return AuditEntry(
        response_id=f"chatcmpl-{account_id[-6:]}-{i}",
        account_id=account_id,
        api_key_id="key_x",
        created_at=at,
        endpoint="/v1/chat/completions",
        client_addr="198.51.100.23",
        user_agent="OpenAI/Python 1.40.0",
        request={
            "model": "smollm2",
            "messages": [
                {"role": "system", "content": "Answer fully."},
                {"role": "user", "content": f"Explain topic #{i} in detail"},
            ],
            "max_tokens": 256,
        },
        completion=[f"Here is a detailed explanation of topic {i}."],
        prompt_tokens=20 + i,
        completion_tokens=200,
        finish_reason="stop",
        latency_ms=40.0,
        watermark={"key_id": key_id, "config": WatermarkConfig(scheme="antidistill-v1").to_dict()},
    )


class Install:
    """A store with three accounts: a harvester (60 exchanges over two days), a linked one and a bystander."""

    def __init__(self, db_dir: Path, tmp_path: Path) -> None:
        self.url = f"sqlite:///{db_dir / 'store.db'}"
        self.settings = Settings(env="test", data_dir=tmp_path / "data", audit_checkpoint_every=10)
        self.store = Store.open(self.url, self.settings, master=TEST_MASTER)
        self.api_keys = []
        ids = []
        for name, org in (
            ("Harvest Labs", "Harvest Labs Ltd"),
            ("HL second", "Harvest Labs Ltd"),
            ("Bystander", "Nice Co"),
        ):
            acct, api_key, _ = self.store.create_account(name, rpm=600, metadata={"organisation": org})
            ids.append(acct.id)
            self.api_keys.append(api_key)
        self.harvester, self.linked, self.bystander = ids
        for i in range(60):
            at = T0 + timedelta(minutes=45 * i)
            self.store.append_audit(exchange(i, self.harvester, f"acct:{self.harvester}:v1", at))
            if i % 6 == 0:
                self.store.append_audit(exchange(i, self.bystander, f"acct:{self.bystander}:v1", at))
            if i % 4 == 0:
                self.store.append_audit(exchange(i, self.linked, f"acct:{self.linked}:v1", at))

    def alerts(self) -> None:
        """The monitor at work: an alert that throttles the harvester, then one that blocks it (with their audit
        records), and an alert on the linked account, all under one cluster id."""
        from antidistill.monitor.actions import Enforcer
        from antidistill.monitor.api import Assessment
        from antidistill.monitor.policy import Policy

        now = [T0 + timedelta(hours=20)]
        enf = Enforcer(self.store, Policy.default(), clock=lambda: now[0])
        enf.apply(
            Assessment(
                self.harvester,
                "cl_harvest",
                0.81,
                "alert",
                ("prompts from one template",),
                T0 + timedelta(hours=20),
                {"rules": 0.8},
                2,
            )
        )
        now[0] = T0 + timedelta(hours=30)
        enf.apply(
            Assessment(
                self.harvester,
                "cl_harvest",
                0.97,
                "severe",
                ("prompts from one template", "1,200 requests an hour"),
                T0 + timedelta(hours=30),
                {"rules": 0.95},
                2,
                families=("traffic", "content"),  # two independent families: the shipped policy blocks
            )
        )
        self.store.record_alert(
            Alert(
                id="alert_linked1",
                account_id=self.linked,
                cluster_id="cl_harvest",
                risk=0.6,
                level="watch",
                reasons=("shares an organisation with a flagged account",),
                scores={"cluster": 0.6},
                at=T0 + timedelta(hours=31),
                action="none",
                clause="4.3",
                created_at=T0 + timedelta(hours=31),
            )
        )

    def scan(
        self, marked_with: str | None, suspect: str, seed: int = 1, length: int = 800, scheme: str = "antidistill-v1"
    ) -> dict:
        """A real scan result (the scanner's own statistics) of a student that learnt ``marked_with``'s
        watermark (or of an unmarked model, None), over the three accounts' keys."""
        config = WatermarkConfig(scheme=scheme)
        rng = np.random.default_rng(seed)
        wm = Watermark(config)
        if marked_with is None:
            ids = uniform_tokens(rng, length, VOCAB)
        else:
            ids = sample(rng, wm, TEST_MASTER.account_key(marked_with), TEST_MASTER.provider_key(), length, VOCAB)[0]
        pairs = distinct_pairs(ids, config.context_width)
        keys = ScanKeys.from_master(
            TEST_MASTER, [self.harvester, self.linked, self.bystander], {"cl_harvest": [self.harvester, self.linked]}
        )
        r = build_report(
            "open",
            suspect,
            config,
            pairs.contexts,
            pairs.tokens,
            keys,
            alpha=1e-3,
            parameters={"exclude": "prefix-pairs", "hashing_key": 987654321987},
            texts=60,
            tokens_seen=length,
            skipped={"prefix-pair": 12, "prompt": 3},
            controls=8,
        )
        return json.loads(json.dumps(r.to_dict(), default=str))

    def write_scan(self, tmp_path: Path, name: str, data: dict) -> Path:
        p = tmp_path / name
        p.write_text(json.dumps(data), encoding="utf-8")
        return p


@pytest.fixture
def inst(tmp_path):
    # the database in RAM where there is some (as the store tests do): the same SQLite, without an fsync per append
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="antidistill-report-") as d:
            i = Install(Path(d), tmp_path)
            yield i
            i.store.close()
    else:
        i = Install(tmp_path, tmp_path)
        yield i
        i.store.close()


# ---- reading the HTML back ------------------------------------------------------------------------------
class Page(HTMLParser):
    """Collects what the checks need: tags, attributes, the data-field spans and the visible text."""

    VOID = frozenset({"meta", "img", "br", "link", "input", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: list[tuple[str, str, str]] = []
        self.fields: list[tuple[str, str]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            self.attrs.append((tag, k, v or ""))
        d = dict(attrs)
        if "data-field" in d:
            self.fields.append((d["data-field"], d["data-value"]))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


def parse(html_text: str) -> Page:
    p = Page()
    p.feed(html_text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, p.stack
    return p


def check_package(files: rep.ReportFiles) -> tuple[dict, str, Page]:
    """The checks every report must pass: twin files agree, the HTML stands alone, every number is the JSON's."""
    ev = json.loads(files.json.read_text(encoding="utf-8"))
    html_text = files.html.read_text(encoding="utf-8")
    assert set(ev) >= SECTIONS
    page = parse(html_text)
    # self-contained: images inline, links only inside the document, no script
    for tag, k, v in page.attrs:
        assert tag != "script"
        if k == "src":
            assert v.startswith("data:"), v[:60]
        if k == "href":
            assert v.startswith("#"), v
    assert "<script" not in html_text.lower() and "url(" not in html_text
    for tag, k, v in page.attrs:
        if tag == "img" and k == "src":
            svg = base64.b64decode(v.split(",", 1)[1]).decode("utf-8")
            assert svg.startswith("<?xml") and "<svg" in svg
            assert not re.search(r'href="(?!#)', svg), "an SVG refers to something outside it"
    # every marked value is the JSON's value at that path
    assert len(page.fields) > 40
    for path, value in page.fields:
        assert json.loads(value) == rep.lookup(ev, path), path
    # the hash file matches both files
    sums = dict(reversed(line.split("  ")) for line in files.sums.read_text().splitlines())
    for name in ("report.json", "report.html"):
        assert sums[name] == hashlib.sha256((files.json.parent / name).read_bytes()).hexdigest()
    return ev, html_text, page


# ---- the main case --------------------------------------------------------------------------------------
def test_account_report_end_to_end(inst, tmp_path):
    """The package about one account: summary, accounts, exchanges, scans, controls, monitor, audit, no secrets."""
    inst.alerts()
    suspect = inst.scan(inst.harvester, "student-of-harvest-labs")
    control = inst.scan(None, "independent-model", seed=2)
    assert suspect["significant"] and not control["significant"]  # the inputs are what the test claims
    files, ev = make_report(
        inst.store,
        tmp_path / "out",
        account=inst.harvester,
        scan_files=[inst.write_scan(tmp_path, "s.json", suspect)],
        control_files=[inst.write_scan(tmp_path, "c.json", control)],
        now=T0 + timedelta(days=3),
    )
    ev2, html_text, page = check_package(files)
    assert ev2 == json.loads(rep.evidence_json(ev))

    # the summary leads with the right numbers
    s = ev["summary"]
    assert s["verdict"] == "attributed" and s["controls_ok"]
    row = next(a for a in suspect["accounts"] if a["account"] == inst.harvester)
    conf = s["confidence"][0]
    assert conf["p_value"] == row["p_corrected"] and conf["about"] == "subject" and conf["significant"]
    n, words = rep.one_in(row["p_corrected"])
    assert n <= 1 / row["p_corrected"]
    assert f"less than once in {words}" in conf["text"] and "less than once in" in page.visible
    assert ("summary.confidence.0.text", json.dumps(conf["text"], ensure_ascii=False)) in page.fields
    assert rep.fmt_p(row["p_corrected"]).split(" × ")[0] in conf["text"]
    vis = page.visible
    assert (
        vis.index("What we found")
        < vis.index("How sure we are")
        < vis.index("The accounts")
        < vis.index("Glossary")
        < vis.index("How the method works")
        < vis.index("Appendix A")
    )
    sc = ev["scans"][0]
    assert sc["subject_result"]["green"] == row["green"] and sc["subject_result"]["n"] == row["n"]
    assert sc["provider"]["p_value"] == suspect["provider"]["p_value"]
    assert ("scans.0.subject_result.p_corrected", json.dumps(row["p_corrected"])) in page.fields

    # the accounts and what they harvested (the bystander's and the linked account's records are not in it)
    assert [a["id"] for a in ev["accounts"]] == [inst.harvester]
    assert ev["accounts"][0]["exchanges"] == 60 and ev["accounts"][0]["watermark_key_ids"] == [
        f"acct:{inst.harvester}:v1"
    ]
    ex = ev["exchanges"]
    assert ex["count"] == 60 and ex["completion_tokens"] == 60 * 200
    assert {x["account_id"] for x in ex["items"]} == {inst.harvester}
    assert sum(b["exchanges"] for b in ex["timeline"]["bins"]) == 60 and ex["timeline"]["bin"] == "hour"
    assert "Explain topic #7 in detail" in html_text

    # audit: verified, every listed exchange under a checkpoint or counted as not yet signed
    a = ev["audit"]
    assert a["verification"]["ok"] and a["verification"]["records"] == inst.store.audit_count()
    assert a["public_key"] == TEST_MASTER.audit_public_key().hex()
    assert (
        sum(c["subject_records"] for c in a["checkpoints"]) + a["subject_records_unsigned"]
        == a["subject_records"]
        == 60 + 2
    )  # the exchanges and the two action records
    assert a["checkpoints_covering"] == len(a["checkpoints"]) == a["checkpoints_total"]
    for c in a["checkpoints"]:
        assert c["covers"][0] <= c["seq"] == c["covers"][1] and len(c["signature"]) == 128
    assert "antidistill audit verify" in html_text and "antidistill audit export" in html_text
    assert "Verified." in vis

    # the monitor and the policy
    m = ev["monitor"]
    assert m["available"] and [x["level"] for x in m["alerts"]] == ["alert", "severe"]
    assert [x["details"]["action"] for x in m["actions"]] == ["throttle", "block"]
    assert m["enforcement"][inst.harvester]["action"] == "block"
    breached = {c["id"]: c for c in ev["policy"]["clauses_breached"]}
    assert {"4.1", "4.2"} <= set(breached)
    assert "distillation" in breached["4.1"]["text"] and breached["4.1"]["text"][:60] in html_text

    # controls: the control model, and the never-issued keys of both scans
    labels = [c["label"] for c in rep.control_rows(ev)]
    assert "independent-model" in labels and any("keys that never marked" in x for x in labels)
    assert not any(c["significant"] for c in rep.control_rows(ev))

    assert "http://" not in html_text and "https://" not in html_text  # not even as text

    # three plots: the p-value curve, the timeline, the monitor's risk
    assert sum(1 for tag, k, _ in page.attrs if tag == "img" and k == "src") == 3

    # nothing secret: master key, signing seed, API keys, watermark key values, the scan's explicit key
    everything = html_text + files.json.read_text()
    for secret in [
        bytes(range(32)).hex(),
        *inst.api_keys,
        "987654321987",
        str(TEST_MASTER.account_key(inst.harvester).value),
        str(TEST_MASTER.provider_key().value),
    ]:
        assert secret not in everything
    assert "[withheld]" in files.json.read_text()


def test_tampering_is_reported_as_such(inst, tmp_path):
    with inst.store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET completion = :c WHERE seq = 5"), {"c": '["edited"]'})
    files, ev = make_report(inst.store, tmp_path / "out", account=inst.harvester)
    _, _, page = check_package(files)
    v = ev["audit"]["verification"]
    assert not v["ok"] and v["first_bad_seq"] == 5 and "edited" in v["problem"]
    assert "Verification FAILED" in page.visible and "failed verification" in ev["summary"]["headline"]
    assert ("audit.verification.first_bad_seq", "5") in page.fields
    assert ev["summary"]["verdict"] == "not_tested"


def test_failed_control_is_not_hidden(inst, tmp_path):
    suspect = inst.scan(inst.harvester, "student")
    bad_control = inst.scan(inst.bystander, "control-that-is-not", seed=3)
    files, ev = make_report(
        inst.store,
        tmp_path / "out",
        account=inst.harvester,
        scan_files=[inst.write_scan(tmp_path, "s.json", suspect)],
        control_files=[inst.write_scan(tmp_path, "c.json", bad_control)],
    )
    check_package(files)
    assert ev["summary"]["verdict"] == "attributed" and not ev["summary"]["controls_ok"]
    assert "must be reviewed" in ev["summary"]["headline"]
    assert any(f["topic"] == "controls" and f["text"].startswith("Warning") for f in ev["summary"]["findings"])


def test_innocent_suspect_is_not_accused(inst, tmp_path):
    clean = inst.scan(None, "unrelated-model", seed=4)
    files, ev = make_report(
        inst.store, tmp_path / "out", account=inst.harvester, scan_files=[inst.write_scan(tmp_path, "s.json", clean)]
    )
    check_package(files)
    assert ev["summary"]["verdict"] == "not_shown"
    assert not ev["summary"]["confidence"][0]["significant"]
    assert "not rare enough" in ev["summary"]["confidence"][0]["text"]


def test_our_mark_without_the_accounts_mark_is_not_attributed(inst, tmp_path):
    """A student of another customer's outputs: ours, but the report must not pin it on this account."""
    other = inst.scan(inst.bystander, "student-of-someone-else", seed=5)
    files, ev = make_report(
        inst.store, tmp_path / "out", account=inst.harvester, scan_files=[inst.write_scan(tmp_path, "s.json", other)]
    )
    check_package(files)
    s = ev["summary"]
    assert s["verdict"] == "ours_not_attributed" and "does not tie it to" in s["headline"]
    by = {c["about"]: c for c in s["confidence"]}
    assert not by["subject"]["significant"] and by["ours"]["significant"]
    assert by["ours"]["p_value"] == other["p_value"]


# ---- clusters ------------------------------------------------------------------------------------------
def test_cluster_from_monitor_id_with_pooled_scan(inst, tmp_path):
    inst.alerts()
    suspect = inst.scan(inst.harvester, "student")
    files, ev = make_report(
        inst.store, tmp_path / "out", cluster="cl_harvest", scan_files=[inst.write_scan(tmp_path, "s.json", suspect)]
    )
    check_package(files)
    assert ev["subject"] == {
        "kind": "cluster",
        "id": "cl_harvest",
        "source": "monitor",
        "account_ids": sorted([inst.harvester, inst.linked]),
    }
    assert ev["exchanges"]["count"] == 60 + 15
    cl = next(c for c in suspect["clusters"] if c["cluster_id"] == "cl_harvest")
    sr = ev["scans"][0]["subject_result"]
    assert sr["computed_by"] == "scan" and sr["p_corrected"] == cl["p_corrected"]
    assert {a["level"] for a in ev["monitor"]["alerts"]} == {"alert", "severe", "watch"}
    assert "4.3" in {c["id"] for c in ev["policy"]["clauses_breached"]}


def test_cluster_as_list_pools_the_accounts_exactly(inst, tmp_path):
    scan = inst.scan(inst.harvester, "student")
    scan["clusters"] = []  # a scan that did not pool this group: the report pools the accounts' counts itself
    files, ev = make_report(
        inst.store,
        tmp_path / "out",
        cluster=f"{inst.harvester},{inst.bystander}",
        scan_files=[inst.write_scan(tmp_path, "s.json", scan)],
    )
    check_package(files)
    rows = [a for a in scan["accounts"] if a["account"] in (inst.harvester, inst.bystander)]
    sr = ev["scans"][0]["subject_result"]
    green, n = sum(r["green"] for r in rows), sum(r["n"] for r in rows)
    assert (sr["green"], sr["n"]) == (green, n)
    assert sr["p_value"] == pytest.approx(binomial_sf(green, n, 0.25), rel=1e-12)
    assert sr["computed_by"].startswith("the report")
    assert ev["subject"]["source"] == "list"

    f = tmp_path / "cluster.txt"
    f.write_text(f"# two accounts\n{inst.linked}\n\n{inst.bystander}\n")
    _, ev = make_report(inst.store, tmp_path / "out2", cluster=str(f))
    assert ev["subject"]["account_ids"] == [inst.linked, inst.bystander] and ev["subject"]["source"] == "file"


# ---- adapters ------------------------------------------------------------------------------------------
def test_scan_in_the_documented_shape(inst, tmp_path):
    """A scan written in the shape of the issue (account_id, curve of tokens/p_value, named controls)."""
    data = {
        "mode": "closed",
        "suspect": "https://api.example.com/v1 model=x",
        "tokens_seen": 9000,
        "tokens_scored": 4000,
        "skipped": {"prompt": 40},
        "parameters": {"watermark": {"gamma": 0.25}, "alpha": 0.001, "api_key": "sk-ad-SECRETSECRET"},
        "provider": {"green": 1300, "n": 2000, "p_value": 1e-30, "z": 12.0},
        "accounts": [{"account_id": inst.harvester, "green": 700, "n": 2000, "p_value": 1e-20, "p_corrected": 3e-20}],
        "best_account": inst.harvester,
        "clusters": [],
        "curve": [{"tokens": 1000, "p_value": 1e-5}, {"tokens": 4000, "p_value": 1e-30}],
        "controls": [{"name": "base model", "model": "base", "p_value": 0.4, "tokens_scored": 3000}],
        "verdict": "distilled",
        "p_value": 2e-30,
    }
    files, ev = make_report(
        inst.store, tmp_path / "out", account=inst.harvester, scan_files=[inst.write_scan(tmp_path, "s.json", data)]
    )
    _, html_text, _ = check_package(files)
    s = ev["scans"][0]
    assert s["subject_result"]["p_corrected"] == 3e-20 and s["subject_result"]["fraction"] == 0.35
    assert [c["tokens"] for c in s["curve"]] == [1000, 4000] and s["best_account"] == inst.harvester
    assert s["controls"][0]["kind"] == "model" and not s["controls"][0]["significant"]
    assert ev["summary"]["confidence"][0]["one_in_words"] == "10^19 (a 1 followed by 19 zeros)"
    assert "sk-ad-SECRETSECRET" not in html_text + files.json.read_text()


def test_sampling_scheme_scan_reads_as_mean_scores(inst, tmp_path):
    """A Gumbel-max scan has no green lists: the report shows each test's mean score against the null mean (1 for
    -log(1 - u)), never a count "on our secret lists" nor a share over 100%."""
    suspect = inst.scan(inst.harvester, "student-of-harvest-labs", scheme="gumbel-dual")
    assert suspect["significant"] and suspect["parameters"]["gamma"] == 1.0
    files, ev = make_report(
        inst.store,
        tmp_path / "out",
        account=inst.harvester,
        scan_files=[inst.write_scan(tmp_path, "s.json", suspect)],
        now=T0 + timedelta(days=3),
    )
    _, _, page = check_package(files)
    sc = ev["scans"][0]
    row = next(a for a in suspect["accounts"] if a["account"] == inst.harvester)
    assert sc["score_kind"] == "mean" and sc["subject_result"]["green"] is None
    assert sc["subject_result"]["fraction"] == pytest.approx(row["green"] / row["n"])
    assert sc["subject_result"]["expected_fraction"] == 1.0 and sc["provider"]["expected_fraction"] == 1.0
    found = " ".join(f["text"] for f in ev["summary"]["findings"])
    assert "on average" in found and "secret lists" not in found and "fell on" not in found
    assert "Mean score by chance" in page.visible and "On the secret lists" not in page.visible
    assert "green list" not in page.visible.split("How the method works")[1].split("Why repeated text")[0]
    tested = page.visible.split("What the method has been tested against")[1].split("The records")[0]
    assert all(w in tested for w in ("rewording", "steering the copying model away", "mixing our answers"))
    assert "no proof that a model was not trained" in tested
    # a green-list scan keeps its counts and shares
    green = inst.scan(inst.harvester, "other-student")
    _, ev2 = make_report(
        inst.store,
        tmp_path / "out2",
        account=inst.harvester,
        scan_files=[inst.write_scan(tmp_path, "g.json", green)],
        now=T0 + timedelta(days=3),
    )
    assert "score_kind" not in ev2["scans"][0] and "secret lists" in " ".join(
        f["text"] for f in ev2["summary"]["findings"]
    )


def test_no_monitor_data(inst, tmp_path):
    class OldStore:
        """A store from before the monitor: no alerts, no enforcement."""

        def __init__(self, store):
            self._s = store

        def __getattr__(self, name):
            if name in ("list_alerts", "get_enforcement"):
                raise AttributeError(name)
            return getattr(self._s, name)

    files, ev = make_report(OldStore(inst.store), tmp_path / "out", account=inst.harvester)
    _, _, page = check_package(files)
    assert not ev["monitor"]["available"] and "no monitor data" in page.visible
    assert sum(1 for tag, k, _ in page.attrs if tag == "img" and k == "src") == 1  # the timeline only


@pytest.mark.parametrize(
    ("p", "n", "words"),
    [
        (3e-7, 3_300_000, "3.3 million"),
        (0.0004, 2500, "2,500"),
        (1e-3, 1000, "1,000"),
        (2.5e-10, 4e9, "4 billion"),
        (0.3, 3, "3"),
        (7e-13, 1.4e12, "1.4 trillion"),
    ],
)
def test_one_in_rounds_down(p, n, words):
    got_n, got_words = rep.one_in(p)
    assert got_n == pytest.approx(n) and got_words == words and got_n * p <= 1 + 1e-12


def test_p_words_and_fmt_p():
    assert rep.p_words(1e-9) == "about once in 1 billion" and rep.p_words(0.9e-9) == "less than once in 1.1 billion"
    assert rep.p_words(0.0) == "less than once in 10^300 (a 1 followed by 300 zeros)"
    assert rep.fmt_p(3.04e-7) == "3.0 × 10^-7" and rep.fmt_p(0.042) == "0.042" and rep.fmt_p(None) == "-"


def test_account_without_traffic(inst, tmp_path):
    acct, _, _ = inst.store.create_account("Quiet Co")
    files, ev = make_report(inst.store, tmp_path / "out", account=acct.id)
    _, _, page = check_package(files)
    assert ev["exchanges"]["count"] == 0 and ev["audit"]["checkpoints"] == []
    first = ev["summary"]["findings"][0]["text"]
    assert first == f"Our audit log holds no exchanges of account {acct.id} (“Quiet Co”)."
    assert not any(tag == "img" for tag, _, _ in page.attrs)


def test_bad_inputs(inst, tmp_path):
    with pytest.raises(InputError, match="exactly one"):
        rep.resolve_subject(inst.store)
    with pytest.raises(InputError, match="exactly one"):
        rep.resolve_subject(inst.store, account=inst.harvester, cluster="x")
    with pytest.raises(InputError, match="not found"):
        rep.resolve_subject(inst.store, account="acct_nobody")
    with pytest.raises(InputError, match="cluster nope not found"):
        rep.resolve_subject(inst.store, cluster="nope")
    with pytest.raises(InputError, match="acct_ghost"):
        rep.resolve_subject(inst.store, cluster=f"{inst.harvester},acct_ghost")
    with pytest.raises(InputError, match="not found"):
        rep.load_scan(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        rep.load_scan(bad)
    bad.write_text('{"mode": "open"}')
    with pytest.raises(InputError, match="no p_value"):
        rep.load_scan(bad)
    with pytest.raises(InputError, match="suspect model not found"):
        make_report(inst.store, tmp_path / "o", account=inst.harvester, suspect_model=str(tmp_path / "none"))


# ---- the command line ----------------------------------------------------------------------------------
@pytest.fixture
def cli_env(inst, monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", bytes(range(32)).hex())
    monkeypatch.setenv("ANTIDISTILL_AUDIT_CHECKPOINT_EVERY", "10")
    get_settings.cache_clear()
    return inst


def run(capsys, *argv):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    c = capsys.readouterr()
    return code, c.out, c.err


def test_cli_writes_the_package(cli_env, tmp_path, capsys):
    inst = cli_env
    scan = inst.write_scan(tmp_path, "s.json", inst.scan(inst.harvester, "student"))
    code, out, err = run(
        capsys,
        "report",
        "--account",
        inst.harvester,
        "--scan",
        scan,
        "--out",
        tmp_path / "pkg",
        "--json",
        "--database-url",
        inst.url,
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["verdict"] == "attributed" and res["audit_ok"] and Path(res["html"]).is_file()
    ev = json.loads(Path(res["json"]).read_text())
    assert ev["audit"]["reverify"][0]["command"].endswith(f"--database-url {shlex.quote(inst.url)}")
    code, out, err = run(
        capsys, "report", "--account", inst.harvester, "--out", tmp_path / "pkg2", "--database-url", inst.url
    )
    assert code == 0 and "report.html" in out


@pytest.mark.parametrize("case", ["neither", "both", "unknown", "missing-scan", "malformed", "no-out"])
def test_cli_errors_are_one_line(cli_env, tmp_path, capsys, case):
    inst = cli_env
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    args = {
        "neither": [],
        "both": ["--account", inst.harvester, "--cluster", "c"],
        "unknown": ["--account", "acct_nobody"],
        "missing-scan": ["--account", inst.harvester, "--scan", tmp_path / "nope.json"],
        "malformed": ["--account", inst.harvester, "--scan", bad],
        "no-out": ["--account", inst.harvester],
    }[case]
    out_args = [] if case == "no-out" else ["--out", tmp_path / "o"]
    code, out, err = run(capsys, "report", *args, *out_args, "--database-url", inst.url)
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o" / "report.html").exists()


@pytest.mark.slow
def test_cli_scans_a_suspect_model_now(cli_env, shared_cache_env, tmp_path, capsys):
    """--suspect-model runs the open-weights scan on the account's exchanges: the served model itself, read as a
    suspect, is not accused, and it is also the scan's control."""
    from antidistill.models.embedded import embedded_gguf_path

    inst = cli_env
    code, out, err = run(
        capsys,
        "report",
        "--account",
        inst.harvester,
        "--suspect-model",
        embedded_gguf_path(),
        "--out",
        tmp_path / "pkg",
        "--json",
        "--database-url",
        inst.url,
    )
    assert code == 0, err
    res = json.loads(out)
    ev, _, _ = check_package(
        rep.ReportFiles(Path(res["html"]), Path(res["json"]), Path(res["html"]).parent / "SHA256SUMS")
    )
    (scan,) = ev["scans"]
    assert scan["mode"] == "open" and scan["tokens_scored"] > 0 and scan["source"]["path"].startswith("(scanned now)")
    assert res["verdict"] == "not_shown" and not scan["significant"]
    assert [c["name"] for c in scan["controls"] if c["kind"] == "model"] == ["model:teacher"]
