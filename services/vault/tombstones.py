"""The tombstone ledger: erasures recorded outside the restorable vault database.

Crypto-shredding a subject deletes its wrapped DEK, but a database backup taken before the erasure
still holds that wrapped DEK, which the live tenant key can unwrap. So every erasure is first written
to a separate ledger database (its own URL, backed up on its own schedule); after a restore,
``ApplyTombstones`` erases again every subject the ledger says is gone. Ledger rows are PII-free:
subject id, keyed identifier digests, time, request id, count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from services.chassis.db import Database
from services.vault.models import Tombstone

__all__ = ["TombstoneLedger", "TombstoneRecord", "tombstone_row"]


@dataclass(frozen=True, slots=True)
class TombstoneRecord:
    """What the ledger knows of one erased subject."""

    tenant_id: str
    subject_id: str
    identifier_digests: tuple[str, ...]
    request_id: str
    records_erased: int
    erased_at: datetime


def tombstone_row(tombstone: TombstoneRecord) -> Tombstone:
    """The ``vault_tombstones`` row of ``tombstone`` (the ledger and the vault database share the schema)."""
    return Tombstone(
        tenant_id=tombstone.tenant_id,
        subject_id=tombstone.subject_id,
        identifier_digests=" ".join(tombstone.identifier_digests),
        request_id=tombstone.request_id,
        records_erased=tombstone.records_erased,
        erased_at=tombstone.erased_at,
    )


class TombstoneLedger:
    """Append-only erasure ledger in its own database (same schema as the vault's ``vault_tombstones``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def record(self, tombstone: TombstoneRecord) -> None:
        """Commit the tombstone to the ledger now, before the erasure itself commits."""
        with self.database.transaction() as session:
            if session.get(Tombstone, (tombstone.tenant_id, tombstone.subject_id)) is None:
                session.add(tombstone_row(tombstone))

    def for_tenant(self, tenant_id: str) -> Sequence[TombstoneRecord]:
        """Every tombstone of ``tenant_id``."""
        with self.database.transaction() as session:
            rows = session.scalars(select(Tombstone).where(Tombstone.tenant_id == tenant_id)).all()
            return [
                TombstoneRecord(
                    tenant_id=row.tenant_id,
                    subject_id=row.subject_id,
                    identifier_digests=tuple(row.identifier_digests.split()),
                    request_id=row.request_id,
                    records_erased=row.records_erased,
                    erased_at=row.erased_at,
                )
                for row in rows
            ]
