"""The evidence package: one self-contained HTML file a lawyer or a judge can read, and its JSON twin.

``antidistill report --account ID`` (or ``--cluster ID``) gathers what the installation knows about the
accounts in question and what the forensic scans found about a suspect model, and writes:

* ``report.json``: the machine-readable evidence (format :data:`FORMAT`): the accounts, the exchanges they
  harvested, the audit chain's verification and the signed checkpoints covering those exchanges, the monitor's
  alerts and enforcement actions, the scan p-values with their parameters, the controls, the policy clauses
  breached, and a plain-words summary;
* ``report.html``: the same evidence for people: the summary first ("What we found", "How sure we are"), then
  the evidence, a glossary and method notes, and appendices (exchanges, checkpoints, hashes). Plots are inline
  SVG images (``data:`` URIs); nothing is fetched from anywhere and no script runs;
* ``SHA256SUMS``: the hashes of both files, so a copy can be checked against the original.

The parts, in the order the data flows:

* :mod:`.gather` reads the store (the subject, accounts, audit log, monitor, policy) and :mod:`.scans` the scan
  files, into the typed evidence of :mod:`.evidence` (frozen dataclasses; ``to_json``/``from_json`` are exact
  inverses and the JSON is ``report.json``);
* :mod:`.verdict` decides what the evidence shows and :mod:`.wording` says it in plain words (pure functions);
* :mod:`.render` renders ``report.html`` from the JSON alone through the Jinja2 templates in ``templates/``
  (autoescaped; a ``template_dir`` of one's own takes precedence), with the SVG plots of :mod:`.plots`; every
  number in it sits in a ``<span data-field="path">`` naming its place in the JSON, with the exact value in
  ``data-value``;
* :mod:`.package` writes the three files (what the command does, a scan now included, is
  :func:`antidistill.workflows.report.make_report`).

What a p-value means here, in words: the probability that a model which never saw our outputs would score at
least this high by chance. It is not the probability that the accusation is wrong, and the report says so.

References: Kirchenbauer et al., "A Watermark for Large Language Models", ICML 2023
(https://arxiv.org/abs/2301.10226), the green-list watermark; Sander et al., "Watermarking Makes Language Models
Radioactive", NeurIPS 2024 (https://arxiv.org/abs/2402.14904), detecting that a model was trained on
watermarked text; Schneier & Kelsey, "Secure audit logs to support computer forensics", ACM TISSEC 1999, the
hash-chained log.
"""

from antidistill.forensics.report.evidence import FORMAT, Evidence, Subject, lookup
from antidistill.forensics.report.gather import (
    ACTION_PREFIX,
    MAX_JSON_EXCHANGES,
    build_evidence,
    gather,
    key_fingerprint,
    load_policy,
    resolve_subject,
)
from antidistill.forensics.report.package import ReportFiles, evidence_json, write_report
from antidistill.forensics.report.render import MAX_HTML_EXCHANGES, environment, render_html
from antidistill.forensics.report.scans import DEFAULT_ALPHA, MAX_SCAN_BYTES, check_scan, load_scan, scrub
from antidistill.forensics.report.verdict import Verdict, control_rows, control_table, decide
from antidistill.forensics.report.wording import fmt_p, one_in, p_words, summarize

__all__ = [
    "ACTION_PREFIX",
    "DEFAULT_ALPHA",
    "FORMAT",
    "MAX_HTML_EXCHANGES",
    "MAX_JSON_EXCHANGES",
    "MAX_SCAN_BYTES",
    "Evidence",
    "ReportFiles",
    "Subject",
    "Verdict",
    "build_evidence",
    "check_scan",
    "control_rows",
    "control_table",
    "decide",
    "environment",
    "evidence_json",
    "fmt_p",
    "gather",
    "key_fingerprint",
    "load_policy",
    "load_scan",
    "lookup",
    "one_in",
    "p_words",
    "render_html",
    "resolve_subject",
    "scrub",
    "summarize",
    "write_report",
]
