"""retention sweeps, offboarding, reminders

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 14:00:00
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
    with op.batch_alter_table("dsr_requests") as batch:
        batch.add_column(sa.Column("reminded_days", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("dsr_policies") as batch:
        batch.add_column(sa.Column("grace_period_days", sa.Integer(), nullable=False, server_default="30"))
        batch.add_column(sa.Column("retention", sa.String(length=400), nullable=False, server_default=""))
    op.create_table(
        "dsr_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_dsr_leases")),
    )
    op.create_table(
        "dsr_tenant_closures",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reminded_days", sa.Integer(), nullable=False),
        sa.Column("hold_id", sa.String(length=128), nullable=False),
        sa.Column("last_error", sa.String(length=64), nullable=False),
        sa.Column("certificate_id", sa.String(length=36), nullable=False),
        sa.Column("shredded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_dsr_tenant_closures")),
    )
    op.create_table(
        "dsr_shred_certificates",
        sa.Column("certificate_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=200), nullable=False),
        sa.Column("key_deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("records_removed", sa.Integer(), nullable=False),
        sa.Column("subjects_removed", sa.Integer(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vault_certificate_id", sa.String(length=36), nullable=False),
        sa.Column("audit_head", sa.String(length=64), nullable=False),
        sa.Column("evidence_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("certificate_id", name=op.f("pk_dsr_shred_certificates")),
        sa.UniqueConstraint("tenant_id", name=op.f("uq_dsr_shred_certificates_tenant_id")),
    )
    op.create_table(
        "dsr_retention_tasks",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("record_kind", sa.String(length=32), nullable=False),
        sa.Column("older_than", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("records_purged", sa.Integer(), nullable=False),
        sa.Column("records_held", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_dsr_retention_tasks")),
    )
    op.create_index(
        "ix_dsr_retention_tasks_open", "dsr_retention_tasks", ["tenant_id", "record_kind", "completed_at"], unique=False
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_dsr_retention_tasks_open", table_name="dsr_retention_tasks")
    op.drop_table("dsr_retention_tasks")
    op.drop_table("dsr_shred_certificates")
    op.drop_table("dsr_tenant_closures")
    op.drop_table("dsr_leases")
    with op.batch_alter_table("dsr_policies") as batch:
        batch.drop_column("retention")
        batch.drop_column("grace_period_days")
    with op.batch_alter_table("dsr_requests") as batch:
        batch.drop_column("reminded_days")
