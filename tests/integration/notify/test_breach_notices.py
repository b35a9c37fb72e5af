"""Breach incidents end to end through a real aiosmtpd STARTTLS sink and OpenBao, on a ManualClock: a breach
declared for 100 tenants reaches every contact at once (critical lane), acknowledgements (the signed ack link and
an operator's record) and the controllers' 6 h / 72 h clocks show, the unacknowledged are notified again when the
clock passes the interval; every bad input is refused with its reason; nothing personal in the database or logs."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.clock import ManualClock
from services.chassis.identity import CallerIdentity, identity_metadata
from services.chassis.timestamps import to_timestamp
from services.notify.breach import BreachDesk, BreachDraft
from tests.integration.notify.support import NotifyFactory, NotifyHarness, expect_refusal, service_logs
from tests.integration.vault.helpers import canary_email, canary_phone, leaks
from tests.plugins.waiting import eventually

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OPERATOR = identity_metadata(CallerIdentity(tenant_id="", principal="operator:oncall", principal_kind="operator"))


def stamp(value: datetime) -> Timestamp:
    return to_timestamp(value)


def declare_request(tenants: list[str], *, key: str = "", **fields: object) -> pb.DeclareBreachRequest:
    values: dict[str, object] = {
        "nature": "Backup bucket readable without authentication for 40 minutes",
        "data_categories": ["contact_details", "record_metadata"],
        "tenant_ids": tenants,
        "detected_at": stamp(START - timedelta(hours=1)),
        "contact_point": "dpo@steward.example",
        "measures": "Bucket closed, keys rotated, access logs under review",
        "idempotency_key": key or uuid.uuid4().hex,
    }
    values.update(fields)
    return pb.DeclareBreachRequest(**values)  # type: ignore[arg-type]


async def tenants_with_contacts(h: NotifyHarness, count: int) -> dict[str, list[str]]:
    """``count`` tenants with two email contacts each (one en, one hi): {tenant: [emails]}."""
    made: dict[str, list[str]] = {}
    for _ in range(count):
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        emails = [canary_email(), canary_email()]
        await h.notify.SetContacts(
            pb.SetContactsRequest(
                contacts=[
                    pb.Contact(email=emails[0], role=pb.CONTACT_ROLE_SECURITY, locale="en"),
                    pb.Contact(email=emails[1], role=pb.CONTACT_ROLE_PRIVACY, locale="hi"),
                ]
            ),
            metadata=h.md(tenant),
        )
        made[tenant] = emails
    return made


def ack_token_in(mail: object) -> str:
    body = mail.get_body(("plain",)).get_content()  # type: ignore[attr-defined]
    found = re.search(r"--ack-token (a1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", body)
    assert found, "no ack link in the notice"
    return found.group(1)


async def test_a_breach_for_100_tenants_reaches_every_contact_and_tracks_acks_and_deadlines(
    notify_factory: NotifyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(START)
    h = await notify_factory(clock=clock, delivery={"batch": 200, "scan_interval_s": 0.1})
    made = await tenants_with_contacts(h, 100)
    bystander = await tenants_with_contacts(h, 1)  # not affected: hears nothing
    tenants = sorted(made)

    declared = await h.notify.DeclareBreach(declare_request(tenants, key="inc-7"), metadata=OPERATOR)
    breach = declared.breach
    every = {e for emails in made.values() for e in emails}
    await eventually(lambda: len(h.sink.raw()) >= 200, 60, what="200 breach notices in the sink")
    mails = h.sink.messages()
    assert sorted(m["To"] for m in mails) == sorted(every)
    assert not {m["To"] for m in mails} & set(next(iter(bystander.values())))
    for mail in mails:
        assert breach.breach_id in str(mail["Subject"])
        assert mail["List-Unsubscribe"] is None  # critical lane: no opt-out
    # Declaring again with the same key changes nothing.
    again = await h.notify.DeclareBreach(declare_request(tenants, key="inc-7"), metadata=OPERATOR)
    assert again.breach.breach_id == breach.breach_id

    # The controllers' clocks run from detection: CERT-In 6 h, regulator 72 h.
    detected = START - timedelta(hours=1)
    got = (await h.notify.GetBreach(pb.GetBreachRequest(breach_id=breach.breach_id), metadata=OPERATOR)).breach
    assert got.cert_in_deadline.ToDatetime(UTC) == detected + timedelta(hours=6)
    assert got.regulator_deadline.ToDatetime(UTC) == detected + timedelta(hours=72)
    assert sorted(a.tenant_id for a in got.acknowledgements) == tenants
    assert all(not a.acknowledged and a.notices_sent == 2 for a in got.acknowledgements)
    body = mails[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (detected + timedelta(hours=6)).strftime("%Y-%m-%d %H:%M") in body

    # Tenant 0 acknowledges with its link's token; tenant 1 by phone, recorded by an operator.
    first, second, third = tenants[0], tenants[1], tenants[2]
    token = ack_token_in(next(m for m in mails if m["To"] == made[first][0]))
    acked = await h.notify.AcknowledgeBreach(
        pb.AcknowledgeBreachRequest(breach_id=breach.breach_id, token=token), metadata=h.md(first)
    )
    assert acked.acknowledgement.acknowledged and acked.acknowledgement.tenant_id == first
    # The same token is worthless for another tenant.
    await expect_refusal(
        h.notify.AcknowledgeBreach(
            pb.AcknowledgeBreachRequest(breach_id=breach.breach_id, token=token), metadata=h.md(third)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "BREACH_ACK_TOKEN_INVALID",
    )
    await h.notify.UpdateBreach(
        pb.UpdateBreachRequest(breach_id=breach.breach_id, acknowledge_tenant_id=second), metadata=OPERATOR
    )
    got = (await h.notify.GetBreach(pb.GetBreachRequest(breach_id=breach.breach_id), metadata=OPERATOR)).breach
    acks = {a.tenant_id: a for a in got.acknowledgements}
    assert acks[first].acknowledged and acks[second].acknowledged and not acks[third].acknowledged
    assert acks[first].acknowledged_at.ToDatetime(UTC) == START

    # Nothing more before the interval; past it, the 98 unacknowledged tenants hear again.
    assert h.app.breaches is not None and h.app.breaches.renotifier is not None
    renotifier = h.app.breaches.renotifier
    clock.advance(h.settings.breach.renotify_after_s - 1)
    assert await renotifier.once() == 0
    clock.advance(2)
    assert await renotifier.once() == 98 * 2
    await eventually(lambda: len(h.sink.raw()) >= 400 - 4, 60, what="second round of notices")
    second_round = h.sink.messages()[200:]
    assert len(second_round) == 196
    assert not {m["To"] for m in second_round} & {*made[first], *made[second]}

    # A closed breach notifies no more.
    await h.notify.UpdateBreach(
        pb.UpdateBreachRequest(breach_id=breach.breach_id, state=pb.BREACH_STATE_CLOSED), metadata=OPERATOR
    )
    clock.advance(h.settings.breach.renotify_after_s + 1)
    assert await renotifier.once() == 0

    listed = await h.notify.ListBreaches(pb.ListBreachesRequest(), metadata=OPERATOR)
    assert [b.breach_id for b in listed.breaches] == [breach.breach_id]

    # No contact address in notify's database or its logs.
    needles = [*every, *(e.split("@")[0] for e in every)]
    for table, value in h.raw_db().every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(service_logs(caplog), needles)


async def test_all_tenants_means_every_tenant_with_contacts(notify_factory: NotifyFactory, database_url: str) -> None:
    h = await notify_factory(database_url=database_url)
    made = await tenants_with_contacts(h, 3)
    declared = await h.notify.DeclareBreach(
        declare_request([], all_tenants=True, detected_at=stamp(datetime.now(UTC))), metadata=OPERATOR
    )
    assert sorted(a.tenant_id for a in declared.breach.acknowledgements) == sorted(made)
    await eventually(lambda: len(h.sink.raw()) >= 6, 30, what="six notices")


async def test_breach_methods_refuse_bad_input(notify_factory: NotifyFactory) -> None:
    clock = ManualClock(START)
    h = await notify_factory(clock=clock)
    made = await tenants_with_contacts(h, 1)
    tenant = next(iter(made))
    bad = grpc.StatusCode.INVALID_ARGUMENT

    async def declare(**fields: object) -> None:
        await h.notify.DeclareBreach(declare_request([tenant], **fields), metadata=OPERATOR)

    # DeclareBreach
    await expect_refusal(declare(idempotency_key=""), bad, "IDEMPOTENCY_KEY_REQUIRED")
    await expect_refusal(declare(idempotency_key="no spaces"), bad, "MALFORMED_ID")
    await expect_refusal(declare(nature=" "), bad, "INVALID_ARGUMENT", "nature")
    await expect_refusal(declare(data_categories=[]), bad, "INVALID_ARGUMENT", "data_categories")
    await expect_refusal(declare(data_categories=["Contact Details"]), bad, "INVALID_ARGUMENT", "category")
    await expect_refusal(declare(all_tenants=True), bad, "TENANTS_REQUIRED")
    await expect_refusal(h.notify.DeclareBreach(declare_request([]), metadata=OPERATOR), bad, "TENANTS_REQUIRED")
    await expect_refusal(declare(tenant_ids=["not a tenant!"]), bad, "MALFORMED_ID")
    await expect_refusal(
        h.notify.DeclareBreach(
            pb.DeclareBreachRequest(
                nature="n",
                data_categories=["x"],
                tenant_ids=[tenant],
                contact_point="c",
                measures="m",
                idempotency_key="k1",
            ),
            metadata=OPERATOR,
        ),
        bad,
        "INVALID_ARGUMENT",
        "detected_at",
    )
    await expect_refusal(declare(detected_at=stamp(START + timedelta(hours=1))), bad, "INVALID_ARGUMENT", "future")
    await expect_refusal(declare(contact_point=""), bad, "INVALID_ARGUMENT", "contact_point")
    await expect_refusal(declare(measures=""), bad, "INVALID_ARGUMENT", "measures")
    await expect_refusal(
        h.notify.DeclareBreach(declare_request([tenant]), metadata=h.md(tenant)),
        grpc.StatusCode.PERMISSION_DENIED,
        "OPERATOR_REQUIRED",
    )
    assert h.raw_db().scalar("SELECT count(*) FROM notify_breaches") == 0
    assert h.raw_db().scalar("SELECT count(*) FROM notify_deliveries") == 0

    breach = (await h.notify.DeclareBreach(declare_request([tenant]), metadata=OPERATOR)).breach
    unknown = str(uuid.uuid4())
    # UpdateBreach
    await expect_refusal(
        h.notify.UpdateBreach(pb.UpdateBreachRequest(breach_id=unknown, measures="m"), metadata=OPERATOR),
        grpc.StatusCode.NOT_FOUND,
        "BREACH_NOT_FOUND",
    )
    await expect_refusal(
        h.notify.UpdateBreach(pb.UpdateBreachRequest(breach_id="../x", measures="m"), metadata=OPERATOR),
        bad,
        "MALFORMED_ID",
    )
    await expect_refusal(
        h.notify.UpdateBreach(pb.UpdateBreachRequest(breach_id=breach.breach_id), metadata=OPERATOR),
        bad,
        "INVALID_ARGUMENT",
        "nothing to update",
    )
    await expect_refusal(
        h.notify.UpdateBreach(
            pb.UpdateBreachRequest(breach_id=breach.breach_id, state=42),
            metadata=OPERATOR,  # type: ignore[arg-type]
        ),
        bad,
        "INVALID_ARGUMENT",
        "BreachState",
    )
    await expect_refusal(
        h.notify.UpdateBreach(
            pb.UpdateBreachRequest(breach_id=breach.breach_id, acknowledge_tenant_id="t-notaffected"),
            metadata=OPERATOR,
        ),
        grpc.StatusCode.NOT_FOUND,
        "TENANT_NOT_FOUND",
    )
    await h.notify.UpdateBreach(
        pb.UpdateBreachRequest(breach_id=breach.breach_id, state=pb.BREACH_STATE_CONTAINED), metadata=OPERATOR
    )
    await expect_refusal(
        h.notify.UpdateBreach(
            pb.UpdateBreachRequest(breach_id=breach.breach_id, state=pb.BREACH_STATE_DECLARED), metadata=OPERATOR
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BREACH_INVALID_TRANSITION",
    )
    # GetBreach, ListBreaches
    await expect_refusal(
        h.notify.GetBreach(pb.GetBreachRequest(breach_id=unknown), metadata=OPERATOR),
        grpc.StatusCode.NOT_FOUND,
        "BREACH_NOT_FOUND",
    )
    await expect_refusal(
        h.notify.GetBreach(pb.GetBreachRequest(breach_id=breach.breach_id), metadata=h.md(tenant)),
        grpc.StatusCode.PERMISSION_DENIED,
        "OPERATOR_REQUIRED",
    )
    await expect_refusal(
        h.notify.ListBreaches(pb.ListBreachesRequest(page_size=-1), metadata=OPERATOR), bad, "INVALID_ARGUMENT"
    )
    # AcknowledgeBreach
    await expect_refusal(
        h.notify.AcknowledgeBreach(pb.AcknowledgeBreachRequest(breach_id=breach.breach_id), metadata=h.md(tenant)),
        bad,
        "BREACH_ACK_TOKEN_INVALID",
    )
    await expect_refusal(
        h.notify.AcknowledgeBreach(
            pb.AcknowledgeBreachRequest(breach_id=breach.breach_id, token="0" * 64), metadata=h.md(tenant)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "BREACH_ACK_TOKEN_INVALID",
    )
    await expect_refusal(
        h.notify.AcknowledgeBreach(pb.AcknowledgeBreachRequest(breach_id=unknown, token="0" * 64), metadata=h.md()),
        grpc.StatusCode.PERMISSION_DENIED,
        "BREACH_ACK_TOKEN_INVALID",
    )


async def test_a_contact_with_a_phone_gets_a_whatsapp_notice_when_the_channel_is_configured(
    notify_factory: NotifyFactory,
) -> None:
    """The delivery engine is addressed by channel name: with a WhatsApp channel configured (this branch has
    none yet, so the desk is told so), a contact with a phone gets a WhatsApp delivery besides the email."""
    h = await notify_factory(clock=ManualClock(START))
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    _typed, phone = canary_phone()
    await h.notify.SetContacts(
        pb.SetContactsRequest(
            contacts=[
                pb.Contact(email=canary_email(), phone=phone, role=pb.CONTACT_ROLE_SECURITY, locale="en"),
                pb.Contact(email=canary_email(), role=pb.CONTACT_ROLE_PRIVACY, locale="hi"),
            ]
        ),
        metadata=h.md(tenant),
    )
    assert h.app.breaches is not None
    live = h.app.breaches.desk
    desk = BreachDesk(live.ctx, live.settings, ack_key=live.ack_key, channels={"email", "whatsapp"})
    draft = BreachDraft(
        nature="n",
        data_categories=("contact_details",),
        tenant_ids=(tenant,),
        all_tenants=False,
        detected_at=START,
        contact_point="dpo@steward.example",
        measures="m",
        idempotency_key="wa-1",
        declared_by="operator:oncall",
    )
    _row, planned, _replayed = await h.app.db.run(lambda s: desk.declare(s, draft))
    assert planned == 3
    rows = h.raw_db().all("SELECT channel, lane, template FROM notify_deliveries ORDER BY channel")
    assert rows == [
        ("email", "critical", "breach_notice"),
        ("email", "critical", "breach_notice"),
        ("whatsapp", "critical", "breach_notice"),
    ]
    # Without a WhatsApp channel (the live desk), the same contacts get email only.
    other = dataclasses.replace(draft, idempotency_key="wa-2")
    _row, planned, _replayed = await h.app.db.run(lambda s: live.declare(s, other))
    assert planned == 2
    for table, value in h.raw_db().every_value():
        assert not leaks(value, [phone, phone[1:]]), f"plaintext phone in {table}"
