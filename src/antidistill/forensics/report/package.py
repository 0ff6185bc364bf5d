"""Writing the evidence package (``report.json``, ``report.html``, ``SHA256SUMS``). What ``antidistill report``
does from its options to the files (a scan now included) is :func:`antidistill.workflows.report.make_report`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.forensics.report.evidence import Evidence
from antidistill.forensics.report.render import render_html


@dataclass(frozen=True)
class ReportFiles:
    """Where :func:`write_report` put the package."""

    html: Path
    json: Path
    sums: Path


def evidence_json(evidence: Evidence | Mapping[str, Any]) -> str:
    """The JSON text of the evidence (sorted keys, readable non-ASCII, no NaN)."""
    data = evidence.to_json() if isinstance(evidence, Evidence) else evidence
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str) + "\n"


def write_report(
    evidence: Evidence | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    template_dir: str | os.PathLike[str] | None = None,
) -> ReportFiles:
    """Write ``report.json``, ``report.html`` and ``SHA256SUMS`` into ``out_dir`` (created if needed).

    The HTML is rendered from the JSON text as written (read back), so it shows exactly what the JSON holds.
    ``template_dir``: templates that take precedence over the shipped ones (:mod:`.render`).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or type(exc).__name__}") from None
    files = ReportFiles(out / "report.html", out / "report.json", out / "SHA256SUMS")
    jtext = evidence_json(evidence)
    htext = render_html(json.loads(jtext), template_dir=template_dir)
    sums = "".join(
        f"{hashlib.sha256(t.encode('utf-8')).hexdigest()}  {name}\n"
        for name, t in (("report.json", jtext), ("report.html", htext))
    )
    try:
        for path, text in ((files.json, jtext), (files.html, htext), (files.sums, sums)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write the report into {out}: {exc.strerror or type(exc).__name__}") from None
    return files


__all__ = ["ReportFiles", "evidence_json", "write_report"]
