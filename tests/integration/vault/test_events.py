"""Events through the outbox: every state change the issue lists is published on the STEWARD stream, once,
carrying ids only (tenant created/closed/shredded, record created/updated/deleted, subject
exported/erased/restricted, key rotated), and a refused call publishes nothing."""

from __future__ import annotations

from collections import Counter

import grpc
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    expect,
    export,
    lead,
    new_record,
    outbox_drained,
    put,
    stream_messages,
    struct,
)
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory
from tests.plugins.waiting import eventually


async def test_each_state_change_publishes_one_id_only_event(
    vault_factory: VaultFactory, nats_server: NatsServer, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url, nats_url=nats_server.url)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    r, a = vault.records, vault.admin
    contact = await put(vault, tenant, lead({"n": 1}, email=canary_email()))
    sid = contact.subject_id
    note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, subject_id=sid))
    await r.UpdateRecord(
        pb.UpdateRecordRequest(record_id=note.id, data=struct({"n": 2}), expected_version=1), metadata=md
    )
    await r.DeleteRecord(pb.DeleteRecordRequest(record_id=note.id), metadata=md)
    summary = (await export(vault, tenant, sid, "dsr-x"))[-1].summary
    await r.RestrictSubject(pb.RestrictSubjectRequest(subject_id=sid, request_id="dsr-r"), metadata=md)
    await r.LiftRestriction(pb.LiftRestrictionRequest(subject_id=sid, request_id="dsr-r"), metadata=md)
    await r.SetLegalHold(pb.SetLegalHoldRequest(subject_id=sid, hold_id="case-1"), metadata=md)
    await r.ClearLegalHold(pb.ClearLegalHoldRequest(subject_id=sid, hold_id="case-1"), metadata=md)
    await r.EraseSubject(pb.EraseSubjectRequest(subject_id=sid, request_id="dsr-e"), metadata=md)
    await a.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md)
    [_ async for _ in a.RewrapTenantKeys(pb.RewrapTenantKeysRequest(), metadata=md)]
    await a.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    await a.CloseTenant(pb.CloseTenantRequest(), metadata=md)  # idempotent: no second event
    await expect(
        r.PutRecord(pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE)), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    cert = (await a.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)).certificate

    raw = RawDatabase(vault.settings.database_url.get_secret_value())

    async def published() -> bool:
        return await outbox_drained(raw)

    await eventually(published, what="outbox published")
    raw.close()
    events = [m.event() for m in await stream_messages(nats_server.url)]
    assert Counter(e.type for e in events) == Counter(
        {
            "vault.tenant.created": 1,
            "vault.record.created": 2,
            "vault.record.updated": 1,
            "vault.record.deleted": 1,
            "vault.subject.exported": 1,
            "vault.subject.restricted": 1,
            "vault.subject.unrestricted": 1,
            "vault.subject.held": 1,
            "vault.subject.released": 1,
            "vault.subject.erased": 1,
            "vault.key.rotated": 2,  # the rotation, then the rewrap raising min_decryption_version
            "vault.tenant.closed": 1,
            "vault.tenant.shredded": 1,
            "vault.audit.checkpointed": 1,  # the final signed audit head, written by the shred
        }
    )
    assert {e.tenant_id for e in events} == {tenant} and {e.source for e in events} == {"vault"}
    assert len({e.id for e in events}) == len(events)
    by_type = {e.type: e for e in events}
    changed = [ref for e in events if e.type.startswith("vault.record.") for ref in e.record_changed.records]
    assert {(c.record_id, c.subject_id) for c in changed} == {(contact.id, sid), (note.id, sid)}
    assert [ref.version for ref in by_type["vault.record.updated"].record_changed.records] == [2]
    exported = by_type["vault.subject.exported"].subject_exported
    assert (exported.subject_id, exported.request_id, exported.record_count, exported.sha256) == (
        sid,
        "dsr-x",
        1,
        summary.sha256,
    )
    erased = by_type["vault.subject.erased"].subject_erased
    assert (erased.subject_id, erased.request_id, erased.records_erased) == (sid, "dsr-e", 1)
    assert by_type["vault.tenant.shredded"].tenant_shredded.certificate_id == cert.certificate_id
    rotated = [e.key_rotated for e in events if e.type == "vault.key.rotated"]
    assert [(k.key_version, k.min_decryption_version) for k in rotated] == [(2, 1), (2, 2)]
