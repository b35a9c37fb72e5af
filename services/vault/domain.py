"""Domain types shared by the vault's rule modules: record inputs and views, policy, and the context
(key ring, tombstone ledger, limits) every rule receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.errors import InvalidArgument
from services.vault.keyring import KeyRing
from services.vault.tombstones import TombstoneLedger

__all__ = [
    "KIND_NAMES",
    "LEAD_CONTACT",
    "RecordInput",
    "RecordView",
    "VaultContext",
    "VaultPolicy",
    "assume_utc",
    "check_kind",
]

LEAD_CONTACT = 1
KIND_NAMES = {1: "LEAD_CONTACT", 2: "INTERACTION", 3: "OPPORTUNITY", 4: "NOTE", 5: "CUSTOM"}
SOURCE = "vault"


def assume_utc(at: datetime) -> datetime:
    """``at`` with its time zone; a naive value (SQLite drops the zone) is UTC, as the vault stores it."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def check_kind(kind: int, where: str = "") -> int:
    """The kind if it is one of the five, else INVALID_ARGUMENT naming the allowed values."""
    if kind not in KIND_NAMES:
        raise InvalidArgument(f"{where}kind must be one of {', '.join(KIND_NAMES.values())}")
    return kind


@dataclass(frozen=True, slots=True)
class RecordInput:
    """A record to store: serialised data plus either a subject id or (for leads) identifiers."""

    kind: int
    data: bytes
    subject_id: str = ""
    email: str = ""
    phone: str = ""
    external_id: str = ""

    @property
    def has_identifiers(self) -> bool:
        """True when any identifier was sent."""
        return bool(self.email or self.phone or self.external_id)


@dataclass(frozen=True, slots=True)
class RecordView:
    """A decrypted record, held only in memory on its way to the caller."""

    id: str
    subject_id: str
    kind: int
    data: bytes | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class VaultPolicy:
    """Limits and rotation thresholds."""

    max_record_bytes: int = 1024 * 1024
    max_batch: int = 500
    max_message_bytes: int = 4 * 1024 * 1024  # the gRPC limit; ListRecords pages stay below it
    epoch_max_encryptions: int = 2**24
    epoch_max_age_s: float = 30 * 24 * 3600.0


@dataclass
class VaultContext:
    """What the rules need beyond the session: keys, the erasure ledger, limits, and the clock every rule reads."""

    keyring: KeyRing
    ledger: TombstoneLedger
    policy: VaultPolicy = field(default_factory=VaultPolicy)
    source: str = SOURCE
    clock: Clock = SYSTEM_CLOCK
