"""``antidistill demo --quick`` end to end on the real model (slow)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_demo_end_to_end(capsys, tmp_path, shared_cache_env):
    from antidistill.cli import main

    report = tmp_path / "report"
    try:
        main(["demo", "--quick", "--report-dir", str(report)])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert "checks passed" in out and "FAILED" not in out
    for stage in ("7. Watch", "8. Prove"):
        assert stage in out
    evidence = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert evidence["subject"]["kind"] == "account"
    assert (report / "report.html").is_file() and (report / "SHA256SUMS").is_file()
