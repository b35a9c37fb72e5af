"""Tenant isolation: another tenant's record or subject id gets exactly the answer (status and message) an
id that does not exist gets, whatever state the other tenant's object is in, and the call changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    export,
    get,
    lead,
    new_record,
    put,
    rpc_error,
    struct,
    unknown_id,
)
from tests.plugins.stack import VaultFactory, VaultHarness


def record_calls(vault: VaultHarness) -> dict[str, Callable[[str, str], Any]]:
    """Every RPC that takes a record id: name -> call(tenant, record_id)."""
    r = vault.records
    return {
        "GetRecord": lambda t, rid: r.GetRecord(pb.GetRecordRequest(record_id=rid), metadata=vault.md(t)),
        "UpdateRecord": lambda t, rid: r.UpdateRecord(
            pb.UpdateRecordRequest(record_id=rid, data=struct({"x": 1}), expected_version=1), metadata=vault.md(t)
        ),
        "DeleteRecord": lambda t, rid: r.DeleteRecord(pb.DeleteRecordRequest(record_id=rid), metadata=vault.md(t)),
        "DeleteRecord(v1)": lambda t, rid: r.DeleteRecord(
            pb.DeleteRecordRequest(record_id=rid, expected_version=1), metadata=vault.md(t)
        ),
    }


def subject_calls(vault: VaultHarness) -> dict[str, Callable[[str, str], Any]]:
    """Every RPC that takes a subject id: name -> call(tenant, subject_id)."""
    r = vault.records

    def md(t: str) -> Any:
        return vault.md(t)

    return {
        "PutRecord": lambda t, sid: r.PutRecord(
            pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE, subject_id=sid)), metadata=md(t)
        ),
        "PutRecords": lambda t, sid: r.PutRecords(
            pb.PutRecordsRequest(
                records=[new_record(pb.RECORD_KIND_NOTE), new_record(pb.RECORD_KIND_NOTE, subject_id=sid)]
            ),
            metadata=md(t),
        ),
        "ListRecords": lambda t, sid: r.ListRecords(pb.ListRecordsRequest(subject_id=sid), metadata=md(t)),
        "ListRecords(kind)": lambda t, sid: r.ListRecords(
            pb.ListRecordsRequest(subject_id=sid, kind=pb.RECORD_KIND_NOTE), metadata=md(t)
        ),
        "ExportSubject": lambda t, sid: r.ExportSubject(
            pb.ExportSubjectRequest(subject_id=sid, request_id="dsr-x"), metadata=md(t)
        ),
        "EraseSubject": lambda t, sid: r.EraseSubject(
            pb.EraseSubjectRequest(subject_id=sid, request_id="dsr-x"), metadata=md(t)
        ),
        "RestrictSubject": lambda t, sid: r.RestrictSubject(
            pb.RestrictSubjectRequest(subject_id=sid, request_id="dsr-x"), metadata=md(t)
        ),
        "LiftRestriction": lambda t, sid: r.LiftRestriction(
            pb.LiftRestrictionRequest(subject_id=sid, request_id="dsr-x"), metadata=md(t)
        ),
        "SetLegalHold": lambda t, sid: r.SetLegalHold(
            pb.SetLegalHoldRequest(subject_id=sid, hold_id="case-1"), metadata=md(t)
        ),
        "ClearLegalHold": lambda t, sid: r.ClearLegalHold(
            pb.ClearLegalHoldRequest(subject_id=sid, hold_id="case-1"), metadata=md(t)
        ),
    }


async def answer(call: Any) -> tuple[grpc.StatusCode, str]:
    exc = await rpc_error(call)
    return exc.code(), exc.details() or ""


async def test_foreign_ids_get_the_same_answer_as_unknown_ids(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    owner, intruder = await vault.new_tenant(), await vault.new_tenant()
    await put(vault, intruder, lead(email=canary_email()))  # the intruder has data of its own

    plain = await put(vault, owner, lead({"who": "plain"}, email=canary_email()))
    restricted = await put(vault, owner, lead({"who": "restricted"}, email=canary_email()))
    held = await put(vault, owner, lead({"who": "held"}, email=canary_email()))
    note = await put(vault, owner, new_record(pb.RECORD_KIND_NOTE, {"who": "subjectless"}))
    md = vault.md(owner)
    await vault.records.RestrictSubject(pb.RestrictSubjectRequest(subject_id=restricted.subject_id), metadata=md)
    await vault.records.SetLegalHold(pb.SetLegalHoldRequest(subject_id=held.subject_id, hold_id="case-1"), metadata=md)

    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    before = raw.all(
        "SELECT tenant_id, id, version FROM vault_records UNION ALL SELECT tenant_id, id, 0 FROM vault_subjects"
    )
    owner_audit = raw.scalar("SELECT count(*) FROM vault_audit WHERE tenant_id = :t", t=owner)

    for name, call in record_calls(vault).items():
        for record in (plain, restricted, held, note):
            foreign = await answer(call(intruder, record.id))
            missing = await answer(call(intruder, unknown_id()))
            assert foreign == missing, f"{name}: foreign {foreign} vs unknown {missing}"
            assert foreign[0] == grpc.StatusCode.NOT_FOUND, (name, foreign)
    for name, call in subject_calls(vault).items():
        for record in (plain, restricted, held):
            foreign = await answer(call(intruder, record.subject_id))
            missing = await answer(call(intruder, unknown_id()))
            assert foreign == missing, f"{name}: foreign {foreign} vs unknown {missing}"
            assert foreign[0] == grpc.StatusCode.NOT_FOUND, (name, foreign)

    # Nothing of the owner's changed, and the intruder's attempts are not in the owner's audit chain.
    after = raw.all(
        "SELECT tenant_id, id, version FROM vault_records UNION ALL SELECT tenant_id, id, 0 FROM vault_subjects"
    )
    assert sorted(after, key=str) == sorted(before, key=str)
    assert raw.scalar("SELECT count(*) FROM vault_audit WHERE tenant_id = :t", t=owner) == owner_audit
    assert (await get(vault, owner, plain.id)).data == struct({"who": "plain"})
    raw.close()


async def test_identifiers_are_per_tenant(vault: VaultHarness) -> None:
    owner, other = await vault.new_tenant(), await vault.new_tenant()
    email = canary_email()
    mine = await put(vault, owner, lead(email=email, external_id="crm-1"))

    for query in (pb.ResolveSubjectRequest(email=email), pb.ResolveSubjectRequest(external_id="crm-1")):
        foreign = await answer(vault.records.ResolveSubject(query, metadata=vault.md(other)))
        missing = await answer(
            vault.records.ResolveSubject(pb.ResolveSubjectRequest(email=canary_email()), metadata=vault.md(other))
        )
        assert foreign == missing and foreign[0] == grpc.StatusCode.NOT_FOUND

    # The same person stored by another tenant becomes that tenant's own, unrelated subject.
    theirs = await put(vault, other, lead(email=email, external_id="crm-1"))
    assert theirs.subject_id != mine.subject_id
    assert [m.record.id for m in (await export(vault, owner, mine.subject_id))[:-1]] == [mine.id]
    assert [m.record.id for m in (await export(vault, other, theirs.subject_id))[:-1]] == [theirs.id]


async def test_kind_listing_never_returns_another_tenants_records(vault: VaultHarness) -> None:
    owner, other = await vault.new_tenant(), await vault.new_tenant()
    for _ in range(3):
        await put(vault, owner, new_record(pb.RECORD_KIND_CUSTOM))
    mine = await put(vault, other, new_record(pb.RECORD_KIND_CUSTOM))
    listing = await vault.records.ListRecords(
        pb.ListRecordsRequest(kind=pb.RECORD_KIND_CUSTOM), metadata=vault.md(other)
    )
    assert [r.id for r in listing.records] == [mine.id]


async def test_a_tenant_without_a_vault_is_told_to_create_one(vault: VaultHarness) -> None:
    code, message = await answer(
        vault.records.GetRecord(pb.GetRecordRequest(record_id=unknown_id()), metadata=vault.md("t-never-created"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "CreateTenant" in message
