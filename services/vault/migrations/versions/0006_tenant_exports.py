"""tenant exports (chunk digests for the signed manifest) and data-subject export bundles

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "vault_tenant_exports",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("token_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("chunk_records", sa.Integer(), nullable=False),
        sa.Column("subjects_total", sa.Integer(), nullable=False),
        sa.Column("records_total", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vault_tenant_exports")),
    )
    op.create_index(op.f("ix_vault_tenant_exports_tenant_id"), "vault_tenant_exports", ["tenant_id"])
    op.create_table(
        "vault_tenant_export_chunks",
        sa.Column("export_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("subjects", sa.Integer(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("export_id", "seq", name=op.f("pk_vault_tenant_export_chunks")),
    )
    op.create_table(
        "vault_export_bundles",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("export_id", sa.String(length=128), nullable=False),
        sa.Column("subject_id", sa.String(length=36), nullable=False),
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "export_id", name=op.f("pk_vault_export_bundles")),
    )
    op.create_index(op.f("ix_vault_export_bundles_subject_id"), "vault_export_bundles", ["subject_id"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_vault_export_bundles_subject_id"), table_name="vault_export_bundles")
    op.drop_table("vault_export_bundles")
    op.drop_table("vault_tenant_export_chunks")
    op.drop_index(op.f("ix_vault_tenant_exports_tenant_id"), table_name="vault_tenant_exports")
    op.drop_table("vault_tenant_exports")
