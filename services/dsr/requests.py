"""Data-subject requests: the state machine, the deadline rules and the queries (the caller owns the transaction).

States: RECEIVED -> AWAITING_APPROVAL (when the tenant's policy asks) -> IN_PROGRESS -> COMPLETED | REJECTED |
CANCELLED | FAILED, and BLOCKED_BY_HOLD (a deletion waiting on a legal hold). Every transition is a timeline
row, a signed evidence entry and a ``dsr.request.changed`` event, in the same transaction.

Deadlines come from the injected clock: due = received + 30 days; a minor's deletion is due in 72 hours and
never waits for approval; the due date can be extended once, with a reason, by one or two further months.
Nothing here ever sees an identifier: requests name their subject by the vault's subject id.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.clock import Clock
from services.chassis.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from services.chassis.identity import CallerIdentity
from services.chassis.ids import valid_id
from services.chassis.timestamps import to_timestamp
from services.dsr import evidence
from services.dsr.evidence import EvidenceSigner
from services.dsr.models import DsrPolicy, DsrRequestRow, TimelineRow

__all__ = [
    "DEFAULT_GRACE_DAYS",
    "DEFAULT_MINOR_AGE",
    "DUE_AFTER",
    "MINOR_DELETION_DUE_AFTER",
    "OPEN_STATES",
    "RECORD_KINDS",
    "TYPES",
    "DsrContext",
    "PolicyView",
    "Submission",
    "add_months",
    "cancel",
    "create",
    "extend",
    "find_by_idempotency_key",
    "format_rules",
    "get",
    "get_policy",
    "list_overdue",
    "list_requests",
    "parse_rules",
    "reject",
    "require_state",
    "set_policy",
    "timeline",
    "transition",
    "utc",
    "validate_identifier",
]

TYPES = ("ACCESS", "PORTABILITY", "CORRECTION", "DELETION", "RESTRICTION", "LIFT_RESTRICTION", "OPT_OUT")
OPEN_STATES = ("RECEIVED", "AWAITING_APPROVAL", "IN_PROGRESS", "BLOCKED_BY_HOLD")
DUE_AFTER = timedelta(days=30)
MINOR_DELETION_DUE_AFTER = timedelta(hours=72)
DEFAULT_MINOR_AGE = 16  # the privacy policy's age; a tenant may only raise it
MAX_EXTENSION_MONTHS = 2
DEFAULT_GRACE_DAYS = 30  # between a tenant's closure and the shred of its customer data
MAX_GRACE_DAYS = 365
# steward.vault.v1.RecordKind names (without the prefix) and values: what retention rules name.
RECORD_KINDS = {"LEAD_CONTACT": 1, "INTERACTION": 2, "OPPORTUNITY": 3, "NOTE": 4, "CUSTOM": 5}
MAX_AGE_DAYS = 36500
REJECTION_REASONS = (
    "IDENTITY_NOT_VERIFIED",
    "MANIFESTLY_UNFOUNDED",
    "EXCESSIVE",
    "LEGAL_OBLIGATION",
    "NOT_THE_CONTROLLER",
)
EXTENSION_REASONS = ("COMPLEXITY", "NUMBER_OF_REQUESTS")
SERVICE_ACTOR = "service:dsr"
# Codes callers send (channel, verification method, who verified): ids, never names or addresses.
_CODE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")
_PHONE = re.compile(r"\+?[0-9 ()./-]{6,32}")
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class DsrContext:
    """What the rules need besides the session: the evidence signer, the clock and the event source."""

    signer: EvidenceSigner
    clock: Clock
    source: str = "dsr"


def utc(at: datetime) -> datetime:
    """``at`` as aware UTC (SQLite hands timezone-aware columns back naive)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def add_months(at: datetime, months: int) -> datetime:
    """``at`` plus calendar months, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb)."""
    month_index = at.month - 1 + months
    year, month = at.year + month_index // 12, month_index % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)


# ---------------------------------------------------------------------------------------------- validation


