"""The delivery engine's batches. A fan-out planned at once keeps exactly-once per idempotency key (a key met before,
or twice in the same batch, is replayed, not planned again). Sends recorded in batches (one transaction per batch
of finished sends): each delivery is settled by its own outcome, only final deliveries lose their payload, and a
settlement that cannot be written fails alone, leaving its delivery as the claim left it while the rest commits."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest

from services.chassis.clock import ManualClock
from services.notify import deliveries
from services.notify.channels import Lane, Outcome, SendResult
from services.notify.consent import Recipient
from services.notify.deliveries import Job, Plan, Settlement, claim, plan_all
from tests.integration.notify.support import NotifyFactory, NotifyHarness
from tests.integration.notify.test_core_sends import send, send_request, subject


async def claimed(h: NotifyHarness, count: int) -> list[Job]:
    """``count`` service-lane emails planned and claimed by the test (the engine is stopped)."""
    h.app.engine.wake = lambda: None  # type: ignore[method-assign]  # the test drives the engine itself
    await h.app.engine.stop()
    for _ in range(count):
        subject_id, _ = subject(h)
        await send(h, send_request(subject_id))
    jobs = await h.app.db.run(partial(claim, ctx=h.app.ctx, limit=count))
    assert len(jobs) == count
    for job in jobs:
        job.address = h.addresses.entries[(job.tenant_id, job.recipient.id, "email")]
    return jobs


def settlement(h: NotifyHarness, job: Job, result: SendResult) -> Settlement:
    return Settlement(job, result, h.app.ctx.recipient_hash(job.channel, job.address))


def rows(h: NotifyHarness) -> dict[str, tuple[Any, ...]]:
    found = h.raw_db().all("SELECT delivery_id, status, reason_code, attempts, recipient_hash FROM notify_deliveries")
    return {row[0]: tuple(row[1:]) for row in found}


def payloads(h: NotifyHarness) -> set[str]:
    return {row[0] for row in h.raw_db().all("SELECT delivery_id FROM notify_payloads")}


async def test_a_fan_out_planned_at_once_plans_each_message_once(
    notify_factory: NotifyFactory, database_url: str
) -> None:
    h = await notify_factory(database_url=database_url)
    h.app.engine.wake = lambda: None  # type: ignore[method-assign]
    await h.app.engine.stop()

    def notice(contact: str, channel: str = "email") -> Plan:
        return Plan(
            tenant_id=h.tenant,
            cause="breach:b1:1",
            channel=channel,
            lane=Lane.CRITICAL,
            template_version="breach_notice/en/v1",
            recipient=Recipient("contact", contact),
            variables={"nature": "n"},
        )

    (first, replayed), *_ = await h.app.db.run(lambda s: plan_all(s, h.app.ctx, [notice("c1")]))
    assert not replayed
    batch = [notice("c1"), notice("c2"), notice("c2", "whatsapp"), notice("c2")]
    answer = await h.app.db.run(lambda s: plan_all(s, h.app.ctx, batch))
    ids = [row.delivery_id for row, _ in answer]
    assert [replayed for _, replayed in answer] == [True, False, False, True]
    assert ids[0] == first.delivery_id and ids[3] == ids[1] and len(set(ids)) == 3
    assert h.raw_db().scalar("SELECT count(*) FROM notify_deliveries") == 3
    assert payloads(h) == set(ids)


async def test_one_batch_settles_each_delivery_by_its_own_outcome(
    notify_factory: NotifyFactory, manual_clock: ManualClock, database_url: str
) -> None:
    h = await notify_factory(clock=manual_clock, database_url=database_url)
    sent, retried, bounced, also_sent = await claimed(h, 4)
    outcomes = [
        settlement(h, sent, SendResult(Outcome.SENT, "", provider_ref="<a@x>")),
        settlement(h, retried, SendResult(Outcome.RETRY, "smtp_4xx")),
        settlement(h, bounced, SendResult(Outcome.SUPPRESS, "smtp_5xx")),
        settlement(h, also_sent, SendResult(Outcome.SENT, "", provider_ref="<b@x>")),
    ]
    writer = h.app.engine.settlements
    before = writer.batches
    statuses = await asyncio.gather(*(writer.settle(item) for item in outcomes))
    assert statuses == ["SENT", "QUEUED", "SUPPRESSED", "SENT"]
    assert writer.batches == before + 1  # all four in one transaction
    after = rows(h)
    assert after[sent.delivery_id][:3] == ("SENT", "", 1)
    assert after[retried.delivery_id][:3] == ("QUEUED", "smtp_4xx", 1)
    assert after[bounced.delivery_id][:3] == ("SUPPRESSED", "smtp_5xx", 1)
    assert after[also_sent.delivery_id][:3] == ("SENT", "", 1)
    # Only the delivery that will be tried again keeps its sealed payload.
    assert payloads(h) == {retried.delivery_id}
    suppressed = h.raw_db().all("SELECT recipient_hash, reason_code FROM notify_suppressions")
    assert suppressed == [(outcomes[2].recipient_hash, "smtp_5xx")]


async def test_a_settlement_that_cannot_be_written_fails_alone_and_its_delivery_is_left_as_claimed(
    notify_factory: NotifyFactory, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    h = await notify_factory(clock=manual_clock, database_url=database_url)
    sent, broken, also_sent = await claimed(h, 3)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the suppression list cannot be written")

    monkeypatch.setattr(deliveries.consent, "suppress", refuse)
    outcomes = [
        settlement(h, sent, SendResult(Outcome.SENT, "", provider_ref="<a@x>")),
        settlement(h, broken, SendResult(Outcome.SUPPRESS, "smtp_5xx")),
        settlement(h, also_sent, SendResult(Outcome.SENT, "", provider_ref="<b@x>")),
    ]
    writer = h.app.engine.settlements
    answers = await asyncio.gather(*(writer.settle(item) for item in outcomes), return_exceptions=True)
    assert answers[0] == "SENT" and answers[2] == "SENT"
    assert isinstance(answers[1], RuntimeError)
    after = rows(h)
    assert after[sent.delivery_id][0] == after[also_sent.delivery_id][0] == "SENT"
    # Nothing of the failed settlement was written: still SENDING under its lease, payload and hash as claimed.
    assert after[broken.delivery_id] == ("SENDING", "", 1, "")
    assert payloads(h) == {broken.delivery_id}
    assert h.raw_db().all("SELECT recipient_hash FROM notify_suppressions") == []
