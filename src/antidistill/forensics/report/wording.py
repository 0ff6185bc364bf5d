"""The evidence in plain words: p-values a non-specialist can read, the findings ("What we found"), the
statements of confidence ("How sure we are") and the headline.

What a p-value means here, in words: the probability that a model which never saw our outputs would score at
least this high by chance. It is not the probability that the accusation is wrong, and the report says so.
Every function here is pure: the words are made from the :class:`~.evidence.Evidence` alone.
"""

from __future__ import annotations

import math
from typing import Any

from antidistill.forensics.report.evidence import Confidence, Evidence, Finding, ScanEntry, Summary, num
from antidistill.forensics.report.verdict import Verdict, control_table, decide

_BIG_WORDS = ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"))


# ---- p-values ------------------------------------------------------------------------------------------
def one_in(p: float) -> tuple[float | None, str]:
    """``1/p`` rounded *down* to two significant figures (so "less than once in N" stays true), and in words.

    Example:
        >>> one_in(3e-7)
        (3300000.0, '3.3 million')
        >>> one_in(0.0004)[1]
        '2,500'
        >>> one_in(1e-40)[1]
        '10^40 (a 1 followed by 40 zeros)'
    """
    if p <= 0.0:
        return None, "10^300 (a 1 followed by 300 zeros)"
    inv = 1.0 / p
    if inv >= 1e15:
        k = math.floor(math.log10(inv) + 1e-12)
        return 10.0**k, f"10^{k} (a 1 followed by {k} zeros)"
    e = math.floor(math.log10(inv) + 1e-12)
    step = 10.0 ** max(e - 1, 0)
    n = math.floor(inv / step + 1e-9) * step
    for scale, word in _BIG_WORDS:
        if n >= scale:
            return n, f"{_trim(n / scale)} {word}"
    return n, f"{round(n):,}"


def _trim(x: float) -> str:
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def p_words(p: float) -> str:
    """A p-value as a plain sentence fragment: how often chance alone would produce a result this strong.

    Example:
        >>> p_words(1e-9)
        'about once in 1 billion'
    """
    n, words = one_in(p)
    if p <= 0.0:
        return f"less than once in {words}"
    if p >= 0.5:
        return "about every other time or more often: chance explains it easily"
    # "less than once in N" only where p < 1/N holds strictly (N is rounded down, so it almost always does)
    return f"{'less than' if n is not None and n >= 10 and n * p < 1.0 - 1e-9 else 'about'} once in {words}"


def fmt_p(p: Any) -> str:
    """A p-value for reading: ``3.0 × 10^-7`` style (plain text), ``0.042`` for moderate values, ``-`` for none.

    Example:
        >>> fmt_p(3.04e-7), fmt_p(0.042), fmt_p(None)
        ('3.0 × 10^-7', '0.042', '-')
    """
    v = num(p)
    if v is None:
        return "-"
    if v == 0.0:
        return "< 10^-300"
    if v >= 1e-3:
        return f"{v:.3g}"
    m, e = f"{v:.1e}".split("e")
    return f"{m} × 10^{int(e)}"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _mean(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float | None, digits: int, missing: str = "-") -> str:
    return missing if x is None else f"{x:.{digits}%}"


# ---- the summary ---------------------------------------------------------------------------------------
def summarize(ev: Evidence) -> Summary:
    """The plain-words summary of the evidence (its ``summary``, if any, is not read)."""
    verdict = decide(ev)
    findings = [_harvest(ev)]
    confidence: list[Confidence] = []
    if not ev.suspects:
        findings.append(Finding("model", "No suspect model was tested for this report."))
    for i, s in enumerate(ev.scans):
        if s.role == "suspect":
            findings += [_model_finding(s), *_attribution_finding(ev, s)]
            confidence += _confidence(ev, i, s)
    findings += [*_controls_finding(ev), _monitor_finding(ev), _audit_finding(ev)]
    return Summary(
        verdict=verdict.outcome,
        controls_ok=verdict.controls_ok,
        headline=headline(ev, verdict),
        findings=tuple(findings),
        confidence=tuple(confidence),
    )


def subject_words(ev: Evidence) -> str:
    """The subject as a reader names it: ``account acct_… (“name”)`` or ``the group of N linked accounts “id”``."""
    s = ev.subject
    if s.kind == "account":
        name = ev.accounts[0].name if ev.accounts else ""
        return f"account {s.id}" + (f" (“{name}”)" if name else "")
    return f"the group of {len(s.account_ids)} linked accounts “{s.id}”"


def _is_cluster(ev: Evidence) -> bool:
    return ev.subject.kind == "cluster"


