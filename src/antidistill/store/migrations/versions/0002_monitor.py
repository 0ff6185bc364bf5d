"""Monitor: alerts (assessments that reached the policy, with the action taken) and enforcement state per account.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "monitor_alerts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("cluster_id", sa.Text(), nullable=True),
        sa.Column("risk", sa.Double(), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("reasons", _JSON, nullable=False),
        sa.Column("scores", _JSON, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("clause", sa.String(64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("audit_seq", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_monitor_alerts"),
    )
    op.create_index("ix_monitor_alerts_account_time", "monitor_alerts", ["account_id", "created_at"])
    op.create_index("ix_monitor_alerts_created_at", "monitor_alerts", ["created_at"])

    op.create_table(
        "monitor_enforcement",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("clause", sa.String(64), nullable=True),
        sa.Column("since", _TS, nullable=False),
        sa.Column("until", _TS, nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_by", sa.String(16), nullable=False),
        sa.Column("alert_id", sa.String(64), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("account_id", name="pk_monitor_enforcement"),
    )


def downgrade() -> None:
    op.drop_table("monitor_enforcement")
    op.drop_index("ix_monitor_alerts_created_at", table_name="monitor_alerts")
    op.drop_index("ix_monitor_alerts_account_time", table_name="monitor_alerts")
    op.drop_table("monitor_alerts")
