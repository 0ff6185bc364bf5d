"""The HTTP gateway: OpenAI-compatible API, admin API, rate limits, audit, metrics (see :mod:`.app`).

``create_app`` is imported lazily, so that ``antidistill.cli.serve`` (registered in the CLI) does not load
FastAPI for ``antidistill --help``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from antidistill.gateway.app import create_app  # FastAPI & co. (over 1 s): not for `antidistill --help`

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
