"""notify's NATS side: the events it consumes (durable ``notify-events``), thin like ``api.py``.

- ``dsr.optout.requested``: withdraw the subject's marketing consent and answer ``notify.optout.completed``
  (:func:`services.notify.consent.opt_out`, in the consumer's transaction: inbox row, withdrawal and answer
  commit together, so a redelivered command changes nothing and answers once).
- dsr's request events become account notices to the tenant's contacts by email (service lane): a receipt
  (a new request), a completion (completed, rejected, cancelled, failed), a reminder, an extension and an
  overdue warning. Each is planned per contact under the idempotency key of (event id, channel, contact,
  template version): the same event delivered three times plans one email per contact.
- The tenant's own offboarding, the same way: dsr's reminders (7 and 1 days before the shred) and the shred
  certificate (its id and date: the certificate itself is fetched from dsr, ``steward tenant
  offboarding-status``); the gateway's legal-disclosure notices (authority type and date, once the tenant may be
  told) and support-access changes (requested, granted, revoked: grant and ticket ids, expiry).
Events from any other source, or of other kinds, are refused (dead-lettered with a reason), never guessed at; a
payload naming another tenant than its envelope, or missing its ids or dates, likewise. A tenant with no
contacts gets nothing (logged, by tenant id only).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import RefusedEvent
from services.chassis.catalog import subject_of
from services.chassis.ids import is_id, is_tenant_id
from services.notify import campaigns, consent
from services.notify.deliveries import DeliveryContext, DeliveryEngine

log = logging.getLogger("steward.notify.events")

__all__ = ["EVENTS_DURABLE", "EVENT_SUBJECTS", "NotifyEventHandler", "notify_contacts"]

EVENTS_DURABLE = "notify-events"
EVENT_SUBJECTS = (
    subject_of(ev.OptOutRequested),
    subject_of(ev.DsrRequestChanged),
    subject_of(ev.DsrRequestReminder),
    subject_of(ev.DsrDeadlineExtended),
    subject_of(ev.DsrRequestOverdue),
    subject_of(ev.TenantOffboardingReminder),
    subject_of(ev.TenantShredCertified),
    subject_of(ev.LegalNoticeReleased),
    subject_of(ev.SupportAccessRequested),
    subject_of(ev.SupportAccessGranted),
    subject_of(ev.SupportAccessRevoked),
)
# Which source may send which kind (anything else is refused).
_SOURCES = {
    "tenant_offboarding_reminder": "dsr",
    "tenant_shred_certified": "dsr",
    "legal_notice_released": "gateway",
    "support_access_requested": "gateway",
    "support_access_granted": "gateway",
    "support_access_revoked": "gateway",
}
_AUTHORITY = re.compile(r"AUTHORITY_TYPE_([A-Z_]{1,40})")
_FINISHED = {
    "REQUEST_STATE_COMPLETED": "completed",
    "REQUEST_STATE_REJECTED": "rejected",
    "REQUEST_STATE_CANCELLED": "cancelled",
    "REQUEST_STATE_FAILED": "failed",
}


def _date(stamp: Timestamp) -> str:
    return datetime.fromtimestamp(stamp.seconds, UTC).strftime("%Y-%m-%d")


def _required_date(message: Any, field: str) -> str:
    if not message.HasField(field) or message.__getattribute__(field).seconds <= 0:
        raise RefusedEvent(f"{field}_missing")
    return _date(message.__getattribute__(field))


def _required_id(value: str, field: str, prefix: str = "") -> str:
    """A Steward id (a UUID), or with ``prefix`` the gateway's ``<prefix>_<32 hex>`` form."""
    valid = re.fullmatch(prefix + r"_[0-9a-f]{32}", value) if prefix else is_id(value)
    if not valid:
        raise RefusedEvent(f"{field}_invalid")
    return value


def _same_tenant(event: ev.Event, payload_tenant: str) -> None:
    if payload_tenant != event.tenant_id:
        raise RefusedEvent("tenant_mismatch")


def _type(value: str) -> str:
    return value.removeprefix("REQUEST_TYPE_").replace("_", " ").lower()


def notify_contacts(
    session: Session, ctx: DeliveryContext, event: ev.Event, template: str, variables: dict[str, str]
) -> int:
    """Plan ``template`` by email to each of the event tenant's contacts (service lane); returns how many were new."""
    return campaigns.plan_to_contacts(session, ctx, event.tenant_id, f"event:{event.id}", template, variables)


