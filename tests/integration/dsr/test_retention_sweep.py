"""Retention sweeps: records past their kind's max age are deleted through a vault task (subjects under a legal
hold kept, the result signed into the tenant's evidence), and among dsr replicas on one database only the
holder of the sweep lease sweeps."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select
from steward.dsr.v1 import dsr_pb2 as pb
from steward.vault.v1 import vault_pb2

from services.chassis.clock import ManualClock
from services.dsr.models import EvidenceRow, RetentionTaskRow
from tests.integration.dsr.support import DsrStack
from tests.integration.vault.helpers import put
from tests.plugins.infra import NatsServer
from tests.plugins.stack import DsrFactory, VaultFactory
from tests.plugins.waiting import eventually

DAY = timedelta(days=1)


async def _note(stack: DsrStack, subject_id: str) -> str:
    note = vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE, subject_id=subject_id)
    note.data.update({"text": "called back"})
    return (await put(stack.vault, stack.tenant, note)).id


async def _notes(stack: DsrStack) -> set[str]:
    answer = await stack.vault.records.ListRecords(
        vault_pb2.ListRecordsRequest(kind=vault_pb2.RECORD_KIND_NOTE), metadata=stack.vault.md(stack.tenant)
    )
    return {r.id for r in answer.records}


async def test_records_past_their_max_age_are_purged_except_under_a_hold_with_evidence(
    nats_server: NatsServer, vault_factory: VaultFactory, dsr_factory: DsrFactory, manual_clock: ManualClock
) -> None:
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05}, clock=manual_clock)
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url, clock=manual_clock)
    stack = DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())
    policy = pb.TenantPolicy(retention=[pb.RetentionRule(record_kind="NOTE", max_age_days=30)])
    assert (await dsr.dsr.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=stack.md())).policy.retention == list(
        policy.retention
    )
    _, kept_subject = await stack.new_lead(notes=0)
    _, held_subject = await stack.new_lead(notes=0)
    old = await _note(stack, kept_subject)
    held = await _note(stack, held_subject)
    await vault.records.SetLegalHold(
        vault_pb2.SetLegalHoldRequest(subject_id=held_subject, hold_id="case-9"), metadata=vault.md(stack.tenant)
    )
    manual_clock.advance(20 * DAY)
    young = await _note(stack, kept_subject)
    manual_clock.advance(11 * DAY)  # old and held are 31 days old, young 11

    [dry] = (
        await dsr.dsr.RunRetentionSweep(pb.RunRetentionSweepRequest(dry_run=True), metadata=dsr.operator_md())
    ).items
    assert (dry.action, dry.outcome, dry.record_kind) == (
        pb.SWEEP_ACTION_PURGE_RECORDS,
        pb.SWEEP_OUTCOME_WOULD_DO,
        "NOTE",
    )
    assert await _notes(stack) == {old, held, young}

    [sent] = (await dsr.dsr.RunRetentionSweep(pb.RunRetentionSweepRequest(), metadata=dsr.operator_md())).items
    assert sent.outcome == pb.SWEEP_OUTCOME_SENT
    assert sent.cutoff.ToDatetime() == (manual_clock.now() - 30 * DAY).replace(tzinfo=None)

    async def purged() -> bool:
        return await _notes(stack) == {held, young}

    await eventually(purged, 30, what="the vault purging the expired note")

    def finished(session: object) -> list[RetentionTaskRow]:
        return list(session.scalars(select(RetentionTaskRow).where(RetentionTaskRow.completed_at.is_not(None))))  # type: ignore[attr-defined]

    async def recorded() -> bool:
        return bool(await dsr.app.db.run(finished))

    await eventually(recorded, 30, what="dsr recording the purge result")
    [task] = await dsr.app.db.run(finished)
    assert (task.records_purged, task.records_held) == (1, 1)
    entry = await dsr.app.db.run(lambda s: s.scalar(select(EvidenceRow).where(EvidenceRow.request_id == task.task_id)))
    assert entry.kind == "retention.purged"
    assert json.loads(entry.facts_json)["records_purged"] == 1


async def test_only_the_lease_holder_sweeps_and_the_lease_passes_on_when_it_expires(
    postgres_url: str,
    nats_server: NatsServer,
    vault_factory: VaultFactory,
    dsr_factory: DsrFactory,
    manual_clock: ManualClock,
) -> None:
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    first = await dsr_factory(vault=vault, nats_url=nats_server.url, database_url=postgres_url, clock=manual_clock)
    second = await dsr_factory(vault=vault, nats_url=nats_server.url, database_url=postgres_url, clock=manual_clock)
    a, b = first.app.sweeper, second.app.sweeper
    lease = timedelta(seconds=first.settings.retention_lease_s)

    assert await a.sweep_once() is not None
    assert await b.sweep_once() is None  # a holds it
    manual_clock.advance(lease / 2)
    assert await a.sweep_once() is not None  # renewed
    manual_clock.advance(lease / 2 + timedelta(seconds=1))
    assert await b.sweep_once() is None  # a's renewal still runs
    manual_clock.advance(lease)  # a stopped renewing (as if dead): b takes over
    assert await b.sweep_once() is not None
    assert await a.sweep_once() is None
