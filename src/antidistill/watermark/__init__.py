"""The watermark: one green-list core shared by the logits processor, the scorer and the scans."""

from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import GreenListScheme, get_scheme, scheme_names

__all__ = ["GreenListScheme", "WatermarkConfig", "get_scheme", "scheme_names"]
