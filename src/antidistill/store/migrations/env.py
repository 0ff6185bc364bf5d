"""Alembic environment. :func:`antidistill.store.sql.migrate` hands over an open connection in
``config.attributes["connection"]``, inside a transaction that already holds the migration lock; the
migrations run in that transaction (alembic sees an external transaction and leaves it to the caller).
"""

from __future__ import annotations

from alembic import context

from antidistill.store.schema import Base


def run_migrations() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (SQL script) migrations are not supported; run them through Store.open")
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the migrations through antidistill.store.sql.migrate, which passes a connection")
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


# Imported outside an alembic run (e.g. by pytest's doctest collection) there is no context to run in.
if hasattr(context, "config"):
    run_migrations()
