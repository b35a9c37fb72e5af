"""WhatsApp provider statuses (merged webhook statuses per sent message)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "notify_provider_statuses",
        sa.Column("message_id", sa.String(length=256), nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_notify_provider_statuses")),
    )
    with op.batch_alter_table("notify_provider_statuses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_provider_statuses_delivery_id"), ["delivery_id"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("notify_provider_statuses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notify_provider_statuses_delivery_id"))
    op.drop_table("notify_provider_statuses")
