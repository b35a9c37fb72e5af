"""SendToSubject end to end through a real aiosmtpd STARTTLS sink: exactly-once effect, lanes, consent checked at
send time, retries on the injected clock, suppression, ambiguity, and every refusal of bad input."""

from __future__ import annotations

import uuid

import grpc
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.clock import ManualClock
from services.devstack.smtp_sink import SmtpSink
from tests.integration.notify.support import NotifyFactory, NotifyHarness, expect_refusal, wait_status
from tests.integration.vault.helpers import canary_email
from tests.plugins.waiting import eventually

EMAIL = pb.CHANNEL_EMAIL


def subject(h: NotifyHarness, address: str | None = None) -> tuple[str, str]:
    """A subject id the address book knows, and its address."""
    subject_id = str(uuid.uuid4())
    address = address or canary_email()
    h.addresses.entries[(h.tenant, subject_id, "email")] = address
    return subject_id, address


def send_request(
    subject_id: str, *, key: str = "", lane: int = pb.LANE_SERVICE, **fields: object
) -> pb.SendToSubjectRequest:
    values: dict[str, object] = {
        "subject_id": subject_id,
        "template": "account_update" if lane == pb.LANE_SERVICE else "newsletter",
        "locale": "en",
        "channel": EMAIL,
        "lane": lane,
        "variables": {"name": "Asha", "detail": "your order shipped", "business": "Acme", "headline": "New"},
        "idempotency_key": key or uuid.uuid4().hex,
        "purpose": "newsletter" if lane == pb.LANE_MARKETING else "",
    }
    values.update(fields)
    return pb.SendToSubjectRequest(**values)  # type: ignore[arg-type]


async def send(h: NotifyHarness, request: pb.SendToSubjectRequest) -> pb.SendToSubjectResponse:
    return await h.notify.SendToSubject(request, metadata=h.md())


async def consent_to(h: NotifyHarness, subject_id: str, purpose: str = "newsletter") -> pb.ConsentRecord:
    answer = await h.notify.RecordConsent(
        pb.RecordConsentRequest(
            subject_id=subject_id, channel=EMAIL, purpose=purpose, source="web_form", wording_version="nl-2026-01"
        ),
        metadata=h.md(),
    )
    return answer.consent


async def test_the_same_request_three_times_sends_one_email(notify_factory: NotifyFactory, database_url: str) -> None:
    h = await notify_factory(database_url=database_url)
    subject_id, address = subject(h)
    request = send_request(subject_id, key="order-42")
    answers = [await send(h, request) for _ in range(3)]
    assert [a.replayed for a in answers] == [False, True, True]
    assert len({a.delivery.delivery_id for a in answers}) == 1
    delivery = await wait_status(h, answers[0].delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    (mail,) = h.sink.messages()
    assert mail["To"] == address
    assert mail["Message-ID"] == f"<{delivery.reference}@steward.test>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"].startswith("<https://steward.test/notify/unsubscribe?")
    assert "Asha" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert delivery.recipient_hash and address not in delivery.recipient_hash
    # The payload is gone once the delivery is final.
    assert h.raw_db().scalar("SELECT count(*) FROM notify_payloads") == 0


async def test_marketing_needs_consent_at_send_time_and_a_withdrawal_stops_the_next(
    notify_factory: NotifyFactory,
) -> None:
    h = await notify_factory()
    subject_id, _ = subject(h)
    refused = await send(h, send_request(subject_id, lane=pb.LANE_MARKETING))
    suppressed = await wait_status(h, refused.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)
    assert suppressed.reason_code == "no_consent"
    assert h.sink.raw() == []

    granted = await consent_to(h, subject_id)
    sent = await send(h, send_request(subject_id, lane=pb.LANE_MARKETING))
    await wait_status(h, sent.delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    assert len(h.sink.raw()) == 1
    why = await h.notify.GetConsent(pb.GetConsentRequest(delivery_id=sent.delivery.delivery_id), metadata=h.md())
    assert why.decided_by_consent_id == granted.consent_id

    await h.notify.WithdrawConsent(
        pb.WithdrawConsentRequest(subject_id=subject_id, source="preference_center"), metadata=h.md()
    )
    after = await send(h, send_request(subject_id, lane=pb.LANE_MARKETING))
    assert (await wait_status(h, after.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)).reason_code == "no_consent"
    assert len(h.sink.raw()) == 1
    # Service notices ignore the marketing opt-out.
    service = await send(h, send_request(subject_id))
    await wait_status(h, service.delivery.delivery_id, pb.DELIVERY_STATUS_SENT)


async def test_a_4xx_is_retried_on_the_clock_then_delivered(
    notify_factory: NotifyFactory, manual_clock: ManualClock, database_url: str
) -> None:
    h = await notify_factory(clock=manual_clock, database_url=database_url)
    subject_id, _ = subject(h)
    h.sink.script("4xx")
    answer = await send(h, send_request(subject_id))
    delivery_id = answer.delivery.delivery_id
    await wait_status(h, delivery_id, pb.DELIVERY_STATUS_QUEUED)

    async def retried_once() -> bool:
        got = await h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery_id), metadata=h.md())
        return got.delivery.attempts == 1 and got.delivery.reason_code == "smtp_4xx"

    await eventually(retried_once, 20, what="the first attempt refused with 4xx")
    assert h.sink.raw() == []
    manual_clock.advance(h.settings.delivery.backoff_cap_s + 1)  # past any jittered delay
    h.app.engine.wake()
    sent = await wait_status(h, delivery_id, pb.DELIVERY_STATUS_SENT)
    assert sent.attempts == 2
    assert len(h.sink.raw()) == 1


