"""Bad input from the issue, each refused with the right status, a message that says what to fix and never
echoes customer data, and nothing written. (Forged/foreign page tokens and stale versions: test_records.py;
foreign ids: test_isolation.py; Transit down: test_transit_outage.py.)"""

from __future__ import annotations

from typing import Any

import grpc
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.identity import MD_PRINCIPAL, MD_TENANT
from tests.integration.vault.helpers import (
    VAULT_TABLES,
    RawDatabase,
    canary,
    canary_email,
    expect,
    lead,
    new_record,
    put,
    struct,
)
from tests.plugins.stack import VaultFactory, VaultHarness

KIND_HINT = "kind must be one of LEAD_CONTACT, INTERACTION, OPPORTUNITY, NOTE, CUSTOM"


def counts(vault: VaultHarness) -> dict[str, int]:
    """Rows per vault table, to prove a refused call wrote nothing."""
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    try:
        return raw.counts(VAULT_TABLES)
    finally:
        raw.close()


def every_rpc(vault: VaultHarness) -> dict[str, Any]:
    """One (empty or minimal) request per RPC: name -> call(metadata)."""
    r, a = vault.records, vault.admin
    return {
        "PutRecord": lambda md: r.PutRecord(pb.PutRecordRequest(), metadata=md),
        "PutRecords": lambda md: r.PutRecords(
            pb.PutRecordsRequest(records=[new_record(pb.RECORD_KIND_NOTE)] * 501), metadata=md
        ),
        "GetRecord": lambda md: r.GetRecord(pb.GetRecordRequest(), metadata=md),
        "ListRecords": lambda md: r.ListRecords(pb.ListRecordsRequest(), metadata=md),
        "UpdateRecord": lambda md: r.UpdateRecord(pb.UpdateRecordRequest(), metadata=md),
        "DeleteRecord": lambda md: r.DeleteRecord(pb.DeleteRecordRequest(), metadata=md),
        "ResolveSubject": lambda md: r.ResolveSubject(pb.ResolveSubjectRequest(), metadata=md),
        "ExportSubject": lambda md: r.ExportSubject(pb.ExportSubjectRequest(), metadata=md),
        "ExportTenant": lambda md: r.ExportTenant(pb.ExportTenantRequest(), metadata=md),
        "DownloadExport": lambda md: r.DownloadExport(pb.DownloadExportRequest(), metadata=md),
        "EraseSubject": lambda md: r.EraseSubject(pb.EraseSubjectRequest(), metadata=md),
        "RestrictSubject": lambda md: r.RestrictSubject(pb.RestrictSubjectRequest(), metadata=md),
        "LiftRestriction": lambda md: r.LiftRestriction(pb.LiftRestrictionRequest(), metadata=md),
        "SetLegalHold": lambda md: r.SetLegalHold(pb.SetLegalHoldRequest(), metadata=md),
        "ClearLegalHold": lambda md: r.ClearLegalHold(pb.ClearLegalHoldRequest(), metadata=md),
        "CreateTenant": lambda md: a.CreateTenant(pb.CreateTenantRequest(), metadata=md),
        "GetTenant": lambda md: a.GetTenant(pb.GetTenantRequest(), metadata=md),
        "CloseTenant": lambda md: a.CloseTenant(pb.CloseTenantRequest(), metadata=md),
        "ShredTenant": lambda md: a.ShredTenant(pb.ShredTenantRequest(), metadata=md),
        "RotateTenantKey": lambda md: a.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md),
        "RewrapTenantKeys": lambda md: a.RewrapTenantKeys(pb.RewrapTenantKeysRequest(), metadata=md),
        "ListAuditEvents": lambda md: a.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=md),
        "VerifyAuditChain": lambda md: a.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=md),
        "ApplyTombstones": lambda md: a.ApplyTombstones(pb.ApplyTombstonesRequest(), metadata=md),
        "GetAuditCheckpoint": lambda md: a.GetAuditCheckpoint(pb.GetAuditCheckpointRequest(), metadata=md),
        "ApplyAllTombstones": lambda md: a.ApplyAllTombstones(pb.ApplyAllTombstonesRequest(), metadata=md),
        "GetKeyStatus": lambda md: a.GetKeyStatus(pb.GetKeyStatusRequest(), metadata=md),
        "ReopenTenant": lambda md: a.ReopenTenant(pb.ReopenTenantRequest(), metadata=md),
    }