def validate_identifier(field: str, raw: str) -> None:
    """Refuse an identifier that cannot be one (the vault normalises and resolves it; nothing here keeps it).

    Messages never echo the value.
    """
    if field == "":
        raise InvalidArgument(
            "name the data subject: set subject.email, subject.phone or subject.external_id",
            reason=Reason.IDENTIFIER_REQUIRED,
        )
    if not raw.strip():
        raise InvalidArgument(
            f"subject.{field} is empty; send the subject's {field}", reason=Reason.IDENTIFIER_REQUIRED
        )
    if field == "email" and (len(raw) > 254 or not _EMAIL.fullmatch(raw.strip())):
        raise InvalidArgument(
            "subject.email is not an email address (expected local@domain.tld)",
            reason=Reason.MALFORMED_IDENTIFIER,
            metadata={"field": "subject.email"},
        )
    if field == "phone" and (not _PHONE.fullmatch(raw.strip()) or sum(c.isdigit() for c in raw) < 6):
        raise InvalidArgument(
            "subject.phone is not a phone number (digits, optionally + and separators; at least 6 digits)",
            reason=Reason.MALFORMED_IDENTIFIER,
            metadata={"field": "subject.phone"},
        )
    if field == "external_id" and len(raw) > 256:
        raise InvalidArgument(
            "subject.external_id is longer than 256 characters",
            reason=Reason.MALFORMED_IDENTIFIER,
            metadata={"field": "subject.external_id"},
        )


def _code(field: str, value: str, *, required: bool = False) -> str:
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required", reason=Reason.INVALID_ARGUMENT, metadata={"field": field})
        return ""
    if not _CODE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be a code of 1-64 letters, digits or . _ : - (an id, never a name or an address)",
            metadata={"field": field},
        )
    return value


@dataclass(frozen=True)
class Submission:
    """A validated SubmitRequest without its identifier (which is resolved in memory and never kept)."""

    type: str
    received_at: datetime | None
    channel: str
    verification_method: str
    verified_by: str
    is_minor: bool
    idempotency_key: str

    @classmethod
    def of(
        cls,
        *,
        type: str,
        received_at: datetime | None,
        channel: str,
        verification_method: str,
        verified_by: str,
        is_minor: bool,
        idempotency_key: str,
        now: datetime,
    ) -> Submission:
        """Validate the fields; InvalidArgument naming the field to fix."""
        if type not in TYPES:
            raise InvalidArgument(
                f"type must be one of {', '.join('REQUEST_TYPE_' + t for t in TYPES)}",
                reason=Reason.UNKNOWN_REQUEST_TYPE,
            )
        if received_at is not None and received_at > now + timedelta(minutes=5):
            raise InvalidArgument("received_at is in the future; send when the subject made the request")
        if idempotency_key and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise InvalidArgument(
                "idempotency_key must be 1-128 letters, digits or . _ : -", metadata={"field": "idempotency_key"}
            )
        return cls(
            type=type,
            received_at=received_at,
            channel=_code("channel", channel),
            verification_method=_code("verification.method", verification_method),
            verified_by=_code("verification.verified_by", verified_by),
            is_minor=is_minor,
            idempotency_key=idempotency_key,
        )


# ---------------------------------------------------------------------------------------------- transitions


def _facts(row: DsrRequestRow) -> dict[str, Any]:
    return {"type": row.type, "subject_id": row.subject_id, "due_at": evidence.canonical_time(row.due_at)}


def transition(
    session: Session,
    ctx: DsrContext,
    row: DsrRequestRow,
    state: str,
    *,
    actor: str,
    reason_code: str = "",
    facts: Mapping[str, Any] | None = None,
    evidence_kind: str = "",
) -> None:
    """Move ``row`` to ``state``: timeline row, signed evidence entry and ``dsr.request.changed`` event."""
    now = ctx.clock.now()
    previous = row.state
    row.state = state
    row.reason_code = reason_code
    row.updated_at = now
    if state in ("COMPLETED", "REJECTED", "CANCELLED", "FAILED"):
        row.completed_at = now
    record_step(session, ctx, row, actor=actor, reason_code=reason_code, previous=previous)
    evidence.append(
        session,
        ctx.signer,
        tenant_id=row.tenant_id,
        request_id=row.request_id,
        kind=evidence_kind or f"request.{state.lower()}",
        facts={**_facts(row), "state": state, "actor": actor, "reason_code": reason_code, **(facts or {})},
        at=now,
    )


_TIMELINE_TAILS = "dsr_timeline_tails"
"""``Session.info`` key: per request, the last timeline row this transaction added."""


