"""The event catalog covers every payload of events.proto once, and every subject it names lands on the stream."""

from __future__ import annotations

import re

import pytest
from google.protobuf.message import Message
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import DLQ_PREFIX, STREAM_SUBJECTS, make_event
from services.chassis.catalog import CATALOG, EventKind, kind_of, subject_of

SUBJECT = re.compile(r"^steward\.[a-z]+\.[a-z]+\.[a-z]+$")  # steward.<service>.<noun>.<verb>
PAYLOADS = [field.message_type.full_name for field in ev.Event.DESCRIPTOR.oneofs_by_name["payload"].fields]


def nats_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a trailing ``>`` one or more."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, part in enumerate(wanted):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or (part != "*" and part != tokens[i]):
            return False
    return len(tokens) == len(wanted)


def test_every_payload_of_the_envelope_has_exactly_one_catalog_entry() -> None:
    names = [kind.name for kind in CATALOG]
    assert sorted(names) == sorted(PAYLOADS)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("kind", CATALOG, ids=lambda kind: kind.name.rsplit(".", 1)[1])
def test_every_subject_follows_the_pattern_and_lands_on_the_stream(kind: EventKind) -> None:
    for subject in kind.subjects:
        assert SUBJECT.match(subject), subject
        assert any(nats_matches(pattern, subject) for pattern in STREAM_SUBJECTS), subject
        assert not subject.startswith(DLQ_PREFIX), subject


def test_no_two_payloads_share_an_event_type() -> None:
    types = [t for kind in CATALOG for t in kind.types]
    assert len(types) == len(set(types))


def test_the_stream_filter_check_can_fail() -> None:
    assert nats_matches("steward.>", "steward.vault.subject.erased")
    assert not nats_matches("steward.>", "other.vault.subject.erased")
    assert not nats_matches("steward.*.tenant.created", "steward.vault.subject.erased")


def test_make_event_derives_type_and_field_from_the_payload() -> None:
    erased = ev.SubjectErased(subject_id="s1", request_id="r1", records_erased=3)
    event = make_event(erased, source="vault", tenant_id="t1")
    assert (event.type, event.source, event.tenant_id) == ("vault.subject.erased", "vault", "t1")
    assert event.WhichOneof("payload") == "subject_erased" and event.subject_erased == erased
    assert event.id and event.occurred_at.seconds > 0


@pytest.mark.parametrize(
    ("payload", "source", "event_type"),
    [
        (ev.RecordChanged(change=ev.RECORD_CHANGE_CREATED), "vault", "vault.record.created"),
        (ev.RecordChanged(change=ev.RECORD_CHANGE_UPDATED), "vault", "vault.record.updated"),
        (ev.RecordChanged(change=ev.RECORD_CHANGE_DELETED), "vault", "vault.record.deleted"),
        (ev.SubjectRestricted(restricted=True), "vault", "vault.subject.restricted"),
        (ev.SubjectRestricted(restricted=False), "vault", "vault.subject.unrestricted"),
        (ev.LegalHoldChanged(active=True), "vault", "vault.subject.held"),
        (ev.LegalHoldChanged(active=False), "vault", "vault.subject.released"),
        (ev.TenantCreated(), "gateway", "gateway.tenant.created"),
        (ev.TenantCreated(), "vault", "vault.tenant.created"),
        (ev.VaultTaskRequested(), "dsr", "dsr.task.requested"),
    ],
)
def test_a_payload_with_several_types_gets_the_one_its_content_and_source_say(
    payload: Message, source: str, event_type: str
) -> None:
    assert make_event(payload, source=source).type == event_type


def test_an_event_the_catalog_does_not_list_is_refused() -> None:
    with pytest.raises(ValueError, match="does not publish"):
        make_event(ev.ApiKeyRevoked(), source="vault")
    with pytest.raises(ValueError, match="does not publish"):
        make_event(ev.RecordChanged(), source="vault")  # no change given: no verb
    with pytest.raises(ValueError, match="not an event payload"):
        make_event(ev.RecordRef(), source="vault")


def test_consumers_read_their_subjects_from_the_catalog() -> None:
    from services.gateway.events import REVOCATION_SUBJECT
    from services.vault.events import DSR_TASK_SUBJECT

    assert DSR_TASK_SUBJECT == subject_of(ev.VaultTaskRequested) == "steward.dsr.task.requested"
    assert REVOCATION_SUBJECT == subject_of(ev.ApiKeyRevoked) == "steward.gateway.apikey.revoked"
    with pytest.raises(ValueError, match="2 subjects"):
        subject_of(ev.TenantCreated)
    assert kind_of(ev.TenantCreated).subjects == ("steward.gateway.tenant.created", "steward.vault.tenant.created")
