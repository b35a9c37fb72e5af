"""notify on NATS: a tenant's offboarding (dsr's reminders and shred certificate), legal-disclosure notices and
support-access changes (the gateway's) become emails to the tenant's contacts, in each contact's language, with
ids, codes and dates only; malformed or forged events are refused, and a tenant without contacts gets nothing."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import RefusedEvent, make_event
from services.notify.events import NotifyEventHandler
from tests.integration.notify.support import NotifyFactory, NotifyHarness
from tests.integration.notify.test_core_events import publish, two_contacts
from tests.integration.vault.helpers import leaks, stream_messages
from tests.plugins.infra import NatsServer
from tests.plugins.waiting import eventually

STAMP = Timestamp(seconds=1_790_000_000)  # 2026-09-21
DATE = "2026-09-21"
GRANT = f"sg_{uuid.uuid4().hex}"
LEGAL = f"lr_{uuid.uuid4().hex}"
CERTIFICATE = str(uuid.uuid4())
PRINCIPAL = "support-engineer-canary@steward.test"


def _event(payload: Message, tenant: str) -> ev.Event:
    source = "gateway" if type(payload).__name__.startswith(("Legal", "Support")) else "dsr"
    return make_event(payload, source=source, tenant_id=tenant)


def _lifecycle_events(tenant: str) -> list[tuple[ev.Event, str, list[str]]]:
    """Each event, a word of its English subject and what its text must say."""
    return [
        (
            _event(ev.TenantOffboardingReminder(tenant_id=tenant, shred_at=STAMP, days_left=7), tenant),
            "7 days",
            [tenant, DATE],
        ),
        (
            _event(ev.TenantOffboardingReminder(tenant_id=tenant, shred_at=STAMP, days_left=1), tenant),
            "1 day",
            [tenant, DATE],
        ),
        (
            _event(ev.TenantShredCertified(tenant_id=tenant, certificate_id=CERTIFICATE, shredded_at=STAMP), tenant),
            "Shred certificate",
            [CERTIFICATE, DATE],
        ),
        (
            _event(
                ev.LegalNoticeReleased(
                    legal_request_id=LEGAL, authority_type="AUTHORITY_TYPE_LAW_ENFORCEMENT", executed_at=STAMP
                ),
                tenant,
            ),
            "legal disclosure",
            [LEGAL, "law enforcement authority", DATE],
        ),
        (
            _event(
                ev.SupportAccessRequested(
                    grant_id=GRANT, tenant_id=tenant, principal=PRINCIPAL, ticket_id="T-1", duration_seconds=5400
                ),
                tenant,
            ),
            "requested",
            [GRANT, "T-1", "2 hour"],
        ),
        (
            _event(
                ev.SupportAccessGranted(
                    grant_id=GRANT,
                    tenant_id=tenant,
                    principal=PRINCIPAL,
                    ticket_id="T-1",
                    emergency=True,
                    approved_by="op:alice",
                    expires_at=STAMP,
                ),
                tenant,
            ),
            "emergency",
            [GRANT, DATE, "emergency"],
        ),
        (
            _event(ev.SupportAccessRevoked(grant_id=GRANT, tenant_id=tenant, revoked_by=PRINCIPAL), tenant),
            "revoked",
            [GRANT],
        ),
    ]


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def test_offboarding_legal_and_support_events_email_every_contact_in_their_language(
    nats_server: NatsServer, notify_factory: NotifyFactory
) -> None:
    h = await notify_factory(nats_url=nats_server.url)
    english, hindi = await two_contacts(h)
    cases = _lifecycle_events(h.tenant)
    for event, _, _ in cases:
        await publish(nats_server.url, event, times=2)  # a re-sent event is one email per contact
    await eventually(lambda: len(h.sink.raw()) == 2 * len(cases), 60, what="one email per event and contact")
    messages = h.sink.messages()
    for event, subject_word, needles in cases:
        in_english = [
            m
            for m in messages
            if m["To"] == english and subject_word in m["Subject"] and all(n in _text(m) for n in needles)
        ]
        assert in_english, (event.WhichOneof("payload"), subject_word)
    to_hindi = [m for m in messages if m["To"] == hindi]
    assert len(to_hindi) == len(cases)
    assert all(any("\u0900" <= c <= "\u097f" for c in m["Subject"]) for m in to_hindi)
    # No one's address or name in a notice: the support engineer's principal is never copied into an email.
    assert not [m for m in h.sink.raw() if PRINCIPAL.encode() in m]
    stream = b"".join(m.data for m in await stream_messages(nats_server.url))
    assert leaks(stream, [english, hindi]) == []
    raw = h.raw_db()
    for table, value in raw.every_value():
        assert not leaks(value, [english, hindi, PRINCIPAL]), f"plaintext in {table}"


def _bad(tenant: str) -> list[tuple[ev.Event, str]]:
    other = f"t-{uuid.uuid4().hex[:12]}"
    forged_source = _event(
        ev.LegalNoticeReleased(legal_request_id=LEGAL, authority_type="AUTHORITY_TYPE_COURT"), tenant
    )
    forged_source.source = "dsr"
    forged_reminder = _event(ev.TenantOffboardingReminder(tenant_id=tenant, shred_at=STAMP, days_left=7), tenant)
    forged_reminder.source = "gateway"
    return [
        (forged_source, "not_a_notify_input"),
        (forged_reminder, "not_a_notify_input"),
        (_event(ev.TenantOffboardingReminder(tenant_id=tenant, shred_at=STAMP, days_left=7), ""), "no_tenant"),
        (_event(ev.TenantOffboardingReminder(tenant_id=other, shred_at=STAMP, days_left=7), tenant), "tenant_mismatch"),
        (_event(ev.TenantOffboardingReminder(tenant_id=tenant, shred_at=STAMP, days_left=3), tenant), "days_left"),
        (_event(ev.TenantOffboardingReminder(tenant_id=tenant, days_left=7), tenant), "shred_at_missing"),
        (_event(ev.TenantShredCertified(tenant_id=tenant, shredded_at=STAMP), tenant), "certificate_id_invalid"),
        (
            _event(ev.TenantShredCertified(tenant_id=tenant, certificate_id="../x", shredded_at=STAMP), tenant),
            "certificate_id_invalid",
        ),
        (_event(ev.TenantShredCertified(tenant_id=tenant, certificate_id=CERTIFICATE), tenant), "shredded_at_missing"),
        (
            _event(
                ev.LegalNoticeReleased(legal_request_id=LEGAL, authority_type="<b>x</b>", executed_at=STAMP), tenant
            ),
            "authority_type_invalid",
        ),
        (
            _event(
                ev.LegalNoticeReleased(
                    legal_request_id="lr_x", authority_type="AUTHORITY_TYPE_COURT", executed_at=STAMP
                ),
                tenant,
            ),
            "legal_request_id_invalid",
        ),
        (
            _event(ev.LegalNoticeReleased(legal_request_id=LEGAL, authority_type="AUTHORITY_TYPE_COURT"), tenant),
            "executed_at_missing",
        ),
        (
            _event(
                ev.SupportAccessRequested(grant_id=GRANT, tenant_id=tenant, ticket_id="T-1", duration_seconds=0), tenant
            ),
            "duration_invalid",
        ),
        (
            _event(
                ev.SupportAccessRequested(
                    grant_id=GRANT, tenant_id=tenant, ticket_id="call me on +919812345678", duration_seconds=60
                ),
                tenant,
            ),
            "ticket_id_invalid",
        ),
        (
            _event(ev.SupportAccessGranted(grant_id=GRANT, tenant_id=tenant, ticket_id="T-1"), tenant),
            "expires_at_missing",
        ),
        (_event(ev.SupportAccessRevoked(grant_id="sg_", tenant_id=tenant), tenant), "grant_id_invalid"),
        (_event(ev.SupportAccessRevoked(grant_id=GRANT, tenant_id=other), tenant), "tenant_mismatch"),
    ]


@pytest.mark.parametrize("case", range(17))
async def test_malformed_or_forged_lifecycle_events_are_refused_and_send_nothing(
    notify_factory: NotifyFactory, case: int
) -> None:
    h = await notify_factory()
    await two_contacts(h)
    cases = _bad(h.tenant)
    assert len(cases) == 17
    event, reason = cases[case]
    handler = NotifyEventHandler(h.app.ctx, None)
    with pytest.raises(RefusedEvent) as refused:
        await h.app.db.run(lambda s: handler(s, event))
    assert reason in str(refused.value)
    assert h.raw_db().scalar("SELECT count(*) FROM notify_deliveries") == 0


async def test_a_tenant_without_contacts_or_unknown_to_notify_gets_nothing(notify_factory: NotifyFactory) -> None:
    h: NotifyHarness = await notify_factory()
    handler = NotifyEventHandler(h.app.ctx, None)
    unknown = f"t-{uuid.uuid4().hex[:12]}"
    for tenant in (h.tenant, unknown):  # no contacts set / never seen by notify
        for event, _, _ in _lifecycle_events(tenant):
            await h.app.db.run(lambda s, event=event: handler(s, event))
    assert h.raw_db().scalar("SELECT count(*) FROM notify_deliveries") == 0
    assert h.sink.raw() == []
