"""The tombstone ledger: erasures recorded outside the restorable vault database.

Crypto-shredding a subject deletes its wrapped DEK, but a database backup taken before the erasure
still holds that wrapped DEK, which the live tenant key can unwrap. So every erasure is first written
to a separate ledger database (its own URL, backed up on its own schedule). Ledger rows are PII-free:
subject id, keyed identifier digests, time, request id, count.

High-water marks say whether a vault database is behind its ledger. The ledger numbers its tombstones
1, 2, 3 ... (``ledger_seq``; its ``ledger`` mark is the last number handed out); the vault database keeps
an ``applied`` mark: every tombstone up to it is reflected there. An erasure moves ``applied`` along in
its own transaction when it is the next number (:func:`advance_applied_mark`: erasures that commit out
of order, or one that failed after its ledger row committed, leave the mark behind, never ahead); a
restored database brings back its old mark. At start-up the vault compares the two marks — one
primary-key read per database — and applies the tombstones after ``applied`` before it serves
(:mod:`services.vault.restore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from services.chassis.db import Database
from services.vault.models import Tombstone, TombstoneMark

__all__ = [
    "APPLIED_MARK",
    "LEDGER_MARK",
    "TombstoneLedger",
    "TombstoneRecord",
    "advance_applied_mark",
    "applied_mark",
    "raise_applied_mark",
    "tombstone_row",
]

LEDGER_MARK = "ledger"
"""In the ledger database: the last ``ledger_seq`` handed out."""
APPLIED_MARK = "applied"
"""In the vault database: the ledger sequence up to which every tombstone is reflected there."""


@dataclass(frozen=True, slots=True)
class TombstoneRecord:
    """What the ledger knows of one erased subject (``ledger_seq`` 0 until the ledger numbered it)."""

    tenant_id: str
    subject_id: str
    identifier_digests: tuple[str, ...]
    request_id: str
    records_erased: int
    erased_at: datetime
    ledger_seq: int = 0


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

    def record(self, tombstone: TombstoneRecord) -> int:
        """Commit the tombstone to the ledger now, before the erasure itself commits; returns its ledger sequence.

        The ``ledger`` mark row is locked while the next number is taken (PostgreSQL ``FOR UPDATE``; SQLite
        transactions already hold the database's write lock), so numbers are unique and increasing.
        """
        with self.database.transaction() as session:
            existing = session.get(Tombstone, (tombstone.tenant_id, tombstone.subject_id))
            if existing is not None:
                return existing.ledger_seq or 0
            mark = session.get(TombstoneMark, LEDGER_MARK, with_for_update=True)
            if mark is None:  # a ledger created before its first migration set the mark
                last = session.scalar(select(func.max(Tombstone.ledger_seq))) or 0
                mark = TombstoneMark(name=LEDGER_MARK, seq=last, updated_at=tombstone.erased_at)
                session.add(mark)
            mark.seq += 1
            mark.updated_at = tombstone.erased_at
            row = tombstone_row(tombstone)
            row.ledger_seq = mark.seq
            session.add(row)
            return mark.seq

    def high_water_mark(self) -> int:
        """The ledger sequence of the newest tombstone (0 for an empty ledger): one primary-key read."""
        with self.database.transaction() as session:
            mark = session.get(TombstoneMark, LEDGER_MARK)
            return 0 if mark is None else mark.seq

    def for_tenant(self, tenant_id: str) -> Sequence[TombstoneRecord]:
        """Every tombstone of ``tenant_id``."""
        return self._select(Tombstone.tenant_id == tenant_id)

    def since(self, seq: int) -> Sequence[TombstoneRecord]:
        """Every tombstone numbered after ``seq``, of every tenant, in ledger order."""
        return self._select(Tombstone.ledger_seq > seq)

    def _select(self, condition: ColumnElement[bool]) -> Sequence[TombstoneRecord]:
        with self.database.transaction() as session:
            rows = session.scalars(select(Tombstone).where(condition).order_by(Tombstone.ledger_seq)).all()
            return [
                TombstoneRecord(
                    tenant_id=row.tenant_id,
                    subject_id=row.subject_id,
                    identifier_digests=tuple(row.identifier_digests.split()),
                    request_id=row.request_id,
                    records_erased=row.records_erased,
                    erased_at=row.erased_at,
                    ledger_seq=row.ledger_seq or 0,
                )
                for row in rows
            ]


def applied_mark(session: Session) -> int | None:
    """The vault database's ``applied`` mark; None when it never had one (never started, or pre-ledger backup)."""
    mark = session.get(TombstoneMark, APPLIED_MARK)
    return None if mark is None else mark.seq


def advance_applied_mark(session: Session, seq: int, *, now: datetime) -> None:
    """An erasure recorded in the ledger as ``seq`` commits in this transaction: move the mark to it if it is next.

    Compare-and-set on ``seq - 1``: an erasure committing before an earlier-numbered one (PostgreSQL, in
    parallel) leaves the mark where it is, so the mark never claims a tombstone this database lacks.
    """
    if seq > 0:
        session.execute(
            update(TombstoneMark)
            .where(TombstoneMark.name == APPLIED_MARK, TombstoneMark.seq == seq - 1)
            .values(seq=seq, updated_at=now)
        )


def raise_applied_mark(session: Session, seq: int, *, now: datetime) -> None:
    """Every tombstone up to ``seq`` has been applied: set the mark to ``seq`` unless it is already past it."""
    mark = session.get(TombstoneMark, APPLIED_MARK)
    if mark is None:
        session.add(TombstoneMark(name=APPLIED_MARK, seq=seq, updated_at=now))
    elif mark.seq < seq:
        mark.seq, mark.updated_at = seq, now
