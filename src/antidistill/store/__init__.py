"""Storage: accounts, API keys (hashes only) and the hash-chained audit log, in SQLite or PostgreSQL.

The interface (plain dataclasses) is in :mod:`.api`; the implementation, :class:`~.sql.Store`, in :mod:`.sql`.
``Store`` is imported lazily so that ``from antidistill.store.api import …`` does not load SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Store"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from antidistill.store.sql import Store  # SQLAlchemy (the gateway extra): not for users of .api

        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
