"""Every NATS user of the permission table against a real nats-server started from the generated config.

Each service does its real work (stream provisioning, outbox relay, durable consumer, dead letters,
core subscriptions) with exactly its own permissions; anything else is refused: an anonymous or
plaintext client, a publish outside the user's subjects, a durable that is not the user's own.
"""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import DLQ_PREFIX, Bus, Consumer, OutboxRelay, RefusedEvent, enqueue, make_event
from services.chassis.db import Base, Database
from services.chassis.nats_permissions import DSR_TASK_SUBJECT, STREAM, inbox_prefix
from services.dsr.events import RESULT_SUBJECTS, RESULTS_DURABLE
from services.gateway.events import REVOCATION_SUBJECT, RevocationListener
from tests.plugins.infra import SecuredNats
from tests.plugins.waiting import eventually


@dataclass
class Client:
    """A raw nats-py connection as one user, with the errors the server reported to it."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)

    async def publish(self, subject: str, data: bytes = b"x", **headers: str) -> Any:
        return await self.nc.jetstream().publish(subject, data, timeout=2.0, headers=headers or None)

    async def refused(self, subject: str) -> bool:
        """True when a JetStream publish to ``subject`` is dropped by the server as a permission violation."""
        before = len(self.errors)
        with pytest.raises(nats.errors.TimeoutError):
            await self.publish(subject)
        await eventually(lambda: len(self.errors) > before, 5, what="the server reporting an error")
        return any("permissions violation" in e and subject in e for e in self.errors[before:])


@pytest.fixture
async def connect(secured_nats: SecuredNats) -> AsyncIterator[Callable[[str], Any]]:
    opened: list[NatsClient] = []

    async def as_user(user: str) -> Client:
        errors: list[str] = []
        client = Client(nc=await secured_nats.connect(user, errors), errors=errors)
        opened.append(client.nc)
        return client

    yield as_user
    for nc in opened:
        await nc.close()


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    Base.metadata.create_all(database.engine)
    yield database
    database.close()


@pytest.fixture
async def buses(secured_nats: SecuredNats) -> AsyncIterator[Callable[[str], Any]]:
    started: list[Bus] = []

    async def bus_as(user: str) -> Bus:
        bus = Bus(secured_nats.settings(user, max_deliveries=2, ack_wait_s=2), name=user)
        await bus.start()
        await bus.wait_connected(15)
        started.append(bus)
        return bus

    yield bus_as
    for bus in started:
        await bus.close()


def event(source: str, tenant: str = "t-auth") -> events_pb2.Event:
    # Built by hand: the catalog only knows the gateway and the vault as producers of TenantCreated, and
    # these tests need every service to try publishing under its own (or another's) name.
    return events_pb2.Event(
        id=str(uuid.uuid4()),
        type=f"{source}.tenant.created",
        tenant_id=tenant,
        source=source,
        tenant_created=events_pb2.TenantCreated(tenant_id=tenant),
    )


async def test_an_anonymous_client_cannot_connect(secured_nats: SecuredNats) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            secured_nats.url,
            tls=ssl.create_default_context(cafile=str(secured_nats.ca_file)),
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=3,
        )


def test_a_client_without_tls_is_refused(secured_nats: SecuredNats) -> None:
    with socket.create_connection(("127.0.0.1", secured_nats.server.port), timeout=5) as sock:
        info = json.loads(sock.recv(65536).removeprefix(b"INFO ").strip())
        assert info["tls_required"] is True and info["auth_required"] is True
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the plaintext connection
            answer += chunk
    assert b"PONG" not in answer


async def test_gateway_and_vault_credentials_cannot_command_or_forge(
    connect: Callable[[str], Any], buses: Callable[[str], Any]
) -> None:
    await buses("ops")  # the stream exists
    gateway, vault = await connect("gateway"), await connect("vault")
    assert await gateway.refused(DSR_TASK_SUBJECT)
    assert await gateway.refused(f"{DLQ_PREFIX}vault-dsr-tasks")
    assert await gateway.refused("steward.vault.subject.erased")
    assert await vault.refused(DSR_TASK_SUBJECT)
    assert await vault.refused("steward.gateway.apikey.revoked")
    assert await vault.refused(f"{DLQ_PREFIX}dsr-task-results")
    assert (await gateway.publish("steward.gateway.tenant.created")).stream == STREAM


async def test_a_service_uses_only_its_own_durables_with_their_own_filters(
    connect: Callable[[str], Any], buses: Callable[[str], Any]
) -> None:
    await buses("ops")
    vault = await connect("vault")
    js = vault.nc.jetstream(timeout=2)
    with pytest.raises(nats.errors.TimeoutError):  # widen its own durable to every subject
        await js.add_consumer(STREAM, ConsumerConfig(name="vault-dsr-tasks", durable_name="vault-dsr-tasks"))
    with pytest.raises(nats.errors.TimeoutError):  # or take dsr's
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                name="dsr-task-results", durable_name="dsr-task-results", filter_subject="steward.vault.task.completed"
            ),
        )
    with pytest.raises(nats.errors.TimeoutError):  # or read another service's replies
        await vault.nc.subscribe(f"{inbox_prefix('dsr')}.>")
        await vault.nc.flush(2)
        await vault.nc.request("steward.none", b"", timeout=1)
    assert any("permissions violation for subscription" in e for e in vault.errors)


async def test_every_service_does_its_real_work_with_exactly_its_permissions(
    buses: Callable[[str], Any], db: Database
) -> None:
    vault, gateway, dsr, notify = [await buses(user) for user in ("vault", "gateway", "dsr", "notify")]

    # dsr commands the vault; the vault's durable consumer applies it, and dead-letters what it refuses.
    applied: list[str] = []

    def vault_handler(_session: Session, received: events_pb2.Event) -> None:
        if received.source != "dsr":
            raise RefusedEvent("source_not_dsr")
        applied.append(received.id)

    tasks = Consumer(vault, db, durable="vault-dsr-tasks", subjects=[DSR_TASK_SUBJECT], handler=vault_handler)
    await tasks.start()
    good, forged = event("dsr"), event("notify")
    for sent in (good, forged):
        await dsr.js.publish(DSR_TASK_SUBJECT, sent.SerializeToString(), headers={"Nats-Msg-Id": sent.id})
    await eventually(
        lambda: applied == [good.id] and tasks.stats.dead_lettered == 1, what="good task applied, bad one dead-lettered"
    )
    await tasks.stop()

    # The vault's relay publishes its events; dsr's durable consumes them.
    results: list[str] = []
    completed = make_event(events_pb2.VaultTaskCompleted(task_id="task-1"), source="vault", tenant_id="t-auth")
    await db.run(lambda s: enqueue(s, completed))
    assert await OutboxRelay(db, vault).drain_once() == 1
    dsr_results = Consumer(
        dsr,
        db,
        durable=RESULTS_DURABLE,
        subjects=list(RESULT_SUBJECTS),
        handler=lambda _s, e: results.append(e.id),
    )
    await dsr_results.start()
    await eventually(lambda: results == [completed.id], what="dsr received the completion")
    await dsr_results.stop()

    # The gateway's revocation listener hears its own broadcast; notify's two-filter durable gets tenant events.
    class Keys:
        evicted: list[str] = []

        def evict(self, key_id: str) -> None:
            self.evicted.append(key_id)

    keys = Keys()
    listener = RevocationListener(gateway, keys)  # type: ignore[arg-type]
    await listener.start()
    await eventually(lambda: listener._sub is not None, what="revocation listener subscribed")
    revoked = make_event(events_pb2.ApiKeyRevoked(key_id="k-1"), source="gateway", tenant_id="t-auth")
    await gateway.js.publish(REVOCATION_SUBJECT, revoked.SerializeToString(), headers={"Nats-Msg-Id": revoked.id})
    await eventually(lambda: keys.evicted == ["k-1"], what="the revoked key evicted")
    await listener.stop()

    heard: list[str] = []
    tenant = event("gateway")
    await gateway.js.publish("steward.gateway.tenant.created", tenant.SerializeToString())
    notices = Consumer(
        notify,
        db,
        durable="notify-events",
        subjects=["steward.gateway.tenant.>", "steward.gateway.support.>"],
        handler=lambda _s, e: heard.append(e.id),
    )
    await notices.start()
    await eventually(lambda: heard == [tenant.id], what="notify heard the tenant event")
    await notices.stop()


async def test_operators_list_and_replay_dead_letters(
    connect: Callable[[str], Any], buses: Callable[[str], Any], db: Database
) -> None:
    vault, dsr = await buses("vault"), await buses("dsr")
    refused = Consumer(
        vault,
        db,
        durable="vault-dsr-tasks",
        subjects=[DSR_TASK_SUBJECT],
        handler=lambda _s, _e: (_ for _ in ()).throw(RefusedEvent("invalid_tenant_id")),
    )
    await refused.start()
    task = event("dsr")
    await dsr.js.publish(DSR_TASK_SUBJECT, task.SerializeToString(), headers={"Nats-Msg-Id": task.id})
    await eventually(lambda: refused.stats.dead_lettered == 1, what="the refused event dead-lettered")
    await refused.stop()

    ops = await connect("ops")
    js = ops.nc.jetstream()
    letter = await js.get_msg(STREAM, seq=1, subject=f"{DLQ_PREFIX}vault-dsr-tasks", next=True)
    assert letter.headers is not None and letter.headers["Steward-Reason"] == "invalid_tenant_id"
    replay = await ops.publish(DSR_TASK_SUBJECT, letter.data or b"", **{"Nats-Msg-Id": f"replay:{task.id}"})
    assert replay.stream == STREAM and not replay.duplicate
    assert (await js.stream_info(STREAM)).config.name == STREAM
