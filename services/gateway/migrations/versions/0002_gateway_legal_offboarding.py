"""Offboarding fields of the tenant registry (grace period, who closed or reopened), legal grants' visibility,
and the register of legal disclosure requests.

Revision ID: 0002_gateway_legal_offboarding
Revises: 0001_gateway_initial
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_gateway_legal_offboarding"
down_revision = "0001_gateway_initial"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the offboarding columns, the legal-grant columns and the legal_requests table."""
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("grace_period_days", sa.Integer, nullable=False, server_default="30"))
        batch.add_column(sa.Column("closed_by", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("reopened_at", TS, nullable=True))
        batch.add_column(sa.Column("reopened_by", sa.String(200), nullable=False, server_default=""))
    with op.batch_alter_table("support_grants") as batch:
        batch.add_column(sa.Column("legal_request_id", sa.String(40), nullable=False, server_default=""))
        batch.add_column(sa.Column("visible_to_tenant", sa.Boolean, nullable=False, server_default=sa.true()))
    op.create_table(
        "legal_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("authority", sa.String(200), nullable=False),
        sa.Column("authority_type", sa.Integer, nullable=False),
        sa.Column("legal_basis", sa.String(200), nullable=False),
        sa.Column("reference_number", sa.String(100), nullable=False),
        sa.Column("subject_ids", sa.Text, nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("data_categories", sa.String(100), nullable=False),
        sa.Column("ndo_kind", sa.Integer, nullable=False),
        sa.Column("ndo_until", TS, nullable=True),
        sa.Column("review_at", TS, nullable=True),
        sa.Column("review_reminded_at", TS, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("recorded_by", sa.String(200), nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=False),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("rejection_reason", sa.String(500), nullable=False),
        sa.Column("executed_by", sa.String(200), nullable=False),
        sa.Column("executed_at", TS, nullable=True),
        sa.Column("grant_id", sa.String(40), nullable=False),
        sa.Column("records_disclosed", sa.Integer, nullable=False),
        sa.Column("notice_released_at", TS, nullable=True),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    op.drop_table("legal_requests")
    with op.batch_alter_table("support_grants") as batch:
        batch.drop_column("visible_to_tenant")
        batch.drop_column("legal_request_id")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("reopened_by")
        batch.drop_column("reopened_at")
        batch.drop_column("closed_by")
        batch.drop_column("grace_period_days")
