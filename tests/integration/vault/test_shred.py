"""Tenant lifecycle: a closed tenant refuses writes but serves reads and exports; ShredTenant destroys the Transit
key so the stored (and backed-up) wrapped DEKs cannot be decrypted by anyone, even calling Transit directly;
a shredded tenant is served nothing."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import hvac
from steward.vault.v1 import vault_pb2 as pb

from services.vault.sealing import key_aad
from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    expect,
    export,
    get,
    lead,
    new_record,
    put,
    sqlite_backup,
    struct,
    unknown_id,
)
from tests.plugins.infra import OpenBaoDev
from tests.plugins.stack import VaultFactory, VaultHarness


async def test_closed_tenant_refuses_writes_and_serves_reads(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    email = canary_email()
    contact = await put(vault, tenant, lead({"n": 1}, email=email))
    got = (await vault.admin.GetTenant(pb.GetTenantRequest(), metadata=md)).tenant
    assert (got.tenant_id, got.state, got.key_version, got.min_decryption_version) == (
        tenant,
        pb.TENANT_STATE_ACTIVE,
        1,
        1,
    )

    closed = (await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)).tenant
    assert closed.state == pb.TENANT_STATE_CLOSED and closed.closed_at.seconds > 0
    again = (await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)).tenant  # idempotent
    assert again.closed_at == closed.closed_at

    r = vault.records
    for call in (
        r.PutRecord(pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE)), metadata=md),
        r.PutRecords(pb.PutRecordsRequest(records=[new_record(pb.RECORD_KIND_NOTE)]), metadata=md),
        r.UpdateRecord(
            pb.UpdateRecordRequest(record_id=contact.id, data=struct({"n": 2}), expected_version=1), metadata=md
        ),
        r.DeleteRecord(pb.DeleteRecordRequest(record_id=contact.id), metadata=md),
    ):
        await expect(call, grpc.StatusCode.FAILED_PRECONDITION, "closed", "reads and exports still work")
    assert (await get(vault, tenant, contact.id)).data["n"] == 1
    listing = await r.ListRecords(pb.ListRecordsRequest(subject_id=contact.subject_id), metadata=md)
    assert [x.id for x in listing.records] == [contact.id]
    assert (await r.ResolveSubject(pb.ResolveSubjectRequest(email=email), metadata=md)).subject_id == contact.subject_id
    assert (await export(vault, tenant, contact.subject_id))[-1].summary.record_count == 1


async def test_shred_needs_a_closed_tenant_and_its_own_id(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    await expect(
        vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "close the tenant before shredding it",
    )
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    for wrong in ("", "t-someone-else"):
        await expect(
            vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=wrong), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            "confirm_tenant_id must equal",
        )
    assert (await vault.admin.GetTenant(pb.GetTenantRequest(), metadata=md)).tenant.state == pb.TENANT_STATE_CLOSED


async def test_after_shred_nothing_decrypts_even_through_transit_directly(
    vault_factory: VaultFactory, openbao: OpenBaoDev, tmp_path: Path
) -> None:
    vault = await vault_factory()
    tenant, bystander = await vault.new_tenant(), await vault.new_tenant()
    md = vault.md(tenant)
    contacts = [await put(vault, tenant, lead({"i": i}, email=canary_email())) for i in range(3)]
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, subject_id=contacts[0].subject_id))
    await put(vault, tenant, new_record(pb.RECORD_KIND_CUSTOM))
    await vault.records.SetLegalHold(
        pb.SetLegalHoldRequest(subject_id=contacts[1].subject_id, hold_id="c-1"), metadata=md
    )
    theirs = await put(vault, bystander, lead({"mine": True}, email=canary_email()))

    url = vault.settings.database_url.get_secret_value()
    raw = RawDatabase(url)
    wrapped = raw.all("SELECT id, wrapped FROM vault_data_keys WHERE tenant_id = :t", t=tenant)
    assert len(wrapped) == 5  # blind-index root, epoch, three subjects
    key_name = raw.scalar("SELECT key_name FROM vault_tenants WHERE tenant_id = :t", t=tenant)
    bao = hvac.Client(url=openbao.url, token=openbao.token, timeout=5)
    items = [
        {"ciphertext": blob, "associated_data": base64.b64encode(key_aad(tenant, kid)).decode()}
        for kid, blob in wrapped
    ]
    assert len(bao.secrets.transit.decrypt_data(key_name, batch_input=items)["data"]["batch_results"]) == 5
    backup = sqlite_backup(url, tmp_path / "before-shred.db")

    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    # A legal hold blocks deletion (the policy's promise): the shred is refused until it is cleared.
    await expect(
        vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "legal hold c-1",
    )
    await vault.records.ClearLegalHold(
        pb.ClearLegalHoldRequest(subject_id=contacts[1].subject_id, hold_id="c-1"), metadata=md
    )
    head = raw.scalar("SELECT audit_head FROM vault_tenants WHERE tenant_id = :t", t=tenant)
    cert = (await vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)).certificate
    assert (cert.tenant_id, cert.key_name, cert.records_removed, cert.subjects_removed) == (tenant, key_name, 5, 3)
    assert cert.certificate_id and cert.shredded_at.seconds > 0 and cert.audit_head == head

    # Transit itself no longer has the key: the wrapped DEKs (and so every ciphertext) are noise, and the
    # key cannot be silently re-created by an encrypt call either.
    try:
        bao.secrets.transit.decrypt_data(key_name, batch_input=items)
        raise AssertionError("Transit still decrypted a shredded tenant's DEK")
    except hvac.exceptions.InvalidRequest as exc:
        assert "not found" in str(exc)
    try:
        bao.secrets.transit.read_key(key_name)
        raise AssertionError("the shredded tenant's key still exists")
    except hvac.exceptions.InvalidPath:
        pass
    try:
        bao.secrets.transit.encrypt_data(key_name, plaintext=base64.b64encode(b"x").decode())
        raise AssertionError("an encrypt re-created the shredded key")
    except hvac.exceptions.InvalidRequest:
        pass

    # Rows are gone, the plaintext keys are out of memory, the shred itself is audited.
    for table in (
        "vault_records",
        "vault_subjects",
        "vault_subject_identifiers",
        "vault_data_keys",
        "vault_legal_holds",
    ):
        assert raw.scalar(f"SELECT count(*) FROM {table} WHERE tenant_id = :t", t=tenant) == 0, table
    assert all(kid not in vault.app.ctx.keyring.cache for kid, _ in wrapped)
    last = raw.all(
        "SELECT action, target_ids FROM vault_audit WHERE tenant_id = :t ORDER BY seq DESC LIMIT 1", t=tenant
    )
    assert last == [("tenant.shred", f"{tenant} {cert.certificate_id}")]
    raw.close()

    # Nothing is served to the shredded tenant, admin calls included.
    r, a = vault.records, vault.admin
    for call in (
        r.GetRecord(pb.GetRecordRequest(record_id=contacts[0].id), metadata=md),
        r.ListRecords(pb.ListRecordsRequest(kind=pb.RECORD_KIND_NOTE), metadata=md),
        r.ResolveSubject(pb.ResolveSubjectRequest(email=canary_email()), metadata=md),
        r.ExportSubject(pb.ExportSubjectRequest(subject_id=contacts[0].subject_id), metadata=md),
        r.PutRecord(pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE)), metadata=md),
        r.EraseSubject(pb.EraseSubjectRequest(subject_id=unknown_id()), metadata=md),
        a.GetTenant(pb.GetTenantRequest(), metadata=md),
        a.CloseTenant(pb.CloseTenantRequest(), metadata=md),
        a.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md),
        a.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md),
        a.RewrapTenantKeys(pb.RewrapTenantKeysRequest(), metadata=md),
        a.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=md),
        a.ApplyTombstones(pb.ApplyTombstonesRequest(), metadata=md),
    ):
        await expect(call, grpc.StatusCode.FAILED_PRECONDITION, "shredded")
    # ...except the evidence: the audit chain still verifies (test_audit_checkpoints.py covers it in depth).
    assert (await a.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=md)).intact
    await expect(a.CreateTenant(pb.CreateTenantRequest(), metadata=md), grpc.StatusCode.ALREADY_EXISTS)

    # The other tenant is untouched.
    assert (await get(vault, bystander, theirs.id)).data["mine"] is True

    # A backup from before the shred is useless: its wrapped DEKs need the destroyed key.
    restored = await vault_factory(
        database_url=backup,
        ledger_url=vault.settings.tombstone_database_url.get_secret_value(),
        key_prefix=vault.settings.transit.key_prefix,
    )
    message = await expect(
        restored.records.GetRecord(pb.GetRecordRequest(record_id=contacts[2].id), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "can no longer decrypt",
    )
    assert "'i'" not in message
