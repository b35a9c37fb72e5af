"""The tamper-evident access audit: a per-tenant SHA-256 hash chain of PII-free entries.

Every read, write, export, erase and admin action appends one entry (principal, action, target
ids, result, time). :func:`append` must be the first statement of its transaction: it bumps the
tenant row's ``audit_seq``, which takes the row (PostgreSQL) or database (SQLite) write lock, so
links are assigned one at a time even across replicas. :func:`verify` recomputes the chain and
names the first entry whose hash does not match, or that contradicts a head signed at a checkpoint
(:mod:`services.vault.checkpoints`): the hash chain alone can be recomputed by anyone who can write
the database, the signatures cannot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Update, bindparam, event, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from services.chassis.errors import FailedPrecondition, NotFound, Reason
from services.chassis.fastsql import stage_rows, stage_update
from services.chassis.identity import CallerIdentity
from services.vault.models import AuditEntry, Record, Subject, TenantVault

__all__ = [
    "HASHED_FIELDS",
    "ChainReport",
    "Fault",
    "append",
    "canonical_time",
    "entry_hash",
    "lock_tenant",
    "touched_subjects",
    "verify",
]

GENESIS = "0" * 64


def lock_tenant(session: Session, tenant_id: str, *, shredded_ok: bool = False) -> TenantVault:
    """Hold the tenant's write lock and return its row.

    PostgreSQL: an ``UPDATE .. RETURNING`` row lock, the first statement of the transaction, so chain
    links are assigned one at a time across replicas; the next units of a group-commit batch reuse the
    row the transaction already locked, except inside a savepoint (a batch replayed unit by unit), whose
    rollback would release a lock taken in it. SQLite: every transaction already began with
    ``BEGIN IMMEDIATE`` (the database-wide write lock), so the row is simply read — and units of one
    group-commit batch reuse it from the session's identity map.

    A shredded tenant is refused unless ``shredded_ok`` (its audit evidence outlives its data).
    """
    # The identity map holds objects weakly; pin the row so the next unit of a batch reuses it.
    pinned = session.info.setdefault("pinned", {})
    if session.get_bind().dialect.name == "sqlite":
        tenant = pinned[("tenant", tenant_id)] = session.get(TenantVault, tenant_id)
    elif session.in_nested_transaction():
        tenant = _lock_row(session, tenant_id)
    else:
        tenant = pinned.get(("tenant", tenant_id))
        if tenant is None:
            tenant = pinned[("tenant", tenant_id)] = _lock_row(session, tenant_id)
    if tenant is None:
        raise NotFound(
            "this tenant has no vault; create it with VaultAdminService.CreateTenant first",
            reason=Reason.TENANT_NOT_FOUND,
        )
    if tenant.state == "shredded" and not shredded_ok:
        raise FailedPrecondition(
            "this tenant's data was shredded; nothing can be served", reason=Reason.TENANT_SHREDDED
        )
    return tenant


def _lock_row(session: Session, tenant_id: str) -> TenantVault | None:
    return session.scalars(
        update(TenantVault)
        .where(TenantVault.tenant_id == tenant_id)
        .values(audit_seq=TenantVault.audit_seq)
        .returning(TenantVault),
        execution_options={"populate_existing": True},
    ).one_or_none()


# The entry fields the hash covers, in hash order: the one definition both ``append`` and ``verify`` use.
# Every column of ``AuditEntry`` except the two links belongs here (a unit test holds that), and the order
# must never change: it is part of every stored hash.
HASHED_FIELDS = (
    "tenant_id",
    "seq",
    "at",
    "principal",
    "principal_kind",
    "action",
    "target_ids",
    "result",
    "support_grant_id",
)


def canonical_time(at: datetime) -> str:
    """The one text form of a stored time that hashes and signatures cover (UTC, microseconds, no offset).

    SQLite hands back naive UTC, PostgreSQL aware datetimes; both give the same text.
    """
    naive = at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at
    return naive.isoformat(timespec="microseconds")


def _hash(prev_hash: str, values: Mapping[str, Any]) -> str:
    fields = [canonical_time(values[name]) if name == "at" else values[name] for name in HASHED_FIELDS]
    body = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """SHA-256 over the previous hash and the canonical JSON of the entry's :data:`HASHED_FIELDS`."""
    return _hash(prev_hash, {name: getattr(entry, name) for name in HASHED_FIELDS})


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

    Plain Core statements, staged: this runs on every call, so it skips the ORM unit of work, and a
    group-commit batch writes its entries in one insert and the head once.
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
    row["hash"] = _hash(str(row["prev_hash"]), row)
    # Staged: the entries of every unit of a group-commit batch are inserted together and the head is
    # updated once per tenant, before the transaction's next ORM statement or its commit (fastsql).
    stage_rows(session, AuditEntry.__table__, [row])  # type: ignore[arg-type]
    stage_update(
        session,
        "vault.audit.head",
        _head_update,
        {"tenant": tenant.tenant_id, "seq": seq, "head": row["hash"]},
        dedupe=("vault.audit.head", tenant.tenant_id),
    )
    # Keep the in-memory row in step without marking it dirty (the staged UPDATE writes it).
    set_committed_value(tenant, "audit_seq", seq)
    set_committed_value(tenant, "audit_head", row["hash"])
    if session.in_nested_transaction():
        _forget_on_rollback(session, tenant)
    return str(row["hash"])


