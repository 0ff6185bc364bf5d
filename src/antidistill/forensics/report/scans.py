"""Scan results as evidence: reading a scan file (the JSON of ``antidistill scan``), withholding secrets, and
the scan's answers for the report's subject (:class:`~.evidence.ScanEntry`).

A scan file comes from outside this installation (another machine, an older version, a hand-written adapter),
so every field is checked before it is used, and fields whose names suggest a secret never reach the report.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from antidistill.detection.stats import binomial_sf, z_score
from antidistill.errors import InputError
from antidistill.forensics.report.evidence import (
    ControlEntry,
    CurvePoint,
    KeyControls,
    ScanEntry,
    ScanSource,
    Subject,
    SubjectResult,
    TestResult,
    as_int,
    is_prob,
    num,
    opt_str,
)
from antidistill.watermark.schemes import scheme_class, scheme_names

DEFAULT_ALPHA = 1e-3
MAX_SCAN_BYTES = 64 * 1024 * 1024

# Names of fields that may hold secrets; their values never reach the report, whatever a scan file contains.
_SECRET_NAME = re.compile(r"(secret|master_?key|api_?key$|hashing_?key|private_?key|password|key_?value)", re.I)


def scrub(obj: Any) -> Any:
    """``obj`` with the value of every field whose name suggests a secret replaced by ``"[withheld]"``.

    Example:
        >>> scrub({"key_id": "acct:a:v1", "hashing_key": 123, "n": [{"api_key": "sk-ad-x"}]})
        {'key_id': 'acct:a:v1', 'hashing_key': '[withheld]', 'n': [{'api_key': '[withheld]'}]}
    """
    if isinstance(obj, Mapping):
        return {str(k): ("[withheld]" if _SECRET_NAME.search(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    return obj


def load_scan(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a scan result (``ScanReport.to_dict()`` as JSON) and describe the file.

    Returns:
        ``(scan, source)`` with ``source = {"path", "sha256", "bytes"}``.

    Raises:
        InputError: the file is missing, too large, not JSON, or not a scan result.
    """
    p = Path(path)
    try:
        raw = p.read_bytes() if p.stat().st_size <= MAX_SCAN_BYTES else None
    except FileNotFoundError:
        raise InputError(f"scan file not found: {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read scan file {p}: {exc.strerror or type(exc).__name__}") from None
    if raw is None:
        raise InputError(f"scan file {p} is larger than {MAX_SCAN_BYTES // 2**20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise InputError(f"scan file {p} is not valid JSON: {msg}") from None
    check_scan(data, str(p))
    return data, source_of(data, str(p), raw)


def source_of(scan: Any, path: str, raw: bytes | None = None) -> dict[str, Any]:
    """How a report names a scan result: ``{"path", "sha256", "bytes"}`` of the file's bytes (``raw``), or of the
    scan's canonical JSON (sorted keys) when it was made in this process rather than read from a file."""
    if raw is None:
        raw = json.dumps(scan, sort_keys=True).encode("utf-8")
    return {"path": path, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def check_scan(data: Any, name: str = "scan") -> None:
    """Raise :class:`InputError` unless ``data`` looks like a scan result (an object with a p-value)."""
    if not isinstance(data, dict):
        raise InputError(f"{name} is not a scan result: expected a JSON object, got {type(data).__name__}")
    provider = data.get("provider")
    has_p = is_prob(data.get("p_value")) or (isinstance(provider, dict) and is_prob(provider.get("p_value")))
    if not has_p:
        raise InputError(f"{name} is not a scan result: no p_value (expected the JSON of antidistill scan)")
    for fld in ("accounts", "clusters", "curve", "controls"):
        if data.get(fld) is not None and not isinstance(data[fld], list):
            raise InputError(f"{name}: {fld} must be a list, got {type(data[fld]).__name__}")


# ---- one scan as evidence ------------------------------------------------------------------------------
def _obj(v: Any) -> dict[str, Any]:
    """``v`` if it is a JSON object, else an empty one (a scan file may hold anything)."""
    return v if isinstance(v, dict) else {}


#: members of the scheme family that mark by sampling (their scans sum -log(1 - u), not green indicators)
SAMPLING_SCHEMES = frozenset(n for n in scheme_names() if scheme_class(n).kind == "sample")


def _gamma(scan: dict[str, Any]) -> float | None:
    params = _obj(scan.get("parameters"))
    for cand in (params.get("watermark"), params.get("config"), params.get("watermark_config"), params):
        if isinstance(cand, dict) and cand.get("scheme") in SAMPLING_SCHEMES:
            return None  # a Gumbel-max scan: its scores are not green counts, there is no green fraction to expect
        if isinstance(cand, dict) and is_prob(cand.get("gamma")) and 0 < cand["gamma"] < 1:
            return float(cand["gamma"])
    return None


def _null_mean(scan: dict[str, Any]) -> float | None:
    """The mean score of one word choice under the null, for a scan of a sampling scheme (``None`` otherwise):
    its scores are keyed random numbers turned into ``-log(1 - u)`` (mean 1) or tournament bits, not green
    indicators, so the report shows a mean score against the mean of text written without the key."""
    params = _obj(scan.get("parameters"))
    for cand in (params.get("watermark"), params.get("config"), params.get("watermark_config"), params):
        if isinstance(cand, dict) and cand.get("scheme") in SAMPLING_SCHEMES:
            mean = num(params.get("gamma"))  # the scanner writes its scheme's null mean under this name
            return mean if mean is not None and mean > 0 else None
    return None


def _alpha(scan: dict[str, Any]) -> float:
    params = _obj(scan.get("parameters"))
    for v in (params.get("alpha"), scan.get("alpha")):
        if is_prob(v) and 0 < v < 1:
            return float(v)
    return DEFAULT_ALPHA


def _result(row: dict[str, Any], gamma: float | None, null_mean: float | None = None) -> dict[str, Any]:
    """The fields of a :class:`TestResult` from a scan's row (provider, account or cluster).

    For a sampling scheme (``null_mean`` given) there is no green count: ``green`` is ``None``, ``fraction`` the
    mean score of a word choice and ``expected_fraction`` that mean under the null."""
    n = as_int(row.get("n"))
    if null_mean is not None:
        total = num(row.get("green"))
        mean = total / n if total is not None and n else None
        green, expected = None, null_mean
    else:
        green, expected = as_int(row.get("green")), gamma
        mean = green / n if green is not None and n else None
    return {
        "green": green,
        "n": n,
        "fraction": mean,
        "expected_fraction": expected,
        "p_value": num(row.get("p_value")),
        "p_corrected": num(row.get("p_corrected")),
        "z": num(row.get("z")),
        "key_id": row.get("key_id") if isinstance(row.get("key_id"), str) else None,
    }


def _row_account(row: Any) -> str | None:
    if isinstance(row, dict):
        a = row.get("account_id", row.get("account"))
        return str(a) if a is not None else None
    return str(row) if isinstance(row, str) else None


def _subject_result(
    scan: dict[str, Any], subject: Subject, gamma: float | None, null_mean: float | None = None
) -> SubjectResult | None:
    """The scan's answer for the subject: the account's attribution row, the cluster's pooled row, or (for a
    cluster the scan did not pool) the pooled counts of its accounts, computed here with the exact binomial test."""
    accts = {_row_account(r): r for r in scan.get("accounts") or [] if isinstance(r, dict)}
    if subject.kind == "account":
        row = accts.get(subject.id)
        if row is None:
            return None
        return SubjectResult(kind="account", id=subject.id, computed_by="scan", **_result(row, gamma, null_mean))
    want = set(subject.account_ids)
    for c in scan.get("clusters") or []:
        if isinstance(c, dict) and (c.get("cluster_id") == subject.id or set(c.get("accounts") or []) == want):
            return SubjectResult(kind="cluster", id=subject.id, computed_by="scan", **_result(c, gamma, null_mean))
    rows = [accts[a] for a in subject.account_ids if a in accts]
    return _pooled(scan, subject, rows, gamma)


def _pooled(
    scan: dict[str, Any], subject: Subject, rows: list[dict[str, Any]], gamma: float | None
) -> SubjectResult | None:
    """The cluster's accounts' counts pooled into one exact binomial test, where that test is exact."""
    params = _obj(scan.get("parameters"))
    # Each account row is the best of its key versions; summing such maxima is exact only when every account has
    # one version (then the rows are K independent Binomial(n, gamma) counts on the same positions).
    one_version = as_int(params.get("account_keys")) is not None and params.get("account_keys") == params.get(
        "accounts"
    )
    if (
        not rows
        or gamma is None
        or not one_version
        or any(as_int(r.get("green")) is None or as_int(r.get("n")) is None for r in rows)
    ):
        return None
    # detection.stats pulls in numpy and scipy (about 2 s); only a cluster the scan did not pool needs them

    green = sum(int(r["green"]) for r in rows)
    n = sum(int(r["n"]) for r in rows)
    p = float(binomial_sf(green, n, gamma)) if n else 1.0
    # The cluster was named before the scan (by the monitor or the complainant): one test, nothing to correct.
    return SubjectResult(
        kind="cluster",
        id=subject.id,
        computed_by=f"the report, pooling the green counts of {len(rows)} of "
        f"{len(subject.account_ids)} accounts (exact binomial test)",
        green=green,
        n=n,
        fraction=green / n if n else None,
        expected_fraction=gamma,
        p_value=p,
        p_corrected=p,
        z=z_score(green, n, gamma) if n else None,
        key_id=None,
    )


def _controls(scan: dict[str, Any], alpha: float) -> tuple[tuple[ControlEntry, ...], KeyControls | None]:
    """The scan's controls: never-issued keys (many tests: corrected for their number, as the scanner does) and
    known-clean models (each one test). Returns them and a summary of the keyed ones."""
    raw = [c for c in scan.get("controls") or [] if isinstance(c, dict)]
    n_keys = sum(1 for c in raw if not c.get("model"))
    out = []
    for c in raw:
        p = num(c.get("p_value"))
        is_key = not c.get("model")
        p_corr = min(1.0, p * n_keys) if p is not None and is_key else p
        out.append(
            ControlEntry(
                name=str(c.get("name") or c.get("key") or c.get("model") or "control"),
                kind="key" if is_key else "model",
                model=opt_str(c.get("model")),
                key=opt_str(c.get("key")),
                green=as_int(c.get("green")),
                tokens_scored=as_int(c.get("tokens_scored")),
                p_value=p,
                p_corrected=p_corr,
                significant=p_corr is not None and p_corr <= alpha,
            )
        )
    if not n_keys:
        return tuple(out), None
    low = min((c.p_value for c in out if c.kind == "key" and c.p_value is not None), default=None)
    summary = KeyControls(
        count=n_keys,
        min_p=low,
        min_p_corrected=None if low is None else min(1.0, low * n_keys),
        significant=any(c.significant for c in out if c.kind == "key"),
    )
    return tuple(out), summary


def _curve(scan: dict[str, Any]) -> tuple[CurvePoint, ...]:
    pts = []
    for pt in scan.get("curve") or []:
        if not isinstance(pt, dict):
            continue
        t = as_int(pt.get("tokens_scored", pt.get("tokens")))
        p = num(pt.get("provider_p", pt.get("p_value")))
        b = num(pt.get("best_account_p"))
        if t is not None and (p is not None or b is not None):
            pts.append(CurvePoint(tokens=t, p_value=p, best_account_p=b))
    return tuple(sorted(pts, key=lambda x: x.tokens))


def scan_entry(scan: dict[str, Any], source: Mapping[str, Any], role: str, subject: Subject) -> ScanEntry:
    """A scan result (as :func:`load_scan` read it) as evidence about ``subject``, secrets withheld.

    Args:
        scan: the scan result.
        source: where it came from (``{"path", "sha256", "bytes"}``).
        role: ``"suspect"`` or ``"control"`` (a model known not to have been trained on our outputs).
        subject: whom the report is about: its key(s) are looked up among the scan's accounts and clusters.
    """
    scan = scrub(scan)
    source = scrub(source)
    gamma, alpha, null_mean = _gamma(scan), _alpha(scan), _null_mean(scan)
    provider = scan.get("provider") if isinstance(scan.get("provider"), dict) else None
    p = num(scan.get("p_value"))
    if p is None and provider is not None:
        p = num(provider.get("p_value"))
    controls, key_controls = _controls(scan, alpha)
    subj = _subject_result(scan, subject, gamma, null_mean)
    subj_p = None if subj is None else (subj.p_corrected if subj.p_corrected is not None else subj.p_value)
    controls_ok = scan.get("controls_ok")
    return ScanEntry(
        role=role,
        source=ScanSource(path=str(source.get("path")), sha256=source.get("sha256"), bytes=source.get("bytes")),
        suspect=str(scan.get("suspect") or source.get("path") or "suspect model"),
        mode=opt_str(scan.get("mode")),
        alpha=alpha,
        gamma=gamma,
        p_value=p,
        significant=p is not None and p <= alpha,
        verdict=scan.get("verdict") if isinstance(scan.get("verdict"), str) else None,
        texts=as_int(scan.get("texts")),
        tokens_seen=as_int(scan.get("tokens_seen")),
        tokens_scored=as_int(scan.get("tokens_scored")),
        skipped={str(k): v for k, v in _obj(scan.get("skipped")).items()},
        provider=None if provider is None else TestResult(**_result(provider, gamma, null_mean)),
        subject_result=subj,
        subject_p=subj_p,
        subject_significant=subj_p is not None and subj_p <= alpha,
        best_account=_row_account(scan.get("best_account")),
        attributed_account=opt_str(scan.get("attributed_account")),
        attributed_cluster=opt_str(scan.get("attributed_cluster")),
        accounts_tested=len(scan.get("accounts") or []),
        controls=controls,
        key_controls=key_controls,
        controls_ok=controls_ok if isinstance(controls_ok, bool) else not any(c.significant for c in controls),
        curve=_curve(scan),
        parameters=_obj(scan.get("parameters")),
        raw=scan,
        score_kind="green" if null_mean is None else "mean",
    )


__all__ = ["DEFAULT_ALPHA", "MAX_SCAN_BYTES", "check_scan", "load_scan", "scan_entry", "scrub", "source_of"]
