"""Forensics: radioactivity scans of suspect models (open weights, closed endpoint) and attribution to accounts.

The evidence report that a lawyer reads is built on the :class:`~antidistill.forensics.scan.ScanReport` these
scans return. Names are loaded lazily, so that ``antidistill --help`` does not import numpy and scipy.

Example:
    >>> from antidistill.forensics import ScanKeys, scan_open   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AccountResult": "attribution",
    "Attribution": "attribution",
    "BinomialTest": "attribution",
    "ClusterResult": "attribution",
    "ControlResult": "attribution",
    "CurvePoint": "attribution",
    "attribute_tuples": "attribution",
    "control_keys": "attribution",
    "pooled_test": "attribution",
    "EXCLUSION_POLICIES": "scan",
    "FedText": "scan",
    "ScanKeys": "scan",
    "ScanReport": "scan",
    "completion_tuples": "scan",
    "reading_tuples": "scan",
    "scan_closed": "scan",
    "scan_open": "scan",
    "scan_completions": "scan",
    "predict_top1": "scan",
    "load_suspect": "scan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