async def test_a_5xx_suppresses_the_address_for_later_sends(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    subject_id, _ = subject(h)
    h.sink.script("5xx")
    first = await send(h, send_request(subject_id))
    bounced = await wait_status(h, first.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)
    assert bounced.reason_code == "smtp_5xx"
    attempts = h.sink.attempts
    await consent_to(h, subject_id)
    again = await send(h, send_request(subject_id, lane=pb.LANE_MARKETING))
    assert (await wait_status(h, again.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)).reason_code == "suppressed"
    service = await send(h, send_request(subject_id))
    assert (
        await wait_status(h, service.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)
    ).reason_code == "suppressed"
    assert h.sink.attempts == attempts  # nothing more reached the server
    why = await h.notify.GetConsent(pb.GetConsentRequest(subject_id=subject_id), metadata=h.md())
    assert [s.reason_code for s in why.suppressions] == ["smtp_5xx"]


async def test_an_ambiguous_marketing_send_is_not_resent_but_a_service_one_is_with_the_same_message_id(
    notify_factory: NotifyFactory, manual_clock: ManualClock
) -> None:
    h = await notify_factory(clock=manual_clock)
    subject_id, _ = subject(h)
    await consent_to(h, subject_id)
    h.sink.script("drop")
    marketing = await send(h, send_request(subject_id, lane=pb.LANE_MARKETING))
    lost = await wait_status(h, marketing.delivery.delivery_id, pb.DELIVERY_STATUS_AMBIGUOUS)
    assert lost.reason_code == "smtp_lost"
    manual_clock.advance(h.settings.delivery.backoff_cap_s + 1)
    h.app.engine.wake()
    assert await h.app.engine.process_due() == 0
    assert len(h.sink.raw()) == 1  # the server did take it once; it is never sent again

    h.sink.script("drop")
    service = await send(h, send_request(subject_id))
    service_id = service.delivery.delivery_id

    async def dropped_once() -> bool:
        return len(h.sink.raw()) == 2

    await eventually(dropped_once, 20, what="the service notice's first (dropped) attempt")
    manual_clock.advance(h.settings.delivery.backoff_cap_s + 1)
    h.app.engine.wake()
    sent = await wait_status(h, service_id, pb.DELIVERY_STATUS_SENT)
    first, second = h.sink.messages()[1:]
    assert first["Message-ID"] == second["Message-ID"] == f"<{sent.reference}@steward.test>"


async def test_a_server_without_starttls_is_refused(notify_factory: NotifyFactory) -> None:
    plain = SmtpSink(mode="plain").start()
    try:
        h = await notify_factory(sink=plain)
        subject_id, _ = subject(h)
        answer = await send(h, send_request(subject_id))
        failed = await wait_status(h, answer.delivery.delivery_id, pb.DELIVERY_STATUS_FAILED)
        assert failed.reason_code == "no_starttls"
        assert plain.raw() == [] and plain.attempts == 0
    finally:
        plain.stop()


async def test_send_to_subject_refuses_bad_input(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    subject_id, _ = subject(h)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases: list[tuple[pb.SendToSubjectRequest, str]] = [
        (send_request(subject_id, template="no_such_template"), "UNKNOWN_TEMPLATE"),
        (send_request(subject_id, template="dsr_received"), "UNKNOWN_TEMPLATE"),
        (send_request(subject_id, locale="fr"), "UNKNOWN_LOCALE"),
        (send_request(subject_id, variables={"name": "Asha"}), "MISSING_TEMPLATE_VARIABLE"),
        (send_request(subject_id, variables={"Bad-Name": "x"}), "INVALID_ARGUMENT"),
        (send_request(subject_id, idempotency_key=""), "IDEMPOTENCY_KEY_REQUIRED"),
        (send_request(subject_id, idempotency_key="has spaces"), "MALFORMED_ID"),
        (send_request(""), "IDENTIFIER_REQUIRED"),
        (send_request("not-an-id"), "MALFORMED_ID"),
        (send_request(subject_id, channel=pb.CHANNEL_UNSPECIFIED), "INVALID_ARGUMENT"),
        (send_request(subject_id, lane=pb.LANE_CRITICAL, template="account_update"), "INVALID_ARGUMENT"),
        (send_request(subject_id, lane=pb.LANE_SERVICE, template="newsletter"), "INVALID_ARGUMENT"),
        (send_request(subject_id, lane=pb.LANE_MARKETING, purpose=""), "PURPOSE_REQUIRED"),
        (send_request(subject_id, lane=pb.LANE_MARKETING, purpose="free text!"), "INVALID_ARGUMENT"),
    ]
    for request, reason in cases:
        message = await expect_refusal(send(h, request), invalid, reason)
        assert "Asha" not in message and subject_id not in message
    # Nothing refused was planned.
    assert await h.notify.ListDeliveries(pb.ListDeliveriesRequest(), metadata=h.md()) == pb.ListDeliveriesResponse()
    await expect_refusal(
        h.notify.SendToSubject(send_request(subject_id), metadata=()),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


async def test_deliveries_are_per_tenant_and_listable(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    subject_id, _ = subject(h)
    answer = await send(h, send_request(subject_id))
    await wait_status(h, answer.delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    listed = await h.notify.ListDeliveries(pb.ListDeliveriesRequest(subject_id=subject_id), metadata=h.md())
    assert [d.delivery_id for d in listed.deliveries] == [answer.delivery.delivery_id]
    sent_only = await h.notify.ListDeliveries(
        pb.ListDeliveriesRequest(status=pb.DELIVERY_STATUS_FAILED), metadata=h.md()
    )
    assert list(sent_only.deliveries) == []
    not_found = grpc.StatusCode.NOT_FOUND
    other = h.md("another-tenant")
    await expect_refusal(
        h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=answer.delivery.delivery_id), metadata=other),
        not_found,
        "DELIVERY_NOT_FOUND",
    )
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_refusal(
        h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id="x y"), metadata=h.md()), invalid, "MALFORMED_ID"
    )
    await expect_refusal(
        h.notify.ListDeliveries(pb.ListDeliveriesRequest(page_size=-1), metadata=h.md()), invalid, "INVALID_ARGUMENT"
    )
    await expect_refusal(
        h.notify.ListDeliveries(pb.ListDeliveriesRequest(status=99), metadata=h.md()), invalid, "INVALID_ARGUMENT"
    )
    await expect_refusal(
        h.notify.ListDeliveries(pb.ListDeliveriesRequest(page_token="bad token"), metadata=h.md()),
        invalid,
        "MALFORMED_ID",
    )


async def test_the_channel_breaker_opens_and_waiting_deliveries_are_not_charged_an_attempt(
    notify_factory: NotifyFactory, manual_clock: ManualClock
) -> None:
    down = SmtpSink(mode="plain")  # never started: nothing listens on its port
    h = await notify_factory(
        clock=manual_clock, sink=down, delivery={"breaker_failures": 2, "breaker_reset_s": 60, "max_attempts": 8}
    )
    ids = []
    for _ in range(2):
        subject_id, _ = subject(h)
        ids.append((await send(h, send_request(subject_id))).delivery.delivery_id)

    async def both_failed_once() -> bool:
        rows = h.raw_db().all("SELECT attempts, reason_code FROM notify_deliveries")
        return sorted(rows) == [(1, "smtp_connect"), (1, "smtp_connect")]

    await eventually(both_failed_once, 20, what="two connection failures")
    subject_id, _ = subject(h)
    third = (await send(h, send_request(subject_id))).delivery.delivery_id
    waiting = await wait_status(h, third, pb.DELIVERY_STATUS_QUEUED)

    async def postponed() -> bool:
        got = await h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=third), metadata=h.md())
        return got.delivery.reason_code == "breaker_open"

    await eventually(postponed, 20, what="the third delivery held back by the open breaker")
    got = await h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=third), metadata=h.md())
    assert got.delivery.attempts == 0 and waiting.delivery_id == third


async def test_a_claim_whose_answer_was_never_recorded_is_ambiguous_for_marketing_and_resent_for_service(
    notify_factory: NotifyFactory, manual_clock: ManualClock
) -> None:
    h = await notify_factory(clock=manual_clock)
    h.app.engine.wake = lambda: None  # type: ignore[method-assign]  # the test drives the engine itself
    subject_id, _ = subject(h)
    await consent_to(h, subject_id)
    marketing = (await send(h, send_request(subject_id, lane=pb.LANE_MARKETING))).delivery.delivery_id
    service = (await send(h, send_request(subject_id))).delivery.delivery_id
    await h.app.engine.stop()  # a process that died between claiming and recording
    raw = h.raw_db()
    raw.execute("UPDATE notify_deliveries SET status = 'SENDING', attempts = 1")
    manual_clock.advance(h.settings.delivery.sending_lease_s + 1)
    await h.app.engine.process_due()
    assert (await wait_status(h, marketing, pb.DELIVERY_STATUS_AMBIGUOUS)).reason_code == "attempt_lost"
    resent = await wait_status(h, service, pb.DELIVERY_STATUS_SENT)
    (mail,) = h.sink.messages()
    assert mail["Message-ID"] == f"<{resent.reference}@steward.test>"
