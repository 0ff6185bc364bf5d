"""The evidence report as a workflow: check every input, scan a suspect model now if asked (the scan workflow),
gather the evidence from the store, write the package (:mod:`antidistill.forensics.report`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from antidistill.forensics.report import ReportFiles, gather, load_policy, resolve_subject, write_report
from antidistill.forensics.report.evidence import Subject
from antidistill.forensics.report.render import check_templates
from antidistill.forensics.report.scans import check_scan, load_scan, source_of
from antidistill.store.api import Storage
from antidistill.workflows.scan import scan_open_on_audit


def run_scan(
    store: Storage,
    subject: Subject,
    suspect_model: str,
    *,
    settings: Any = None,
    max_texts: int | None = None,
    teacher_control: bool = True,
) -> dict[str, Any]:
    """Scan the open weights at ``suspect_model`` now on the subject's exchanges
    (:func:`antidistill.workflows.scan.scan_open_on_audit`), and return the result as a dict, as
    ``--scan FILE`` would have held it.

    Raises:
        InputError: no such model, no watermarked exchange to feed, a different tokenizer.
        ConfigError: no master key here (the scan needs the keys the gateway marked with).
    """
    result = scan_open_on_audit(
        store,
        suspect_model,
        subject.account_ids,
        cluster_id=subject.id if subject.kind == "cluster" else None,
        settings=settings,
        max_texts=max_texts,
        teacher_control=teacher_control,
    )
    data = json.loads(json.dumps(result.to_dict(), default=str))
    check_scan(data, f"scan of {suspect_model}")
    return data


def make_report(
    store: Storage,
    out_dir: str | os.PathLike[str],
    *,
    account: str | None = None,
    cluster: str | None = None,
    scan_files: Sequence[str | os.PathLike[str]] = (),
    control_files: Sequence[str | os.PathLike[str]] = (),
    suspect_model: str | None = None,
    policy_file: str | os.PathLike[str] | None = None,
    database: str | None = None,
    now: datetime | None = None,
    template_dir: str | os.PathLike[str] | None = None,
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
    evidence = gather(store, subject, scans=scans, control_scans=controls, policy=policy, database=database, now=now)
    return write_report(evidence, out_dir, template_dir=template_dir), evidence.to_json()
