"""Offboarding of closed tenants, as dsr sees it: closures heard from TenantClosed, the grace period, reminders at
7 and 1 days left, and the signed shred certificate once the vault destroyed the tenant's key.

dsr learns a closure from ``gateway.tenant.closed`` / ``vault.tenant.closed`` (the earliest time wins: the
gateway closes first, then asks the vault); the gateway's ``shred_after`` (the tenant's own grace period) wins
over dsr's policy. :func:`clear_closure` applies ``TenantReopened`` (its row stays, with ``closed_at`` cleared,
until the next closure). Nothing here calls the vault: the sweep in
``retention.py`` does, and records the answer here. Every reminder and certificate is sent once, across
replicas too: the row is claimed with a conditional UPDATE before the event is staged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import enqueue, make_event
from services.chassis.errors import FailedPrecondition, NotFound, Reason
from services.chassis.ids import new_id
from services.chassis.timestamps import to_timestamp
from services.dsr import evidence
from services.dsr.models import DsrPolicy, EvidenceRow, ShredCertificateRow, TenantClosureRow
from services.dsr.requests import DEFAULT_GRACE_DAYS, DsrContext, utc

__all__ = [
    "DEFAULT_GRACE_DAYS",
    "OFFBOARDING_REMINDER_DAYS",
    "VaultShred",
    "claim_reminder",
    "clear_closure",
    "closure_state",
    "days_left",
    "get_certificate",
    "grace_period",
    "list_closures",
    "open_closures",
    "record_blocked",
    "record_closure",
    "record_shred",
    "reminder_due",
    "shred_at",
]

OFFBOARDING_REMINDER_DAYS = (7, 1)
SHRED_EVIDENCE_KIND = "tenant.shredded"


def record_closure(
    session: Session, tenant_id: str, closed_at: datetime, *, now: datetime, shred_after: datetime | None = None
) -> TenantClosureRow | None:
    """Remember that ``tenant_id`` closed at ``closed_at`` (idempotent; the earliest closure time wins), and the
    gateway's ``shred_after`` when it sent one (the tenant's own grace period; else dsr's policy decides).

    A reopened tenant closing again starts a new grace period and new reminders; a closure stamped before the last
    reopening (a late copy) is ignored: None.
    """
    row = session.get(TenantClosureRow, tenant_id)
    if row is not None and row.reopened_at is not None and closed_at <= utc(row.reopened_at):
        return None
    if row is None:
        row = TenantClosureRow(tenant_id=tenant_id, closed_at=closed_at, reminded_days=0, hold_id="", last_error="")
        row.certificate_id = ""
        row.shred_after = shred_after
        session.add(row)
    elif row.closed_at is None:
        row.closed_at, row.reminded_days, row.hold_id, row.last_error = closed_at, 0, "", ""
        row.shred_after = shred_after
    else:
        if closed_at < utc(row.closed_at):
            row.closed_at = closed_at
        if shred_after is not None:
            row.shred_after = shred_after
    row.updated_at = now
    return row


def clear_closure(session: Session, tenant_id: str, *, now: datetime, reopened_at: datetime | None = None) -> bool:
    """A reopened tenant: no shred, no reminders until it closes again. False when dsr knew no closure (or it
    closed again after ``reopened_at``: a late reopening does not undo a newer closure).

    Refused (FAILED_PRECONDITION TENANT_SHREDDED) once the tenant was shredded: that cannot be undone.
    """
    at = reopened_at or now
    row = session.get(TenantClosureRow, tenant_id)
    if row is None:
        # The reopening overtook its closure: remember it, so that closure's late copy does not close it again.
        session.add(
            TenantClosureRow(
                tenant_id=tenant_id,
                closed_at=None,
                reminded_days=0,
                hold_id="",
                last_error="",
                certificate_id="",
                reopened_at=at,
                updated_at=now,
            )
        )
        return False
    if row.shredded_at is not None:
        raise FailedPrecondition("this tenant was shredded; it cannot be reopened", reason=Reason.TENANT_SHREDDED)
    if row.reopened_at is None or at > utc(row.reopened_at):
        row.reopened_at = at
    if row.closed_at is None or utc(row.closed_at) > at:
        return False
    row.closed_at, row.reminded_days, row.hold_id, row.last_error, row.updated_at = None, 0, "", "", now
    row.shred_after = None
    return True


def grace_period(session: Session, tenant_id: str) -> timedelta:
    """The tenant's grace period (its policy's, else 30 days)."""
    policy = session.get(DsrPolicy, tenant_id)
    return timedelta(days=policy.grace_period_days if policy is not None else DEFAULT_GRACE_DAYS)


def shred_at(session: Session, row: TenantClosureRow) -> datetime:
    """When the tenant's grace period ends (its row must be closed): the gateway's ``shred_after`` when it sent one,
    else ``closed_at`` plus the dsr policy's grace period."""
    assert row.closed_at is not None
    if row.shred_after is not None:
        return utc(row.shred_after)
    return utc(row.closed_at) + grace_period(session, row.tenant_id)


