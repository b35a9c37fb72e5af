"""notify on NATS: dsr's events become account notices to the tenant's contacts (one email per contact however
often an event arrives), and dsr's OPT_OUT request completes through notify's consent withdrawal (vault, dsr and
notify on one real NATS); then a canary scan of notify's database, logs and the stream."""

from __future__ import annotations

import logging
import uuid

import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from steward.dsr.v1 import dsr_pb2
from steward.events.v1 import events_pb2 as ev
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.bus import make_event
from services.chassis.catalog import subject_of
from services.notify.events import notify_contacts
from tests.integration.dsr.support import DsrStack, submit, wait_state
from tests.integration.notify.support import NotifyFactory, NotifyHarness, service_logs, wait_status
from tests.integration.vault.helpers import canary_email, leaks, stream_messages
from tests.plugins.infra import NatsServer
from tests.plugins.stack import DsrFactory, VaultFactory
from tests.plugins.waiting import eventually


async def publish(nats_url: str, event: ev.Event, *, times: int = 1) -> None:
    """Publish ``event`` ``times`` times under distinct message ids (as a producer that re-sent it would)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for i in range(times):
            await js.publish(
                f"steward.{event.type}", event.SerializeToString(), headers={"Nats-Msg-Id": f"{event.id}-{i}"}
            )
    finally:
        await nc.close()


async def two_contacts(h: NotifyHarness) -> list[str]:
    emails = [canary_email(), canary_email()]
    await h.notify.SetContacts(
        pb.SetContactsRequest(
            contacts=[
                pb.Contact(email=emails[0], role=pb.CONTACT_ROLE_PRIVACY, locale="en"),
                pb.Contact(email=emails[1], role=pb.CONTACT_ROLE_SECURITY, locale="hi"),
            ]
        ),
        metadata=h.md(),
    )
    return emails


def changed(tenant: str, *, previous: str = "", state: str = "REQUEST_STATE_RECEIVED") -> ev.Event:
    return make_event(
        ev.DsrRequestChanged(
            request_id=str(uuid.uuid4()),
            type="REQUEST_TYPE_ACCESS",
            state=state,
            previous_state=previous,
            due_at=Timestamp(seconds=1_790_000_000),
        ),
        source="dsr",
        tenant_id=tenant,
    )


async def test_a_dsr_event_delivered_three_times_sends_one_email_per_contact(
    nats_server: NatsServer, notify_factory: NotifyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = await notify_factory(nats_url=nats_server.url)
    emails = await two_contacts(h)
    event = changed(h.tenant)
    await publish(nats_server.url, event, times=3)
    await eventually(lambda: len(h.sink.raw()) == 2, 30, what="one receipt per contact")
    request_id = event.dsr_request_changed.request_id
    by_recipient = {m["To"]: m for m in h.sink.messages()}
    assert sorted(by_recipient) == sorted(emails)
    assert request_id in by_recipient[emails[0]]["Subject"]
    assert "प्राप्त" in by_recipient[emails[1]]["Subject"]  # the Hindi contact gets the Hindi template
    assert "List-Unsubscribe" in by_recipient[emails[0]]  # a service notice is non-critical

    for _kind, payload in [
        ("reminder", ev.DsrRequestReminder(request_id=request_id, type="REQUEST_TYPE_ACCESS", days_left=2)),
        (
            "extended",
            ev.DsrDeadlineExtended(request_id=request_id, type="REQUEST_TYPE_ACCESS", reason_code="COMPLEXITY"),
        ),
        (
            "overdue",
            ev.DsrRequestOverdue(request_id=request_id, type="REQUEST_TYPE_ACCESS", state="REQUEST_STATE_IN_PROGRESS"),
        ),
    ]:
        await publish(nats_server.url, make_event(payload, source="dsr", tenant_id=h.tenant))
    await publish(
        nats_server.url, changed(h.tenant, previous="REQUEST_STATE_RECEIVED", state="REQUEST_STATE_IN_PROGRESS")
    )
    await publish(
        nats_server.url, changed(h.tenant, previous="REQUEST_STATE_IN_PROGRESS", state="REQUEST_STATE_COMPLETED")
    )
    await eventually(lambda: len(h.sink.raw()) == 10, 30, what="reminder, extension, overdue, completion x2 contacts")
    subjects = sorted(str(m["Subject"]).strip() for m in h.sink.messages() if m["To"] == emails[0])
    assert any(s.startswith("Reminder") for s in subjects) and any(s.startswith("OVERDUE") for s in subjects), subjects
    assert any("extended" in s for s in subjects) and any(s.endswith("completed") for s in subjects)

    # Nothing personal in notify's database, its logs or on the stream.
    raw = h.raw_db()
    needles = [*emails, *(e.split("@")[0] for e in emails)]
    for table, value in raw.every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(service_logs(caplog), needles)
    for message in await stream_messages(nats_server.url):
        assert not leaks(message.data, needles), message.subject


async def test_the_idempotency_key_alone_stops_a_second_plan(notify_factory: NotifyFactory) -> None:
    """Past the inbox (which drops a repeated event id): planning the same event again plans nothing."""
    h = await notify_factory()
    await two_contacts(h)
    event = changed(h.tenant)
    counts = [
        await h.app.db.run(
            lambda s: notify_contacts(
                s,
                h.app.ctx,
                event,
                "dsr_received",
                {"request_id": "r1", "request_type": "access", "due_date": "2026-12-30"},
            )
        )
        for _ in range(3)
    ]
    assert counts == [2, 0, 0]
    await eventually(lambda: len(h.sink.raw()) == 2, 30, what="two receipts")
    assert h.raw_db().scalar("SELECT count(*) FROM notify_deliveries") == 2


async def test_events_from_other_sources_or_without_a_tenant_are_dead_lettered(
    nats_server: NatsServer, notify_factory: NotifyFactory
) -> None:
    h = await notify_factory(nats_url=nats_server.url)
    await two_contacts(h)
    forged = changed(h.tenant)
    forged.source = "gateway"
    no_tenant = changed("")
    await publish(nats_server.url, forged)
    await publish(nats_server.url, no_tenant)
    not_for_notify = changed(h.tenant)
    not_for_notify.ClearField("dsr_request_changed")
    not_for_notify.tenant_created.tenant_id = h.tenant
    await publish(nats_server.url, not_for_notify)
    consumer = h.app.consumer
    assert consumer is not None
    await eventually(lambda: consumer.stats.dead_lettered >= 3, 30, what="refused events dead-lettered")
    assert h.raw_db().scalar("SELECT count(*) FROM notify_deliveries") == 0
    assert h.sink.raw() == []


@pytest.fixture
async def saga(nats_server: NatsServer, vault_factory: VaultFactory, dsr_factory: DsrFactory) -> DsrStack:
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url)
    return DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())


async def test_an_opt_out_through_dsr_withdraws_consent_and_completes_the_request(
    saga: DsrStack, notify_factory: NotifyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = await notify_factory(nats_url=saga.nats_url)
    h.tenant = saga.tenant
    email, subject_id = await saga.new_lead()
    h.addresses.entries[(h.tenant, subject_id, "email")] = email
    await h.notify.RecordConsent(
        pb.RecordConsentRequest(
            subject_id=subject_id, channel=pb.CHANNEL_EMAIL, purpose="newsletter", source="web", wording_version="v1"
        ),
        metadata=h.md(),
    )
    request = await submit(saga, dsr_pb2.REQUEST_TYPE_OPT_OUT, email=email, idempotency_key="optout-1")
    done = await wait_state(saga, request.request_id, dsr_pb2.REQUEST_STATE_COMPLETED)
    assert done.subject_id == subject_id
    history = (await h.notify.GetConsent(pb.GetConsentRequest(subject_id=subject_id), metadata=h.md())).history
    assert [(c.withdrawal_source, c.HasField("withdrawn_at")) for c in history] == [("dsr_opt_out", True)]
    evidence = await saga.dsr.dsr.GetEvidence(
        dsr_pb2.GetEvidenceRequest(request_id=request.request_id), metadata=saga.md()
    )
    assert "request.completed" in [e.kind for e in evidence.entries]

    after = await h.notify.SendToSubject(
        pb.SendToSubjectRequest(
            subject_id=subject_id,
            template="newsletter",
            channel=pb.CHANNEL_EMAIL,
            lane=pb.LANE_MARKETING,
            purpose="newsletter",
            variables={"name": "x", "headline": "y", "business": "z"},
            idempotency_key="after-optout",
        ),
        metadata=h.md(),
    )
    assert (await wait_status(h, after.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)).reason_code == "no_consent"
    assert h.sink.raw() == []
    completed = [m.event() for m in await stream_messages(saga.nats_url) if m.subject == subject_of(ev.OptOutCompleted)]
    assert [e.opt_out_completed.outcome for e in completed] == [ev.VAULT_TASK_OUTCOME_SUCCEEDED]
    needles = [email, email.split("@")[0]]
    for table, value in h.raw_db().every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(service_logs(caplog), needles)


async def test_a_malformed_opt_out_is_answered_rejected_not_dropped(
    nats_server: NatsServer, notify_factory: NotifyFactory
) -> None:
    h = await notify_factory(nats_url=nats_server.url)
    consumer = h.app.consumer
    assert consumer is not None

    async def subscribed() -> bool:
        try:
            await consumer.info()
        except Exception:
            return False
        return True

    await eventually(subscribed, 30, what="notify's durable consumer on the stream")
    task = ev.OptOutRequested(task_id="task-1", request_id="req-1", subject_id="not-a-subject-id")
    await publish(nats_server.url, make_event(task, source="dsr", tenant_id=h.tenant))

    async def answered() -> list[ev.Event]:
        return [
            m.event() for m in await stream_messages(nats_server.url) if m.subject == subject_of(ev.OptOutCompleted)
        ]

    await eventually(answered, 30, what="an answer to the malformed opt-out")
    (answer,) = await answered()
    assert answer.opt_out_completed.outcome == ev.VAULT_TASK_OUTCOME_REJECTED
    assert answer.opt_out_completed.reason_code == "MALFORMED_ID"
    assert answer.opt_out_completed.task_id == "task-1"
