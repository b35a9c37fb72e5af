"""The tamper-evident access audit: a per-tenant SHA-256 hash chain of PII-free entries.

Every read, write, export, erase and admin action appends one entry (principal, action, target
ids, result, time). :func:`append` must be the first statement of its transaction: it bumps the
tenant row's ``audit_seq``, which takes the row (PostgreSQL) or database (SQLite) write lock, so
links are assigned one at a time even across replicas. :func:`verify` recomputes the chain and
names the first entry whose hash does not match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.chassis.errors import FailedPrecondition, NotFound
from services.chassis.identity import CallerIdentity
from services.vault.models import AuditEntry, TenantVault

__all__ = ["ChainReport", "append", "entry_hash", "lock_tenant", "verify"]

GENESIS = "0" * 64


def lock_tenant(session: Session, tenant_id: str) -> TenantVault:
    """Take the tenant's write lock (first statement of the transaction) and return its row."""
    session.execute(
        update(TenantVault).where(TenantVault.tenant_id == tenant_id).values(audit_seq=TenantVault.audit_seq)
    )
    tenant = session.get(TenantVault, tenant_id, populate_existing=True)
    if tenant is None:
        raise NotFound("this tenant has no vault; create it with VaultAdminService.CreateTenant first")
    if tenant.state == "shredded":
        raise FailedPrecondition("this tenant's data was shredded; nothing can be served")
    return tenant


def _utc_naive(at: datetime) -> datetime:
    # SQLite hands back naive UTC, PostgreSQL aware datetimes: hash one canonical form.
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """SHA-256 over the previous hash and the canonical JSON of the entry's fields."""
    body = json.dumps(
        [
            entry.tenant_id,
            entry.seq,
            _utc_naive(entry.at).isoformat(timespec="microseconds"),
            entry.principal,
            entry.principal_kind,
            entry.action,
            entry.target_ids,
            entry.result,
            entry.support_grant_id,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(
    session: Session,
    tenant: TenantVault,
    identity: CallerIdentity,
    action: str,
    target_ids: Sequence[str] = (),
    result: str = "ok",
) -> AuditEntry:
    """Append one entry to ``tenant``'s chain (the caller holds the tenant lock)."""
    seq = tenant.audit_seq + 1
    entry = AuditEntry(
        tenant_id=tenant.tenant_id,
        seq=seq,
        at=datetime.now(UTC),
        principal=identity.principal,
        principal_kind=identity.principal_kind,
        action=action,
        target_ids=" ".join(target_ids),
        result=result,
        support_grant_id=identity.support_grant_id,
        prev_hash=tenant.audit_head or GENESIS,
    )
    entry.hash = entry_hash(entry.prev_hash, entry)
    session.add(entry)
    tenant.audit_seq = seq
    tenant.audit_head = entry.hash
    return entry


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of verifying a chain."""

    intact: bool
    entries_checked: int
    first_broken_seq: int


def _entries(session: Session, tenant_id: str, batch: int = 2000) -> Iterable[AuditEntry]:
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > last)
            .order_by(AuditEntry.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def verify(session: Session, tenant_id: str) -> ChainReport:
    """Recompute the chain from genesis; report the first entry that is missing, edited or out of order."""
    prev = GENESIS
    expected_seq = 1
    checked = 0
    for entry in _entries(session, tenant_id):
        checked += 1
        if entry.seq != expected_seq or entry.prev_hash != prev or entry_hash(prev, entry) != entry.hash:
            return ChainReport(False, checked, expected_seq)
        prev = entry.hash
        expected_seq += 1
    head = session.get(TenantVault, tenant_id)
    if head is not None and head.audit_head and head.audit_head != prev:
        return ChainReport(False, checked, expected_seq)  # entries were cut off the end
    return ChainReport(True, checked, 0)
