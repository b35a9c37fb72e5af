"""tombstone ledger sequence and high-water marks

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "vault_tombstone_marks",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_vault_tombstone_marks")),
    )
    with op.batch_alter_table("vault_tombstones", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ledger_seq", sa.Integer(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_vault_tombstones_ledger_seq"), ["ledger_seq"])
    # Number the tombstones recorded before this revision in erasure order, and set the ledger's mark after
    # them. The same schema serves the vault database and the ledger; only the ledger's numbers are read.
    # The vault database gets no ``applied`` mark, so its first start applies the whole ledger once.
    tombstones = sa.table(
        "vault_tombstones",
        sa.column("tenant_id", sa.String),
        sa.column("subject_id", sa.String),
        sa.column("erased_at", sa.DateTime),
        sa.column("ledger_seq", sa.Integer),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(tombstones.c.tenant_id, tombstones.c.subject_id).order_by(
            tombstones.c.erased_at, tombstones.c.tenant_id, tombstones.c.subject_id
        )
    ).all()
    for seq, (tenant_id, subject_id) in enumerate(rows, start=1):
        connection.execute(
            sa.update(tombstones)
            .where(tombstones.c.tenant_id == tenant_id, tombstones.c.subject_id == subject_id)
            .values(ledger_seq=seq)
        )
    marks = sa.table("vault_tombstone_marks", sa.column("name"), sa.column("seq"), sa.column("updated_at", sa.DateTime))
    connection.execute(sa.insert(marks).values(name="ledger", seq=len(rows), updated_at=datetime.now(UTC)))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("vault_tombstones", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_vault_tombstones_ledger_seq"), type_="unique")
        batch_op.drop_column("ledger_seq")
    op.drop_table("vault_tombstone_marks")