def open_closures(session: Session, *, limit: int = 500) -> list[TenantClosureRow]:
    """Closed tenants not yet shredded, oldest closure first."""
    return list(
        session.scalars(
            select(TenantClosureRow)
            .where(TenantClosureRow.closed_at.is_not(None), TenantClosureRow.shredded_at.is_(None))
            .order_by(TenantClosureRow.closed_at)
            .limit(limit)
        )
    )


def list_closures(session: Session, tenant_id: str, *, page_size: int, after: str) -> list[TenantClosureRow]:
    """One page of closures (every tenant's when ``tenant_id`` is empty), by tenant id; reopened ones left out."""
    query = select(TenantClosureRow).where(TenantClosureRow.closed_at.is_not(None))
    if tenant_id:
        query = query.where(TenantClosureRow.tenant_id == tenant_id)
    if after:
        query = query.where(TenantClosureRow.tenant_id > after)
    return list(session.scalars(query.order_by(TenantClosureRow.tenant_id).limit(page_size)))


def closure_state(session: Session, row: TenantClosureRow, now: datetime) -> str:
    """GRACE_PERIOD, BLOCKED_BY_HOLD, SHRED_DUE or SHREDDED."""
    if row.shredded_at is not None:
        return "SHREDDED"
    if now < shred_at(session, row):
        return "GRACE_PERIOD"
    return "BLOCKED_BY_HOLD" if row.hold_id else "SHRED_DUE"


def reminder_due(days_left_exact: timedelta, reminded: int) -> int:
    """The reminder threshold (7 or 1 days) reached and not yet sent, else 0; only the nearest one when the clock
    jumped past both (a "7 days left" notice with one day left would mislead)."""
    if days_left_exact <= timedelta(0):
        return 0
    reached = [t for t in OFFBOARDING_REMINDER_DAYS if days_left_exact <= timedelta(days=t)]
    threshold = min(reached, default=0)
    return threshold if threshold and (reminded == 0 or threshold < reminded) else 0