class NotifyEventHandler:
    """The consumer's handler (runs in the consumer's transaction on a worker thread)."""

    def __init__(self, ctx: DeliveryContext, engine: DeliveryEngine | None) -> None:
        self.ctx = ctx
        self.engine = engine

    def __call__(self, session: Session, event: ev.Event) -> None:
        kind = event.WhichOneof("payload") or ""
        if event.source != _SOURCES.get(kind, "dsr"):
            raise RefusedEvent("not_a_notify_input")
        if not is_tenant_id(event.tenant_id):
            raise RefusedEvent("no_tenant")
        planned = 0
        if kind in _SOURCES:
            template, variables = _lifecycle_notice(event, kind)
            planned = notify_contacts(session, self.ctx, event, template, variables)
        elif kind == "opt_out_requested":
            consent.opt_out(session, self.ctx.clock, event.tenant_id, event.opt_out_requested)
        elif kind == "dsr_request_changed":
            change = event.dsr_request_changed
            base = {
                "request_id": change.request_id,
                "request_type": _type(change.type),
                "due_date": _date(change.due_at),
            }
            if not change.previous_state:
                planned = notify_contacts(session, self.ctx, event, "dsr_received", base)
            elif change.state in _FINISHED:
                planned = notify_contacts(
                    session, self.ctx, event, "dsr_completed", {**base, "outcome": _FINISHED[change.state]}
                )
        elif kind == "dsr_request_reminder":
            reminder = event.dsr_request_reminder
            planned = notify_contacts(
                session,
                self.ctx,
                event,
                "dsr_reminder",
                {
                    "request_id": reminder.request_id,
                    "request_type": _type(reminder.type),
                    "due_date": _date(reminder.due_at),
                    "days_left": str(reminder.days_left),
                },
            )
        elif kind == "dsr_deadline_extended":
            extended = event.dsr_deadline_extended
            planned = notify_contacts(
                session,
                self.ctx,
                event,
                "dsr_extended",
                {
                    "request_id": extended.request_id,
                    "request_type": _type(extended.type),
                    "previous_due_date": _date(extended.previous_due_at),
                    "due_date": _date(extended.due_at),
                    "reason": extended.reason_code.lower().replace("_", " ") or "complexity",
                },
            )
        elif kind == "dsr_request_overdue":
            overdue = event.dsr_request_overdue
            planned = notify_contacts(
                session,
                self.ctx,
                event,
                "dsr_overdue",
                {
                    "request_id": overdue.request_id,
                    "request_type": _type(overdue.type),
                    "state": overdue.state.removeprefix("REQUEST_STATE_").lower(),
                    "due_date": _date(overdue.due_at),
                },
            )
        else:
            raise RefusedEvent("not_a_notify_input")
        if planned and self.engine is not None:
            self.engine.wake()  # the commit follows at once; a wake that comes early finds it on the next scan


def _lifecycle_notice(event: ev.Event, kind: str) -> tuple[str, dict[str, str]]:
    """The template and variables of an offboarding, legal or support notice (ids, codes and dates only)."""
    if kind == "tenant_offboarding_reminder":
        reminder = event.tenant_offboarding_reminder
        _same_tenant(event, reminder.tenant_id)
        if reminder.days_left not in (1, 7):
            raise RefusedEvent("days_left_invalid")
        shred_date = _required_date(reminder, "shred_at")
        return "offboarding_reminder", {
            "tenant_id": event.tenant_id,
            "shred_date": shred_date,
            "days_left": str(reminder.days_left),
        }
    if kind == "tenant_shred_certified":
        certified = event.tenant_shred_certified
        _same_tenant(event, certified.tenant_id)
        return "shred_certificate", {
            "tenant_id": event.tenant_id,
            "certificate_id": _required_id(certified.certificate_id, "certificate_id"),
            "shred_date": _required_date(certified, "shredded_at"),
        }
    if kind == "legal_notice_released":
        released = event.legal_notice_released
        authority = _AUTHORITY.fullmatch(released.authority_type)
        if authority is None:
            raise RefusedEvent("authority_type_invalid")
        return "legal_disclosure", {
            "legal_request_id": _required_id(released.legal_request_id, "legal_request_id", "lr"),
            "authority_type": authority.group(1).replace("_", " ").lower(),
            "executed_date": _required_date(released, "executed_at"),
        }
    if kind == "support_access_requested":
        requested = event.support_access_requested
        _same_tenant(event, requested.tenant_id)
        if requested.duration_seconds <= 0:
            raise RefusedEvent("duration_invalid")
        return "support_access", {
            "change": "requested",
            "grant_id": _required_id(requested.grant_id, "grant_id", "sg"),
            "ticket_id": _ticket(requested.ticket_id),
            "hours": str(max(1, -(-requested.duration_seconds // 3600))),
            "expiry_date": "",
            "emergency": "",
        }
    if kind == "support_access_granted":
        granted = event.support_access_granted
        _same_tenant(event, granted.tenant_id)
        return "support_access", {
            "change": "granted",
            "grant_id": _required_id(granted.grant_id, "grant_id", "sg"),
            "ticket_id": _ticket(granted.ticket_id),
            "hours": "",
            "expiry_date": _required_date(granted, "expires_at"),
            "emergency": "yes" if granted.emergency else "",
        }
    revoked = event.support_access_revoked
    _same_tenant(event, revoked.tenant_id)
    return "support_access", {
        "change": "revoked",
        "grant_id": _required_id(revoked.grant_id, "grant_id", "sg"),
        "ticket_id": "",
        "hours": "",
        "expiry_date": "",
        "emergency": "",
    }


def _ticket(value: str) -> str:
    # A ticket id is an operator's reference (the gateway's rule: letters, digits, . _ : # -), never free text.
    if not re.fullmatch(r"[A-Za-z0-9._:#-]{1,64}", value):
        raise RefusedEvent("ticket_id_invalid")
    return value
