"""Consent and suppression: notify owns them because it is the one that sends.

Consent is per tenant, recipient (a data subject or a tenant contact), channel and purpose, with provenance
(source code, time given, wording version); a withdrawal stamps the record (kept as evidence) and is effective
for every send decided after it. The suppression list holds keyed hashes of addresses that get no marketing
(hard bounces, complaints, WhatsApp "stopped marketing"); a hard bounce suppresses every lane but critical.

dsr's OPT_OUT request arrives as ``OptOutRequested``: :func:`opt_out` withdraws every marketing consent of the
subject and stages ``OptOutCompleted`` in the same transaction (idempotent by task id through the inbox).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import enqueue, make_event
from services.chassis.clock import Clock
from services.chassis.errors import InvalidArgument, Reason
from services.chassis.ids import is_id, new_id
from services.notify.models import ConsentRow, SuppressionRow

__all__ = [
    "CHANNELS",
    "Recipient",
    "allowing_consent",
    "history",
    "is_suppressed",
    "opt_out",
    "record",
    "suppress",
    "suppression_reason",
    "suppressions",
    "withdraw",
]

CHANNELS = ("email", "whatsapp")
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
OPT_OUT_SOURCE = "dsr_opt_out"


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who: ``kind`` "subject" (the vault's subject id) or "contact" (notify's contact id)."""

    kind: str
    id: str

    @classmethod
    def of(cls, subject_id: str, contact_id: str) -> Recipient:
        """Exactly one of the two ids, well formed."""
        if bool(subject_id) == bool(contact_id):
            raise InvalidArgument(
                "name exactly one recipient: subject_id or contact_id", reason=Reason.IDENTIFIER_REQUIRED
            )
        field, value = ("subject_id", subject_id) if subject_id else ("contact_id", contact_id)
        if not is_id(value):
            raise InvalidArgument(
                f"{field} is not a well-formed id", reason=Reason.MALFORMED_ID, metadata={"field": field}
            )
        return cls("subject" if subject_id else "contact", value)


def code(field: str, value: str, *, required: bool = True) -> str:
    """A short machine code (source, purpose, wording version): letters, digits and . _ : - only."""
    if not value and not required:
        return ""
    if not _CODE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1-64 letters, digits or . _ : - (a code, not free text)", metadata={"field": field}
        )
    return value


def record(
    session: Session,
    clock: Clock,
    tenant_id: str,
    who: Recipient,
    *,
    channel: str,
    purpose: str,
    source: str,
    wording_version: str,
    given_at: datetime | None,
) -> ConsentRow:
    """Record a consent with its provenance (a new row every time: the history is the evidence)."""
    now = clock.now()
    if given_at is not None and given_at > now:
        raise InvalidArgument("given_at is in the future", metadata={"field": "given_at"})
    row = ConsentRow(
        consent_id=new_id(),
        tenant_id=tenant_id,
        recipient_kind=who.kind,
        recipient_id=who.id,
        channel=channel,
        purpose=code("purpose", purpose),
        source=code("source", source),
        wording_version=code("wording_version", wording_version),
        given_at=given_at or now,
        recorded_at=now,
        withdrawn_at=None,
        withdrawal_source="",
    )
    session.add(row)
    session.flush()
    return row


def withdraw(
    session: Session, clock: Clock, tenant_id: str, who: Recipient, *, channel: str, purpose: str, source: str
) -> list[ConsentRow]:
    """Withdraw the recipient's active consents (of ``channel`` / ``purpose``, or all); returns those withdrawn."""
    query = select(ConsentRow).where(
        ConsentRow.tenant_id == tenant_id,
        ConsentRow.recipient_kind == who.kind,
        ConsentRow.recipient_id == who.id,
        ConsentRow.withdrawn_at.is_(None),
    )
    if channel:
        query = query.where(ConsentRow.channel == channel)
    if purpose:
        query = query.where(ConsentRow.purpose == code("purpose", purpose))
    rows = list(session.scalars(query))
    now = clock.now()
    for row in rows:
        row.withdrawn_at = now
        row.withdrawal_source = code("source", source)
    session.flush()
    return rows