def claim_reminder(session: Session, ctx: DsrContext, tenant_id: str, threshold: int, at: datetime) -> bool:
    """Mark reminder ``threshold`` sent and stage ``dsr.offboarding.reminder``; False when another sweep did."""
    claimed = session.execute(
        update(TenantClosureRow)
        .where(
            TenantClosureRow.tenant_id == tenant_id,
            TenantClosureRow.closed_at.is_not(None),
            TenantClosureRow.shredded_at.is_(None),
            or_(TenantClosureRow.reminded_days == 0, TenantClosureRow.reminded_days > threshold),
        )
        .values(reminded_days=threshold)
        .execution_options(synchronize_session="fetch")
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return False
    enqueue(
        session,
        make_event(
            ev.TenantOffboardingReminder(tenant_id=tenant_id, shred_at=to_timestamp(at), days_left=threshold),
            source=ctx.source,
            tenant_id=tenant_id,
            occurred_at=ctx.clock.now(),
        ),
    )
    return True


def record_blocked(session: Session, ctx: DsrContext, tenant_id: str, *, hold_id: str, reason_code: str) -> None:
    """The vault refused the shred (a hold, or another reason): shown in ListOffboarding, retried next sweep."""
    row = session.get(TenantClosureRow, tenant_id)
    if row is not None and row.shredded_at is None:
        row.hold_id, row.last_error, row.updated_at = hold_id, reason_code, ctx.clock.now()


@dataclass(frozen=True, slots=True)
class VaultShred:
    """What the vault's ShredTenant answered (or, after a crash between the shred and dsr's commit, what dsr
    still knows: ``recovered`` with counts -1)."""

    key_id: str
    key_deleted_at: datetime
    records_removed: int
    subjects_removed: int
    vault_certificate_id: str
    audit_head: str
    recovered: bool = False


def record_shred(session: Session, ctx: DsrContext, tenant_id: str, shred: VaultShred) -> ShredCertificateRow | None:
    """Issue the tenant's shred certificate: a signed evidence entry, the certificate row, the closure marked
    shredded and ``dsr.tenant.certified``, in one transaction. None when it was issued already."""
    closure = session.get(TenantClosureRow, tenant_id)
    if closure is None or closure.closed_at is None or closure.shredded_at is not None:
        return None
    certificate_id = new_id()
    facts: dict[str, Any] = {
        "certificate_id": certificate_id,
        "tenant_id": tenant_id,
        "key_id": shred.key_id,
        "key_deleted_at": evidence.canonical_time(shred.key_deleted_at),
        "records_removed": shred.records_removed,
        "subjects_removed": shred.subjects_removed,
        "closed_at": evidence.canonical_time(closure.closed_at),
        "vault_certificate_id": shred.vault_certificate_id,
        "audit_head": shred.audit_head,
        "recovered": shred.recovered,
    }
    entry = evidence.append(
        session,
        ctx.signer,
        tenant_id=tenant_id,
        request_id=certificate_id,
        kind=SHRED_EVIDENCE_KIND,
        facts=facts,
        at=ctx.clock.now(),
    )
    certificate = ShredCertificateRow(
        certificate_id=certificate_id,
        tenant_id=tenant_id,
        key_id=shred.key_id,
        key_deleted_at=shred.key_deleted_at,
        records_removed=shred.records_removed,
        subjects_removed=shred.subjects_removed,
        closed_at=utc(closure.closed_at),
        vault_certificate_id=shred.vault_certificate_id,
        audit_head=shred.audit_head,
        evidence_seq=entry.seq,
    )
    session.add(certificate)
    closure.shredded_at, closure.certificate_id = shred.key_deleted_at, certificate_id
    closure.hold_id, closure.last_error, closure.updated_at = "", "", ctx.clock.now()
    enqueue(
        session,
        make_event(
            ev.TenantShredCertified(
                tenant_id=tenant_id, certificate_id=certificate_id, shredded_at=to_timestamp(shred.key_deleted_at)
            ),
            source=ctx.source,
            tenant_id=tenant_id,
            occurred_at=ctx.clock.now(),
        ),
    )
    return certificate


def get_certificate(session: Session, tenant_id: str) -> tuple[ShredCertificateRow, EvidenceRow]:
    """The tenant's certificate and the evidence entry that signs it; NOT_FOUND before the shred."""
    row = session.scalar(select(ShredCertificateRow).where(ShredCertificateRow.tenant_id == tenant_id))
    if row is None or not tenant_id:
        raise NotFound(
            "no shred certificate for this tenant: it has not been shredded", reason=Reason.SHRED_CERTIFICATE_NOT_FOUND
        )
    entry = session.get(EvidenceRow, (tenant_id, row.evidence_seq))
    assert entry is not None
    return row, entry


def days_left(delta: timedelta) -> int:
    """Whole days left, rounded up (a shred 6 days 2 hours away is 7 days left)."""
    return max(0, math.ceil(delta / timedelta(days=1)))
