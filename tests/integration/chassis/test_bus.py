"""Outbox, inbox, dead-lettering and restart behaviour of the bus against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import DLQ_PREFIX, Bus, Consumer, InboxEntry, OutboxEntry, OutboxRelay, enqueue, make_event
from services.chassis.db import Base, Database
from services.chassis.settings import NatsSettings
from tests.plugins.infra import NatsServer
from tests.plugins.waiting import eventually

SUBJECT = "steward.vault.tenant.created"


def tenant_event(tenant: str) -> events_pb2.Event:
    return make_event(events_pb2.TenantCreated(tenant_id=tenant), source="vault", tenant_id=tenant)


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    Base.metadata.create_all(database.engine)
    yield database
    database.close()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = Bus(NatsSettings(url=nats_server.url, max_deliveries=3, ack_wait_s=2), name="test")
    await b.start()
    await b.wait_connected(10)
    yield b
    await b.close()


async def test_events_written_while_nats_is_down_are_published_once_after_restart(
    db: Database, bus: Bus, nats_server: NatsServer
) -> None:
    received: list[str] = []
    consumer = Consumer(bus, db, durable="collector", subjects=[SUBJECT], handler=lambda _s, e: received.append(e.id))
    await consumer.start()
    relay = OutboxRelay(db, bus)
    await relay.start()

    async def pending() -> int:
        return int(await db.run(lambda s: s.scalar(select(func.count()).where(OutboxEntry.published_at.is_(None)))))

    nats_server.kill()
    ids = [await db.run(lambda s, i=i: enqueue(s, tenant_event(f"t{i}"))) for i in range(25)]
    await eventually(lambda: not bus.connected.is_set(), what="the bus noticing NATS is gone")
    with pytest.raises(ConnectionError):
        await relay.drain_once()  # what the relay would do now: it fails and marks nothing published
    assert await pending() == 25
    nats_server.start()

    await eventually(lambda: sorted(received) == sorted(ids), 30, what="all 25 events received")
    assert sorted(received) == sorted(ids)  # once each, no duplicates

    # Once the outbox is drained nothing more is published, so the stream's count is final: JetStream holds
    # each event once even if the relay published a row twice (it deduplicates by event id).
    async def drained() -> bool:
        return await pending() == 0

    await eventually(drained, 30, what="outbox drained")
    assert (await bus.js.stream_info(bus.settings.stream)).state.messages == 25
    assert consumer.stats.handled == 25
    await relay.stop()
    await consumer.stop()


async def test_same_event_delivered_twice_has_one_effect(db: Database, bus: Bus) -> None:
    effects: list[str] = []
    consumer = Consumer(bus, db, durable="dedupe", subjects=[SUBJECT], handler=lambda _s, e: effects.append(e.id))
    await consumer.start()
    event = tenant_event("t1")
    # Published twice with different Nats-Msg-Ids so JetStream's own dedupe cannot hide the second copy.
    for copy in ("a", "b"):
        await bus.js.publish(SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": f"{event.id}-{copy}"})
    await eventually(lambda: consumer.stats.handled + consumer.stats.duplicates == 2, what="both copies consumed")
    assert effects == [event.id]
    assert consumer.stats.duplicates == 1
    inbox = await db.run(lambda s: s.scalar(select(func.count()).select_from(InboxEntry)))
    assert inbox == 1
    await consumer.stop()


async def test_failing_handler_ends_in_dead_letter_and_stream_keeps_flowing(db: Database, bus: Bus) -> None:
    good: list[str] = []
    poison = tenant_event("poison")

    def handler(_session: Session, event: events_pb2.Event) -> None:
        if event.id == poison.id:
            raise RuntimeError("boom")
        good.append(event.id)

    consumer = Consumer(
        bus, db, durable="flaky", subjects=[SUBJECT], handler=handler, max_deliveries=3, nak_base_delay_s=0.05
    )
    dlq = await bus.js.pull_subscribe(f"{DLQ_PREFIX}flaky", durable="dlq-watch")
    await consumer.start()
    await bus.js.publish(SUBJECT, poison.SerializeToString(), headers={"Nats-Msg-Id": poison.id})
    after = tenant_event("after")
    await bus.js.publish(SUBJECT, after.SerializeToString(), headers={"Nats-Msg-Id": after.id})

    await eventually(lambda: consumer.stats.dead_lettered == 1, what="the poison event dead-lettered")
    await eventually(lambda: after.id in good, what="the event after the poison one handled")
    [dead] = await dlq.fetch(1, timeout=5)
    assert events_pb2.Event.FromString(dead.data).id == poison.id
    assert dead.headers["Steward-Error-Type"] == "RuntimeError"
    assert consumer.stats.failures == 3
    # the poison event's failed attempts left no inbox row behind
    assert await db.run(lambda s: s.get(InboxEntry, ("flaky", poison.id))) is None
    await consumer.stop()


async def test_durable_consumer_survives_nats_kill_and_restart(db: Database, bus: Bus, nats_server: NatsServer) -> None:
    received: list[str] = []
    consumer = Consumer(bus, db, durable="survivor", subjects=[SUBJECT], handler=lambda _s, e: received.append(e.id))
    await consumer.start()
    first = tenant_event("before")
    await bus.js.publish(SUBJECT, first.SerializeToString(), headers={"Nats-Msg-Id": first.id})
    await eventually(lambda: first.id in received, what="the event before the restart")

    nats_server.restart()
    await bus.wait_connected(30)
    second = tenant_event("after-restart")
    await eventually(lambda: bus.connected.is_set(), what="the bus reconnected")

    async def published() -> bool:
        try:
            await bus.js.publish(SUBJECT, second.SerializeToString(), headers={"Nats-Msg-Id": second.id})
        except Exception:  # the restarted server may still be recovering its JetStream store
            return False
        return True

    await eventually(published, 10, what="publishing after the restart")
    await eventually(lambda: second.id in received, 30, what="the event published after the restart")
    assert received == [first.id, second.id]
    await consumer.stop()


async def test_trace_context_crosses_the_nats_hop(db: Database, bus: Bus) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    seen: list[int] = []

    def handler(_session: Session, _event: events_pb2.Event) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    consumer = Consumer(bus, db, durable="traced", subjects=[SUBJECT], handler=handler)
    await consumer.start()
    relay = OutboxRelay(db, bus)
    await relay.start()
    with tracer.start_as_current_span("publisher") as span:
        publisher_trace = span.get_span_context().trace_id
        await db.run(lambda s: enqueue(s, tenant_event("traced")))
    relay.wake()
    await eventually(lambda: len(seen) == 1, what="the traced event handled")
    assert seen == [publisher_trace]
    await relay.stop()
    await consumer.stop()


async def test_transient_failures_retry_past_max_deliveries_and_never_dead_letter(db: Database, bus: Bus) -> None:
    from services.chassis.errors import Unavailable

    attempts: list[int] = []
    done: list[str] = []

    def handler(_session: Session, event: events_pb2.Event) -> None:
        attempts.append(1)
        if len(attempts) <= 6:  # twice max_deliveries: a dependency that stays down for a while
            raise Unavailable("transit down")
        done.append(event.id)

    consumer = Consumer(
        bus,
        db,
        durable="patient",
        subjects=[SUBJECT],
        handler=handler,
        max_deliveries=3,
        nak_base_delay_s=0.05,
        max_backoff_s=0.2,
    )
    await consumer.start()
    event = tenant_event("outage")
    await bus.js.publish(SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event.id})
    await eventually(lambda: done == [event.id], 30, what="the event handled once")
    assert consumer.stats.dead_lettered == 0
    assert len(attempts) == 7
    await consumer.stop()


async def test_bus_connects_to_a_tls_only_nats_with_the_configured_ca(tmp_path: Path) -> None:
    from services.devstack.devca import ensure_dev_pki

    pki, _ = ensure_dev_pki(tmp_path / "tls", ["nats"])
    (tmp_path / "js").mkdir()
    server = NatsServer(
        store_dir=tmp_path / "js",
        extra_args=["--tls", "--tlscert", str(pki["nats"].cert_file), "--tlskey", str(pki["nats"].key_file)],
    )
    server.start()
    try:
        plain = Bus(NatsSettings(url=server.url), name="no-tls")
        await plain.start()
        with pytest.raises(TimeoutError):
            await plain.wait_connected(2)
        await plain.close()
        secured = Bus(NatsSettings(url=f"tls://localhost:{server.port}", tls_ca_file=pki.ca_file), name="tls")
        await secured.start()
        await secured.wait_connected(10)
        ack = await secured.js.publish("steward.test.tls", b"x")
        assert ack.stream == "STEWARD"
        await secured.close()
    finally:
        server.kill()


class PlainTimeoutSubscription:
    """A real pull subscription whose empty fetches end the other way nats-py has of ending them.

    nats-py raises ``nats.errors.TimeoutError`` from most waits, but a plain ``asyncio.TimeoutError``
    when its deadline runs out between the no-wait probe and the lingering pull request; which one a
    fetch ends with depends on timing, so the test makes every empty fetch end the plain way.
    """

    def __init__(self, real: Any) -> None:
        self.real = real

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        try:
            return list(await self.real.fetch(batch, timeout=timeout))
        except TimeoutError:
            raise TimeoutError from None  # the built-in, which asyncio.TimeoutError is

    async def unsubscribe(self) -> None:
        await self.real.unsubscribe()


async def test_idle_and_busy_consumers_never_resubscribe(
    db: Database, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty fetch is the normal idle state; only a real fault may rebind the subscription.
    received: list[str] = []
    consumer = Consumer(
        bus,
        db,
        durable="steady",
        subjects=[SUBJECT],
        handler=lambda _s, e: received.append(e.id),
        fetch_timeout_s=0.2,
    )
    subscribe = consumer._subscribe

    async def plain_timeouts() -> PlainTimeoutSubscription:
        return PlainTimeoutSubscription(await subscribe())

    monkeypatch.setattr(consumer, "_subscribe", plain_timeouts)
    await consumer.start()
    await eventually(lambda: consumer.stats.empty_fetches >= 8, what="several idle fetches ran out empty")
    assert consumer.stats.resubscribes == 0

    sent = []
    for i in range(200):  # busy: a steady stream, with every 40th event waited for so fetches also run dry
        event = tenant_event(f"t{i}")
        sent.append(event.id)
        await bus.js.publish(SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event.id})
        if i % 40 == 0:
            await eventually(lambda: len(received) == len(sent), what="the consumer caught up")
    await eventually(lambda: sorted(received) == sorted(sent), what="every event handled")
    assert consumer.stats.resubscribes == 0
    # handled is counted after the inbox commit, a moment after the handler appended to received.
    await eventually(lambda: consumer.stats.handled == 200, what="every handled event counted")
    await consumer.stop()
