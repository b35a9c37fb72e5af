"""tenant closures: the gateway's shred_after and the last reopening

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 15:00:00
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
    with op.batch_alter_table("dsr_tenant_closures") as batch:
        batch.add_column(sa.Column("shred_after", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("reopened_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("dsr_tenant_closures") as batch:
        batch.drop_column("reopened_at")
        batch.drop_column("shred_after")