def _next_timeline_seq(session: Session, row: DsrRequestRow) -> int:
    """The next timeline position of ``row``: 1 for a request this transaction creates, one past the step this
    transaction added last (a step of a rolled-back savepoint has left the session), else read. Neither of the
    first two queries, so nothing is flushed early (evidence entries are inserted signed at commit)."""
    tail = session.info.get(_TIMELINE_TAILS, {}).get(row.request_id)
    if tail is not None and tail in session:
        return int(tail.seq) + 1
    if row in session.new:
        return 1
    return (session.scalar(select(func.max(TimelineRow.seq)).where(TimelineRow.request_id == row.request_id)) or 0) + 1


def record_step(
    session: Session, ctx: DsrContext, row: DsrRequestRow, *, actor: str, reason_code: str, previous: str
) -> None:
    """Timeline row + ``dsr.request.changed`` for the row's current state (also for an extension)."""
    now = ctx.clock.now()
    step = TimelineRow(
        request_id=row.request_id,
        seq=_next_timeline_seq(session, row),
        state=row.state,
        at=now,
        actor=actor,
        reason_code=reason_code,
    )
    session.add(step)
    session.info.setdefault(_TIMELINE_TAILS, {})[row.request_id] = step
    enqueue(
        session,
        make_event(
            events_pb2.DsrRequestChanged(
                request_id=row.request_id,
                type=f"REQUEST_TYPE_{row.type}",
                state=f"REQUEST_STATE_{row.state}",
                previous_state=f"REQUEST_STATE_{previous}" if previous else "",
                reason_code=reason_code,
                due_at=to_timestamp(utc(row.due_at)),
            ),
            source=ctx.source,
            tenant_id=row.tenant_id,
            occurred_at=now,
        ),
    )


def require_state(row: DsrRequestRow, action: str, allowed: Sequence[str]) -> None:
    """FailedPrecondition DSR_INVALID_TRANSITION unless ``row`` is in one of ``allowed``."""
    if row.state not in allowed:
        raise FailedPrecondition(
            f"cannot {action} a request that is {row.state}: {action} applies only to a request that is "
            f"{' or '.join(allowed)}",
            reason=Reason.DSR_INVALID_TRANSITION,
            metadata={"state": row.state, "action": action},
        )


def find_by_idempotency_key(session: Session, tenant_id: str, key: str) -> DsrRequestRow | None:
    """The request a tenant submitted with ``key`` before, if any."""
    if not key:
        return None
    return session.scalar(
        select(DsrRequestRow).where(DsrRequestRow.tenant_id == tenant_id, DsrRequestRow.idempotency_key == key)
    )


