"""Detection: exact scoring of token sequences, attribution across many keys, windowed scans."""

from antidistill.detection.detector import Detector
from antidistill.detection.results import AttributionResult, DetectionReport, ScoreResult, SpanResult

__all__ = ["AttributionResult", "DetectionReport", "Detector", "ScoreResult", "SpanResult"]
