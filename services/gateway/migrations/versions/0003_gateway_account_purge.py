"""When a closed tenant's account information was purged (policy §7, 7 years after the closure).

Revision ID: 0003_gateway_account_purge
Revises: 0002_gateway_legal_offboarding
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_gateway_account_purge"
down_revision = "0002_gateway_legal_offboarding"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add tenants.account_purged_at."""
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("account_purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("account_purged_at")
