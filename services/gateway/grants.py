"""Support access grants: time-boxed (<= 8 h), tenant-approved or emergency, every use recorded.

A grant is PENDING until the tenant's ``support:approve`` key approves it (its clock starts then) or
ACTIVE at once when ``ops:admin`` grants it in an emergency, which also emits
``gateway.support.granted`` with ``emergency=true`` so notify tells the tenant immediately. Expiry
needs no job: a grant is live only while ``now < expires_at``, checked on every call. Reasons must not
carry customer data, so text that looks like an email address or phone number is refused.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Reason
from services.chassis.timestamps import to_timestamp
from services.gateway.models import SupportAccessRow, SupportGrantRow, TenantRow

__all__ = [
    "MAX_GRANT_S",
    "PENDING_TTL",
    "approve",
    "complete_access",
    "find_grant",
    "grant_emergency",
    "grant_state",
    "list_accesses",
    "list_grants",
    "live_grant",
    "looks_like_contact",
    "record_access",
    "request_access",
    "revoke",
]

MAX_GRANT_S = 8 * 3600
PENDING_TTL = timedelta(hours=24)
_TICKET = re.compile(r"^[A-Za-z0-9._:#-]{1,64}$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9@._:|-]{1,200}$")
_LOOKS_LIKE_EMAIL = re.compile(r"\S@\S")
_LOOKS_LIKE_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")
GRANT_DENIED = "no live support grant for this call: request access and wait for the tenant's approval"


def grant_state(row: SupportGrantRow, now: datetime) -> str:
    """pending | active | expired | revoked, computed from the stored times."""
    if row.status == "revoked":
        return "revoked"
    if row.status == "pending":
        return "expired" if row.requested_at + PENDING_TTL <= now else "pending"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def looks_like_contact(text: str) -> bool:
    """True when free text seems to carry an email address or a phone number (refused in reasons)."""
    return bool(_LOOKS_LIKE_EMAIL.search(text) or _LOOKS_LIKE_PHONE.search(text))


def _validate(reason: str, ticket_id: str, duration_s: int) -> str:
    text = reason.strip()
    if not 10 <= len(text) <= 500:
        raise InvalidArgument("reason: describe the technical need in 10 to 500 characters")
    if looks_like_contact(text):
        raise InvalidArgument("reason must not contain customer data: remove email addresses and phone numbers")
    if not _TICKET.match(ticket_id):
        raise InvalidArgument("ticket_id: 1 to 64 letters, digits or . _ : # -")
    if not 1 <= duration_s <= MAX_GRANT_S:
        raise InvalidArgument(f"duration_seconds must be between 1 and {MAX_GRANT_S} (8 hours)")
    return text


def _require_active_tenant(session: Session, tenant_id: str) -> None:
    tenant = session.get(TenantRow, tenant_id) if tenant_id else None
    if tenant is None:
        raise NotFound("no such tenant: check tenant_id", reason=Reason.TENANT_NOT_FOUND)
    if tenant.state != "active":
        raise FailedPrecondition("the tenant is closed: support access cannot be granted", reason=Reason.TENANT_CLOSED)


def request_access(
    session: Session, *, tenant_id: str, principal: str, reason: str, ticket_id: str, duration_s: int, now: datetime
) -> SupportGrantRow:
    """A PENDING grant for ``principal`` on ``tenant_id``, requested ``now`` (event gateway.support.requested)."""
    text = _validate(reason, ticket_id, duration_s)
    _require_active_tenant(session, tenant_id)
    row = SupportGrantRow(
        id=f"sg_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        principal=principal,
        reason=text,
        ticket_id=ticket_id,
        duration_s=duration_s,
        status="pending",
        emergency=False,
        requested_at=now,
        approved_by="",
        revoked_by="",
    )
    session.add(row)
    session.flush()
    enqueue(
        session,
        make_event(
            events_pb2.SupportAccessRequested(
                grant_id=row.id,
                tenant_id=tenant_id,
                principal=principal,
                ticket_id=ticket_id,
                duration_seconds=duration_s,
            ),
            source="gateway",
            tenant_id=tenant_id,
            occurred_at=now,
        ),
    )
    return row


def _granted_event(row: SupportGrantRow, now: datetime) -> events_pb2.Event:
    return make_event(
        events_pb2.SupportAccessGranted(
            grant_id=row.id,
            tenant_id=row.tenant_id,
            principal=row.principal,
            ticket_id=row.ticket_id,
            emergency=row.emergency,
            approved_by=row.approved_by,
            expires_at=to_timestamp(row.expires_at),
        ),
        source="gateway",
        tenant_id=row.tenant_id,
        occurred_at=now,
    )


def find_grant(
    session: Session, grant_id: str, *, tenant_id: str | None = None, principal: str | None = None
) -> SupportGrantRow:
    """The grant, or NOT_FOUND when missing or outside the caller's tenant/principal (same answer). A tenant
    does not see a legal grant before its notice is released."""
    row = session.get(SupportGrantRow, grant_id) if grant_id else None
    if (
        row is None
        or (tenant_id is not None and (row.tenant_id != tenant_id or not row.visible_to_tenant))
        or (principal is not None and row.principal != principal)
    ):
        raise NotFound("no such support grant: check grant_id", reason=Reason.GRANT_NOT_FOUND)
    return row


def approve(session: Session, row: SupportGrantRow, *, approved_by: str, now: datetime) -> SupportGrantRow:
    """Start a PENDING grant's clock at ``now`` (event gateway.support.granted)."""
    if grant_state(row, now) != "pending":
        raise FailedPrecondition(
            "only a pending support request can be approved; ask support to request again",
            reason=Reason.GRANT_NOT_PENDING,
        )
    row.status = "active"
    row.approved_at = now
    row.approved_by = approved_by
    row.expires_at = now + timedelta(seconds=row.duration_s)
    enqueue(session, _granted_event(row, now))
    return row


