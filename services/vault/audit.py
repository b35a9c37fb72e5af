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

from sqlalchemy import Update, bindparam, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from services.chassis.errors import FailedPrecondition, NotFound
from services.chassis.fastsql import execute_compiled, insert_rows
from services.chassis.identity import CallerIdentity
from services.vault.models import AuditEntry, TenantVault

__all__ = ["ChainReport", "append", "entry_hash", "lock_tenant", "verify"]

GENESIS = "0" * 64


def lock_tenant(session: Session, tenant_id: str) -> TenantVault:
    """Hold the tenant's write lock and return its row.

    PostgreSQL: an ``UPDATE .. RETURNING`` row lock, the first statement of the transaction, so chain
    links are assigned one at a time across replicas. SQLite: every transaction already began with
    ``BEGIN IMMEDIATE`` (the database-wide write lock), so the row is simply read — and units of one
    group-commit batch reuse it from the session's identity map.
    """
    if session.get_bind().dialect.name == "sqlite":
        tenant = session.get(TenantVault, tenant_id)
        # The identity map holds objects weakly; pin the row so the next unit of a batch reuses it.
        session.info.setdefault("pinned", {})[("tenant", tenant_id)] = tenant
    else:
        tenant = session.scalars(
            update(TenantVault)
            .where(TenantVault.tenant_id == tenant_id)
            .values(audit_seq=TenantVault.audit_seq)
            .returning(TenantVault),
            execution_options={"populate_existing": True},
        ).one_or_none()
    if tenant is None:
        raise NotFound("this tenant has no vault; create it with VaultAdminService.CreateTenant first")
    if tenant.state == "shredded":
        raise FailedPrecondition("this tenant's data was shredded; nothing can be served")
    return tenant


def _utc_naive(at: datetime) -> datetime:
    # SQLite hands back naive UTC, PostgreSQL aware datetimes: hash one canonical form.
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def _hash(prev_hash: str, fields: Sequence[object]) -> str:
    body = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _fields(entry: AuditEntry) -> list[object]:
    return [
        entry.tenant_id,
        entry.seq,
        _utc_naive(entry.at).isoformat(timespec="microseconds"),
        entry.principal,
        entry.principal_kind,
        entry.action,
        entry.target_ids,
        entry.result,
        entry.support_grant_id,
    ]


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """SHA-256 over the previous hash and the canonical JSON of the entry's fields."""
    return _hash(prev_hash, _fields(entry))


def _head_update() -> Update:
    table = TenantVault.__table__
    return (
        update(table)  # type: ignore[arg-type]
        .where(table.c.tenant_id == bindparam("tenant"))
        .values(audit_seq=bindparam("seq"), audit_head=bindparam("head"))
    )


def append(
    session: Session,
    tenant: TenantVault,
    identity: CallerIdentity,
    action: str,
    target_ids: Sequence[str] = (),
    result: str = "ok",
    *,
    at: datetime,
) -> str:
    """Append one entry, made ``at`` (the rule's clock), to ``tenant``'s chain (the caller holds the tenant lock);
    returns its hash.

    Plain Core statements: this runs on every call, so it skips the ORM unit of work.
    """
    seq = tenant.audit_seq + 1
    row = {
        "tenant_id": tenant.tenant_id,
        "seq": seq,
        "at": at,
        "principal": identity.principal,
        "principal_kind": identity.principal_kind,
        "action": action,
        "target_ids": " ".join(target_ids),
        "result": result,
        "support_grant_id": identity.support_grant_id,
        "prev_hash": tenant.audit_head or GENESIS,
    }
    fields = [
        row["tenant_id"],
        seq,
        _utc_naive(row["at"]).isoformat(timespec="microseconds"),  # type: ignore[arg-type]
        row["principal"],
        row["principal_kind"],
        action,
        row["target_ids"],
        result,
        row["support_grant_id"],
    ]
    row["hash"] = _hash(str(row["prev_hash"]), fields)
    connection = session.connection()
    insert_rows(connection, AuditEntry.__table__, [row])  # type: ignore[arg-type]
    execute_compiled(
        connection, "vault.audit.head", _head_update, {"tenant": tenant.tenant_id, "seq": seq, "head": row["hash"]}
    )
    # Keep the in-memory row in step without marking it dirty (the UPDATE above already wrote it).
    set_committed_value(tenant, "audit_seq", seq)
    set_committed_value(tenant, "audit_head", row["hash"])
    return str(row["hash"])


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
