"""sealed email and phone identifiers, for notify's address lookup at send time

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("vault_subject_identifiers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sealed", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("vault_subject_identifiers", schema=None) as batch_op:
        batch_op.drop_column("sealed")