async def test_every_rpc_without_a_caller_identity_is_unauthenticated(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    before = counts(vault)
    calls = every_rpc(vault)
    assert len(calls) == len(pb.DESCRIPTOR.services_by_name["VaultService"].methods) + len(
        pb.DESCRIPTOR.services_by_name["VaultAdminService"].methods
    )
    identities: list[tuple[tuple[str, str], ...]] = [
        (),
        ((MD_TENANT, tenant),),  # a tenant but no principal
        ((MD_PRINCIPAL, "key:x"),),  # a principal but no tenant
    ]
    for name, call in calls.items():
        for md in identities:
            try:
                if name == "ApplyAllTombstones" and md == ((MD_PRINCIPAL, "key:x"),):
                    # Spanning every tenant, it needs no tenant: a principal alone is an identity, and a key's
                    # principal is not an operator.
                    await expect(call(md), grpc.StatusCode.PERMISSION_DENIED, "only operators")
                    continue
                await expect(call(md), grpc.StatusCode.UNAUTHENTICATED, "no caller identity")
            except AssertionError as exc:
                raise AssertionError(f"{name} with {md}: {exc}") from None
    assert counts(vault) == before, "a refused call wrote something"


async def test_missing_or_empty_data(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    before = counts(vault)
    md = vault.md(tenant)
    r = vault.records
    await expect(r.PutRecord(pb.PutRecordRequest(), metadata=md), grpc.StatusCode.INVALID_ARGUMENT, "record is missing")
    await expect(
        r.PutRecord(pb.PutRecordRequest(record=pb.NewRecord(kind=pb.RECORD_KIND_NOTE)), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data is empty; send the record's fields in data",
    )
    await expect(
        r.PutRecord(pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE, {})), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data is empty",
    )
    await expect(r.PutRecords(pb.PutRecordsRequest(), metadata=md), grpc.StatusCode.INVALID_ARGUMENT, "no records sent")
    await expect(
        r.UpdateRecord(pb.UpdateRecordRequest(record_id=contact.id, expected_version=1), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data is empty; send the record's corrected fields",
    )
    await expect(
        r.GetRecord(pb.GetRecordRequest(), metadata=md), grpc.StatusCode.INVALID_ARGUMENT, "record_id is empty"
    )
    assert counts(vault) == before, "a refused call wrote something"


async def test_a_record_over_the_default_1_mib_limit_is_refused(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    before = counts(vault)
    secret = canary("big")
    huge = {"blob": secret + "x" * (1024 * 1024)}
    message = await expect(
        vault.records.PutRecord(
            pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE, huge)), metadata=vault.md(tenant)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data is larger than 1048576 bytes; split or trim it",
    )
    assert secret not in message
    await expect(
        vault.records.UpdateRecord(
            pb.UpdateRecordRequest(record_id=contact.id, data=struct(huge), expected_version=1),
            metadata=vault.md(tenant),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data is larger than 1048576 bytes",
    )
    assert counts(vault) == before, "a refused call wrote something"


async def test_the_record_size_limit_is_configurable(vault_factory: VaultFactory) -> None:
    vault = await vault_factory(max_record_bytes=2048)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    fits = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"s": "x" * 1900}))
    assert (await vault.records.GetRecord(pb.GetRecordRequest(record_id=fits.id), metadata=md)).record.data["s"]
    batch = [new_record(pb.RECORD_KIND_NOTE, {"s": "ok"}), new_record(pb.RECORD_KIND_NOTE, {"s": "x" * 2100})]
    await expect(
        vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "records[1]: data is larger than 2048 bytes",
    )


async def test_unknown_or_unspecified_kind(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    before = counts(vault)
    md = vault.md(tenant)
    for kind in (pb.RECORD_KIND_UNSPECIFIED, 6, 99, -1):
        await expect(
            vault.records.PutRecord(pb.PutRecordRequest(record=new_record(kind)), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            KIND_HINT,
        )
    await expect(
        vault.records.ListRecords(pb.ListRecordsRequest(kind=42), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        KIND_HINT,
    )
    await expect(
        vault.records.PutRecords(
            pb.PutRecordsRequest(records=[new_record(pb.RECORD_KIND_NOTE), new_record(7)]), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "records[1]: " + KIND_HINT,
    )
    assert counts(vault) == before, "a refused call wrote something"


async def test_identifiers_must_match_the_kind(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    before = counts(vault)
    md = vault.md(tenant)
    await expect(
        vault.records.PutRecord(pb.PutRecordRequest(record=lead()), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "a LEAD_CONTACT needs subject_id or at least one of email, phone, external_id",
    )
    note = new_record(pb.RECORD_KIND_NOTE)
    note.identifiers.email = canary_email()
    message = await expect(
        vault.records.PutRecord(pb.PutRecordRequest(record=note), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "identifiers belong on LEAD_CONTACT records",
    )
    assert note.identifiers.email not in message
    assert counts(vault) == before, "a refused call wrote something"


BAD_EMAILS = ["no-at-sign{c}", "{c}@nodot", "{c}@@example.com", "{c} x@example.com", "@{c}.com", "{c}@example..com"]
BAD_PHONES = ["{c}", "+91 00000 00000", "12", "+999 {n}", "{n}{n}"]


async def test_malformed_email_phone_or_external_id(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    before = counts(vault)
    md = vault.md(tenant)
    r = vault.records
    for template in BAD_EMAILS:
        secret = canary("e")
        value = template.format(c=secret)
        for call in (
            r.PutRecord(pb.PutRecordRequest(record=lead(email=value)), metadata=md),
            r.ResolveSubject(pb.ResolveSubjectRequest(email=value), metadata=md),
        ):
            message = await expect(call, grpc.StatusCode.INVALID_ARGUMENT, "email is not a valid address; send e.g.")
            assert secret not in message
    for template in BAD_PHONES:
        secret = canary("p")
        value = template.format(c=secret, n="97531 24680")
        for call in (
            r.PutRecord(pb.PutRecordRequest(record=lead(phone=value)), metadata=md),
            r.ResolveSubject(pb.ResolveSubjectRequest(phone=value), metadata=md),
        ):
            message = await expect(call, grpc.StatusCode.INVALID_ARGUMENT, "phone is not a valid number; send it in")
            assert secret not in message and "97531" not in message
    too_long = canary("x") * 8
    message = await expect(
        r.PutRecord(pb.PutRecordRequest(record=lead(external_id=too_long)), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "external_id must be 1 to 256 characters",
    )
    assert too_long[:40] not in message
    batch = [lead(email=canary_email()), lead(email="broken@")]
    await expect(
        r.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "records[1]: email is not a valid address",
    )
    await expect(
        r.ResolveSubject(pb.ResolveSubjectRequest(), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
        "send exactly one of email, phone or external_id",
    )
    assert counts(vault) == before, "a refused call wrote something"


async def test_more_than_500_records_in_one_call(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    before = counts(vault)
    batch = [new_record(pb.RECORD_KIND_NOTE, {"i": i}) for i in range(501)]
    await expect(
        vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=vault.md(tenant)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "too many records: at most 500 per call; split the batch",
    )
    assert counts(vault) == before, "a refused call wrote something"


async def test_creating_a_tenant_twice(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    await expect(
        vault.admin.CreateTenant(pb.CreateTenantRequest(), metadata=vault.md(tenant)),
        grpc.StatusCode.ALREADY_EXISTS,
        "this tenant already has a vault",
    )


async def test_request_ids_must_be_short_plain_ids(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    sid = contact.subject_id
    md = vault.md(tenant)
    r = vault.records
    ledger = RawDatabase(vault.settings.tombstone_database_url.get_secret_value())
    before = counts(vault)
    for bad in ("r" * 129, "ticket 12", "name@example.com", "dsr-1\n"):
        for call in (
            r.ExportSubject(pb.ExportSubjectRequest(subject_id=sid, request_id=bad), metadata=md),
            r.EraseSubject(pb.EraseSubjectRequest(subject_id=sid, request_id=bad), metadata=md),
            r.RestrictSubject(pb.RestrictSubjectRequest(subject_id=sid, request_id=bad), metadata=md),
            r.LiftRestriction(pb.LiftRestrictionRequest(subject_id=sid, request_id=bad), metadata=md),
        ):
            message = await expect(
                call, grpc.StatusCode.INVALID_ARGUMENT, "request_id must be at most 128 characters of letters, digits"
            )
            assert bad not in message
    assert counts(vault) == before, "a refused call wrote something"
    assert ledger.scalar("SELECT count(*) FROM vault_tombstones") == 0
    ledger.close()
    assert (await r.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=md)).record.id == contact.id
    tomb = await r.EraseSubject(pb.EraseSubjectRequest(subject_id=sid, request_id="dsr:2026-00017_a.b"), metadata=md)
    assert tomb.tombstone.request_id == "dsr:2026-00017_a.b"


async def test_a_lead_naming_a_subject_and_identifiers_is_refused(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    before = counts(vault)
    both = lead(phone="+919812345678")
    both.subject_id = contact.subject_id
    await expect(
        vault.records.PutRecord(pb.PutRecordRequest(record=both), metadata=vault.md(tenant)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "either subject_id or identifiers",
    )
    assert counts(vault) == before, "a refused call wrote something"
