"""Malformed ids (a NUL byte, spaces, too long) get the same INVALID_ARGUMENT naming the field on SQLite and
PostgreSQL — not NOT_FOUND on one and INTERNAL (psycopg DataError) on the other — and write nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import expect, new_record, new_subject, put, unknown_id
from tests.plugins.stack import VaultFactory, VaultHarness

BAD_IDS = {"NUL": "0190f2c4-\x00-7000", "space": "rec 1", "too long": "r" * 129}

# (rpc, field) -> call(vault, tenant, subject_id, record_id, bad value)
Call = Callable[[VaultHarness, str, str, str, str], Any]
CASES: dict[str, Call] = {
    "PutRecord record.subject_id": lambda v, t, s, r, bad: v.records.PutRecord(
        pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE, subject_id=bad)), metadata=v.md(t)
    ),
    "PutRecords records[1].subject_id": lambda v, t, s, r, bad: v.records.PutRecords(
        pb.PutRecordsRequest(
            records=[new_record(pb.RECORD_KIND_NOTE, subject_id=s), new_record(pb.RECORD_KIND_NOTE, subject_id=bad)]
        ),
        metadata=v.md(t),
    ),
    "GetRecord record_id": lambda v, t, s, r, bad: v.records.GetRecord(
        pb.GetRecordRequest(record_id=bad), metadata=v.md(t)
    ),
    "UpdateRecord record_id": lambda v, t, s, r, bad: v.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=bad, expected_version=1), metadata=v.md(t)
    ),
    "DeleteRecord record_id": lambda v, t, s, r, bad: v.records.DeleteRecord(
        pb.DeleteRecordRequest(record_id=bad), metadata=v.md(t)
    ),
    "ListRecords subject_id": lambda v, t, s, r, bad: v.records.ListRecords(
        pb.ListRecordsRequest(subject_id=bad), metadata=v.md(t)
    ),
    "ListRecords page_token": lambda v, t, s, r, bad: v.records.ListRecords(
        pb.ListRecordsRequest(subject_id=s, page_token=bad.replace("r" * 129, "r" * 513)), metadata=v.md(t)
    ),
    "ExportSubject subject_id": lambda v, t, s, r, bad: v.records.ExportSubject(
        pb.ExportSubjectRequest(subject_id=bad), metadata=v.md(t)
    ),
    "EraseSubject subject_id": lambda v, t, s, r, bad: v.records.EraseSubject(
        pb.EraseSubjectRequest(subject_id=bad, request_id="dsr-1"), metadata=v.md(t)
    ),
    "EraseSubject request_id": lambda v, t, s, r, bad: v.records.EraseSubject(
        pb.EraseSubjectRequest(subject_id=s, request_id=bad), metadata=v.md(t)
    ),
    "RestrictSubject subject_id": lambda v, t, s, r, bad: v.records.RestrictSubject(
        pb.RestrictSubjectRequest(subject_id=bad), metadata=v.md(t)
    ),
    "LiftRestriction subject_id": lambda v, t, s, r, bad: v.records.LiftRestriction(
        pb.LiftRestrictionRequest(subject_id=bad), metadata=v.md(t)
    ),
    "SetLegalHold hold_id": lambda v, t, s, r, bad: v.records.SetLegalHold(
        pb.SetLegalHoldRequest(subject_id=s, hold_id=bad), metadata=v.md(t)
    ),
    "ClearLegalHold subject_id": lambda v, t, s, r, bad: v.records.ClearLegalHold(
        pb.ClearLegalHoldRequest(subject_id=bad, hold_id="case-1"), metadata=v.md(t)
    ),
    "ShredTenant confirm_tenant_id": lambda v, t, s, r, bad: v.admin.ShredTenant(
        pb.ShredTenantRequest(confirm_tenant_id=bad), metadata=v.md(t)
    ),
    "ListAuditEvents support_grant_id": lambda v, t, s, r, bad: v.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(support_grant_id=bad), metadata=v.md(t)
    ),
    "ListAuditEvents page_token": lambda v, t, s, r, bad: v.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(page_token=bad.replace("r" * 129, "r" * 513)), metadata=v.md(t)
    ),
}


@pytest.fixture
async def vault_on(vault_factory: VaultFactory, database_url: str) -> VaultHarness:
    return await vault_factory(database_url=database_url)


async def test_a_malformed_id_is_invalid_argument_naming_the_field_on_every_database(vault_on: VaultHarness) -> None:
    tenant = await vault_on.new_tenant()
    subject = (await new_subject(vault_on, tenant)).subject_id
    record = (await put(vault_on, tenant, new_record(pb.RECORD_KIND_NOTE, subject_id=subject))).id
    for case, call in CASES.items():
        field = case.split(" ", 1)[1]
        for kind, bad in BAD_IDS.items():
            message = await expect(call(vault_on, tenant, subject, record, bad), grpc.StatusCode.INVALID_ARGUMENT)
            assert message.startswith(field + " must be"), f"{case} with {kind}: {message}"
            assert "\x00" not in message and "rec 1" not in message
    # well-formed ids still reach the rules behind the check
    await expect(
        vault_on.records.GetRecord(pb.GetRecordRequest(record_id=unknown_id()), metadata=vault_on.md(tenant)),
        grpc.StatusCode.NOT_FOUND,
    )
    got = await vault_on.records.GetRecord(pb.GetRecordRequest(record_id=record), metadata=vault_on.md(tenant))
    assert got.record.id == record
