"""Writing the evidence package (``report.json``, ``report.html``, ``SHA256SUMS``), and :func:`make_report`, what
``antidistill report`` does from its options to the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.forensics.report.evidence import Evidence, Subject
from antidistill.forensics.report.gather import gather, load_policy, resolve_subject
from antidistill.forensics.report.render import check_templates, render_html
from antidistill.forensics.report.scans import check_scan, load_scan, source_of
from antidistill.settings import Settings
from antidistill.store.api import Storage


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


def write_report(evidence: Evidence | Mapping[str, Any], out_dir: str | os.PathLike[str], *,
                 template_dir: str | os.PathLike[str] | None = None) -> ReportFiles:
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
    sums = "".join(f"{hashlib.sha256(t.encode('utf-8')).hexdigest()}  {name}\n"
                   for name, t in (("report.json", jtext), ("report.html", htext)))
    try:
        for path, text in ((files.json, jtext), (files.html, htext), (files.sums, sums)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write the report into {out}: {exc.strerror or type(exc).__name__}") from None
    return files


def run_scan(store: Storage, subject: Subject, suspect_model: str, *, settings: Settings | None = None,
             max_texts: int | None = None, teacher_control: bool = True) -> dict[str, Any]:
    """Scan the open weights at ``suspect_model`` now on the subject's exchanges
    (:func:`antidistill.forensics.workflow.scan_open_on_audit`), and return the result as a dict, as
    ``--scan FILE`` would have held it.

    Raises:
        InputError: no such model, no watermarked exchange to feed, a different tokenizer.
        ConfigError: no master key here (the scan needs the keys the gateway marked with).
    """
    # the scan imports numpy, scipy, transformers' tokenizers and the model loader (about 2 s): only a report
    # that scans a model now pays for them
    from antidistill.forensics.workflow import scan_open_on_audit

    result = scan_open_on_audit(store, suspect_model, subject.account_ids,
                                cluster_id=subject.id if subject.kind == "cluster" else None, settings=settings,
                                max_texts=max_texts, teacher_control=teacher_control)
    data = json.loads(json.dumps(result.to_dict(), default=str))
    check_scan(data, f"scan of {suspect_model}")
    return data


def make_report(store: Storage, out_dir: str | os.PathLike[str], *, account: str | None = None,
                cluster: str | None = None, scan_files: Sequence[str | os.PathLike[str]] = (),
                control_files: Sequence[str | os.PathLike[str]] = (), suspect_model: str | None = None,
                policy_file: str | os.PathLike[str] | None = None, database: str | None = None,
                now: datetime | None = None, template_dir: str | os.PathLike[str] | None = None
                ) -> tuple[ReportFiles, dict[str, Any]]:
    """What ``antidistill report`` does: check the inputs, gather the evidence, write the package.

    Every input (the subject, the scan files, the policy, the templates) is checked before anything is computed
    or written, so bad input costs nothing.

    Returns:
        the files written and the evidence as its JSON (the content of ``report.json``).
    """
    subject = resolve_subject(store, account=account, cluster=cluster)
    scans = [load_scan(f) for f in scan_files]
    controls = [load_scan(f) for f in control_files]
    policy = load_policy(policy_file)
    check_templates(template_dir)
    if suspect_model is not None:
        data = run_scan(store, subject, suspect_model)
        scans.append((data, source_of(data, f"(scanned now) {suspect_model}")))
    evidence = gather(store, subject, scans=scans, control_scans=controls, policy=policy, database=database,
                      now=now)
    return write_report(evidence, out_dir, template_dir=template_dir), evidence.to_json()


__all__ = ["ReportFiles", "evidence_json", "make_report", "run_scan", "write_report"]