def grant_emergency(
    session: Session,
    *,
    tenant_id: str,
    principal: str,
    reason: str,
    ticket_id: str,
    duration_s: int,
    granted_by: str,
    now: datetime,
) -> SupportGrantRow:
    """An ACTIVE grant without tenant approval; its event tells notify to warn the tenant at once."""
    text = _validate(reason, ticket_id, duration_s)
    if not _PRINCIPAL.match(principal):
        raise InvalidArgument("principal: the support engineer's operator subject (as in their token's sub claim)")
    _require_active_tenant(session, tenant_id)
    row = SupportGrantRow(
        id=f"sg_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        principal=f"operator:{principal}",
        reason=text,
        ticket_id=ticket_id,
        duration_s=duration_s,
        status="active",
        emergency=True,
        requested_at=now,
        approved_at=now,
        approved_by=granted_by,
        expires_at=now + timedelta(seconds=duration_s),
        revoked_by="",
    )
    session.add(row)
    session.flush()
    enqueue(session, _granted_event(row, now))
    return row


def revoke(session: Session, row: SupportGrantRow, *, by: str, now: datetime) -> SupportGrantRow:
    """End a grant at ``now`` (idempotent: no second event)."""
    if row.status == "revoked":
        return row
    row.status = "revoked"
    row.revoked_at = now
    row.revoked_by = by
    enqueue(
        session,
        make_event(
            events_pb2.SupportAccessRevoked(grant_id=row.id, tenant_id=row.tenant_id, revoked_by=by),
            source="gateway",
            tenant_id=row.tenant_id,
            occurred_at=now,
        ),
    )
    return row


def list_grants(
    session: Session,
    *,
    tenant_id: str | None,
    principal: str | None,
    include_inactive: bool,
    now: datetime,
    tenant_view: bool = False,
) -> list[SupportGrantRow]:
    """Grants filtered by tenant and/or principal, newest first (only those live at ``now`` unless
    ``include_inactive``). ``tenant_view``: as the tenant sees them (legal grants only once released)."""
    query = select(SupportGrantRow).order_by(SupportGrantRow.requested_at.desc())
    if tenant_id is not None:
        query = query.where(SupportGrantRow.tenant_id == tenant_id)
    if tenant_view:
        query = query.where(SupportGrantRow.visible_to_tenant.is_(True))
    if principal is not None:
        query = query.where(SupportGrantRow.principal == principal)
    rows = session.scalars(query.limit(1000)).all()
    return [row for row in rows if include_inactive or grant_state(row, now) in ("pending", "active")]


def live_grant(session: Session, grant_id: str, *, principal: str, now: datetime) -> SupportGrantRow:
    """The grant ``grant_id`` of ``principal`` if ACTIVE at ``now``; PERMISSION_DENIED (one answer) otherwise."""
    row = session.get(SupportGrantRow, grant_id)
    # A legal grant covers one gateway-run export, never calls an operator forwards under it.
    if row is None or row.principal != principal or row.legal_request_id or grant_state(row, now) != "active":
        raise PermissionDenied(GRANT_DENIED)
    return row


def record_access(session: Session, *, grant: SupportGrantRow, method: str, now: datetime) -> int:
    """Write the access, made ``now``, before the call is forwarded (so no call under a grant goes unrecorded)."""
    row = SupportAccessRow(
        grant_id=grant.id, tenant_id=grant.tenant_id, principal=grant.principal, method=method, at=now
    )
    session.add(row)
    session.flush()
    return row.seq


def complete_access(session: Session, seq: int, *, status: str, latency_ms: int) -> None:
    """Fill in how a recorded access ended."""
    row = session.get(SupportAccessRow, seq)
    if row is not None:
        row.status = status
        row.latency_ms = latency_ms


def list_accesses(session: Session, grant_id: str, *, after_seq: int, limit: int) -> list[SupportAccessRow]:
    """Accesses under ``grant_id`` in order, after ``after_seq``."""
    query = (
        select(SupportAccessRow)
        .where(SupportAccessRow.grant_id == grant_id, SupportAccessRow.seq > after_seq)
        .order_by(SupportAccessRow.seq)
        .limit(limit)
    )
    return list(session.scalars(query).all())
