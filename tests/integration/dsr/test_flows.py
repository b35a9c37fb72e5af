"""Every request type end to end over real NATS, OpenBao and vault: dsr publishes the task, the vault performs it,
dsr advances on the result — and on nothing else (duplicates, late and foreign results change nothing)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import nats
import pytest
from steward.dsr.v1 import dsr_pb2 as pb
from steward.events.v1 import events_pb2 as ev
from steward.vault.v1 import vault_pb2

from services.chassis.bus import make_event
from services.chassis.catalog import subject_of
from services.chassis.errors import Reason
from services.chassis.timestamps import to_timestamp
from tests.integration.dsr.support import DsrStack, expect_refusal, facts, submit, wait_state
from tests.integration.vault.helpers import canary_email, export, stream_messages
from tests.plugins.waiting import eventually

COMPLETED = pb.REQUEST_STATE_COMPLETED


async def _publish(stack: DsrStack, event: ev.Event) -> None:
    nc = await nats.connect(stack.nats_url)
    try:
        subject = {
            "vault_task_completed": subject_of(ev.VaultTaskCompleted),
            "opt_out_completed": subject_of(ev.OptOutCompleted),
        }[
            event.WhichOneof("payload")  # type: ignore[index]
        ]
        await nc.jetstream().publish(subject, event.SerializeToString(), headers={"Nats-Msg-Id": event.id})
    finally:
        await nc.close()


async def _events(stack: DsrStack, field: str) -> list[ev.Event]:
    return [m.event() for m in await stream_messages(stack.nats_url) if m.event().WhichOneof("payload") == field]


async def test_access_and_portability_complete_with_the_vaults_export_digest_in_evidence(stack: DsrStack) -> None:
    email, subject_id = await stack.new_lead(notes=2)
    summary = (await export(stack.vault, stack.tenant, subject_id))[-1].summary
    for kind in (pb.REQUEST_TYPE_ACCESS, pb.REQUEST_TYPE_PORTABILITY):
        request = await submit(stack, kind, email=email)
        assert request.subject_id == subject_id
        done = await wait_state(stack, request.request_id, COMPLETED)
        assert [pb.RequestState.Name(s.state) for s in done.timeline] == [
            "REQUEST_STATE_RECEIVED",
            "REQUEST_STATE_IN_PROGRESS",
            "REQUEST_STATE_COMPLETED",
        ]
        completed = await facts(stack, request.request_id, "request.completed")
        assert completed["action"] == "VAULT_ACTION_EXPORT"
        assert completed["export_sha256"] == summary.sha256
        assert sum(completed["counts_by_kind"].values()) == 3


async def test_deletion_erases_the_subject_and_its_evidence_holds_the_erasure_proof(stack: DsrStack) -> None:
    email, _subject_id = await stack.new_lead(notes=1)
    request = await submit(stack, pb.REQUEST_TYPE_DELETION, email=email)
    await wait_state(stack, request.request_id, COMPLETED)
    proof = (await facts(stack, request.request_id, "request.completed"))["counts_by_kind"]
    assert proof["records_erased"] == 2
    assert proof["identifiers_erased"] == 1
    assert proof["identifier_matches_after_erasure"] == 0
    assert proof["records_remaining"] == 0
    assert proof["subject_keys_remaining"] == 0
    # The vault agrees: the identifier resolves to nothing any more.
    await expect_refusal(
        stack.vault.records.ResolveSubject(
            vault_pb2.ResolveSubjectRequest(email=email), metadata=stack.vault.md(stack.tenant)
        ),
        grpc.StatusCode.NOT_FOUND,
        Reason.SUBJECT_NOT_FOUND,
    )


async def test_restriction_blocks_reads_until_a_lift_request_completes(stack: DsrStack) -> None:
    email, subject_id = await stack.new_lead(notes=0)
    listing = vault_pb2.ListRecordsRequest(subject_id=subject_id)
    restricted = await submit(stack, pb.REQUEST_TYPE_RESTRICTION, email=email)
    await wait_state(stack, restricted.request_id, COMPLETED)
    await expect_refusal(
        stack.vault.records.ListRecords(listing, metadata=stack.vault.md(stack.tenant)),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.SUBJECT_RESTRICTED,
    )
    lifted = await submit(stack, pb.REQUEST_TYPE_LIFT_RESTRICTION, email=email)
    await wait_state(stack, lifted.request_id, COMPLETED)
    assert (await stack.vault.records.ListRecords(listing, metadata=stack.vault.md(stack.tenant))).records
    assert (await facts(stack, restricted.request_id, "request.completed"))["action"] == "VAULT_ACTION_RESTRICT"
    assert (await facts(stack, lifted.request_id, "request.completed"))["action"] == "VAULT_ACTION_LIFT_RESTRICTION"


async def test_correction_completes_with_the_records_the_tenant_changed_after_receipt(stack: DsrStack) -> None:
    email, subject_id = await stack.new_lead(notes=0)
    received = datetime.now(UTC) - timedelta(minutes=10)
    [record] = (
        await stack.vault.records.ListRecords(
            vault_pb2.ListRecordsRequest(subject_id=subject_id), metadata=stack.vault.md(stack.tenant)
        )
    ).records
    fixed = vault_pb2.UpdateRecordRequest(record_id=record.id, expected_version=1)
    fixed.data.update({"name": "Corrected Lead"})
    await stack.vault.records.UpdateRecord(fixed, metadata=stack.vault.md(stack.tenant))
    request = await submit(stack, pb.REQUEST_TYPE_CORRECTION, email=email, received_at=to_timestamp(received))
    await wait_state(stack, request.request_id, COMPLETED)
    completed = await facts(stack, request.request_id, "request.completed")
    assert completed["action"] == "VAULT_ACTION_RECTIFY"
    assert completed["counts_by_kind"]["records_corrected"] == 1


async def test_a_correction_with_nothing_corrected_waits_and_completes_once_a_record_is_updated(
    stack: DsrStack,
) -> None:
    email, subject_id = await stack.new_lead(notes=0)
    request = await submit(stack, pb.REQUEST_TYPE_CORRECTION, email=email)

    async def pending() -> bool:
        got = await stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id=request.request_id), metadata=stack.md())
        return got.request.reason_code == "AWAITING_CORRECTION"

    await eventually(pending, 30, what="the first check finding nothing corrected")
    still = await stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id=request.request_id), metadata=stack.md())
    assert still.request.state == pb.REQUEST_STATE_IN_PROGRESS  # not silently complete
    [record] = (
        await stack.vault.records.ListRecords(
            vault_pb2.ListRecordsRequest(subject_id=subject_id), metadata=stack.vault.md(stack.tenant)
        )
    ).records
    fixed = vault_pb2.UpdateRecordRequest(record_id=record.id, expected_version=1)
    fixed.data.update({"name": "Corrected Lead"})
    await stack.vault.records.UpdateRecord(fixed, metadata=stack.vault.md(stack.tenant))
    await wait_state(stack, request.request_id, COMPLETED)
    assert (await facts(stack, request.request_id, "request.completed"))["counts_by_kind"]["records_corrected"] == 1


async def test_opt_out_waits_in_progress_until_the_notification_service_answers(stack: DsrStack) -> None:
    email, subject_id = await stack.new_lead(notes=0)
    request = await submit(stack, pb.REQUEST_TYPE_OPT_OUT, email=email)
    assert request.state == pb.REQUEST_STATE_IN_PROGRESS
    tasks: list[ev.OptOutRequested] = []

    async def published() -> bool:
        tasks[:] = [e.opt_out_requested for e in await _events(stack, "opt_out_requested")]
        return bool(tasks)

    await eventually(published, 30, what="the opt-out task on NATS")
    [task] = tasks
    assert (task.request_id, task.subject_id) == (request.request_id, subject_id)
    # Nothing answers yet: the request stays IN_PROGRESS (it would become overdue, never silently complete).
    still = await stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id=request.request_id), metadata=stack.md())
    assert still.request.state == pb.REQUEST_STATE_IN_PROGRESS
    # A stand-in for the notification service answers the task.
    answer = ev.OptOutCompleted(
        task_id=task.task_id,
        request_id=task.request_id,
        subject_id=task.subject_id,
        outcome=ev.VAULT_TASK_OUTCOME_SUCCEEDED,
    )
    await _publish(stack, make_event(answer, source="notify", tenant_id=stack.tenant))
    await wait_state(stack, request.request_id, COMPLETED)


async def test_a_deletion_under_legal_hold_is_blocked_with_the_hold_id_and_resumes_when_the_hold_is_cleared(
    stack: DsrStack,
) -> None:
    email, subject_id = await stack.new_lead(notes=0)
    md = stack.vault.md(stack.tenant)
    await stack.vault.records.SetLegalHold(
        vault_pb2.SetLegalHoldRequest(subject_id=subject_id, hold_id="case-77"), metadata=md
    )
    request = await submit(stack, pb.REQUEST_TYPE_DELETION, email=email)
    blocked = await wait_state(stack, request.request_id, pb.REQUEST_STATE_BLOCKED_BY_HOLD)
    assert (blocked.hold_id, blocked.reason_code) == ("case-77", "LEGAL_HOLD")
    await stack.vault.records.ClearLegalHold(
        vault_pb2.ClearLegalHoldRequest(subject_id=subject_id, hold_id="case-77"), metadata=md
    )
    await wait_state(stack, request.request_id, COMPLETED)
    assert (await facts(stack, request.request_id, "request.completed"))["counts_by_kind"][
        "subject_keys_remaining"
    ] == 0


async def test_duplicate_late_and_foreign_task_results_change_nothing(stack: DsrStack) -> None:
    email, _ = await stack.new_lead(notes=0)
    request = await submit(stack, pb.REQUEST_TYPE_ACCESS, email=email)
    await wait_state(stack, request.request_id, COMPLETED)
    [original] = [
        e
        for e in await _events(stack, "vault_task_completed")
        if e.vault_task_completed.request_id == request.request_id
    ]
    consumer = stack.dsr.app.consumer
    assert consumer is not None
    handled = consumer.stats.handled
    before = await stack.dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=request.request_id), metadata=stack.md())
    # The same event again (redelivery), the same result in a new envelope (a late retry), a failure for the same
    # task arriving after its success (reordered), and a result for a task the request never sent.
    again = ev.Event()
    again.CopyFrom(original)
    late = make_event(original.vault_task_completed, source="vault", tenant_id=stack.tenant)
    failed = ev.VaultTaskCompleted()
    failed.CopyFrom(original.vault_task_completed)
    failed.outcome = ev.VAULT_TASK_OUTCOME_FAILED
    reordered = make_event(failed, source="vault", tenant_id=stack.tenant)
    foreign = ev.VaultTaskCompleted()
    foreign.CopyFrom(failed)
    foreign.task_id = "task-never-sent"
    for event in (again, late, reordered, make_event(foreign, source="vault", tenant_id=stack.tenant)):
        await _publish(stack, event)
    # The identical envelope is dropped by JetStream's duplicate window or the inbox; the three others are handled.
    await eventually(lambda: consumer.stats.handled >= handled + 3, 30, what="dsr consumed the replayed results")
    after = await stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id=request.request_id), metadata=stack.md())
    assert after.request.state == COMPLETED
    assert len(after.request.timeline) == 3
    evidence = await stack.dsr.dsr.GetEvidence(
        pb.GetEvidenceRequest(request_id=request.request_id), metadata=stack.md()
    )
    assert [e.entry_hash for e in evidence.entries] == [e.entry_hash for e in before.entries]


async def test_a_subject_the_vault_does_not_know_completes_with_no_data_held(stack: DsrStack) -> None:
    request = await submit(stack, pb.REQUEST_TYPE_ACCESS, email=canary_email())
    assert (request.state, request.reason_code, request.subject_id) == (COMPLETED, "NO_DATA_HELD", "")
    assert (await facts(stack, request.request_id, "request.completed"))["no_data_held"] is True
    assert not [
        e
        for e in await _events(stack, "vault_task_requested")
        if e.vault_task_requested.request_id == request.request_id
    ]


async def test_approval_policy_holds_requests_but_a_minors_deletion_skips_it_and_is_due_in_72_hours(
    stack: DsrStack,
) -> None:
    policy = pb.TenantPolicy(approval_required=[pb.REQUEST_TYPE_DELETION, pb.REQUEST_TYPE_ACCESS])
    await stack.dsr.dsr.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=stack.md())
    email, _ = await stack.new_lead(notes=0)
    waiting = await submit(stack, pb.REQUEST_TYPE_ACCESS, email=email)
    assert waiting.state == pb.REQUEST_STATE_AWAITING_APPROVAL
    assert waiting.due_at.ToDatetime() - waiting.received_at.ToDatetime() == timedelta(days=30)
    approved = await stack.dsr.dsr.ApproveRequest(
        pb.ApproveRequestRequest(request_id=waiting.request_id), metadata=stack.md()
    )
    assert approved.request.state == pb.REQUEST_STATE_IN_PROGRESS
    await wait_state(stack, waiting.request_id, COMPLETED)
    assert (await facts(stack, waiting.request_id, "request.approved"))["actor"] == "key:test"
    await expect_refusal(
        stack.dsr.dsr.ApproveRequest(pb.ApproveRequestRequest(request_id=waiting.request_id), metadata=stack.md()),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.DSR_INVALID_TRANSITION,
        "COMPLETED",
    )
    minor_email, _ = await stack.new_lead(notes=0)
    minor = await submit(stack, pb.REQUEST_TYPE_DELETION, email=minor_email, is_minor=True)
    assert minor.due_at.ToDatetime() - minor.received_at.ToDatetime() == timedelta(hours=72)
    await wait_state(stack, minor.request_id, COMPLETED)
    assert json.loads(
        (await stack.dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=minor.request_id), metadata=stack.md()))
        .entries[0]
        .facts_json
    )["is_minor"]


async def test_the_subjects_identifier_never_reaches_dsrs_database_nats_or_logs(
    stack: DsrStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    email, _ = await stack.new_lead(notes=1)
    unknown = canary_email()
    for kind, who in (
        (pb.REQUEST_TYPE_ACCESS, email),
        (pb.REQUEST_TYPE_DELETION, email),
        (pb.REQUEST_TYPE_ACCESS, unknown),
    ):
        request = await submit(stack, kind, email=who)
        await wait_state(stack, request.request_id, COMPLETED)
    database = Path(stack.dsr.settings.database_url.get_secret_value().removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    on_nats = b"".join(m.data for m in await stream_messages(stack.nats_url))
    for canary in (email, unknown):
        assert canary.encode() not in stored
        assert canary.encode() not in on_nats
        assert canary not in caplog.text
