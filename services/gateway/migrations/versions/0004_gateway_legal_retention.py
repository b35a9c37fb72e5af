"""Legal requests: the execution claim (one execution at a time), the subject count kept after the retention
purge, and when the purge ran.

Revision ID: 0004_gateway_legal_retention
Revises: 0003_gateway_account_purge
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_gateway_legal_retention"
down_revision = "0003_gateway_account_purge"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add legal_requests.execution_lease_until, subject_count (filled from subject_ids) and purged_at."""
    with op.batch_alter_table("legal_requests") as batch:
        batch.add_column(sa.Column("execution_lease_until", TS, nullable=True))
        batch.add_column(sa.Column("subject_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("purged_at", TS, nullable=True))
    # subject_ids is space-separated and never empty for a recorded request: count the separators.
    op.execute(
        "UPDATE legal_requests SET subject_count = "
        "length(subject_ids) - length(replace(subject_ids, ' ', '')) + 1 WHERE subject_ids <> ''"
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    with op.batch_alter_table("legal_requests") as batch:
        batch.drop_column("purged_at")
        batch.drop_column("subject_count")
        batch.drop_column("execution_lease_until")