_SAVEPOINT_TENANTS = "steward.vault.audit.savepoint_tenants"


def _forget_on_rollback(session: Session, tenant: TenantVault) -> None:
    """Inside a savepoint (a group-commit batch replayed unit by unit), a rollback must also undo the head this
    unit moved in memory: SQLAlchemy expires only the objects a savepoint flushed, and ``set_committed_value``
    flushes nothing, so without this the next unit would link to an entry that was rolled back."""
    tenants: set[TenantVault] | None = session.info.get(_SAVEPOINT_TENANTS)
    if tenants is None:
        tenants = session.info[_SAVEPOINT_TENANTS] = set()
        event.listen(session, "after_rollback", _expire_heads)
        event.listen(session, "after_commit", _drop_heads)
    tenants.add(tenant)


def _expire_heads(session: Session) -> None:
    for tenant in session.info.pop(_SAVEPOINT_TENANTS, set()):
        session.expire(tenant, ["audit_seq", "audit_head"])
    session.info[_SAVEPOINT_TENANTS] = set()


def _drop_heads(session: Session) -> None:
    session.info.get(_SAVEPOINT_TENANTS, set()).clear()


class Fault(StrEnum):
    """Why a chain is not intact."""

    NONE = ""
    ENTRY_MISMATCH = "entry_mismatch"  # an entry's seq, link or hash does not recompute
    ENTRIES_MISSING = "entries_missing"  # the head or a signed checkpoint is further than the entries go
    CHECKPOINT_CONTRADICTED = "checkpoint_contradicted"  # the chain recomputes, but not to a signed head
    CHECKPOINT_SIGNATURE_INVALID = "checkpoint_signature_invalid"  # a stored checkpoint is forged or altered


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of verifying a chain.

    ``first_broken_seq``: the first entry that does not recompute, is missing, or (``CHECKPOINT_CONTRADICTED``)
    whose hash differs from the head a valid checkpoint signed -- the rewritten entry then lies in
    ``(anchored_seq, first_broken_seq]``. ``anchored_seq``: entries up to it agree with a verified signature.
    """

    intact: bool
    entries_checked: int
    first_broken_seq: int
    fault: Fault = Fault.NONE
    anchored_seq: int = 0
    checkpoints_verified: int = 0
    bad_checkpoint_seq: int = 0


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


def verify(session: Session, tenant_id: str, anchors: Mapping[int, str] | None = None) -> ChainReport:
    """Recompute the chain from genesis; report the first entry that is missing, edited or out of order.

    ``anchors`` maps seq -> head hash of checkpoints whose signature was verified: an entry whose hash
    differs from its anchor contradicts a signature, so a rewrite that recomputed every later hash (and the
    head) is still caught. ``checkpoints_verified`` counts the anchors the chain agrees with.
    """
    anchors = anchors or {}
    prev = GENESIS
    expected_seq = 1
    checked = 0
    anchored = agreed = 0
    for entry in _entries(session, tenant_id):
        checked += 1
        if entry.seq != expected_seq or entry.prev_hash != prev or entry_hash(prev, entry) != entry.hash:
            return ChainReport(False, checked, expected_seq, Fault.ENTRY_MISMATCH, anchored, agreed)
        signed = anchors.get(entry.seq)
        if signed is not None:
            if signed != entry.hash:
                return ChainReport(False, checked, expected_seq, Fault.CHECKPOINT_CONTRADICTED, anchored, agreed)
            anchored, agreed = entry.seq, agreed + 1
        prev = entry.hash
        expected_seq += 1
    head = session.get(TenantVault, tenant_id)
    cut = (head is not None and head.audit_head and head.audit_head != prev) or any(s >= expected_seq for s in anchors)
    if cut:  # entries were cut off the end (and perhaps the head rewound with them)
        return ChainReport(False, checked, expected_seq, Fault.ENTRIES_MISSING, anchored, agreed)
    return ChainReport(True, checked, 0, Fault.NONE, anchored, agreed)


_RESOLVE_BATCH = 500  # ids per IN (...) lookup, well under SQLite's bound-parameter limit


def touched_subjects(session: Session, tenant_id: str, principal: str, start: datetime, end: datetime) -> list[str]:
    """Ids of ``tenant_id``'s subjects that ``principal`` touched in ``[start, end)``, ascending (read-only).

    From the principal's audit entries in the window: a target id that is one of the tenant's subjects counts
    itself, one of its records counts the record's subject; anything else (request, export or hold ids, field
    names, erased subjects and deleted records, which no longer exist) is skipped.
    """
    targets: set[str] = set()
    rows = session.scalars(
        select(AuditEntry.target_ids).where(
            AuditEntry.tenant_id == tenant_id,
            AuditEntry.principal == principal,
            AuditEntry.at >= start,
            AuditEntry.at < end,
        )
    )
    for target_ids in rows:
        targets.update(target_ids.split())
    found: set[str] = set()
    ids = sorted(targets)
    for i in range(0, len(ids), _RESOLVE_BATCH):
        batch = ids[i : i + _RESOLVE_BATCH]
        found.update(session.scalars(select(Subject.id).where(Subject.tenant_id == tenant_id, Subject.id.in_(batch))))
        found.update(
            session.scalars(
                select(Record.subject_id).where(
                    Record.tenant_id == tenant_id, Record.id.in_(batch), Record.subject_id != ""
                )
            )
        )
    return sorted(found)
