"""The register of legal disclosure requests: record, four-eyes approval, execution under a legal grant,
notice release and the transparency report.

A request names subjects by identifier; the caller (``legal_api``) resolves them in the tenant's vault before
:func:`record_request`, so the register keeps vault subject ids only. Execution runs under a support grant
marked with the request id: it is live only for the export the gateway runs itself (``grants.live_grant``
refuses it to forwarded calls) and hidden from the tenant (``visible_to_tenant``) until the notice is
released — at execution when there is no non-disclosure order, or by :func:`release_due` once the order's
date passes. Indefinite orders carry a review date; :func:`reviews_due` reminds operators once per date.

One execution at a time: :func:`begin_execution` claims the request with a conditional UPDATE (``state =
'approved'`` and no live claim), so of two operators executing at once exactly one wins on SQLite and
PostgreSQL alike and the other gets ABORTED ``LEGAL_EXECUTION_IN_PROGRESS`` before anything is exported. The
claim lapses with the grant (:data:`GRANT_TTL`), so a gateway that died mid-execution does not block the
request for ever.

Retention (:func:`purge_closed_requests`): the register is evidence of every disclosure, so a request is kept
whole for the account-retention period (seven years by default) after it closes — rejected, or executed with
its notice released — then its particulars (authority, legal basis, reference, subject ids, operators, the
rejection reason) are blanked. What stays is PII-free and keeps the transparency report unchanged: tenant,
authority type, outcome, dates, categories, the order's kind and dates, and the subject and record counts. A
request whose notice is still withheld is not closed and is never purged: the tenant must still be told.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Reason
from services.chassis.timestamps import to_timestamp
from services.gateway import grants, tenants
from services.gateway.models import LegalRequestRow, SupportGrantRow

__all__ = [
    "AUTHORITY_TYPES",
    "NDO_INDEFINITE",
    "NDO_NONE",
    "NDO_UNTIL_DATE",
    "NewLegalRequest",
    "TransparencyCount",
    "abandon_execution",
    "approve",
    "begin_execution",
    "find_request",
    "finish_execution",
    "list_requests",
    "purge_closed_requests",
    "record_request",
    "reject",
    "release_due",
    "require_state",
    "reviews_due",
    "transparency",
    "validate",
]

AUTHORITY_TYPES = range(1, 6)
RECORD_KINDS = range(1, 6)
NDO_NONE, NDO_UNTIL_DATE, NDO_INDEFINITE = 1, 2, 3
MAX_SUBJECTS = 100
GRANT_TTL = timedelta(hours=1)
STATES = ("recorded", "approved", "rejected", "executed")


@dataclass(frozen=True, slots=True)
class NewLegalRequest:
    """A request as recorded, validated by :func:`validate` (subjects not yet resolved)."""

    tenant_id: str
    authority: str
    authority_type: int
    legal_basis: str
    reference_number: str
    window_start: datetime
    window_end: datetime
    data_categories: tuple[int, ...]
    ndo_kind: int
    ndo_until: datetime | None
    review_at: datetime | None


def _text(value: str, name: str, max_len: int) -> str:
    text = value.strip()
    if not text or len(text) > max_len or any(ord(ch) < 32 for ch in text):
        raise InvalidArgument(f"{name} is required: 1 to {max_len} characters, no control characters")
    if grants.looks_like_contact(text):
        raise InvalidArgument(f"{name} must not contain personal contact details (emails, phone numbers)")
    return text


def validate(request: NewLegalRequest, *, subject_count: int, now: datetime) -> NewLegalRequest:
    """Check a new request; every message names the field and never echoes its value."""
    if request.authority_type not in AUTHORITY_TYPES:
        raise InvalidArgument("authority_type: choose one of the AuthorityType values")
    if not 1 <= subject_count <= MAX_SUBJECTS:
        raise InvalidArgument(f"subjects: name between 1 and {MAX_SUBJECTS} subjects by identifier")
    if request.window_start >= request.window_end:
        raise InvalidArgument("window_start and window_end are required, with window_start before window_end")
    categories = tuple(sorted(set(request.data_categories)))
    if not categories or any(kind not in RECORD_KINDS for kind in categories):
        raise InvalidArgument("data_categories: give at least one known RecordKind")
    kind, until, review = request.ndo_kind, request.ndo_until, request.review_at
    if kind == NDO_NONE:
        if until is not None or review is not None:
            raise InvalidArgument("nondisclosure: an order of kind NONE takes no until or review_at date")
    elif kind == NDO_UNTIL_DATE:
        if until is None or until <= now:
            raise InvalidArgument("nondisclosure.until is required for UNTIL_DATE and must be in the future")
        if review is not None and review <= now:
            raise InvalidArgument("nondisclosure.review_at must be in the future")
    elif kind == NDO_INDEFINITE:
        if until is not None:
            raise InvalidArgument("nondisclosure: an INDEFINITE order has no until date; give review_at")
        if review is None or review <= now:
            raise InvalidArgument("nondisclosure.review_at is required for INDEFINITE and must be in the future")
    else:
        raise InvalidArgument("nondisclosure.kind is required: NONE, UNTIL_DATE or INDEFINITE")
    return NewLegalRequest(
        tenant_id=request.tenant_id,
        authority=_text(request.authority, "authority", 200),
        authority_type=request.authority_type,
        legal_basis=_text(request.legal_basis, "legal_basis", 200),
        reference_number=_text(request.reference_number, "reference_number", 100),
        window_start=request.window_start,
        window_end=request.window_end,
        data_categories=categories,
        ndo_kind=kind,
        ndo_until=until,
        review_at=review,
    )


def record_request(
    session: Session, request: NewLegalRequest, *, subject_ids: list[str], by: str, now: datetime
) -> LegalRequestRow:
    """Store a validated request with its resolved subject ids, recorded ``now`` by ``by``."""
    tenants.get_tenant(session, request.tenant_id)
    row = LegalRequestRow(
        id=f"lr_{uuid.uuid4().hex}",
        tenant_id=request.tenant_id,
        authority=request.authority,
        authority_type=request.authority_type,
        legal_basis=request.legal_basis,
        reference_number=request.reference_number,
        subject_ids=" ".join(sorted(set(subject_ids))),
        subject_count=len(set(subject_ids)),
        window_start=request.window_start,
        window_end=request.window_end,
        data_categories=" ".join(str(kind) for kind in request.data_categories),
        ndo_kind=request.ndo_kind,
        ndo_until=request.ndo_until,
        review_at=request.review_at,
        state="recorded",
        recorded_by=by,
        recorded_at=now,
        decided_by="",
        rejection_reason="",
        executed_by="",
        grant_id="",
        records_disclosed=0,
    )
    session.add(row)
    session.flush()
    return row


def find_request(session: Session, request_id: str) -> LegalRequestRow:
    """The request, or NOT_FOUND."""
    row = session.get(LegalRequestRow, request_id) if request_id else None
    if row is None:
        raise NotFound("no such legal request: check legal_request_id", reason=Reason.LEGAL_REQUEST_NOT_FOUND)
    return row


def _transition_refused(row: LegalRequestRow, action: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"a {row.state} legal request cannot be {action}",
        reason=Reason.LEGAL_INVALID_TRANSITION,
        metadata={"state": row.state, "action": action},
    )


def require_state(row: LegalRequestRow, action: str, *allowed: str) -> None:
    """FAILED_PRECONDITION LEGAL_INVALID_TRANSITION unless ``row`` is in one of ``allowed``."""
    if row.state not in allowed:
        raise _transition_refused(row, action)


def approve(session: Session, request_id: str, *, by: str, now: datetime) -> LegalRequestRow:
    """A second operator approves a RECORDED request; its recorder never can (four eyes)."""
    row = find_request(session, request_id)
    if by == row.recorded_by:
        raise PermissionDenied(
            "four eyes: the operator who recorded a legal request cannot approve it; ask a second operator",
            reason=Reason.FOUR_EYES_REQUIRED,
        )
    require_state(row, "approved", "recorded")
    row.state = "approved"
    row.decided_by = by
    row.decided_at = now
    return row


def reject(session: Session, request_id: str, *, by: str, reason: str, now: datetime) -> LegalRequestRow:
    """Reject a request not yet executed, with a reason (10..500 characters, no contact details)."""
    text = reason.strip()
    if not 10 <= len(text) <= 500 or grants.looks_like_contact(text):
        raise InvalidArgument("reason: 10 to 500 characters, without emails or phone numbers")
    row = find_request(session, request_id)
    require_state(row, "rejected", "recorded", "approved")
    row.state = "rejected"
    row.decided_by = by
    row.decided_at = now
    row.rejection_reason = text
    return row


def _claim(session: Session, request_id: str, *conditions: Any, **values: Any) -> bool:
    """One conditional UPDATE of an APPROVED request (the database decides between concurrent callers: on
    PostgreSQL the second waits for the first's row lock, then re-checks the condition); True if it matched."""
    result = session.execute(
        update(LegalRequestRow)
        .where(LegalRequestRow.id == request_id, LegalRequestRow.state == "approved", *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def _claim_refused(session: Session, row: LegalRequestRow, action: str) -> Aborted | FailedPrecondition:
    """Why a claim did not match, from the committed row: the request moved on, or another execution holds it."""
    session.refresh(row)
    if row.state != "approved":
        return _transition_refused(row, action)
    return Aborted(
        "another operator is executing this legal request now; list it to see whether that run completes",
        reason=Reason.LEGAL_EXECUTION_IN_PROGRESS,
    )


def begin_execution(session: Session, request_id: str, *, by: str, now: datetime) -> tuple[LegalRequestRow, str]:
    """Claim an APPROVED request no other execution holds, and open the legal grant its export runs under (hidden
    from the tenant); (row, grant id). A concurrent execution's claim refuses with ABORTED
    LEGAL_EXECUTION_IN_PROGRESS; one that finished first with FAILED_PRECONDITION LEGAL_INVALID_TRANSITION."""
    row = find_request(session, request_id)
    require_state(row, "executed", "approved")
    grant_id = f"sg_{uuid.uuid4().hex}"
    free = or_(LegalRequestRow.execution_lease_until.is_(None), LegalRequestRow.execution_lease_until <= now)
    if not _claim(session, row.id, free, execution_lease_until=now + GRANT_TTL, grant_id=grant_id):
        raise _claim_refused(session, row, "executed")
    session.refresh(row)
    grant = SupportGrantRow(
        id=grant_id,
        tenant_id=row.tenant_id,
        principal=by,
        reason=f"legal disclosure request {row.id}",
        ticket_id=row.id,
        duration_s=int(GRANT_TTL.total_seconds()),
        status="active",
        emergency=False,
        requested_at=now,
        approved_at=now,
        approved_by=row.decided_by,
        expires_at=now + GRANT_TTL,
        revoked_by="",
        legal_request_id=row.id,
        visible_to_tenant=False,
    )
    session.add(grant)
    session.flush()
    return row, grant.id


def abandon_execution(session: Session, request_id: str, grant_id: str, *, now: datetime) -> None:
    """An execution that failed part-way: its grant ends ``now`` and its claim is released (the request stays
    APPROVED, to be run again)."""
    grant = session.get(SupportGrantRow, grant_id)
    if grant is not None:
        grant.expires_at = now
    _claim(session, request_id, LegalRequestRow.grant_id == grant_id, execution_lease_until=None, grant_id="")


def _notice_allowed(row: LegalRequestRow, now: datetime) -> bool:
    if row.ndo_kind == NDO_NONE:
        return True
    return row.ndo_kind == NDO_UNTIL_DATE and row.ndo_until is not None and row.ndo_until <= now


def _release(session: Session, row: LegalRequestRow, now: datetime) -> None:
    row.notice_released_at = now
    grant = session.get(SupportGrantRow, row.grant_id)
    if grant is not None:
        grant.visible_to_tenant = True
    enqueue(
        session,
        make_event(
            events_pb2.LegalNoticeReleased(
                legal_request_id=row.id,
                authority_type=f"AUTHORITY_TYPE_{row.authority_type}",
                executed_at=to_timestamp(row.executed_at),
            ),
            source="gateway",
            tenant_id=row.tenant_id,
            occurred_at=now,
        ),
    )


def finish_execution(
    session: Session, request_id: str, *, grant_id: str, by: str, records: int, now: datetime
) -> LegalRequestRow:
    """Mark executed (only by the execution holding the claim), close the grant, and release the notice at once
    when no order withholds it."""
    row = find_request(session, request_id)
    done = _claim(
        session,
        request_id,
        LegalRequestRow.grant_id == grant_id,
        state="executed",
        executed_by=by,
        executed_at=now,
        records_disclosed=records,
        execution_lease_until=None,
    )
    if not done:
        raise _claim_refused(session, row, "executed")
    session.refresh(row)
    grant = session.get(SupportGrantRow, grant_id)
    if grant is not None:
        grant.expires_at = now
    if _notice_allowed(row, now):
        _release(session, row, now)
    return row


def release_due(session: Session, *, now: datetime) -> list[str]:
    """Release the notice of every executed request whose non-disclosure date has passed; their ids."""
    rows = session.scalars(
        select(LegalRequestRow).where(
            LegalRequestRow.state == "executed",
            LegalRequestRow.notice_released_at.is_(None),
            LegalRequestRow.ndo_kind == NDO_UNTIL_DATE,
            LegalRequestRow.ndo_until <= now,
        )
    ).all()
    for row in rows:
        _release(session, row, now)
    return [row.id for row in rows]


def reviews_due(session: Session, *, now: datetime) -> list[str]:
    """Requests whose order review date has come and not yet been reminded; marked reminded, their ids."""
    rows = session.scalars(
        select(LegalRequestRow).where(
            LegalRequestRow.notice_released_at.is_(None),
            LegalRequestRow.state != "rejected",
            LegalRequestRow.review_at <= now,
            LegalRequestRow.review_reminded_at.is_(None),
        )
    ).all()
    for row in rows:
        row.review_reminded_at = now
    return [row.id for row in rows]


def list_requests(session: Session, *, tenant_id: str, state: str) -> list[LegalRequestRow]:
    """Requests, newest first, optionally of one tenant and/or state."""
    query = select(LegalRequestRow).order_by(LegalRequestRow.recorded_at.desc())
    if tenant_id:
        query = query.where(LegalRequestRow.tenant_id == tenant_id)
    if state:
        query = query.where(LegalRequestRow.state == state)
    return list(session.scalars(query.limit(1000)))


@dataclass(frozen=True, slots=True)
class TransparencyCount:
    """Requests and subjects of one quarter, authority type and outcome."""

    quarter: str
    authority_type: int
    outcome: str
    requests: int
    subjects: int


def _outcome(state: str) -> str:
    return state if state in ("executed", "rejected") else "pending"


def transparency(session: Session, *, year: int) -> list[TransparencyCount]:
    """Counts per quarter (of recording), authority type and outcome; no personal data."""
    requests: Counter[tuple[str, int, str]] = Counter()
    subjects: Counter[tuple[str, int, str]] = Counter()
    for row in session.scalars(select(LegalRequestRow)):
        if year and row.recorded_at.year != year:
            continue
        key = (
            f"{row.recorded_at.year}-Q{(row.recorded_at.month - 1) // 3 + 1}",
            row.authority_type,
            _outcome(row.state),
        )
        requests[key] += 1
        subjects[key] += row.subject_count
    return [TransparencyCount(q, a, o, requests[(q, a, o)], subjects[(q, a, o)]) for q, a, o in sorted(requests)]


def purge_closed_requests(session: Session, *, now: datetime, retention: timedelta, limit: int = 100) -> list[str]:
    """Blank the particulars of requests closed at least ``retention`` ago (once each), announcing each with
    ``gateway.legal.purged``; their ids. Closed: rejected (at the decision) or executed with the notice released
    (at the release). The counts, dates and codes the transparency report reads are kept."""
    cutoff = now - retention
    rows = session.scalars(
        select(LegalRequestRow)
        .where(
            LegalRequestRow.purged_at.is_(None),
            or_(
                and_(LegalRequestRow.state == "rejected", LegalRequestRow.decided_at <= cutoff),
                and_(LegalRequestRow.state == "executed", LegalRequestRow.notice_released_at <= cutoff),
            ),
        )
        .order_by(LegalRequestRow.recorded_at)
        .limit(limit)
    ).all()
    for row in rows:
        closed_at = row.decided_at if row.state == "rejected" else row.notice_released_at
        row.authority, row.legal_basis, row.reference_number, row.subject_ids = "", "", "", ""
        row.recorded_by, row.decided_by, row.executed_by, row.rejection_reason = "", "", "", ""
        row.purged_at = now
        enqueue(
            session,
            make_event(
                events_pb2.LegalRequestPurged(
                    legal_request_id=row.id, closed_at=to_timestamp(closed_at), purged_at=to_timestamp(now)
                ),
                source="gateway",
                tenant_id=row.tenant_id,
                occurred_at=now,
            ),
        )
    return [row.id for row in rows]
