"""Policy-change campaigns through a real aiosmtpd STARTTLS sink on a ManualClock: every active tenant's contacts
get the announcement in the service lane (a marketing opt-out does not stop it), the campaign shows delivered /
failed per tenant, an effective date less than 30 days after sending is refused with its reason, bad input is
refused, and no contact address reaches the database or the logs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import grpc
import pytest
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.clock import ManualClock
from services.chassis.timestamps import to_timestamp
from services.devstack.smtp_sink import SmtpSink
from services.notify import consent
from services.notify.consent import Recipient
from tests.integration.notify.support import NotifyFactory, expect_refusal, service_logs
from tests.integration.notify.test_breach_notices import OPERATOR, START, tenants_with_contacts
from tests.integration.vault.helpers import canary_email, leaks
from tests.plugins.waiting import eventually


def announce_request(effective_at: datetime, *, key: str = "", **fields: object) -> pb.AnnouncePolicyChangeRequest:
    values: dict[str, object] = {
        "policy_version": "2027-01",
        "effective_at": to_timestamp(effective_at),
        "idempotency_key": key or uuid.uuid4().hex,
    }
    values.update(fields)
    return pb.AnnouncePolicyChangeRequest(**values)  # type: ignore[arg-type]


async def test_a_policy_change_reaches_every_active_tenant_and_shows_outcome_per_tenant(
    notify_factory: NotifyFactory, caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    clock = ManualClock(START)
    h = await notify_factory(clock=clock, database_url=database_url)
    made = await tenants_with_contacts(h, 5)
    # One tenant's only contact hard-bounced before: its share shows one failed (suppressed) delivery.
    bouncing = canary_email()
    bouncer = f"t-{uuid.uuid4().hex[:12]}"
    stored = await h.notify.SetContacts(
        pb.SetContactsRequest(contacts=[pb.Contact(email=bouncing, role=pb.CONTACT_ROLE_ADMIN, locale="en")]),
        metadata=h.md(bouncer),
    )
    ctx = h.app.ctx
    await h.app.db.run(
        lambda s: consent.suppress(
            s,
            ctx.clock,
            bouncer,
            "email",
            ctx.recipient_hash("email", bouncing),
            Recipient("contact", stored.contacts[0].contact_id),
            "smtp_5xx",
        )
    )

    answer = await h.notify.AnnouncePolicyChange(
        announce_request(START + timedelta(days=30), key="policy-2027-01"), metadata=OPERATOR
    )
    campaign_id = answer.campaign.campaign_id
    every = {e for emails in made.values() for e in emails}
    await eventually(lambda: len(h.sink.raw()) >= 10, 30, what="ten announcements")
    mails = h.sink.messages()
    assert sorted(m["To"] for m in mails) == sorted(every)
    for mail in mails:
        assert "2027-01" in str(mail["Subject"]) and "2026-12-31" in str(mail["Subject"])
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # service lane, not critical

    async def settled() -> bool:
        listed = await h.notify.ListCampaigns(pb.ListCampaignsRequest(), metadata=OPERATOR)
        return all(t.pending == 0 for t in listed.campaigns[0].tenants)

    await eventually(settled, 30, what="campaign settled")
    listed = await h.notify.ListCampaigns(pb.ListCampaignsRequest(), metadata=OPERATOR)
    (campaign,) = listed.campaigns
    assert campaign.campaign_id == campaign_id and campaign.policy_version == "2027-01"
    shares = {t.tenant_id: (t.delivered, t.failed) for t in campaign.tenants}
    assert shares == {**{t: (2, 0) for t in made}, bouncer: (0, 1)}
    # The same key announces nothing more.
    again = await h.notify.AnnouncePolicyChange(
        announce_request(START + timedelta(days=30), key="policy-2027-01"), metadata=OPERATOR
    )
    assert again.campaign.campaign_id == campaign_id
    assert len(h.sink.raw()) == 10

    needles = [*every, bouncing, *(e.split("@")[0] for e in [*every, bouncing])]
    for table, value in h.raw_db().every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(service_logs(caplog), needles)


async def test_a_policy_change_effective_in_29_days_is_refused(notify_factory: NotifyFactory) -> None:
    clock = ManualClock(START)
    h = await notify_factory(clock=clock)
    await tenants_with_contacts(h, 1)
    message = await expect_refusal(
        h.notify.AnnouncePolicyChange(announce_request(START + timedelta(days=29)), metadata=OPERATOR),
        grpc.StatusCode.INVALID_ARGUMENT,
        "POLICY_NOTICE_TOO_SHORT",
        "30 days",
    )
    assert "2026-12-31" in message
    # One second short of 30 days is still too short; exactly 30 days is accepted.
    await expect_refusal(
        h.notify.AnnouncePolicyChange(
            announce_request(START + timedelta(days=30) - timedelta(seconds=1)), metadata=OPERATOR
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "POLICY_NOTICE_TOO_SHORT",
    )
    assert h.raw_db().scalar("SELECT count(*) FROM notify_campaigns") == 0
    assert h.raw_db().scalar("SELECT count(*) FROM notify_deliveries") == 0
    # The rule reads the injected clock: a day later, 29 days from then is the refused date again.
    clock.advance(timedelta(days=1))
    await expect_refusal(
        h.notify.AnnouncePolicyChange(announce_request(START + timedelta(days=30)), metadata=OPERATOR),
        grpc.StatusCode.INVALID_ARGUMENT,
        "POLICY_NOTICE_TOO_SHORT",
    )


async def test_campaign_methods_refuse_bad_input(notify_factory: NotifyFactory, smtp_sink: SmtpSink) -> None:
    h = await notify_factory(clock=ManualClock(START))
    later = START + timedelta(days=40)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    call = h.notify.AnnouncePolicyChange
    await expect_refusal(
        call(pb.AnnouncePolicyChangeRequest(policy_version="v2", effective_at=to_timestamp(later)), metadata=OPERATOR),
        bad,
        "IDEMPOTENCY_KEY_REQUIRED",
    )
    await expect_refusal(call(announce_request(later, policy_version=""), metadata=OPERATOR), bad, "INVALID_ARGUMENT")
    await expect_refusal(
        call(announce_request(later, idempotency_key="has spaces"), metadata=OPERATOR), bad, "MALFORMED_ID"
    )
    await expect_refusal(
        call(announce_request(later, policy_version="v 2/../x"), metadata=OPERATOR), bad, "INVALID_ARGUMENT"
    )
    await expect_refusal(
        call(pb.AnnouncePolicyChangeRequest(policy_version="v2", idempotency_key="k"), metadata=OPERATOR),
        bad,
        "INVALID_ARGUMENT",
        "effective_at",
    )
    await expect_refusal(
        call(announce_request(later), metadata=h.md()), grpc.StatusCode.PERMISSION_DENIED, "OPERATOR_REQUIRED"
    )
    await expect_refusal(
        h.notify.ListCampaigns(pb.ListCampaignsRequest(page_size=501), metadata=OPERATOR), bad, "INVALID_ARGUMENT"
    )
    await expect_refusal(
        h.notify.ListCampaigns(pb.ListCampaignsRequest(page_token="../x"), metadata=OPERATOR), bad, "MALFORMED_ID"
    )
    assert smtp_sink.raw() == []  # nothing was sent