def create(
    session: Session, ctx: DsrContext, who: CallerIdentity, sub: Submission, request_id: str, subject_id: str
) -> DsrRequestRow:
    """Record a new request in RECEIVED (timeline, evidence, event); the flow decides where it goes next."""
    now = ctx.clock.now()
    received = utc(sub.received_at) if sub.received_at is not None else now
    minor_deletion = sub.is_minor and sub.type == "DELETION"
    row = DsrRequestRow(
        request_id=request_id,
        tenant_id=who.tenant_id,
        type=sub.type,
        state="",
        subject_id=subject_id,
        received_at=received,
        due_at=received + (MINOR_DELETION_DUE_AFTER if minor_deletion else DUE_AFTER),
        channel=sub.channel,
        verification_method=sub.verification_method,
        verified_by=sub.verified_by,
        is_minor=sub.is_minor,
        idempotency_key=sub.idempotency_key or None,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    transition(
        session,
        ctx,
        row,
        "RECEIVED",
        actor=who.principal,
        facts={
            "received_at": evidence.canonical_time(received),
            "channel": sub.channel,
            "verification_method": sub.verification_method,
            "verified_by": sub.verified_by,
            "is_minor": sub.is_minor,
            "subject_resolved": bool(subject_id),
        },
    )
    return row


def get(session: Session, tenant_id: str, request_id: str) -> DsrRequestRow:
    """The tenant's request; NOT_FOUND (the same for another tenant's id) otherwise."""
    valid_id("request_id", request_id)
    row = session.get(DsrRequestRow, request_id) if request_id else None
    if row is None or row.tenant_id != tenant_id:
        raise NotFound("no such request: check request_id", reason=Reason.DSR_REQUEST_NOT_FOUND)
    return row


def timeline(session: Session, request_id: str) -> list[TimelineRow]:
    """A request's transitions, oldest first."""
    return list(
        session.scalars(select(TimelineRow).where(TimelineRow.request_id == request_id).order_by(TimelineRow.seq))
    )


def reject(session: Session, ctx: DsrContext, who: CallerIdentity, request_id: str, reason: str) -> DsrRequestRow:
    """RECEIVED, AWAITING_APPROVAL or BLOCKED_BY_HOLD -> REJECTED, with a reason code."""
    if reason not in REJECTION_REASONS:
        raise InvalidArgument(
            f"reason is required: one of {', '.join('REJECTION_REASON_' + r for r in REJECTION_REASONS)}",
            reason=Reason.REASON_REQUIRED,
        )
    row = get(session, who.tenant_id, request_id)
    require_state(row, "reject", ("RECEIVED", "AWAITING_APPROVAL", "BLOCKED_BY_HOLD"))
    transition(session, ctx, row, "REJECTED", actor=who.principal, reason_code=reason, facts={"hold_id": row.hold_id})
    return row


def cancel(session: Session, ctx: DsrContext, who: CallerIdentity, request_id: str) -> DsrRequestRow:
    """A request not yet executing -> CANCELLED (a task already sent cannot be called back)."""
    row = get(session, who.tenant_id, request_id)
    require_state(row, "cancel", ("RECEIVED", "AWAITING_APPROVAL", "BLOCKED_BY_HOLD"))
    transition(session, ctx, row, "CANCELLED", actor=who.principal, reason_code="CANCELLED_BY_TENANT")
    return row


def extend(
    session: Session, ctx: DsrContext, who: CallerIdentity, request_id: str, reason: str, months: int
) -> DsrRequestRow:
    """Move the due date once by one or two further months, with a reason; the tenant is notified by event."""
    if reason not in EXTENSION_REASONS:
        raise InvalidArgument(
            f"reason is required: one of {', '.join('EXTENSION_REASON_' + r for r in EXTENSION_REASONS)}",
            reason=Reason.REASON_REQUIRED,
        )
    if not 1 <= months <= MAX_EXTENSION_MONTHS:
        raise InvalidArgument(
            f"additional_months must be 1 or 2 (at most {MAX_EXTENSION_MONTHS} further months, once)",
            reason=Reason.DSR_EXTENSION_REFUSED,
        )
    row = get(session, who.tenant_id, request_id)
    require_state(row, "extend", OPEN_STATES)
    if row.extension_reason:
        raise FailedPrecondition(
            "this request's deadline was extended already; it can be extended only once",
            reason=Reason.DSR_EXTENSION_REFUSED,
        )
    old_due = utc(row.due_at)
    row.due_at = add_months(old_due, months)
    row.extension_reason = reason
    row.reminded_days = 0  # reminders come again before the new due date
    enqueue(
        session,
        make_event(
            events_pb2.DsrDeadlineExtended(
                request_id=row.request_id,
                type=f"REQUEST_TYPE_{row.type}",
                previous_due_at=to_timestamp(old_due),
                due_at=to_timestamp(utc(row.due_at)),
                reason_code=reason,
            ),
            source=ctx.source,
            tenant_id=row.tenant_id,
            occurred_at=ctx.clock.now(),
        ),
    )
    row.updated_at = ctx.clock.now()
    record_step(session, ctx, row, actor=who.principal, reason_code="EXTENDED", previous=row.state)
    evidence.append(
        session,
        ctx.signer,
        tenant_id=row.tenant_id,
        request_id=row.request_id,
        kind="request.extended",
        facts={
            **_facts(row),
            "previous_due_at": evidence.canonical_time(old_due),
            "reason": reason,
            "months": months,
            "actor": who.principal,
        },
        at=ctx.clock.now(),
    )
    return row


def list_requests(
    session: Session,
    tenant_id: str,
    *,
    state: str,
    due_before: datetime | None,
    overdue_only: bool,
    now: datetime,
    page_size: int,
    after: str,
) -> list[DsrRequestRow]:
    """One page of a tenant's requests (oldest first by id, which is time-ordered); ``after`` = the page token."""
    query = select(DsrRequestRow).where(DsrRequestRow.tenant_id == tenant_id)
    if state:
        query = query.where(DsrRequestRow.state == state)
    if due_before is not None:
        query = query.where(DsrRequestRow.due_at < due_before)
    if overdue_only:
        query = query.where(DsrRequestRow.state.in_(OPEN_STATES), DsrRequestRow.due_at < now)
    if after:
        query = query.where(DsrRequestRow.request_id > after)
    return list(session.scalars(query.order_by(DsrRequestRow.request_id).limit(page_size)))


def list_overdue(session: Session, tenant_id: str, *, now: datetime, page_size: int, after: str) -> list[DsrRequestRow]:
    """Unfinished requests past their due date: one tenant's, or every tenant's when ``tenant_id`` is empty."""
    query = select(DsrRequestRow).where(DsrRequestRow.state.in_(OPEN_STATES), DsrRequestRow.due_at < now)
    if tenant_id:
        query = query.where(DsrRequestRow.tenant_id == tenant_id)
    if after:
        query = query.where(DsrRequestRow.request_id > after)
    return list(session.scalars(query.order_by(DsrRequestRow.request_id).limit(page_size)))


# ---------------------------------------------------------------------------------------------- policy


def parse_rules(stored: str) -> dict[str, int]:
    """A policy's stored rules (``KIND=DAYS ...``) as {kind: days}."""
    pairs = (item.split("=", 1) for item in stored.split())
    return {kind: int(days) for kind, days in pairs}


def format_rules(rules: dict[str, int]) -> str:
    """Validate and store rules: known kinds, 1-36500 days, one rule per kind."""
    for kind, days in rules.items():
        if kind not in RECORD_KINDS:
            raise InvalidArgument(
                f"retention.record_kind must be one of {', '.join(RECORD_KINDS)}",
                metadata={"field": "policy.retention.record_kind"},
            )
        if not 1 <= days <= MAX_AGE_DAYS:
            raise InvalidArgument(
                f"retention.max_age_days must be between 1 and {MAX_AGE_DAYS}",
                metadata={"field": "policy.retention.max_age_days"},
            )
    return " ".join(f"{kind}={days}" for kind, days in sorted(rules.items()))


@dataclass(frozen=True)
class PolicyView:
    """A tenant's policy (the defaults when it never set one)."""

    approval_required: tuple[str, ...] = ()
    minor_age_threshold: int = DEFAULT_MINOR_AGE
    grace_period_days: int = DEFAULT_GRACE_DAYS
    # Record kind -> max age in days (retention sweeps delete older records).
    retention: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, row: DsrPolicy) -> PolicyView:
        """The view of a stored policy."""
        return cls(
            tuple(row.approval_required.split()),
            row.minor_age_threshold,
            row.grace_period_days,
            parse_rules(row.retention),
        )


