"""The event catalog: every payload the ``Event`` envelope carries, the event types it is published as, and their
NATS subjects (``steward.<service>.<noun>.<verb>``).

Producers build envelopes with :func:`services.chassis.bus.make_event`, which looks the payload up here;
consumers subscribe to :func:`subject_of` / :attr:`EventKind.subjects`. Nothing else spells an event type or a
subject, so a type cannot drift between the service that sends it and the one that listens. A payload is
published under more than one type when several services announce the same fact (a tenant created in the
registry and in the vault) or when one field picks the verb (a record created / updated / deleted).

Type strings are part of the wire contract: events already on streams carry them, so an entry's types never
change; a new fact gets a new entry (and a new payload in ``events.proto``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from steward.events.v1 import events_pb2 as ev

__all__ = ["CATALOG", "EventKind", "kind_of", "subject_for", "subject_of"]

# Envelope field of each payload message, read from the proto: the catalog never spells a field name.
_ONEOF_FIELD = {
    field.message_type.full_name: field.name
    for field in ev.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
    if field.message_type is not None
}


def subject_for(event_type: str) -> str:
    """``vault.subject.erased`` -> ``steward.vault.subject.erased``."""
    return f"steward.{event_type}"


@dataclass(frozen=True, slots=True)
class EventKind:
    """One catalog row: a payload message type and every event type it is published as."""

    payload: type[Message]
    types: tuple[str, ...]
    # For a payload published under several verbs: the verb this payload's content says (e.g. its ``change``).
    verb: Callable[[Any], str] | None = None

    @property
    def name(self) -> str:
        """The payload's proto name, e.g. ``steward.events.v1.SubjectErased``."""
        return self.payload.DESCRIPTOR.full_name

    @property
    def field(self) -> str:
        """The envelope's oneof field that carries this payload."""
        return _ONEOF_FIELD[self.name]

    @property
    def subjects(self) -> tuple[str, ...]:
        """Every subject this payload is published on (what a consumer of all of them subscribes to)."""
        return tuple(subject_for(event_type) for event_type in self.types)

    def type_for(self, payload: Message, source: str) -> str:
        """The event type ``source`` publishes ``payload`` as; ValueError if the catalog has no such row."""
        candidates = [t for t in self.types if t.split(".", 1)[0] == source]
        wanted = ""
        if self.verb is not None:
            wanted = self.verb(payload)
            candidates = [t for t in candidates if t.rsplit(".", 1)[1] == wanted]
        if len(candidates) != 1:
            what = f"{self.name} ({wanted})" if wanted else self.name
            raise ValueError(f"{source!r} does not publish {what}: add the event type to services/chassis/catalog.py")
        return candidates[0]


_RECORD_VERBS = {
    ev.RECORD_CHANGE_CREATED: "created",
    ev.RECORD_CHANGE_UPDATED: "updated",
    ev.RECORD_CHANGE_DELETED: "deleted",
}


def _record_verb(payload: ev.RecordChanged) -> str:
    return _RECORD_VERBS.get(payload.change, "unspecified")


CATALOG: tuple[EventKind, ...] = (
    EventKind(ev.TenantCreated, ("gateway.tenant.created", "vault.tenant.created")),
    EventKind(ev.TenantUpdated, ("gateway.tenant.updated",)),
    EventKind(ev.TenantClosed, ("gateway.tenant.closed", "vault.tenant.closed")),
    EventKind(ev.TenantShredded, ("vault.tenant.shredded",)),
    EventKind(
        ev.RecordChanged, ("vault.record.created", "vault.record.updated", "vault.record.deleted"), verb=_record_verb
    ),
    EventKind(ev.SubjectExported, ("vault.subject.exported",)),
    EventKind(ev.SubjectErased, ("vault.subject.erased",)),
    EventKind(
        ev.SubjectRestricted,
        ("vault.subject.restricted", "vault.subject.unrestricted"),
        verb=lambda p: "restricted" if p.restricted else "unrestricted",
    ),
    EventKind(
        ev.LegalHoldChanged,
        ("vault.subject.held", "vault.subject.released"),
        verb=lambda p: "held" if p.active else "released",
    ),
    EventKind(ev.KeyRotated, ("vault.key.rotated",)),
    EventKind(ev.VaultTaskRequested, ("dsr.task.requested",)),
    EventKind(ev.VaultTaskCompleted, ("vault.task.completed",)),
    EventKind(ev.ApiKeyCreated, ("gateway.apikey.created",)),
    EventKind(ev.ApiKeyRevoked, ("gateway.apikey.revoked",)),
    EventKind(ev.AccessLogged, ("gateway.access.logged",)),
    EventKind(ev.SupportAccessRequested, ("gateway.support.requested",)),
    EventKind(ev.SupportAccessGranted, ("gateway.support.granted",)),
    EventKind(ev.SupportAccessRevoked, ("gateway.support.revoked",)),
    EventKind(ev.AuditCheckpointed, ("vault.audit.checkpointed",)),
    EventKind(ev.TombstonesApplied, ("vault.tombstones.applied",)),
    EventKind(ev.DsrRequestChanged, ("dsr.request.changed",)),
    EventKind(ev.DsrRequestOverdue, ("dsr.request.overdue",)),
    EventKind(ev.OptOutRequested, ("dsr.optout.requested",)),
    EventKind(ev.OptOutCompleted, ("notify.optout.completed",)),
    EventKind(ev.DsrRequestReminder, ("dsr.request.reminder",)),
    EventKind(ev.DsrDeadlineExtended, ("dsr.request.extended",)),
    EventKind(ev.TenantOffboardingReminder, ("dsr.offboarding.reminder",)),
    EventKind(ev.TenantShredCertified, ("dsr.tenant.certified",)),
    EventKind(ev.LegalNoticeReleased, ("gateway.legal.released",)),
    EventKind(ev.TenantReopened, ("gateway.tenant.reopened", "vault.tenant.reopened")),
    EventKind(ev.LegalRequestPurged, ("gateway.legal.purged",)),
    EventKind(ev.TenantAccountPurged, ("gateway.tenant.purged",)),
)

_BY_NAME = {kind.name: kind for kind in CATALOG}


def kind_of(payload: Message | type[Message]) -> EventKind:
    """The catalog row of a payload message (or message class); ValueError for a message that is not one."""
    kind = _BY_NAME.get(payload.DESCRIPTOR.full_name)
    if kind is None:
        raise ValueError(f"{payload.DESCRIPTOR.full_name} is not an event payload: see services/chassis/catalog.py")
    return kind


def subject_of(payload: type[Message]) -> str:
    """The one subject a payload is published on (a consumer's subscription); ValueError if it has several."""
    subjects = kind_of(payload).subjects
    if len(subjects) != 1:
        raise ValueError(f"{kind_of(payload).name} is published on {len(subjects)} subjects: use kind_of(...).subjects")
    return subjects[0]
