"""Signed heads and verbatim requests: the head row keeps an Ed25519 signature renewed at every commit; an audit
record keeps the request body exactly as received.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table with a CHECK constraint in place for every column type
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("public_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("signature", sa.String(128), nullable=True))
    op.add_column("audit_records", sa.Column("request_raw", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_records", "request_raw")
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("signature")
        batch.drop_column("public_key")
        batch.drop_column("signed_at")
