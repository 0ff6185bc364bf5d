"""Watermark: the scheme family (green-list and Gumbel-max members), its configuration and generation hooks."""

from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import GreenListScheme, Scheme
from antidistill.watermark.schemes import get_scheme, scheme_names

__all__ = ["GreenListScheme", "Scheme", "WatermarkConfig", "get_scheme", "scheme_names"]
