"""notify's NATS side: the events it consumes (durable ``notify-events``), thin like ``api.py``.

- ``dsr.optout.requested``: withdraw the subject's marketing consent and answer ``notify.optout.completed``
  (:func:`services.notify.consent.opt_out`, in the consumer's transaction: inbox row, withdrawal and answer
  commit together, so a redelivered command changes nothing and answers once).
- dsr's request events become account notices to the tenant's contacts by email (service lane): a receipt
  (a new request), a completion (completed, rejected, cancelled, failed), a reminder, an extension and an
  overdue warning. Each is planned per contact under the idempotency key of (event id, channel, contact,
  template version): the same event delivered three times plans one email per contact.
Events from any other source, or of other kinds, are refused (dead-lettered with a reason), never guessed at.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import RefusedEvent
from services.chassis.catalog import subject_of
from services.chassis.ids import is_tenant_id
from services.notify import consent, contacts, deliveries
from services.notify.channels import Lane
from services.notify.consent import Recipient
from services.notify.deliveries import DeliveryContext, DeliveryEngine, Plan

log = logging.getLogger("steward.notify.events")

__all__ = ["EVENTS_DURABLE", "EVENT_SUBJECTS", "NotifyEventHandler", "notify_contacts"]

EVENTS_DURABLE = "notify-events"
EVENT_SUBJECTS = (
    subject_of(ev.OptOutRequested),
    subject_of(ev.DsrRequestChanged),
    subject_of(ev.DsrRequestReminder),
    subject_of(ev.DsrDeadlineExtended),
    subject_of(ev.DsrRequestOverdue),
)
_FINISHED = {
    "REQUEST_STATE_COMPLETED": "completed",
    "REQUEST_STATE_REJECTED": "rejected",
    "REQUEST_STATE_CANCELLED": "cancelled",
    "REQUEST_STATE_FAILED": "failed",
}


def _date(stamp: Timestamp) -> str:
    return datetime.fromtimestamp(stamp.seconds, UTC).strftime("%Y-%m-%d")


def _type(value: str) -> str:
    return value.removeprefix("REQUEST_TYPE_").replace("_", " ").lower()


def notify_contacts(
    session: Session, ctx: DeliveryContext, event: ev.Event, template: str, variables: dict[str, str]
) -> int:
    """Plan ``template`` by email to each of the event tenant's contacts (service lane); returns how many were new."""
    planned = 0
    for contact_id, locale in contacts.contact_ids(session, event.tenant_id):
        _row, replayed = deliveries.plan(
            session,
            ctx,
            Plan(
                tenant_id=event.tenant_id,
                cause=f"event:{event.id}",
                channel="email",
                lane=Lane.SERVICE,
                template_version=ctx.catalogue.version(template, locale),
                recipient=Recipient("contact", contact_id),
                variables=variables,
            ),
        )
        planned += 0 if replayed else 1
    return planned


class NotifyEventHandler:
    """The consumer's handler (runs in the consumer's transaction on a worker thread)."""

    def __init__(self, ctx: DeliveryContext, engine: DeliveryEngine | None) -> None:
        self.ctx = ctx
        self.engine = engine

    def __call__(self, session: Session, event: ev.Event) -> None:
        if event.source != "dsr":
            raise RefusedEvent("not_a_notify_input")
        if not is_tenant_id(event.tenant_id):
            raise RefusedEvent("no_tenant")
        kind = event.WhichOneof("payload")
        planned = 0
        if kind == "opt_out_requested":
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