def _harvest(ev: Evidence) -> Finding:
    who, ex = subject_words(ev), ev.exchanges
    if not ex.count:
        return Finding("harvest", f"Our audit log holds no exchanges of {who}.")
    period = f"between {ex.first[:10]} and {(ex.last or '')[:10]}" if ex.first else ""
    marks = "." if not ex.unwatermarked else f"; {ex.unwatermarked:,} of them were not watermarked."
    text = (
        f"Our service answered {ex.count:,} requests from {who} {period}, sending "
        f"{'them' if _is_cluster(ev) else 'it'} {ex.completion_tokens:,} tokens (pieces of words) of generated "
        f"text. Every answer was recorded in our tamper-evident log{marks}"
    )
    return Finding("harvest", text.replace("  ", " "))


def _model_finding(s: ScanEntry) -> Finding:
    prov = s.provider
    if prov is None or not prov.n:
        return Finding(
            "model",
            f"We tested the suspect model “{s.suspect}”: the scan's overall result is "
            + ("significant." if s.significant else "not significant."),
        )
    conclusion = (
        "This is a significant excess: the model was very likely trained on our outputs."
        if s.significant
        else "This is not a significant excess: the test does not show that the model learned from our outputs."
    )
    if s.score_kind == "mean":
        measured = (
            f"We scored {_count(prov.n)} distinct word choices with our secret key: they scored "
            f"{_mean(prov.fraction)} on average, where the word choices of a model that never saw our outputs score "
            f"{_mean(prov.expected_fraction)} on average."
        )
    else:
        measured = (
            f"Of {_count(prov.n)} distinct word choices we checked, {_count(prov.green)} "
            f"({_pct(prov.fraction, 1)}) fell on our secret lists; a model that never saw our outputs lands there "
            f"about {_pct(prov.expected_fraction, 0, 'a fixed share')} of the time."
        )
    return Finding(
        "model",
        f"We tested the suspect model “{s.suspect}” for our service-wide watermark. {measured} {conclusion}",
    )


def _attribution_finding(ev: Evidence, s: ScanEntry) -> list[Finding]:
    who, sr = subject_words(ev), s.subject_result
    if sr is None:
        if not s.accounts_tested:
            return []
        return [
            Finding(
                "attribution",
                f"The scan did not test the {'keys' if _is_cluster(ev) else 'key'} of "
                f"{who}; its best-matching account was {s.best_account or 'none'}.",
            )
        ]
    plural = sr.kind == "cluster"
    checks = (
        f"{_count(sr.n)} checks (each word choice against each account's key, pooled)"
        if plural
        else f"{_count(sr.n)} checked word choices"
    )
    if s.subject_significant:
        conclusion = f"The model carries the mark of {who}: it was trained on text our service sent to " + (
            "these accounts." if plural else "this account."
        )
    else:
        conclusion = f"This does not show that the model was trained on the answers sent to {who}."
    return [
        Finding(
            "attribution",
            (
                (
                    f"Tested against the secret {'keys' if plural else 'key'} of {who}, {checks} scored "
                    f"{_mean(sr.fraction)} on average, against {_mean(sr.expected_fraction)} for text written without "
                    f"{'them' if plural else 'it'}. {conclusion}"
                )
                if s.score_kind == "mean"
                else f"Tested against the secret {'keys' if plural else 'key'} of {who}, {_count(sr.green)} of "
                f"{checks} ({_pct(sr.fraction, 1)}) fell on {'their' if plural else 'its'} lists. {conclusion}"
            ),
        )
    ]


def _confidence(ev: Evidence, index: int, s: ScanEntry) -> list[Confidence]:
    """How sure we are about each test of the suspect ``s`` (``index``: its place in ``scans``)."""
    who = subject_words(ev)
    plural = s.subject_result is not None and s.subject_result.kind == "cluster"
    tests = []
    if s.subject_p is not None:
        tests.append(
            (
                "subject",
                s.subject_p,
                "on these accounts' keys" if plural else "on this account's key",
                f"had never been trained on the answers our service sent to {who}",
            )
        )
    if s.p_value is not None:
        tests.append(("ours", s.p_value, "on our keys", "had never been trained on our outputs"))
    out = []
    for about, p, on, null in tests:
        n, words = one_in(p)
        out.append(
            Confidence(
                scan=index,
                suspect=s.suspect,
                about=about,
                p_value=p,
                alpha=s.alpha,
                one_in=n,
                one_in_words=words,
                significant=p <= s.alpha,
                text=_confidence_text(s, p, on, null),
            )
        )
    return out


