"""LegalRequestService through the real gateway and vault: four eyes, state rules, scope, non-disclosure orders,
notices on the injected clock, the legal grant's visibility, and the transparency report — with bad input."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine, text
from steward.gateway.v1 import gateway_pb2
from steward.legal.v1 import legal_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.errors import error_info
from services.gateway import legal
from tests.integration.gateway.legal_stack import LegalStack, collect
from tests.integration.gateway.support import bearer
from tests.plugins.waiting import eventually


def _reason(err: grpc.RpcError) -> str:
    info = error_info(err)
    return info[0] if info else ""


async def _refused(call: object) -> grpc.RpcError:
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[attr-defined]
                pass
        else:
            await call  # type: ignore[misc]
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call succeeded but was expected to fail")


def _stamp(value: object) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


async def test_the_recorder_cannot_approve_but_a_second_operator_can(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "four.eyes@example.org")
    recorded = (
        await s.legal.RecordLegalRequest(
            s.record_request(s.tenant_a, ["four.eyes@example.org"]), metadata=s.op("alice")
        )
    ).legal_request
    assert recorded.state == legal_pb2.LEGAL_REQUEST_STATE_RECORDED and recorded.recorded_by == "operator:alice"
    approve = legal_pb2.ApproveLegalRequestRequest(legal_request_id=recorded.legal_request_id)
    err = await _refused(s.legal.ApproveLegalRequest(approve, metadata=s.op("alice")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and _reason(err) == "FOUR_EYES_REQUIRED"
    approved = (await s.legal.ApproveLegalRequest(approve, metadata=s.op("bob"))).legal_request
    assert approved.state == legal_pb2.LEGAL_REQUEST_STATE_APPROVED and approved.decided_by == "operator:bob"
    # A second approval (by anyone) is a refused transition, not a silent success.
    err = await _refused(s.legal.ApproveLegalRequest(approve, metadata=s.op("carol")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err) == "LEGAL_INVALID_TRANSITION"
    # Tenants' keys and support engineers cannot reach the register at all.
    err = await _refused(s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(), metadata=bearer(s.key_a)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await _refused(
        s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(), metadata=s.op("sam", ("support",)))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_execution_needs_an_approval_and_never_follows_a_rejection(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "state.rules@example.org")
    recorded = (
        await s.legal.RecordLegalRequest(s.record_request(s.tenant_a, ["state.rules@example.org"]), metadata=s.op())
    ).legal_request
    rid = recorded.legal_request_id
    err = await _refused(
        s.legal.ExecuteLegalRequest(legal_pb2.ExecuteLegalRequestRequest(legal_request_id=rid), metadata=s.op("bob"))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err) == "LEGAL_INVALID_TRANSITION"

    bad_reason = legal_pb2.RejectLegalRequestRequest(legal_request_id=rid, reason="call +91 98765 43210 now")
    err = await _refused(s.legal.RejectLegalRequest(bad_reason, metadata=s.op("bob")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    reject = legal_pb2.RejectLegalRequestRequest(legal_request_id=rid, reason="no valid legal basis was shown")
    rejected = (await s.legal.RejectLegalRequest(reject, metadata=s.op("bob"))).legal_request
    assert rejected.state == legal_pb2.LEGAL_REQUEST_STATE_REJECTED
    for call in (
        s.legal.ExecuteLegalRequest(legal_pb2.ExecuteLegalRequestRequest(legal_request_id=rid), metadata=s.op("bob")),
        s.legal.ApproveLegalRequest(legal_pb2.ApproveLegalRequestRequest(legal_request_id=rid), metadata=s.op("bob")),
    ):
        err = await _refused(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err) == "LEGAL_INVALID_TRANSITION"
    # No grant was opened for a request that never ran.
    listed = await s.c.admin.ListSupportGrants(
        gateway_pb2.ListSupportGrantsRequest(tenant_id=s.tenant_a, include_inactive=True), metadata=s.op()
    )
    assert not [g for g in listed.grants if g.legal_request_id]
    err = await _refused(
        s.legal.ApproveLegalRequest(
            legal_pb2.ApproveLegalRequestRequest(legal_request_id="lr_missing"), metadata=s.op()
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and _reason(err) == "LEGAL_REQUEST_NOT_FOUND"


async def test_a_scope_naming_another_tenants_subject_is_refused(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "mine@example.org")
    await s.lead(s.key_b, "theirs@example.org")
    request = s.record_request(s.tenant_a, ["mine@example.org", "theirs@example.org"])
    err = await _refused(s.legal.RecordLegalRequest(request, metadata=s.op()))
    assert err.code() == grpc.StatusCode.NOT_FOUND and _reason(err) == "SUBJECT_NOT_FOUND"
    assert "subjects[1]" in (err.details() or "") and "theirs" not in (err.details() or "")
    listed = await s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(), metadata=s.op())
    assert not listed.legal_requests  # nothing recorded


async def test_bad_requests_are_refused_and_nothing_is_recorded(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "bad.input@example.org")
    now = s.clock.now()
    ndo = legal_pb2.NondisclosureOrder
    cases = {
        "order until a date without the date": {"nondisclosure": ndo(kind=legal_pb2.NONDISCLOSURE_KIND_UNTIL_DATE)},
        "order until a past date": {
            "nondisclosure": ndo(kind=legal_pb2.NONDISCLOSURE_KIND_UNTIL_DATE, until=_stamp(now - timedelta(days=1)))
        },
        "indefinite order without a review date": {"nondisclosure": ndo(kind=legal_pb2.NONDISCLOSURE_KIND_INDEFINITE)},
        "no order kind": {"nondisclosure": ndo()},
        "no subjects": {"subjects": []},
        "two identifiers for one subject": {
            "subjects": [vault_pb2.SubjectIdentifiers(email="bad.input@example.org", external_id="x-1")]
        },
        "no categories": {"data_categories": []},
        "inverted window": {"window_start": _stamp(now + timedelta(days=2))},
        "no authority type": {"authority_type": legal_pb2.AUTHORITY_TYPE_UNSPECIFIED},
        "contact details in the authority": {"authority": "officer at someone@example.org"},
        "empty reference": {"reference_number": "  "},
    }
    for label, overrides in cases.items():
        err = await _refused(
            s.legal.RecordLegalRequest(
                s.record_request(s.tenant_a, ["bad.input@example.org"], **overrides), metadata=s.op()
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert "bad.input" not in (err.details() or ""), label
    err = await _refused(s.legal.RecordLegalRequest(s.record_request("tnt_nope", ["x@example.org"]), metadata=s.op()))
    assert err.code() == grpc.StatusCode.NOT_FOUND and _reason(err) == "TENANT_NOT_FOUND"
    assert not (await s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(), metadata=s.op())).legal_requests


async def test_execution_exports_exactly_the_approved_scope(legal_stack: LegalStack) -> None:
    s = legal_stack
    named = await s.lead(s.key_a, "in.scope@example.org")
    await s.note(s.key_a, named.subject_id, "called about the invoice")
    interaction = vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_INTERACTION, subject_id=named.subject_id)
    interaction.data.update({"channel": "phone"})
    await s.c.vault.PutRecord(vault_pb2.PutRecordRequest(record=interaction), metadata=bearer(s.key_a))
    request = await s.approved(s.record_request(s.tenant_a, ["in.scope@example.org"]))
    assert list(request.subject_ids) == [named.subject_id]

    # A subject created (and named) after the approval is outside the scope: refused, nothing exported.
    later = await s.lead(s.key_a, "named.later@example.org")
    err = await _refused(
        s.legal.ExecuteLegalRequest(
            legal_pb2.ExecuteLegalRequestRequest(
                legal_request_id=request.legal_request_id,
                only_subjects=[vault_pb2.SubjectIdentifiers(email="named.later@example.org")],
            ),
            metadata=s.op("bob"),
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and _reason(err) == "OUT_OF_SCOPE"
    still = await s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(tenant_id=s.tenant_a), metadata=s.op())
    assert still.legal_requests[0].state == legal_pb2.LEGAL_REQUEST_STATE_APPROVED

    items = await s.execute(request.legal_request_id)
    records = [i.record for i in items if i.WhichOneof("item") == "record"]
    summary = items[-1].summary
    assert {r.subject_id for r in records} == {named.subject_id}
    assert later.subject_id not in {r.record.subject_id for r in records}
    # Only the approved categories: the interaction is not disclosed.
    assert sorted(vault_pb2.RecordKind.Name(r.record.kind) for r in records) == [
        "RECORD_KIND_LEAD_CONTACT",
        "RECORD_KIND_NOTE",
    ]
    assert summary.records == 2 and summary.subjects == 1
    assert summary.legal_request.state == legal_pb2.LEGAL_REQUEST_STATE_EXECUTED
    assert summary.legal_request.records_disclosed == 2
    # Executing twice is refused.
    err = await _refused(
        s.legal.ExecuteLegalRequest(
            legal_pb2.ExecuteLegalRequestRequest(legal_request_id=request.legal_request_id), metadata=s.op("bob")
        )
    )
    assert _reason(err) == "LEGAL_INVALID_TRANSITION"
    # The vault audited each export under the legal grant.
    grant_id = summary.legal_request.grant_id
    audit = await s.vault.admin.ListAuditEvents(
        vault_pb2.ListAuditEventsRequest(support_grant_id=grant_id), metadata=s.vault.md(s.tenant_a)
    )
    assert [e for e in audit.events if e.support_grant_id == grant_id]


async def test_no_order_releases_the_notice_and_shows_the_grant_at_once(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "no.order@example.org")
    nc, events = await collect(s.nats_url, "steward.gateway.legal.>")
    request = await s.approved(s.record_request(s.tenant_a, ["no.order@example.org"]))
    summary = (await s.execute(request.legal_request_id))[-1].summary
    assert summary.legal_request.HasField("notice_released_at")
    await eventually(lambda: len(events) == 1, what="gateway.legal.released")
    event = events[0]
    assert event.type == "gateway.legal.released" and event.tenant_id == s.tenant_a
    assert event.legal_notice_released.legal_request_id == request.legal_request_id
    assert b"no.order" not in event.SerializeToString()
    grants = await s.c.admin.ListSupportGrants(
        gateway_pb2.ListSupportGrantsRequest(include_inactive=True), metadata=bearer(s.key_a)
    )
    shown = [g for g in grants.grants if g.legal_request_id == request.legal_request_id]
    assert len(shown) == 1 and shown[0].principal == "operator:bob"
    accesses = await s.c.admin.ListSupportAccesses(
        gateway_pb2.ListSupportAccessesRequest(grant_id=shown[0].grant_id), metadata=bearer(s.key_a)
    )
    assert [a.method for a in accesses.accesses] == ["/steward.vault.v1.VaultService/ExportSubject"]
    assert accesses.accesses[0].status == "OK"
    # The legal grant cannot be used to forward calls, even by the operator it was opened for.
    err = await _refused(
        s.c.vault.ListRecords(
            vault_pb2.ListRecordsRequest(),
            metadata=s.op("bob", ("support",), x_steward_support_grant=shown[0].grant_id),
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    await nc.close()


async def test_an_order_until_a_date_withholds_the_notice_until_the_clock_passes_it(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "withheld@example.org")
    nc, events = await collect(s.nats_url, "steward.gateway.legal.>")
    until = s.clock.now() + timedelta(days=90)
    order = legal_pb2.NondisclosureOrder(kind=legal_pb2.NONDISCLOSURE_KIND_UNTIL_DATE, until=_stamp(until))
    request = await s.approved(s.record_request(s.tenant_a, ["withheld@example.org"], nondisclosure=order))
    summary = (await s.execute(request.legal_request_id))[-1].summary
    assert not summary.legal_request.HasField("notice_released_at")

    async def tenant_sees_grant() -> bool:
        listed = await s.c.admin.ListSupportGrants(
            gateway_pb2.ListSupportGrantsRequest(include_inactive=True), metadata=bearer(s.key_a)
        )
        return any(g.legal_request_id == request.legal_request_id for g in listed.grants)

    async def exported_grants() -> list[object]:
        exported = await s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(), metadata=bearer(s.key_a))
        import json

        return [g for g in json.loads(exported.document)["support_grants"] if g["legal_request_id"]]

    # A day before the date: several watcher rounds, still nothing.
    s.clock.advance(timedelta(days=89))
    scans = len(s.gateway.legal_notices.released) if s.gateway.legal_notices else 0
    await s.gateway.legal_notices.scan_once()  # type: ignore[union-attr]
    assert scans == 0 and not events and not await tenant_sees_grant() and not await exported_grants()
    err = await _refused(
        s.c.admin.ListSupportAccesses(
            gateway_pb2.ListSupportAccessesRequest(grant_id=summary.legal_request.grant_id), metadata=bearer(s.key_a)
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND

    # The day it passes: the background watcher (on the moved clock) releases the notice.
    s.clock.advance(timedelta(days=1, seconds=1))
    await eventually(lambda: len(events) == 1, what="the notice released once the order's date passed")
    assert events[0].legal_notice_released.legal_request_id == request.legal_request_id
    assert await tenant_sees_grant() and len(await exported_grants()) == 1
    listed = await s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(tenant_id=s.tenant_a), metadata=s.op())
    assert listed.legal_requests[0].HasField("notice_released_at")
    await nc.close()


async def test_an_indefinite_order_reminds_operators_at_its_review_date(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "indefinite@example.org")
    review = s.clock.now() + timedelta(days=180)
    order = legal_pb2.NondisclosureOrder(kind=legal_pb2.NONDISCLOSURE_KIND_INDEFINITE, review_at=_stamp(review))
    request = await s.approved(s.record_request(s.tenant_a, ["indefinite@example.org"], nondisclosure=order))
    await s.execute(request.legal_request_id)
    watcher = s.gateway.legal_notices
    assert watcher is not None
    await watcher.scan_once()
    assert request.legal_request_id not in watcher.reminded
    s.clock.advance(timedelta(days=181))
    await eventually(lambda: request.legal_request_id in watcher.reminded, what="review reminder")
    await watcher.scan_once()
    assert watcher.reminded.count(request.legal_request_id) == 1  # once per review date
    assert not watcher.released
    assert re.search(r"^steward_legal_reviews_due_total(\{[^}]*\})? 1\.0$", s.gateway.runtime.metrics.scrape(), re.M)


async def test_transparency_report_counts_without_personal_data(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "report.one@example.org")
    await s.lead(s.key_a, "report.two@example.org")
    executed = await s.approved(s.record_request(s.tenant_a, ["report.one@example.org", "report.two@example.org"]))
    await s.execute(executed.legal_request_id)
    court = s.record_request(s.tenant_a, ["report.one@example.org"], authority_type=legal_pb2.AUTHORITY_TYPE_COURT)
    recorded = (await s.legal.RecordLegalRequest(court, metadata=s.op())).legal_request
    reject = legal_pb2.RejectLegalRequestRequest(
        legal_request_id=recorded.legal_request_id, reason="order was out of jurisdiction"
    )
    await s.legal.RejectLegalRequest(reject, metadata=s.op("bob"))
    await s.legal.RecordLegalRequest(s.record_request(s.tenant_a, ["report.two@example.org"]), metadata=s.op())

    report = await s.legal.TransparencyReport(legal_pb2.TransparencyReportRequest(year=2030), metadata=s.op())
    rows = {(r.quarter, r.authority_type, r.outcome): (r.requests, r.subjects) for r in report.rows}
    assert rows == {
        ("2030-Q1", legal_pb2.AUTHORITY_TYPE_LAW_ENFORCEMENT, "executed"): (1, 2),
        ("2030-Q1", legal_pb2.AUTHORITY_TYPE_LAW_ENFORCEMENT, "pending"): (1, 1),
        ("2030-Q1", legal_pb2.AUTHORITY_TYPE_COURT, "rejected"): (1, 1),
    }
    assert b"report." not in report.SerializeToString()
    assert not (await s.legal.TransparencyReport(legal_pb2.TransparencyReportRequest(year=2029), metadata=s.op())).rows
    err = await _refused(s.legal.TransparencyReport(legal_pb2.TransparencyReportRequest(year=12), metadata=s.op()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_register_keeps_no_identifier(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "canary.legal.7f3a@example.org")
    request = await s.approved(s.record_request(s.tenant_a, ["canary.legal.7f3a@example.org"]))
    await s.execute(request.legal_request_id)
    await s.gateway.access_log.flush()
    engine = create_engine(s.database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM legal_requests")).all()
        grants = conn.execute(text("SELECT * FROM support_grants")).all()
    engine.dispose()
    assert rows and "canary.legal" not in repr(rows) + repr(grants)
    if s.database_url.startswith("sqlite:///"):
        db_file = Path(s.database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in (db_file, db_file.with_name(db_file.name + "-wal")) if p.exists())
        assert b"canary.legal.7f3a" not in raw


async def test_a_live_legal_grant_cannot_be_used_for_forwarded_calls(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "grant.misuse@example.org")
    request = await s.approved(s.record_request(s.tenant_a, ["grant.misuse@example.org"]))
    # The grant as it is while an execution runs (opened by the domain rule, not yet ended).
    _row, grant_id = await s.gateway.db.run(
        lambda session: legal.begin_execution(session, request.legal_request_id, by="operator:bob", now=s.clock.now())
    )
    err = await _refused(
        s.c.vault.ListRecords(
            vault_pb2.ListRecordsRequest(), metadata=s.op("bob", ("support",), x_steward_support_grant=grant_id)
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_failed_execution_ends_its_grant_and_can_be_run_again(legal_stack: LegalStack) -> None:
    s = legal_stack
    lead = await s.lead(s.key_a, "erased.meanwhile@example.org")
    await s.lead(s.key_a, "still.here@example.org")
    request = await s.approved(s.record_request(s.tenant_a, ["erased.meanwhile@example.org", "still.here@example.org"]))
    await s.c.vault.EraseSubject(
        vault_pb2.EraseSubjectRequest(subject_id=lead.subject_id, request_id="dsr-erase-1"), metadata=bearer(s.key_a)
    )
    err = await _refused(
        s.legal.ExecuteLegalRequest(
            legal_pb2.ExecuteLegalRequestRequest(legal_request_id=request.legal_request_id), metadata=s.op("bob")
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await s.c.admin.ListSupportGrants(
        gateway_pb2.ListSupportGrantsRequest(tenant_id=s.tenant_a, include_inactive=True), metadata=s.op()
    )
    legal_grants = [g for g in listed.grants if g.legal_request_id == request.legal_request_id]
    assert [g.state for g in legal_grants] == [gateway_pb2.SUPPORT_GRANT_STATE_EXPIRED]
    still = await s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(tenant_id=s.tenant_a), metadata=s.op())
    assert still.legal_requests[0].state == legal_pb2.LEGAL_REQUEST_STATE_APPROVED
    # Narrowed to the subject that still exists, it runs.
    items = await s.execute(
        request.legal_request_id, only_subjects=[vault_pb2.SubjectIdentifiers(email="still.here@example.org")]
    )
    assert items[-1].summary.records == 1
