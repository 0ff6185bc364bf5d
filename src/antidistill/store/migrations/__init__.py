"""Alembic migrations of the store, run by :meth:`antidistill.store.sql.Store.open` (no ``alembic.ini`` needed)."""
