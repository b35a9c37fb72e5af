"""Restriction of processing: a restricted subject's records can be neither read nor written (FAILED_PRECONDITION,
"processing restricted"), except by export and erasure; lifting the restriction restores normal service."""

from __future__ import annotations

import grpc
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    expect,
    export,
    get,
    lead,
    new_record,
    put,
    struct,
)
from tests.plugins.stack import VaultFactory, VaultHarness

RESTRICTED = "processing restricted"


async def test_restricted_subject_refuses_reads_and_writes_but_allows_export_and_erasure(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    email = canary_email()
    contact = await put(vault, tenant, lead({"n": 0}, email=email))
    sid = contact.subject_id
    note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"n": 1}, subject_id=sid))
    free = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"n": "free"}))
    await vault.records.RestrictSubject(pb.RestrictSubjectRequest(subject_id=sid, request_id="dsr-r1"), metadata=md)

    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    before = raw.counts(["vault_records", "vault_subjects", "vault_subject_identifiers", "vault_data_keys"])
    r = vault.records
    refused = [
        r.GetRecord(pb.GetRecordRequest(record_id=note.id), metadata=md),
        r.ListRecords(pb.ListRecordsRequest(subject_id=sid), metadata=md),
        r.UpdateRecord(
            pb.UpdateRecordRequest(record_id=note.id, data=struct({"n": 2}), expected_version=1), metadata=md
        ),
        r.DeleteRecord(pb.DeleteRecordRequest(record_id=note.id), metadata=md),
        r.PutRecord(pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE, subject_id=sid)), metadata=md),
        r.PutRecord(pb.PutRecordRequest(record=lead(email=email.upper())), metadata=md),  # resolves to the subject
    ]
    for call in refused:
        await expect(call, grpc.StatusCode.FAILED_PRECONDITION, RESTRICTED)
    await expect(
        r.PutRecords(
            pb.PutRecordsRequest(
                records=[new_record(pb.RECORD_KIND_NOTE), new_record(pb.RECORD_KIND_NOTE, subject_id=sid)]
            ),
            metadata=md,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "records[1]",
        RESTRICTED,
    )
    assert raw.counts(["vault_records", "vault_subjects", "vault_subject_identifiers", "vault_data_keys"]) == before
    raw.close()

    # Listing by kind skips the restricted subject's records instead of failing for everyone else's.
    listing = await r.ListRecords(pb.ListRecordsRequest(kind=pb.RECORD_KIND_NOTE), metadata=md)
    assert [rec.id for rec in listing.records] == [free.id]

    # Export still works (the subject has a right to it) and holds every record.
    items = await export(vault, tenant, sid, "dsr-export")
    assert sorted(item.record.id for item in items[:-1]) == sorted([contact.id, note.id])
    assert items[-1].summary.record_count == 2

    # Lifting the restriction restores reads and writes.
    await r.LiftRestriction(pb.LiftRestrictionRequest(subject_id=sid, request_id="dsr-r1"), metadata=md)
    assert (await get(vault, tenant, note.id)).data["n"] == 1
    await r.UpdateRecord(
        pb.UpdateRecordRequest(record_id=note.id, data=struct({"n": 2}), expected_version=1), metadata=md
    )
    listing = await r.ListRecords(pb.ListRecordsRequest(kind=pb.RECORD_KIND_NOTE), metadata=md)
    assert {rec.id for rec in listing.records} == {free.id, note.id}

    # Erasure is allowed while restricted.
    await r.RestrictSubject(pb.RestrictSubjectRequest(subject_id=sid), metadata=md)
    tomb = (await r.EraseSubject(pb.EraseSubjectRequest(subject_id=sid, request_id="dsr-e"), metadata=md)).tombstone
    assert tomb.records_erased == 2
    await expect(r.GetRecord(pb.GetRecordRequest(record_id=note.id), metadata=md), grpc.StatusCode.NOT_FOUND)


async def test_restriction_is_idempotent_and_survives_a_restart(
    vault: VaultHarness, vault_factory: VaultFactory
) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    contact = await put(vault, tenant, lead(email=canary_email()))
    for _ in range(2):
        await vault.records.RestrictSubject(pb.RestrictSubjectRequest(subject_id=contact.subject_id), metadata=md)
    again = await vault_factory(
        database_url=vault.settings.database_url.get_secret_value(),
        ledger_url=vault.settings.tombstone_database_url.get_secret_value(),
        key_prefix=vault.settings.transit.key_prefix,
    )
    await expect(
        again.records.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=again.md(tenant)),
        grpc.StatusCode.FAILED_PRECONDITION,
        RESTRICTED,
    )
    await again.records.LiftRestriction(pb.LiftRestrictionRequest(subject_id=contact.subject_id), metadata=md)
    await again.records.LiftRestriction(pb.LiftRestrictionRequest(subject_id=contact.subject_id), metadata=md)
    assert (await get(again, tenant, contact.id)).id == contact.id