def get_policy(session: Session, tenant_id: str) -> PolicyView:
    """The tenant's policy."""
    row = session.get(DsrPolicy, tenant_id)
    return PolicyView() if row is None else PolicyView.of(row)


def set_policy(session: Session, ctx: DsrContext, tenant_id: str, policy: PolicyView) -> PolicyView:
    """Replace the tenant's policy; the minors' age may be raised above the privacy policy's 16, never lowered."""
    unknown = [t for t in policy.approval_required if t not in TYPES]
    if unknown:
        raise InvalidArgument("approval_required holds an unknown request type", reason=Reason.UNKNOWN_REQUEST_TYPE)
    age = policy.minor_age_threshold or DEFAULT_MINOR_AGE
    if not DEFAULT_MINOR_AGE <= age <= 21:
        raise InvalidArgument(
            f"minor_age_threshold must be between {DEFAULT_MINOR_AGE} (the privacy policy's age) and 21",
            metadata={"field": "policy.minor_age_threshold"},
        )
    grace = policy.grace_period_days or DEFAULT_GRACE_DAYS
    if not 1 <= grace <= MAX_GRACE_DAYS:
        raise InvalidArgument(
            f"grace_period_days must be between 1 and {MAX_GRACE_DAYS} (0 = {DEFAULT_GRACE_DAYS})",
            metadata={"field": "policy.grace_period_days"},
        )
    retention = format_rules(dict(policy.retention))
    row = session.get(DsrPolicy, tenant_id)
    if row is None:
        row = DsrPolicy(tenant_id=tenant_id)
        session.add(row)
    row.approval_required = " ".join(sorted(set(policy.approval_required)))
    row.minor_age_threshold = age
    row.grace_period_days = grace
    row.retention = retention
    row.updated_at = ctx.clock.now()
    return PolicyView.of(row)
