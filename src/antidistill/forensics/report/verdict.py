"""The verdict: what the evidence shows, decided from the evidence alone (a pure function, no I/O).

The outcomes, strongest first:

* ``attributed``: a suspect model carries the mark of the subject's key(s): it was trained on outputs our service
  sent to the subject;
* ``ours_not_attributed``: a suspect carries our service-wide mark, but the subject's keys are not significant;
* ``not_shown``: no suspect's test is significant;
* ``not_tested``: no suspect model was tested; the report documents the subject's activity only.

Each test is significant when its (corrected) p-value is at most the scan's threshold ``alpha``, fixed before the
scan. The controls (models and keys that cannot carry our mark) must all come out not significant; when one does
not, ``controls_ok`` is false and the result must be reviewed before it is relied upon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from antidistill.forensics.report.evidence import Evidence

OUTCOMES = ("attributed", "ours_not_attributed", "not_shown", "not_tested")


@dataclass(frozen=True)
class ControlRow:
    """One control of the report, with the JSON path of its values (``path``; keys: ``path.min_p_corrected``)."""

    label: str
    where: str
    path: str
    p_value: float | None
    tokens_scored: int | None
    significant: bool

    @property
    def is_keys(self) -> bool:
        """Whether the row summarises a scan's never-issued keys (its p-value is ``path.min_p_corrected``)."""
        return self.path.endswith("key_controls")


@dataclass(frozen=True)
class Verdict:
    """What the evidence shows.

    Args:
        outcome: one of :data:`OUTCOMES`.
        controls_ok: no control test came out significant.
        audit_ok: the audit log verified when the report was made.
    """

    outcome: str
    controls_ok: bool
    audit_ok: bool

    @property
    def tested(self) -> bool:
        """Whether a suspect model was tested at all."""
        return self.outcome != "not_tested"


def control_table(ev: Evidence) -> tuple[ControlRow, ...]:
    """Every control of the report, one row each (a scan's never-issued keys summarised as one row)."""
    rows = []
    for i, s in enumerate(ev.scans):
        if s.role == "control":
            rows.append(
                ControlRow(
                    s.suspect,
                    "separate scan of a model that never saw our outputs",
                    f"scans.{i}",
                    s.p_value,
                    s.tokens_scored,
                    s.significant,
                )
            )
        for j, c in enumerate(s.controls):
            if c.kind == "model":
                rows.append(
                    ControlRow(
                        c.name,
                        f"model scanned with {s.suspect}",
                        f"scans.{i}.controls.{j}",
                        c.p_value,
                        c.tokens_scored,
                        c.significant,
                    )
                )
        if s.key_controls is not None:
            k = s.key_controls
            rows.append(
                ControlRow(
                    f"{k.count} keys that never marked anything",
                    f"the text of {s.suspect}, scored with random keys",
                    f"scans.{i}.key_controls",
                    k.min_p_corrected,
                    s.tokens_scored,
                    k.significant,
                )
            )
    return tuple(rows)


def control_rows(ev: Evidence | Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`control_table` as dicts, of the typed evidence or of its JSON."""
    typed = ev if isinstance(ev, Evidence) else Evidence.from_json(ev)
    return [asdict(r) for r in control_table(typed)]


def decide(ev: Evidence) -> Verdict:
    """The verdict of the evidence (its ``summary`` is not read)."""
    suspects = ev.suspects
    if not suspects:
        outcome = "not_tested"
    elif any(s.subject_significant for s in suspects):
        outcome = "attributed"
    elif any(s.significant for s in suspects):
        outcome = "ours_not_attributed"
    else:
        outcome = "not_shown"
    controls_ok = not any(c.significant for c in control_table(ev))
    return Verdict(outcome, controls_ok, ev.audit.verification.ok)


__all__ = ["OUTCOMES", "ControlRow", "Verdict", "control_rows", "control_table", "decide"]
