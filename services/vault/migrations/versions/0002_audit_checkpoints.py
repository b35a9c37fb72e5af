"""signed audit checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "vault_audit_checkpoints",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name=op.f("pk_vault_audit_checkpoints")),
    )
    with op.batch_alter_table("vault_tenants", schema=None) as batch_op:
        # Existing tenants have no checkpoint yet: the checkpointer signs their head on its first pass.
        batch_op.add_column(sa.Column("audit_checkpoint_seq", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("audit_checkpoint_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("vault_tenants", schema=None) as batch_op:
        batch_op.drop_column("audit_checkpoint_at")
        batch_op.drop_column("audit_checkpoint_seq")
    op.drop_table("vault_audit_checkpoints")
