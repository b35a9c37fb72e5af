"""Pacing through the real delivery engine, aiosmtpd sink and OpenBao on a ManualClock: a policy-change notice
(service lane) waits out the tenant's quiet hours in its own time zone while a breach notice (critical lane)
goes at once; a tenant over its send rate limit is spread over time, never failed; channels per notice kind
and the tenant's language apply; each deferral is counted in ``steward_notify_deferrals_total``."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from steward.notify.v1 import notify_pb2 as pb

from services.chassis.clock import ManualClock
from tests.integration.notify.support import NotifyFactory, NotifyHarness
from tests.integration.notify.test_breach_notices import OPERATOR, declare_request, tenants_with_contacts
from tests.integration.notify.test_campaign_policy_change import announce_request
from tests.integration.vault.helpers import canary_email
from tests.plugins.waiting import eventually

NIGHT_IN_KOLKATA = datetime(2026, 12, 1, 17, 30, tzinfo=UTC)  # 23:00 IST
MORNING_IN_KOLKATA = datetime(2026, 12, 2, 2, 30, tzinfo=UTC)  # 08:00 IST, when the quiet window ends


def _prefs(**fields: object) -> pb.SetPreferencesRequest:
    values: dict[str, object] = {"time_zone": "Asia/Kolkata", "language": "en"}
    values.update(fields)
    return pb.SetPreferencesRequest(preferences=pb.Preferences(**values))  # type: ignore[arg-type]


async def _deliveries(h: NotifyHarness, tenant: str) -> list[pb.Delivery]:
    page = await h.notify.ListDeliveries(pb.ListDeliveriesRequest(page_size=100), metadata=h.md(tenant))
    return list(page.deliveries)


def _deferrals(h: NotifyHarness, reason: str) -> float:
    scraped = h.app.runtime.metrics.scrape()
    found = re.search(rf'^steward_notify_deferrals_total\{{[^}}]*reason="{reason}"[^}}]*\}} ([0-9.]+)$', scraped, re.M)
    return float(found.group(1)) if found else 0.0


async def test_quiet_hours_defer_service_notices_but_not_breach_notices(notify_factory: NotifyFactory) -> None:
    clock = ManualClock(NIGHT_IN_KOLKATA)
    h = await notify_factory(clock=clock)
    (tenant,) = await tenants_with_contacts(h, 1)
    await h.notify.SetPreferences(
        _prefs(quiet_hours=pb.QuietHours(start_minute=21 * 60, end_minute=8 * 60)), metadata=h.md(tenant)
    )

    await h.notify.AnnouncePolicyChange(announce_request(NIGHT_IN_KOLKATA + timedelta(days=31)), metadata=OPERATOR)

    async def deferred() -> bool:
        found = await _deliveries(h, tenant)
        return len(found) == 2 and all(d.reason_code == "quiet_hours" for d in found)

    await eventually(deferred, 30, what="both policy notices deferred by quiet hours")
    for d in await _deliveries(h, tenant):
        assert d.status == pb.DELIVERY_STATUS_QUEUED and d.attempts == 0
        assert d.next_attempt_at.ToDatetime(UTC) == MORNING_IN_KOLKATA
    assert _deferrals(h, "quiet_hours") >= 2

    # A breach in the middle of the night goes at once (critical lane: no quiet hours).
    declared = await h.notify.DeclareBreach(
        declare_request([tenant], key=f"inc-{uuid.uuid4().hex[:6]}"), metadata=OPERATOR
    )
    await eventually(lambda: len(h.sink.raw()) == 2, 30, what="two breach notices at night")
    assert all(declared.breach.breach_id in str(m["Subject"]) for m in h.sink.messages())

    # Morning in Kolkata: the policy notices go.
    clock.set(MORNING_IN_KOLKATA)
    await eventually(lambda: len(h.sink.raw()) == 4, 30, what="the policy notices in the morning")
    policy = [d for d in await _deliveries(h, tenant) if d.template == "policy_change"]
    assert {d.status for d in policy} == {pb.DELIVERY_STATUS_SENT} and {d.attempts for d in policy} == {1}


async def test_a_tenant_over_its_rate_limit_is_spread_out_not_failed(notify_factory: NotifyFactory) -> None:
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    h = await notify_factory(clock=clock, pacing={"rate_per_s": {"email": 1.0}, "burst": {"email": 1}})
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    contacts = [pb.Contact(email=canary_email(), role=pb.CONTACT_ROLE_ADMIN, locale="en") for _ in range(4)]
    await h.notify.SetContacts(pb.SetContactsRequest(contacts=contacts), metadata=h.md(tenant))
    await h.notify.AnnouncePolicyChange(announce_request(clock.now() + timedelta(days=31)), metadata=OPERATOR)

    async def one_sent_three_waiting() -> bool:
        found = await _deliveries(h, tenant)
        sent = [d for d in found if d.status == pb.DELIVERY_STATUS_SENT]
        waiting = [d for d in found if d.reason_code == "rate_limited" and d.status == pb.DELIVERY_STATUS_QUEUED]
        return len(sent) == 1 and len(waiting) == 3

    await eventually(one_sent_three_waiting, 30, what="one notice sent, three deferred by the rate limit")
    slots = sorted(
        d.next_attempt_at.ToDatetime(UTC) for d in await _deliveries(h, tenant) if d.reason_code == "rate_limited"
    )
    assert slots == [clock.now() + timedelta(seconds=s) for s in (1, 2, 3)]  # one slot each, not a herd
    assert _deferrals(h, "rate_limited") == 3
    clock.advance(3)
    await eventually(lambda: len(h.sink.raw()) == 4, 30, what="every notice once its slot came")
    found = await _deliveries(h, tenant)
    assert {d.status for d in found} == {pb.DELIVERY_STATUS_SENT}
    assert _deferrals(h, "rate_limited") == 3  # a delivery back at its reserved slot is not deferred again


async def test_channels_per_notice_kind_and_language_apply(notify_factory: NotifyFactory) -> None:
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    h = await notify_factory(clock=clock)
    made = await tenants_with_contacts(h, 2)
    whatsapp_only, in_hindi = sorted(made)
    await h.notify.SetPreferences(
        _prefs(channels=[pb.NoticeChannels(notice_kind="policy", channels=[pb.CHANNEL_WHATSAPP])]),
        metadata=h.md(whatsapp_only),
    )
    await h.notify.SetPreferences(_prefs(language="hi"), metadata=h.md(in_hindi))
    await h.notify.AnnouncePolicyChange(announce_request(clock.now() + timedelta(days=31)), metadata=OPERATOR)

    async def settled() -> bool:
        found = await _deliveries(h, whatsapp_only) + await _deliveries(h, in_hindi)
        return len(found) == 4 and all(
            d.status in (pb.DELIVERY_STATUS_SENT, pb.DELIVERY_STATUS_SUPPRESSED) for d in found
        )

    await eventually(settled, 30, what="the policy notices settled")
    suppressed = await _deliveries(h, whatsapp_only)
    assert {(d.status, d.reason_code) for d in suppressed} == {(pb.DELIVERY_STATUS_SUPPRESSED, "channel_not_preferred")}
    hindi = await _deliveries(h, in_hindi)
    assert {d.status for d in hindi} == {pb.DELIVERY_STATUS_SENT}
    assert all(d.template_version.startswith("policy_change/hi/") for d in hindi)
    assert sorted(m["To"] for m in h.sink.messages()) == sorted(made[in_hindi])
