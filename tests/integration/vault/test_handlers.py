"""The vault's DSR command handler over a real nats-server: VaultTaskRequested commands published on
``steward.dsr.task.requested`` are performed once and answered with VaultTaskCompleted (succeeded, or rejected
with a machine-readable reason); duplicates have one effect; undecodable or foreign events are dead-lettered."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import nats
import pytest
from nats.aio.client import Client as NatsClient
from steward.events.v1 import events_pb2 as ev
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.bus import DLQ_PREFIX, make_event
from services.vault.events import DSR_TASK_SUBJECT
from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    expect,
    export,
    get,
    lead,
    new_record,
    put,
    stream_messages,
    struct,
    unknown_id,
)
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually

COMPLETED = "steward.vault.task.completed"
DLQ = f"{DLQ_PREFIX}vault-dsr-tasks"


@dataclass
class Dsr:
    """Plays the dsr service: publishes vault tasks and waits for their results."""

    vault: VaultHarness
    nats_url: str
    nc: NatsClient

    async def publish(self, event: ev.Event, msg_id: str | None = None, data: bytes | None = None) -> None:
        js = self.nc.jetstream()
        payload = event.SerializeToString() if data is None else data
        await js.publish(DSR_TASK_SUBJECT, payload, headers={"Nats-Msg-Id": msg_id or event.id})

    async def send(self, tenant: str, action: int, subject_id: str, **fields: object) -> ev.VaultTaskCompleted:
        """Publish one task and return its completion."""
        event = task(tenant, action, subject_id, **fields)
        await self.publish(event)
        return await self.completion(event.vault_task_requested.task_id)

    async def completions(self, task_id: str) -> list[ev.VaultTaskCompleted]:
        found = []
        for message in await stream_messages(self.nats_url):
            if message.subject == COMPLETED:
                result = message.event().vault_task_completed
                if result.task_id == task_id:
                    found.append(result)
        return found

    async def completion(self, task_id: str) -> ev.VaultTaskCompleted:
        async def arrived() -> bool:
            return bool(await self.completions(task_id))

        await eventually(arrived, 30, what=f"completion of task {task_id}")
        [result] = await self.completions(task_id)
        return result


def task(tenant: str, action: int, subject_id: str, **fields: object) -> ev.Event:
    """A VaultTaskRequested envelope as dsr would publish it."""
    request = ev.VaultTaskRequested(
        task_id=f"task-{uuid.uuid4().hex[:10]}",
        request_id=f"dsr-{uuid.uuid4().hex[:10]}",
        action=action,  # type: ignore[arg-type]
        subject_id=subject_id,
        **fields,  # type: ignore[arg-type]
    )
    return make_event(request, source="dsr", tenant_id=tenant)


@pytest.fixture
async def dsr(vault_factory: VaultFactory, nats_server: NatsServer) -> AsyncIterator[Dsr]:
    vault = await vault_factory(nats_url=nats_server.url)
    assert vault.app.bus is not None
    await vault.app.bus.wait_connected(15)
    nc = await nats.connect(nats_server.url)
    yield Dsr(vault, nats_server.url, nc)
    await nc.close()


async def subject_with_records(vault: VaultHarness, tenant: str) -> tuple[pb.Record, list[pb.Record]]:
    contact = await put(vault, tenant, lead({"n": 0}, email=canary_email()))
    notes = [
        await put(vault, tenant, new_record(pb.RECORD_KIND_INTERACTION, {"n": i}, subject_id=contact.subject_id))
        for i in (1, 2)
    ]
    return contact, notes


async def test_export_task_reports_counts_and_the_same_digest_as_the_rpc(dsr: Dsr) -> None:
    vault = dsr.vault
    tenant = await vault.new_tenant()
    contact, _ = await subject_with_records(vault, tenant)
    summary = (await export(vault, tenant, contact.subject_id))[-1].summary

    result = await dsr.send(tenant, ev.VAULT_ACTION_EXPORT, contact.subject_id)
    assert result.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED and not result.reason_code
    assert (result.action, result.subject_id) == (ev.VAULT_ACTION_EXPORT, contact.subject_id)
    assert dict(result.counts_by_kind) == {"RECORD_KIND_LEAD_CONTACT": 1, "RECORD_KIND_INTERACTION": 2}
    assert result.export_sha256 == summary.sha256

    async def exported() -> list[tuple[str, int, str]]:
        return [
            (e.request_id, e.record_count, e.sha256)
            for e in (m.event().subject_exported for m in await stream_messages(dsr.nats_url))
            if e.request_id == result.request_id
        ]

    async def announced() -> bool:
        return bool(await exported())

    await eventually(announced, 20, what="vault.subject.exported")
    assert await exported() == [(result.request_id, 3, summary.sha256)]


async def test_erase_task_erases_and_a_legal_hold_rejects_it_naming_the_hold(dsr: Dsr) -> None:
    vault = dsr.vault
    tenant = await vault.new_tenant()
    contact, notes = await subject_with_records(vault, tenant)
    sid = contact.subject_id

    held = await dsr.send(tenant, ev.VAULT_ACTION_SET_LEGAL_HOLD, sid, hold_id="case-2026-5")
    assert held.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    refused = await dsr.send(tenant, ev.VAULT_ACTION_ERASE, sid)
    assert (refused.outcome, refused.reason_code) == (ev.VAULT_TASK_OUTCOME_REJECTED, "LEGAL_HOLD")
    assert dict(refused.reason_metadata) == {"hold_id": "case-2026-5"}
    assert (await get(vault, tenant, contact.id)).id == contact.id  # nothing erased
    ledger = RawDatabase(vault.settings.tombstone_database_url.get_secret_value())
    assert ledger.scalar("SELECT count(*) FROM vault_tombstones") == 0

    cleared = await dsr.send(tenant, ev.VAULT_ACTION_CLEAR_LEGAL_HOLD, sid, hold_id="case-2026-5")
    assert cleared.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    erase = task(tenant, ev.VAULT_ACTION_ERASE, sid)
    await dsr.publish(erase)
    erased = await dsr.completion(erase.vault_task_requested.task_id)
    assert erased.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    # The erasure proof dsr puts into its evidence: re-run lookups find nothing, no record and no DEK is left.
    assert dict(erased.counts_by_kind) == {
        "records_erased": 3,
        "identifiers_erased": 1,
        "identifier_matches_after_erasure": 0,
        "records_remaining": 0,
        "subject_keys_remaining": 0,
    }
    for record in [contact, *notes]:
        await expect(
            vault.records.GetRecord(pb.GetRecordRequest(record_id=record.id), metadata=vault.md(tenant)),
            grpc.StatusCode.NOT_FOUND,
        )
    assert ledger.all("SELECT subject_id, request_id FROM vault_tombstones") == [
        (sid, erase.vault_task_requested.request_id)
    ]
    ledger.close()


async def test_unknown_or_foreign_subject_is_rejected(dsr: Dsr) -> None:
    vault = dsr.vault
    tenant, other = await vault.new_tenant(), await vault.new_tenant()
    theirs = await put(vault, other, lead(email=canary_email()))
    for subject_id in (unknown_id(), theirs.subject_id):
        for action in (ev.VAULT_ACTION_EXPORT, ev.VAULT_ACTION_ERASE, ev.VAULT_ACTION_RESTRICT):
            result = await dsr.send(tenant, action, subject_id)
            assert (result.outcome, result.reason_code) == (ev.VAULT_TASK_OUTCOME_REJECTED, "SUBJECT_NOT_FOUND")
    assert (await get(vault, other, theirs.id)).id == theirs.id
    unknown = await dsr.send(tenant, 99, theirs.subject_id)
    assert (unknown.outcome, unknown.reason_code) == (ev.VAULT_TASK_OUTCOME_REJECTED, "INVALID_ARGUMENT")


async def test_restrict_lift_and_rectify_tasks(dsr: Dsr) -> None:
    vault = dsr.vault
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    contact, notes = await subject_with_records(vault, tenant)
    sid = contact.subject_id

    assert (await dsr.send(tenant, ev.VAULT_ACTION_RESTRICT, sid)).outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    await expect(
        vault.records.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "processing restricted",
    )
    lifted = await dsr.send(tenant, ev.VAULT_ACTION_LIFT_RESTRICTION, sid)
    assert lifted.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    assert (await get(vault, tenant, contact.id)).id == contact.id

    received = datetime.now(UTC) - timedelta(seconds=1)
    await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=notes[0].id, data=struct({"n": "fixed"}), expected_version=1), metadata=md
    )
    stamp = ev.VaultTaskRequested().request_received_at
    stamp.FromDatetime(received)
    rectified = await dsr.send(tenant, ev.VAULT_ACTION_RECTIFY, sid, request_received_at=stamp)
    assert rectified.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    assert dict(rectified.counts_by_kind) == {"records_corrected": 1}


async def test_a_rectify_task_is_audited_as_a_check_and_unwraps_no_key(dsr: Dsr) -> None:
    vault = dsr.vault
    tenant = await vault.new_tenant()
    contact, _ = await subject_with_records(vault, tenant)
    vault.app.ctx.keyring.cache.clear()  # cold: reading the subject's records would cost one Transit unwrap
    transit_calls = vault.app.transit.calls

    rectified = await dsr.send(tenant, ev.VAULT_ACTION_RECTIFY, contact.subject_id)
    assert rectified.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    assert dict(rectified.counts_by_kind) == {"records_corrected": 0}
    assert vault.app.transit.calls == transit_calls
    audit = await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=vault.md(tenant))
    subject_entries = [(e.action, list(e.target_ids)) for e in audit.events if e.action.startswith("subject.")]
    assert subject_entries == [("subject.rectify.check", [contact.subject_id, rectified.request_id])]


async def test_a_task_delivered_twice_has_one_effect(dsr: Dsr) -> None:
    vault = dsr.vault
    tenant = await vault.new_tenant()
    contact, _ = await subject_with_records(vault, tenant)
    erase = task(tenant, ev.VAULT_ACTION_ERASE, contact.subject_id)
    # Two copies with different Nats-Msg-Ids, so JetStream's own deduplication cannot hide the second.
    await dsr.publish(erase, msg_id=f"{erase.id}-a")
    await dsr.publish(erase, msg_id=f"{erase.id}-b")
    consumer = vault.app.consumer
    assert consumer is not None

    async def both_seen() -> bool:
        return consumer.stats.handled + consumer.stats.duplicates >= 2

    await eventually(both_seen, 30, what="both copies consumed")
    result = await dsr.completion(erase.vault_task_requested.task_id)  # exactly one completion
    assert result.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
    assert consumer.stats.duplicates == 1
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    assert (
        raw.scalar("SELECT count(*) FROM vault_audit WHERE tenant_id = :t AND action = 'subject.erase'", t=tenant) == 1
    )
    raw.close()


async def test_malformed_and_foreign_events_end_in_the_dead_letter_subject_and_the_stream_flows_on(dsr: Dsr) -> None:
    vault = dsr.vault
    tenant = await vault.new_tenant()
    contact, _ = await subject_with_records(vault, tenant)
    garbage = b"\xff\x00 this is not an event"
    await dsr.publish(ev.Event(id=str(uuid.uuid4())), data=garbage)
    no_tenant = task("", ev.VAULT_ACTION_EXPORT, contact.subject_id)
    await dsr.publish(no_tenant)
    # Built by hand: make_event would never put a TenantCreated under a task's type.
    wrong_payload = ev.Event(
        id=str(uuid.uuid4()),
        type="dsr.task.requested",
        source="dsr",
        tenant_id=tenant,
        tenant_created=ev.TenantCreated(tenant_id=tenant),
    )
    await dsr.publish(wrong_payload)
    after = await dsr.send(tenant, ev.VAULT_ACTION_EXPORT, contact.subject_id)  # the stream keeps flowing
    assert after.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED

    async def dead_lettered() -> list[bytes]:
        return [m.data for m in await stream_messages(dsr.nats_url) if m.subject == DLQ]

    async def all_three() -> bool:
        return len(await dead_lettered()) == 3

    await eventually(all_three, 30, what="three dead letters")
    letters = await dead_lettered()
    assert garbage in letters
    assert no_tenant.SerializeToString() in letters and wrong_payload.SerializeToString() in letters
    headers = [m.headers for m in await stream_messages(dsr.nats_url) if m.subject == DLQ]
    assert {h.get("Steward-Error-Type") for h in headers} == {"DecodeError", "RefusedEvent"}
    assert {h.get("Steward-Reason") for h in headers} == {None, "invalid_tenant_id", "not_a_vault_task"}
    assert not await dsr.completions(no_tenant.vault_task_requested.task_id)