def _confidence_text(s: ScanEntry, p: float, on: str, null: str) -> str:
    """One test in words: what chance would do if the null hypothesis (``null``) held, against the threshold."""
    threshold = fmt_p(s.alpha)
    if p <= s.alpha:
        return (
            f"If the suspect model “{s.suspect}” {null}, a result this strong {on} would happen by chance "
            f"{p_words(p)}: the p-value is {fmt_p(p)}. We call a result significant only below {threshold}, "
            f"that is, when it would happen by chance less often than once in {one_in(s.alpha)[1]}."
        )
    return (
        f"Even if the suspect model “{s.suspect}” {null}, a result at least this strong {on} would happen by "
        f"chance {p_words(p)}: the p-value is {fmt_p(p)}. That is not rare enough: we call a result significant "
        f"only below {threshold} (once in {one_in(s.alpha)[1]})."
    )


def _controls_finding(ev: Evidence) -> list[Finding]:
    ctrl = control_table(ev)
    if not ctrl:
        return []
    bad = [c.label for c in ctrl if c.significant]
    if bad:
        return [
            Finding(
                "controls",
                (
                    f"Warning: {len(bad)} of {len(ctrl)} control tests came out significant ({'; '.join(bad)}), "
                    + "although controls cannot carry our watermark. The test may be miscalibrated for this material; "
                    + "treat the results above with caution."
                ),
            )
        ]
    return [
        Finding(
            "controls",
            (
                f"All {len(ctrl)} control tests (models that never saw our outputs, and secret keys that never marked "
                f"anything, scored the same way) came out not significant, as they should: the test does not find our "
                f"watermark where it is absent."
            ),
        )
    ]


def _monitor_finding(ev: Evidence) -> Finding:
    who, mon = subject_words(ev), ev.monitor
    if not (mon.alerts or mon.actions or mon.enforcement):
        if not mon.available:
            return Finding("monitor", "No monitor data: this installation keeps no alerts.")
        return Finding("monitor", f"Our traffic monitor raised no alert on {who}.")
    sentences = []
    if mon.alerts:
        n = len(mon.alerts)
        sentences.append(
            f"Our traffic monitor raised {n} alert{'s' if n != 1 else ''} on {who} (highest level: "
            f"{mon.highest_level or '-'})."
        )
    acts = [str(a.action) for a in mon.actions if a.action]
    if acts:
        sentences.append(
            f"Under our terms of service we took {len(acts)} enforcement action"
            f"{'s' if len(acts) != 1 else ''} ({', '.join(acts)}), each recorded in the audit log."
        )
    in_force = [f"{acct} is under “{e.action}”" for acct, e in mon.enforcement.items() if e.in_force]
    if in_force:
        sentences.append("When this report was made, " + "; ".join(in_force) + ".")
    clauses = [c.id for c in ev.policy.clauses_breached]
    if clauses:
        sentences.append(f"Clauses of the terms of service cited: {', '.join(clauses)}.")
    return Finding("monitor", " ".join(sentences))


def _audit_finding(ev: Evidence) -> Finding:
    a = ev.audit
    v = a.verification
    if not v.ok:
        return Finding(
            "audit",
            (
                f"The audit log FAILED verification at record {v.first_bad_seq}: {v.problem}. Records from there on "
                f"cannot be relied upon as unaltered; {v.records:,} records before it verified."
            ),
        )
    unsigned = (
        f" {a.subject_records_unsigned:,} of this report's records come after the last signed checkpoint: "
        f"the signed head of the log covers them."
        if a.subject_records_unsigned
        else ""
    )
    return Finding(
        "audit",
        (
            f"The audit log verifies: all {v.records:,} records match their hashes and all {v.checkpoints:,} signed "
            f"checkpoints carry valid signatures, so the records above have not been altered since they were "
            f"signed.{unsigned}"
        ),
    )


def headline(ev: Evidence, verdict: Verdict) -> str:
    """The report's first sentence(s): the verdict in words, with the caveats that must not be missed."""
    who = subject_words(ev)
    them = "these accounts" if _is_cluster(ev) else "this account"
    text = {
        "attributed": f"The suspect model carries our watermark, and the mark of {who}: it was trained on outputs "
        f"our service sent to {them}.",
        "ours_not_attributed": f"The suspect model carries our watermark: it was trained on outputs of our service. "
        f"The test does not tie it to {who}.",
        "not_shown": "The tests do not show that the suspect model was trained on our outputs.",
        "not_tested": f"This report documents the activity of {who}; no suspect model was tested.",
    }[verdict.outcome]
    if verdict.tested and not verdict.controls_ok:
        text += " But a control test came out significant too, so the result must be reviewed before it is relied upon."
    if not verdict.audit_ok:
        text += " The audit log failed verification (see below)."
    return text


__all__ = ["fmt_p", "headline", "one_in", "p_words", "subject_words", "summarize"]
