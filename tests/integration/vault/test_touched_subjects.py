"""VaultContactService.ListTouchedSubjects: for BreachImpact, notify (and only notify's mTLS identity) lists the ids
of the subjects a principal touched in a window, resolved from the tenant's audit (record ids become their
subject's id; erased subjects and unknown ids are skipped): never another principal's, never outside the window,
never another tenant's; bad requests are refused with reasons. The vault runs for real (OpenBao Transit, SQLite
and PostgreSQL) with mTLS from the dev CA, on a clock the test moves."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.clock import ManualClock
from services.chassis.errors import Reason, error_reason
from services.chassis.timestamps import to_timestamp
from tests.integration.vault.helpers import canary_email, lead, new_record, rpc_error
from tests.integration.vault.test_subject_contact import MtlsVault, _md, start_mtls_vault
from tests.plugins.stack import VaultFactory

LEAKED = "apikey:k-leaked"
OTHER = "apikey:k-other"


@pytest.fixture
async def vault(
    vault_factory: VaultFactory, database_url: str, tmp_path: Path, manual_clock: ManualClock
) -> AsyncIterator[MtlsVault]:
    running = await start_mtls_vault(vault_factory, database_url, tmp_path, manual_clock)
    yield running
    await running.close()


def touched(
    tenant: str,
    start: datetime | None,
    end: datetime | None,
    *,
    principal: str = LEAKED,
    page_size: int = 0,
    page_token: str = "",
) -> pb.ListTouchedSubjectsRequest:
    return pb.ListTouchedSubjectsRequest(
        tenant_id=tenant,
        principal=principal,
        window_start=to_timestamp(start),
        window_end=to_timestamp(end),
        page_size=page_size,
        page_token=page_token,
    )


async def list_all(vault: MtlsVault, tenant: str, start: datetime, end: datetime, **kw: object) -> list[str]:
    """Every page, in order."""
    found: list[str] = []
    token = ""
    while True:
        page = await vault.contacts().ListTouchedSubjects(
            touched(tenant, start, end, page_token=token, **kw),  # type: ignore[arg-type]
            metadata=_md(tenant, "service:notify"),
        )
        found.extend(page.subject_ids)
        token = page.next_page_token
        if not token:
            return found


async def put(vault: MtlsVault, tenant: str, principal: str, record: pb.NewRecord) -> pb.Record:
    reply = await vault.records().PutRecord(pb.PutRecordRequest(record=record), metadata=_md(tenant, principal))
    return reply.record


async def read(vault: MtlsVault, tenant: str, principal: str, record_id: str) -> None:
    await vault.records().GetRecord(pb.GetRecordRequest(record_id=record_id), metadata=_md(tenant, principal))


async def test_lists_exactly_the_subjects_the_principal_touched_in_the_window(
    vault: MtlsVault, manual_clock: ManualClock
) -> None:
    tenant, elsewhere = await vault.new_tenant(), await vault.new_tenant()
    # The tenant's app creates six leads (its own touches are not the leaked key's).
    leads = [await put(vault, tenant, "apikey:app", lead(email=canary_email())) for _ in range(6)]
    by_record, by_subject, by_note, others, before, erased = leads
    foreign = await put(vault, elsewhere, "apikey:app", lead(email=canary_email()))

    await read(vault, tenant, LEAKED, before.id)  # before the window
    manual_clock.advance(timedelta(hours=1))
    start = manual_clock.now()
    await read(vault, tenant, LEAKED, by_record.id)  # a record id: its subject
    await vault.records().RestrictSubject(  # a subject id
        pb.RestrictSubjectRequest(subject_id=by_subject.subject_id, request_id="dsr-9"), metadata=_md(tenant, LEAKED)
    )
    await put(vault, tenant, LEAKED, new_record(pb.RECORD_KIND_NOTE, subject_id=by_note.subject_id))
    await read(vault, tenant, OTHER, others.id)  # another principal
    await read(vault, tenant, LEAKED, erased.id)
    await read(vault, elsewhere, LEAKED, foreign.id)  # another tenant
    manual_clock.advance(timedelta(minutes=30))
    end = manual_clock.now()
    await read(vault, tenant, LEAKED, before.id)  # at the window's end: outside ([start, end))
    await vault.records().EraseSubject(
        pb.EraseSubjectRequest(subject_id=erased.subject_id, request_id="dsr-1"), metadata=_md(tenant, "apikey:app")
    )

    expected = sorted([by_record.subject_id, by_subject.subject_id, by_note.subject_id])
    assert await list_all(vault, tenant, start, end) == expected
    # One per page: the same subjects, each once.
    assert await list_all(vault, tenant, start, end, page_size=1) == expected
    assert await list_all(vault, tenant, start, end, principal=OTHER) == [others.subject_id]
    assert await list_all(vault, elsewhere, start, end) == [foreign.subject_id]
    wider = await list_all(vault, tenant, start - timedelta(hours=2), end + timedelta(hours=1))
    assert wider == sorted([*expected, before.subject_id])
    # The lookup is audited, with no target ids.
    admin = vault_pb2_grpc.VaultAdminServiceStub(vault.channel("gateway"))
    request = pb.ListAuditEventsRequest(page_size=1000)
    events = (await admin.ListAuditEvents(request, metadata=_md(tenant, "apikey:app"))).events
    lookups = {(e.principal, tuple(e.target_ids)) for e in events if e.action == "audit.touched_subjects"}
    assert lookups == {("service:notify", ())}


@pytest.mark.parametrize("caller", ["gateway", "dsr"])
async def test_only_notifys_identity_may_list_touched_subjects(vault: MtlsVault, caller: str) -> None:
    tenant = await vault.new_tenant()
    now = datetime.now().astimezone()
    call = vault.contacts(caller).ListTouchedSubjects(
        touched(tenant, now - timedelta(days=1), now), metadata=_md(tenant, f"service:{caller}")
    )
    exc = await rpc_error(call)
    assert (exc.code(), error_reason(exc)) == (grpc.StatusCode.PERMISSION_DENIED, Reason.PEER_NOT_ALLOWED)


async def test_notifys_certificate_without_an_identity_is_unauthenticated(vault: MtlsVault) -> None:
    tenant = await vault.new_tenant()
    now = datetime.now().astimezone()
    exc = await rpc_error(vault.contacts().ListTouchedSubjects(touched(tenant, now - timedelta(days=1), now)))
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and error_reason(exc) == Reason.UNAUTHENTICATED


async def test_bad_requests_are_refused_with_reasons(vault: MtlsVault, manual_clock: ManualClock) -> None:
    tenant = await vault.new_tenant()
    end = manual_clock.now()
    start = end - timedelta(days=1)
    forged = base64.urlsafe_b64encode(b"seq:12").decode()  # an audit page token, not this list's
    cases: list[tuple[str, pb.ListTouchedSubjectsRequest, grpc.StatusCode, str]] = [
        ("no tenant", touched("", start, end), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT),
        ("other tenant", touched("t-other", start, end), grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED),
        (
            "no principal",
            touched(tenant, start, end, principal=""),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.MALFORMED_ID,
        ),
        ("no start", touched(tenant, None, end), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT),
        ("no end", touched(tenant, start, None), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT),
        ("end before start", touched(tenant, end, start), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT),
        ("empty window", touched(tenant, end, end), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT),
        (
            "page too large",
            touched(tenant, start, end, page_size=5000),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_ARGUMENT,
        ),
        (
            "forged page token",
            touched(tenant, start, end, page_token=forged),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_PAGE_TOKEN,
        ),
        (
            "malformed page token",
            touched(tenant, start, end, page_token="a b\x00"),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.MALFORMED_ID,
        ),
    ]
    bad_seconds = touched(tenant, start, end)
    bad_seconds.window_start.CopyFrom(Timestamp(seconds=-(10**12)))
    cases.append(("start out of range", bad_seconds, grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT))
    for name, request, code, reason in cases:
        exc = await rpc_error(vault.contacts().ListTouchedSubjects(request, metadata=_md(tenant, "service:notify")))
        assert (exc.code(), error_reason(exc)) == (code, reason), (name, exc.details())
