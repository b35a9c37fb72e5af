"""notify with the WhatsApp channel wired in (the Graph API stand-in over HTTP, notify's own webhook endpoint): the
same request sent three times gives one message, a lost response is not resent in the marketing lane, each
classified error code takes its path through the delivery engine, status webhooks move GetDelivery forward only,
and a STOP withdraws WhatsApp marketing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.clock import ManualClock
from services.devstack.graph_standin import GraphStandIn
from services.notify import deliveries
from services.notify.channels import Lane
from services.notify.consent import Recipient
from services.notify.statuses import SqlStatusStore
from services.notify.webhooks import DeliveryStatus, StatusState
from tests.integration.notify.support import NotifyFactory, NotifyHarness, service_logs, wait_status
from tests.integration.vault.helpers import canary_phone, leaks
from tests.plugins.waiting import eventually

WA = pb.CHANNEL_WHATSAPP
TOKEN = "EAAG-wired-token"
APP_SECRET = "a" * 40
TEMPLATES = {"steward_account_update": 2, "steward_newsletter": 2, "steward_notice_waiting": 0}


@dataclass
class Wired:
    """notify and the Graph stand-in, each knowing where the other is."""

    h: NotifyHarness
    graph: GraphStandIn

    def subject(self) -> tuple[str, str]:
        """A subject whose WhatsApp number the address book knows."""
        subject_id = str(uuid.uuid4())
        number = canary_phone()[1]
        self.h.addresses.entries[(self.h.tenant, subject_id, "whatsapp")] = number
        return subject_id, number

    async def send(self, subject_id: str, *, lane: int = pb.LANE_SERVICE, key: str = "") -> pb.Delivery:
        request = pb.SendToSubjectRequest(
            subject_id=subject_id,
            template="account_update" if lane == pb.LANE_SERVICE else "newsletter",
            locale="en",
            channel=WA,
            lane=lane,  # type: ignore[arg-type]
            variables={"name": "Asha", "detail": "shipped", "business": "Acme", "headline": "New"},
            idempotency_key=key or uuid.uuid4().hex,
            purpose="newsletter" if lane == pb.LANE_MARKETING else "",
        )
        return (await self.h.notify.SendToSubject(request, metadata=self.h.md())).delivery

    async def consent(self, subject_id: str) -> None:
        await self.h.notify.RecordConsent(
            pb.RecordConsentRequest(
                subject_id=subject_id, channel=WA, purpose="newsletter", source="web_form", wording_version="wa-1"
            ),
            metadata=self.h.md(),
        )

    def sent_to(self, number: str) -> list[Any]:
        return [m for m in self.graph.sent if m.to == number]


WiredFactory = Callable[..., Awaitable[Wired]]


@pytest.fixture
async def wired(notify_factory: NotifyFactory) -> AsyncIterator[WiredFactory]:
    graphs: list[GraphStandIn] = []

    async def start(**overrides: Any) -> Wired:
        graph = GraphStandIn(access_token=TOKEN, app_secret=APP_SECRET, templates=TEMPLATES)
        await graph.start()
        graphs.append(graph)
        whatsapp = {
            "base_url": graph.base_url,
            "api_version": graph.api_version,
            "phone_number_id": graph.phone_number_id,
            "access_token": TOKEN,
            "app_secret": APP_SECRET,
            "verify_token": "verify-me",
            "templates": TEMPLATES,
            "read_timeout_s": 2.0,
            "pair_rate_delay_s": 6.0,
        }
        h = await notify_factory(
            whatsapp=whatsapp, whatsapp_reengagement_template="steward_notice_waiting", **overrides
        )
        graph.webhook_url = f"http://127.0.0.1:{h.app.http_port}/webhooks/whatsapp"
        return Wired(h, graph)

    yield start
    for graph in graphs:
        await graph.stop()


async def test_the_same_request_three_times_sends_one_whatsapp_message(wired: WiredFactory, caplog: Any) -> None:
    w = await wired()
    subject_id, number = w.subject()
    first = await w.send(subject_id, key="order-7")
    again = [await w.send(subject_id, key="order-7") for _ in range(2)]
    assert {d.delivery_id for d in again} == {first.delivery_id}
    sent = await wait_status(w.h, first.delivery_id, pb.DELIVERY_STATUS_SENT)
    (message,) = w.sent_to(number)
    assert message.template == "steward_account_update" and message.callback_data == sent.reference
    # Nothing the send held in memory is left in notify's database, file or logs.
    raw = w.h.raw_db()
    needles = [number, number, "Asha"]
    for table, value in raw.every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(raw.file_bytes(), needles)
    assert not leaks(service_logs(caplog), needles)


async def test_a_lost_response_does_not_send_a_second_marketing_message(wired: WiredFactory) -> None:
    w = await wired()
    subject_id, number = w.subject()
    await w.consent(subject_id)
    w.graph.drop(number, times=1)
    marketing = await w.send(subject_id, lane=pb.LANE_MARKETING)
    ended = await wait_status(w.h, marketing.delivery_id, pb.DELIVERY_STATUS_AMBIGUOUS)
    assert ended.reason_code == "response_lost"
    await w.h.app.engine.process_due()
    assert w.graph.requests_received == 1 and w.sent_to(number) == []


@pytest.mark.parametrize("code", [130429, 131000])
async def test_a_throttled_or_unknown_error_is_retried_then_sent(wired: WiredFactory, code: int) -> None:
    clock = ManualClock()
    w = await wired(clock=clock)
    subject_id, number = w.subject()
    w.graph.fail(number, code, times=1)
    delivery = await w.send(subject_id)

    async def retried() -> bool:
        row = await w.h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery.delivery_id), metadata=w.h.md())
        return row.delivery.reason_code == f"wa_{code}" and row.delivery.status == pb.DELIVERY_STATUS_QUEUED

    await eventually(retried, 20, what="the first attempt refused and queued again")
    clock.advance(w.h.settings.delivery.backoff_cap_s)
    w.h.app.engine.wake()
    sent = await wait_status(w.h, delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    assert sent.attempts == 2 and len(w.sent_to(number)) == 1


@pytest.mark.parametrize("code", [131026, 131050])
async def test_an_undeliverable_or_stopped_recipient_is_suppressed(wired: WiredFactory, code: int) -> None:
    w = await wired()
    subject_id, number = w.subject()
    await w.consent(subject_id)
    w.graph.fail(number, code)
    delivery = await w.send(subject_id, lane=pb.LANE_MARKETING)
    ended = await wait_status(w.h, delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)
    assert ended.reason_code == f"wa_{code}"
    # The next marketing message is not even tried: the address's hash is on the suppression list.
    before = w.graph.requests_received
    later = await w.send(subject_id, lane=pb.LANE_MARKETING)
    assert (await wait_status(w.h, later.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)).reason_code == "suppressed"
    assert w.graph.requests_received == before


async def test_a_pair_rate_refusal_waits_the_recipient_delay(wired: WiredFactory) -> None:
    clock = ManualClock()
    w = await wired(clock=clock, delivery={"backoff_base_s": 0.01, "backoff_cap_s": 0.02})
    subject_id, number = w.subject()
    w.graph.fail(number, 131056, times=1)
    delivery = await w.send(subject_id)

    async def waiting() -> bool:
        row = await w.h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery.delivery_id), metadata=w.h.md())
        return row.delivery.reason_code == "wa_131056"

    await eventually(waiting, 20, what="the pair-rate refusal recorded")
    # Backoff alone (≤ 0.02 s) would be due now; the recipient's 6 s are not over.
    clock.advance(5.0)
    await w.h.app.engine.process_due()
    assert w.sent_to(number) == []
    clock.advance(1.5)
    w.h.app.engine.wake()
    await wait_status(w.h, delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    assert len(w.sent_to(number)) == 1


async def test_a_text_outside_the_window_switches_to_the_reengagement_template(wired: WiredFactory) -> None:
    w = await wired()
    subject_id, number = w.subject()
    w.graph.fail(number, 131047, times=1)
    # dsr_received has no WhatsApp template: it goes as a text, which WhatsApp refuses outside the 24 h window.
    p = deliveries.Plan(
        tenant_id=w.h.tenant,
        cause=f"request:{uuid.uuid4().hex}",
        channel="whatsapp",
        lane=Lane.SERVICE,
        template_version=w.h.app.ctx.catalogue.version("dsr_received", "en"),
        recipient=Recipient("subject", subject_id),
        variables={"request_type": "access", "request_id": "r-1", "due_date": "2030-01-01"},
    )
    row, _ = await w.h.app.db.run(lambda s: deliveries.plan(s, w.h.app.ctx, p))
    w.h.app.engine.wake()
    sent = await wait_status(w.h, row.delivery_id, pb.DELIVERY_STATUS_SENT)
    (message,) = w.sent_to(number)
    assert message.type == "template" and message.template == "steward_notice_waiting"
    assert sent.attempts == 2


async def test_webhook_statuses_move_get_delivery_forward_and_a_replay_changes_nothing(wired: WiredFactory) -> None:
    w = await wired()
    subject_id, number = w.subject()
    delivery = await w.send(subject_id)
    await wait_status(w.h, delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    (message,) = w.sent_to(number)

    async def status() -> int:
        row = await w.h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery.delivery_id), metadata=w.h.md())
        return int(row.delivery.status)

    assert await w.graph.deliver_status(message.message_id, "read") == 200
    assert await status() == pb.DELIVERY_STATUS_READ
    # Late and replayed webhooks never move it back.
    for late in ("delivered", "sent", "read"):
        assert await w.graph.deliver_status(message.message_id, late) == 200
        assert await status() == pb.DELIVERY_STATUS_READ
    assert await w.graph.deliver_status(message.message_id, "failed", error_code=131026) == 200
    assert await status() == pb.DELIVERY_STATUS_FAILED
    assert await w.graph.deliver_status(message.message_id, "read") == 200
    assert await status() == pb.DELIVERY_STATUS_FAILED
    # A webhook for a message that is not ours changes nothing either.
    assert await w.graph.deliver_status("wamid.not-ours", "read") == 200
    assert w.h.raw_db().scalar("SELECT count(*) FROM notify_provider_statuses") == 1


async def test_a_whatsapp_stop_withdraws_marketing_and_the_next_one_is_suppressed(wired: WiredFactory) -> None:
    w = await wired()
    subject_id, number = w.subject()
    await w.consent(subject_id)
    first = await w.send(subject_id, lane=pb.LANE_MARKETING)
    await wait_status(w.h, first.delivery_id, pb.DELIVERY_STATUS_SENT)
    (message,) = w.sent_to(number)
    assert await w.graph.deliver_inbound(number, button="Stop promotions", replied_to=message.message_id) == 200
    answer = await w.h.notify.GetConsent(pb.GetConsentRequest(subject_id=subject_id), metadata=w.h.md())
    assert [c.withdrawal_source for c in answer.history] == ["whatsapp_stop"]
    later = await w.send(subject_id, lane=pb.LANE_MARKETING)
    assert (await wait_status(w.h, later.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)).reason_code == "suppressed"
    assert len(w.sent_to(number)) == 1


async def test_the_status_store_compare_and_set_lets_only_one_of_two_racing_writers_win(wired: WiredFactory) -> None:
    w = await wired()
    subject_id, _number = w.subject()
    delivery = await w.send(subject_id)
    sent = await wait_status(w.h, delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    store = SqlStatusStore(w.h.app.db, w.h.app.ctx.clock)
    now = w.h.app.ctx.clock.now()
    delivered = StatusState(DeliveryStatus.DELIVERED, None, now)
    read = StatusState(DeliveryStatus.READ, None, now)
    # Both read "no status yet"; only the first conditional UPDATE finds it so.
    assert await store.compare_and_set(sent.provider_ref, None, delivered) is True
    assert await store.compare_and_set(sent.provider_ref, None, read) is False
    assert await store.current(sent.provider_ref) == delivered
    assert await store.compare_and_set("wamid.not-ours", None, read) is False