def history(session: Session, tenant_id: str, who: Recipient) -> list[ConsentRow]:
    """Every consent of the recipient, oldest first."""
    return list(
        session.scalars(
            select(ConsentRow)
            .where(
                ConsentRow.tenant_id == tenant_id,
                ConsentRow.recipient_kind == who.kind,
                ConsentRow.recipient_id == who.id,
            )
            .order_by(ConsentRow.recorded_at, ConsentRow.consent_id)
        )
    )


def allowing_consent(session: Session, tenant_id: str, who: Recipient, channel: str, purpose: str) -> str:
    """The id of an active consent covering ``channel`` and ``purpose`` now, or "" (checked at send time)."""
    row = session.scalars(
        select(ConsentRow)
        .where(
            ConsentRow.tenant_id == tenant_id,
            ConsentRow.recipient_kind == who.kind,
            ConsentRow.recipient_id == who.id,
            ConsentRow.channel == channel,
            ConsentRow.purpose == purpose,
            ConsentRow.withdrawn_at.is_(None),
        )
        .order_by(ConsentRow.recorded_at.desc())
        .limit(1)
    ).first()
    return row.consent_id if row else ""


def suppress(
    session: Session, clock: Clock, tenant_id: str, channel: str, recipient_hash: str, who: Recipient, reason: str
) -> None:
    """Put an address (by hash) on the suppression list; a second entry for it is a no-op."""
    if is_suppressed(session, tenant_id, channel, recipient_hash):
        return
    try:
        with session.begin_nested():
            session.add(
                SuppressionRow(
                    tenant_id=tenant_id,
                    channel=channel,
                    recipient_hash=recipient_hash,
                    recipient_kind=who.kind,
                    recipient_id=who.id,
                    reason_code=reason,
                    at=clock.now(),
                )
            )
    except IntegrityError:
        pass  # suppressed concurrently: the list holds it either way


def suppression_reason(session: Session, tenant_id: str, channel: str, recipient_hash: str) -> str:
    """Why this address is on the tenant's suppression list for ``channel`` ("" when it is not)."""
    reason = session.scalars(
        select(SuppressionRow.reason_code).where(
            SuppressionRow.tenant_id == tenant_id,
            SuppressionRow.channel == channel,
            SuppressionRow.recipient_hash == recipient_hash,
        )
    ).first()
    return reason or ""


def is_suppressed(session: Session, tenant_id: str, channel: str, recipient_hash: str) -> bool:
    """Is this address on the tenant's suppression list for ``channel``?"""
    return bool(suppression_reason(session, tenant_id, channel, recipient_hash))


def suppressions(session: Session, tenant_id: str, who: Recipient) -> list[SuppressionRow]:
    """The suppression entries recorded for the recipient's addresses."""
    return list(
        session.scalars(
            select(SuppressionRow)
            .where(
                SuppressionRow.tenant_id == tenant_id,
                SuppressionRow.recipient_kind == who.kind,
                SuppressionRow.recipient_id == who.id,
            )
            .order_by(SuppressionRow.at)
        )
    )


def opt_out(session: Session, clock: Clock, tenant_id: str, task: ev.OptOutRequested) -> None:
    """dsr's OPT_OUT: withdraw every marketing consent of the subject, then answer ``notify.optout.completed``.

    A malformed command is answered REJECTED (dsr fails the request with the reason) rather than dropped.
    """
    outcome, reason = ev.VAULT_TASK_OUTCOME_SUCCEEDED, ""
    if not is_id(task.subject_id):
        outcome, reason = ev.VAULT_TASK_OUTCOME_REJECTED, Reason.MALFORMED_ID
    else:
        withdraw(
            session,
            clock,
            tenant_id,
            Recipient("subject", task.subject_id),
            channel="",
            purpose="",
            source=OPT_OUT_SOURCE,
        )
    enqueue(
        session,
        make_event(
            ev.OptOutCompleted(
                task_id=task.task_id,
                request_id=task.request_id,
                subject_id=task.subject_id,
                outcome=outcome,
                reason_code=reason,
            ),
            source="notify",
            tenant_id=tenant_id,
            occurred_at=clock.now(),
        ),
    )
