"""Only dsr can command the vault over NATS, and the vault checks its commands anyway.

A real vault connects as its own NATS user to a nats-server started from the generated config (nkey
users, permissions from the one table, TLS). The dsr saga works end to end; a client holding the
gateway's credentials cannot publish a task at all; a task that does reach the vault but is not from
dsr, or names a malformed tenant or subject, is dead-lettered with a reason and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import nats
import pytest
from nats.aio.client import Client as NatsClient
from steward.events.v1 import events_pb2 as ev
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.bus import DLQ_PREFIX, make_event
from services.chassis.nats_permissions import DSR_TASK_SUBJECT, STREAM
from tests.integration.vault.helpers import canary_email, expect, get, lead, put
from tests.plugins.infra import SecuredNats
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually

COMPLETED = "steward.vault.task.completed"
DLQ = f"{DLQ_PREFIX}vault-dsr-tasks"


@dataclass
class NatsUserClient:
    """A connection as one NATS user; ``errors`` holds what the server reported (permission violations)."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)


async def connect_as(secured: SecuredNats, user: str) -> NatsUserClient:
    errors: list[str] = []
    return NatsUserClient(await secured.connect(user, errors), errors)


@dataclass
class Saga:
    vault: VaultHarness
    secured: SecuredNats
    dsr: NatsUserClient
    gateway: NatsUserClient
    ops: NatsUserClient

    async def publish(self, client: NatsUserClient, event: ev.Event) -> None:
        await client.nc.jetstream().publish(
            DSR_TASK_SUBJECT, event.SerializeToString(), timeout=2.0, headers={"Nats-Msg-Id": event.id}
        )

    async def messages(self, subject: str) -> list[tuple[bytes, dict[str, str]]]:
        """Every message on ``subject`` in the stream, read with the operators' credentials."""
        js = self.ops.nc.jetstream()
        found, seq = [], 1
        while True:
            try:
                msg = await js.get_msg(STREAM, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return found
            found.append((msg.data or b"", dict(msg.headers or {})))
            seq = (msg.seq or seq) + 1

    async def completion(self, task_id: str) -> ev.VaultTaskCompleted:
        async def results() -> list[ev.VaultTaskCompleted]:
            done = [ev.Event.FromString(data).vault_task_completed for data, _ in await self.messages(COMPLETED)]
            return [r for r in done if r.task_id == task_id]

        async def arrived() -> bool:
            return bool(await results())

        await eventually(arrived, 30, what=f"completion of task {task_id}")
        [result] = await results()
        return result

    async def dead_letter_reasons(self) -> dict[str, str]:
        return {ev.Event.FromString(data).id: headers["Steward-Reason"] for data, headers in await self.messages(DLQ)}


def task(tenant: str, action: int, subject_id: str, *, source: str = "dsr") -> ev.Event:
    request = ev.VaultTaskRequested(
        task_id=f"task-{uuid.uuid4().hex[:10]}",
        request_id=f"dsr-{uuid.uuid4().hex[:10]}",
        action=action,  # type: ignore[arg-type]
        subject_id=subject_id,
    )
    if source == "dsr":
        return make_event(request, source=source, tenant_id=tenant)
    # A forged envelope: the catalog refuses to build one for another producer, so it is built by hand.
    return ev.Event(
        id=str(uuid.uuid4()), type="dsr.task.requested", tenant_id=tenant, source=source, vault_task_requested=request
    )


@pytest.fixture
async def saga(vault_factory: VaultFactory, secured_nats: SecuredNats) -> AsyncIterator[Saga]:
    vault = await vault_factory(
        nats_url=secured_nats.url,
        nats_options={"nkey_seed_file": secured_nats.seed_files["vault"], "tls_ca_file": secured_nats.ca_file},
    )
    assert vault.app.bus is not None
    await vault.app.bus.wait_connected(15)
    clients = [await connect_as(secured_nats, user) for user in ("dsr", "gateway", "ops")]
    yield Saga(vault, secured_nats, *clients)
    for client in clients:
        await client.nc.close()


async def restricted(vault: VaultHarness, tenant: str, record: pb.Record) -> bool:
    try:
        await get(vault, tenant, record.id)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
        return True
    return False


async def test_dsr_commands_the_vault_end_to_end_under_nats_auth(saga: Saga) -> None:
    vault = saga.vault
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    restrict = task(tenant, ev.VAULT_ACTION_RESTRICT, contact.subject_id)
    await saga.publish(saga.dsr, restrict)
    result = await saga.completion(restrict.vault_task_requested.task_id)  # published by the vault's own relay
    assert result.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    await expect(
        vault.records.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=vault.md(tenant)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "processing restricted",
    )
    assert not saga.dsr.errors


async def test_the_gateways_credentials_cannot_command_the_vault(saga: Saga) -> None:
    vault = saga.vault
    tenant, other = await vault.new_tenant(), await vault.new_tenant()
    victim = await put(vault, tenant, lead(email=canary_email()))
    marker = await put(vault, other, lead(email=canary_email()))
    forged = task(tenant, ev.VAULT_ACTION_RESTRICT, victim.subject_id)
    with pytest.raises(nats.errors.TimeoutError):  # no PubAck: the server dropped it
        await saga.publish(saga.gateway, forged)

    async def violation_reported() -> bool:
        return any(f'permissions violation for publish to "{DSR_TASK_SUBJECT}"' in e for e in saga.gateway.errors)

    await eventually(violation_reported, 5, what="permission violation")
    # A legitimate task published afterwards is processed: the vault has seen everything before it.
    later = task(other, ev.VAULT_ACTION_EXPORT, marker.subject_id)
    await saga.publish(saga.dsr, later)
    assert (await saga.completion(later.vault_task_requested.task_id)).outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    assert not await restricted(vault, tenant, victim)
    assert forged.id.encode() not in b"".join(data for data, _ in await saga.messages(DSR_TASK_SUBJECT))


async def test_the_vault_dead_letters_tasks_not_from_dsr_or_with_malformed_ids(saga: Saga) -> None:
    vault = saga.vault
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    refused = {
        "source_not_dsr": task(tenant, ev.VAULT_ACTION_RESTRICT, contact.subject_id, source="gateway"),
        "invalid_tenant_id": task(f"../{tenant}", ev.VAULT_ACTION_RESTRICT, contact.subject_id),
        "invalid_subject_id": task(tenant, ev.VAULT_ACTION_RESTRICT, f"{contact.subject_id} OR 1=1"),
    }
    no_task_id = task(tenant, ev.VAULT_ACTION_RESTRICT, contact.subject_id)
    no_task_id.vault_task_requested.task_id = ""
    refused["invalid_task_id"] = no_task_id
    for event in refused.values():
        await saga.publish(saga.dsr, event)

    async def all_dead_lettered() -> bool:
        return len(await saga.dead_letter_reasons()) == len(refused)

    await eventually(all_dead_lettered, 30, what="every refused task dead-lettered")
    assert await saga.dead_letter_reasons() == {event.id: reason for reason, event in refused.items()}
    assert not await restricted(vault, tenant, contact)
    assert not await saga.messages(COMPLETED), "a refused task is never executed, not even as REJECTED"
    consumer = vault.app.consumer
    assert consumer is not None and consumer.stats.handled == 0
