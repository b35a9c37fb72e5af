"""The access audit: every read, write, export, erase and admin action appends a PII-free entry to the tenant's
SHA-256 hash chain, and editing, deleting or truncating entries directly in the database makes
VerifyAuditChain fail at exactly the first broken entry."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import grpc
import pytest
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    expect,
    lead,
    new_record,
    put,
    struct,
)
from tests.plugins.stack import VaultFactory, VaultHarness


async def audit_log(vault: VaultHarness, tenant: str, **query: object) -> list[pb.AuditEvent]:
    """Every audit entry of ``tenant`` (walking the pages; each listing is itself appended afterwards)."""
    events: list[pb.AuditEvent] = []
    token = ""
    while True:
        page = await vault.admin.ListAuditEvents(
            pb.ListAuditEventsRequest(page_size=1000, page_token=token, **query), metadata=vault.md(tenant)
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def verify(vault: VaultHarness, tenant: str) -> tuple[bool, int, int]:
    report = await vault.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=vault.md(tenant))
    return report.intact, report.entries_checked, report.first_broken_seq


async def test_every_call_appends_an_entry_with_principal_action_targets_and_result(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant, principal="key:alice")
    r, a = vault.records, vault.admin
    email = canary_email()
    contact = (await r.PutRecord(pb.PutRecordRequest(record=lead(email=email)), metadata=md)).record
    sid = contact.subject_id
    batch = (
        await r.PutRecords(
            pb.PutRecordsRequest(records=[new_record(pb.RECORD_KIND_NOTE, subject_id=sid), new_record(5)]), metadata=md
        )
    ).records
    await r.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=md)
    await r.ListRecords(pb.ListRecordsRequest(subject_id=sid), metadata=md)
    await r.UpdateRecord(
        pb.UpdateRecordRequest(record_id=contact.id, data=struct({"x": 1}), expected_version=1), metadata=md
    )
    await r.DeleteRecord(pb.DeleteRecordRequest(record_id=batch[1].id), metadata=md)
    await r.ResolveSubject(pb.ResolveSubjectRequest(email=email), metadata=md)
    await expect(
        r.ResolveSubject(pb.ResolveSubjectRequest(email=canary_email()), metadata=md), grpc.StatusCode.NOT_FOUND
    )
    [_ async for _ in r.ExportSubject(pb.ExportSubjectRequest(subject_id=sid, request_id="dsr-1"), metadata=md)]
    await r.RestrictSubject(pb.RestrictSubjectRequest(subject_id=sid, request_id="dsr-2"), metadata=md)
    await r.LiftRestriction(pb.LiftRestrictionRequest(subject_id=sid, request_id="dsr-2"), metadata=md)
    await r.SetLegalHold(pb.SetLegalHoldRequest(subject_id=sid, hold_id="case-9"), metadata=md)
    await r.ClearLegalHold(pb.ClearLegalHoldRequest(subject_id=sid, hold_id="case-9"), metadata=md)
    await r.EraseSubject(pb.EraseSubjectRequest(subject_id=sid, request_id="dsr-3"), metadata=md)
    await a.GetTenant(pb.GetTenantRequest(), metadata=md)
    await a.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md)
    [_ async for _ in a.RewrapTenantKeys(pb.RewrapTenantKeysRequest(), metadata=md)]
    await a.ApplyTombstones(pb.ApplyTombstonesRequest(), metadata=md)
    assert (await a.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=md)).intact
    await a.CloseTenant(pb.CloseTenantRequest(), metadata=md)

    events = await audit_log(vault, tenant)
    got = [(e.action, list(e.target_ids), e.result) for e in events]
    assert got == [
        ("tenant.create", [tenant], "ok"),
        ("records.put", [contact.id], "ok"),
        ("records.put", [batch[0].id, batch[1].id], "ok"),
        ("record.read", [contact.id], "ok"),
        ("records.list", [contact.id, batch[0].id], "ok"),
        ("record.update", [contact.id], "ok"),
        ("record.delete", [batch[1].id], "ok"),
        ("subject.resolve", [sid], "ok"),
        ("subject.resolve", [], "not_found"),
        ("subject.export", [sid, "dsr-1"], "ok"),
        ("subject.restrict", [sid, "dsr-2"], "ok"),
        ("subject.lift_restriction", [sid, "dsr-2"], "ok"),
        ("subject.legal_hold", [sid, "case-9"], "ok"),
        ("subject.clear_legal_hold", [sid, "case-9"], "ok"),
        ("subject.erase", [sid, "dsr-3"], "ok"),
        ("tenant.read", [tenant], "ok"),
        ("key.rotate", [tenant, "v2"], "ok"),
        ("key.rewrap.start", [tenant, "v2"], "ok"),
        ("key.rewrap.done", [tenant, "v2"], "ok"),
        ("tombstones.apply", [], "reerased:0"),
        ("audit.verify", [], "intact"),
        ("tenant.close", [tenant], "ok"),
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.principal for e in events} == {"key:test", "key:alice"}  # new_tenant() creates as key:test
    assert all(e.principal == "key:alice" for e in events[1:])
    assert all(e.prev_hash == prev.hash for prev, e in itertools.pairwise(events))
    assert events[0].prev_hash == "0" * 64 and all(len(e.hash) == 64 for e in events)
    now = datetime.now(UTC).timestamp()
    assert all(now - 60 < e.at.ToDatetime(tzinfo=UTC).timestamp() <= now + 1 for e in events)

    # Reading the audit is audited too (after the read, so a listing does not contain itself).
    again = await audit_log(vault, tenant)
    assert [e.action for e in again[len(events) :]] == ["audit.list"]


async def test_support_access_is_marked_and_filterable(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    support = vault.md(tenant, principal="op:support-1", grant="grant-77")
    await vault.records.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=support)
    await vault.records.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=vault.md(tenant))
    marked = await audit_log(vault, tenant, support_grant_id="grant-77")
    assert [(e.action, e.principal, e.support_grant_id) for e in marked] == [
        ("record.read", "op:support-1", "grant-77")
    ]


async def test_chains_are_per_tenant_and_paged(vault: VaultHarness) -> None:
    tenant, other = await vault.new_tenant(), await vault.new_tenant()
    for _ in range(5):
        await put(vault, other, new_record(pb.RECORD_KIND_NOTE))
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE))
    mine = await audit_log(vault, tenant)
    assert [e.seq for e in mine] == [1, 2] and [e.action for e in mine] == ["tenant.create", "records.put"]

    token, seen = "", []
    while True:
        page = await vault.admin.ListAuditEvents(
            pb.ListAuditEventsRequest(page_size=2, page_token=token), metadata=vault.md(other)
        )
        seen += [e.seq for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(1, len(seen) + 1)) and len(seen) >= 6
    await expect(
        vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(page_token="garbage"), metadata=vault.md(other)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token is invalid",
    )
    await expect(
        vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1001), metadata=vault.md(other)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size must be between 1 and 1000",
    )


TAMPERS = {
    "principal": "UPDATE vault_audit SET principal = 'key:mallory' WHERE tenant_id = :t AND seq = :s",
    "action": "UPDATE vault_audit SET action = 'record.delete' WHERE tenant_id = :t AND seq = :s",
    "targets": "UPDATE vault_audit SET target_ids = '' WHERE tenant_id = :t AND seq = :s",
    "result": "UPDATE vault_audit SET result = 'denied' WHERE tenant_id = :t AND seq = :s",
    "time": "UPDATE vault_audit SET at = :at WHERE tenant_id = :t AND seq = :s",
    "delete": "DELETE FROM vault_audit WHERE tenant_id = :t AND seq = :s",
}


async def tampered_chain(vault: VaultHarness, sql: str) -> tuple[str, str]:
    """Two tenants with a few entries each; ``sql`` is then run against entry 3 of the first. Returns both ids."""
    tenant, other = await vault.new_tenant(), await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    for _ in range(3):
        await vault.records.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=vault.md(tenant))
        await put(vault, other, new_record(pb.RECORD_KIND_NOTE))
    assert await verify(vault, tenant) == (True, 5, 0)  # create, put, 3 reads (verify appends after checking)
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    assert raw.execute(sql, t=tenant, s=3, at=datetime(2020, 1, 1, tzinfo=UTC)) == 1
    raw.close()
    return tenant, other


async def test_editing_an_audit_row_breaks_the_chain_at_that_entry(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant, other = await tampered_chain(vault, TAMPERS["principal"])
    intact, _, broken = await verify(vault, tenant)
    assert (intact, broken) == (False, 3)
    # A broken chain is not extended by the verification, and other tenants' chains are unaffected.
    assert await verify(vault, tenant) == (False, 3, 3)
    assert (await verify(vault, other))[0]


@pytest.mark.parametrize("tamper", [t for t in TAMPERS if t != "principal"])
async def test_any_edit_or_removal_of_an_entry_is_caught_at_that_entry(vault: VaultHarness, tamper: str) -> None:
    tenant, _ = await tampered_chain(vault, TAMPERS[tamper])
    assert await verify(vault, tenant) == (False, 3, 3)


async def test_cutting_entries_off_the_end_is_detected(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    for _ in range(3):
        await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE))
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    last = raw.scalar("SELECT max(seq) FROM vault_audit WHERE tenant_id = :t", t=tenant)
    raw.execute("DELETE FROM vault_audit WHERE tenant_id = :t AND seq = :s", t=tenant, s=last)
    raw.close()
    assert await verify(vault, tenant) == (False, last - 1, last)


async def test_recomputing_the_edited_entrys_hash_moves_the_break_to_the_next_link(vault: VaultHarness) -> None:
    from services.vault.audit import entry_hash
    from services.vault.models import AuditEntry

    tenant = await vault.new_tenant()
    for _ in range(3):
        await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE))
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    row = raw.all(
        "SELECT tenant_id, seq, at, principal, principal_kind, action, target_ids, result, support_grant_id, "
        "prev_hash FROM vault_audit WHERE tenant_id = :t AND seq = 2",
        t=tenant,
    )[0]
    forged = AuditEntry(
        tenant_id=row[0],
        seq=row[1],
        at=datetime.fromisoformat(str(row[2])),
        principal="key:mallory",
        principal_kind=row[4],
        action=row[5],
        target_ids=row[6],
        result=row[7],
        support_grant_id=row[8],
        prev_hash=row[9],
    )
    raw.execute(
        "UPDATE vault_audit SET principal = 'key:mallory', hash = :h WHERE tenant_id = :t AND seq = 2",
        h=entry_hash(row[9], forged),
        t=tenant,
    )
    raw.close()
    assert await verify(vault, tenant) == (False, 3, 3)
