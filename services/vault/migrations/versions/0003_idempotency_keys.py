"""idempotency keys of PutRecord/PutRecords

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-30 11:00:00.000000
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
        "vault_idempotency_keys",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("request_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_vault_idempotency_keys")),
    )
    with op.batch_alter_table("vault_idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_tenant_created", ["tenant_id", "created_at"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("vault_idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_tenant_created")
    op.drop_table("vault_idempotency_keys")
