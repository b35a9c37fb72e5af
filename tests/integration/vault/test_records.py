"""Records and subjects through the real vault (gRPC, OpenBao Transit, SQLite and PostgreSQL): round trip of
every kind, batches, paging with opaque tokens, optimistic updates, deletes, resolving and exporting."""

from __future__ import annotations

import asyncio
import base64

import grpc
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import (
    KINDS,
    RawDatabase,
    canary_email,
    canary_phone,
    expect,
    export,
    get,
    lead,
    new_record,
    new_subject,
    put,
    struct,
)
from tests.plugins.stack import VaultFactory, VaultHarness

RICH = {
    "name": "Asha Verma",
    "score": 42.5,
    "active": True,
    "nothing": None,
    "tags": ["vip", "north", 3],
    "address": {"city": "Pune", "pin": "411001", "lines": ["12 MG Road", {"floor": 2}]},
    "unicode": "नमस्ते — ☕",
}


async def list_all(vault: VaultHarness, tenant: str, page_size: int, **query: object) -> tuple[list[pb.Record], int]:
    """Walk every page of ListRecords; returns the records and the number of pages."""
    token = ""
    found: list[pb.Record] = []
    pages = 0
    while True:
        response = await vault.records.ListRecords(
            pb.ListRecordsRequest(page_size=page_size, page_token=token, **query), metadata=vault.md(tenant)
        )
        pages += 1
        found.extend(response.records)
        token = response.next_page_token
        if not token:
            return found, pages


async def test_every_kind_round_trips_with_its_data(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    email = canary_email()
    contact = await put(vault, tenant, lead(RICH, email=email))
    assert contact.subject_id and contact.version == 1
    assert not contact.HasField("data"), "PutRecord must not echo the data back"

    stored = {"LEAD_CONTACT": contact}
    for name, kind in KINDS.items():
        if name != "LEAD_CONTACT":
            stored[name] = await put(
                vault, tenant, new_record(kind, {**RICH, "kind": name}, subject_id=contact.subject_id)
            )
    subjectless = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"memo": "no subject"}))

    for name, record in stored.items():
        got = await get(vault, tenant, record.id)
        expected = RICH if name == "LEAD_CONTACT" else {**RICH, "kind": name}
        assert got.data == struct(expected)
        assert (got.id, got.subject_id, got.kind, got.version) == (
            record.id,
            contact.subject_id,
            KINDS[name],
            1,
        )
        assert got.created_at.seconds > 0 and got.updated_at == got.created_at
    got = await get(vault, tenant, subjectless.id)
    assert got.subject_id == "" and got.data == struct({"memo": "no subject"})


async def test_put_records_resolves_and_groups_subjects_in_request_order(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    existing_email = canary_email()
    existing = await put(vault, tenant, lead(email=existing_email))
    shared = canary_email()
    batch = [
        lead({"i": 0}, email=shared),
        new_record(pb.RECORD_KIND_NOTE, {"i": 1}, subject_id=existing.subject_id),
        lead({"i": 2}, email=shared.upper()),  # same person, differently typed
        lead({"i": 3}, email=existing_email),
        lead({"i": 4}, email=canary_email()),
        new_record(pb.RECORD_KIND_CUSTOM, {"i": 5}),
    ]
    response = await vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=vault.md(tenant))
    out = list(response.records)
    assert [r.kind for r in out] == [r.kind for r in batch]
    assert all(not r.HasField("data") for r in out)
    assert out[0].subject_id == out[2].subject_id != existing.subject_id
    assert out[1].subject_id == out[3].subject_id == existing.subject_id
    assert out[4].subject_id not in {"", existing.subject_id, out[0].subject_id}
    assert out[5].subject_id == ""
    for i, record in enumerate(out):
        assert (await get(vault, tenant, record.id)).data["i"] == i


async def test_identifiers_of_two_different_subjects_in_one_lead_are_refused(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    email, (phone, _) = canary_email(), canary_phone()
    await put(vault, tenant, lead(email=email))
    await put(vault, tenant, lead(phone=phone))
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    before = raw.counts()
    await expect(
        vault.records.PutRecord(pb.PutRecordRequest(record=lead(email=email, phone=phone)), metadata=vault.md(tenant)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "different subjects",
    )
    assert raw.counts() == before


async def test_a_batch_with_one_bad_item_stores_nothing(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    before = raw.counts()
    batch = [lead(email=canary_email()) for _ in range(5)] + [new_record(pb.RECORD_KIND_NOTE, {})]
    await expect(
        vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=vault.md(tenant)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "records[5]",
        "data is empty",
    )
    assert raw.counts() == before


async def test_500_records_in_one_call_then_paged_back_exactly_once(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    batch = [new_record(pb.RECORD_KIND_INTERACTION, {"i": i}) for i in range(500)]
    response = await vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=vault.md(tenant))
    assert len(response.records) == 500

    found, pages = await list_all(vault, tenant, 200, kind=pb.RECORD_KIND_INTERACTION)
    assert pages == 3
    assert sorted(r.id for r in found) == sorted(r.id for r in response.records)
    assert sorted(int(r.data["i"]) for r in found) == list(range(500))

    found, pages = await list_all(vault, tenant, 0, kind=pb.RECORD_KIND_INTERACTION)  # default page size 100
    assert pages == 5 and len({r.id for r in found}) == 500


async def test_list_filters_by_subject_and_kind(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    a = await new_subject(vault, tenant)
    b = await new_subject(vault, tenant)
    for subject in (a, b):
        for kind in (pb.RECORD_KIND_NOTE, pb.RECORD_KIND_NOTE, pb.RECORD_KIND_OPPORTUNITY):
            await put(vault, tenant, new_record(kind, subject_id=subject.subject_id))

    by_subject, _ = await list_all(vault, tenant, 2, subject_id=a.subject_id)
    assert len(by_subject) == 4 and {r.subject_id for r in by_subject} == {a.subject_id}
    both, _ = await list_all(vault, tenant, 1, subject_id=a.subject_id, kind=pb.RECORD_KIND_NOTE)
    assert len(both) == 2 and {(r.subject_id, r.kind) for r in both} == {(a.subject_id, pb.RECORD_KIND_NOTE)}
    notes, _ = await list_all(vault, tenant, 3, kind=pb.RECORD_KIND_NOTE)
    assert len(notes) == 4 and {r.subject_id for r in notes} == {a.subject_id, b.subject_id}
    await expect(
        vault.records.ListRecords(pb.ListRecordsRequest(), metadata=vault.md(tenant)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "subject_id, kind or both",
    )
    await expect(
        vault.records.ListRecords(
            pb.ListRecordsRequest(kind=pb.RECORD_KIND_NOTE, page_size=501), metadata=vault.md(tenant)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size must be between 1 and 500",
    )


async def first_page_token(vault: VaultHarness, tenant: str, **query: object) -> str:
    """A next-page token of a two-record query with page size 1."""
    response = await vault.records.ListRecords(pb.ListRecordsRequest(page_size=1, **query), metadata=vault.md(tenant))
    assert response.next_page_token
    return response.next_page_token


async def test_forged_altered_and_foreign_page_tokens_are_refused(vault: VaultHarness) -> None:
    tenant, other = await vault.new_tenant(), await vault.new_tenant()
    for owner in (tenant, other):
        for _ in range(2):
            await put(vault, owner, new_record(pb.RECORD_KIND_NOTE))
            await put(vault, owner, new_record(pb.RECORD_KIND_CUSTOM))
    token = await first_page_token(vault, tenant, kind=pb.RECORD_KIND_NOTE)
    body, mac = token.split(".")
    decoded = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    altered_body = base64.urlsafe_b64encode(decoded.replace(b'",', b'0",', 1)).decode().rstrip("=")

    def listing(page_token: str, owner: str = tenant, kind: int = pb.RECORD_KIND_NOTE) -> object:
        return vault.records.ListRecords(
            pb.ListRecordsRequest(kind=kind, page_size=1, page_token=page_token), metadata=vault.md(owner)
        )

    message = "page_token is invalid or belongs to another query; repeat the query without it"
    forged = [
        "not-a-token",
        "",
        "....",
        base64.urlsafe_b64encode(b'["",4,"00000000-0000-0000-0000-000000000000"]').decode() + ".AAAA",
        f"{altered_body}.{mac}",  # body changed, old signature
        # Signature changed in its first character, which carries six whole bits of the MAC (changing its last two
        # characters to "xx" left it valid about once in 256 runs: the last one carries mostly padding bits).
        f"{body}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}",
        token + "x",
    ]
    for page_token in forged:
        if page_token:
            await expect(listing(page_token), grpc.StatusCode.INVALID_ARGUMENT, message)
    # Another tenant's token for the very same query, and this tenant's token for another query.
    await expect(listing(token, owner=other), grpc.StatusCode.INVALID_ARGUMENT, message)
    await expect(listing(token, kind=pb.RECORD_KIND_CUSTOM), grpc.StatusCode.INVALID_ARGUMENT, message)
    # The genuine token still works.
    response = await listing(token)  # type: ignore[misc]
    assert len(response.records) == 1 and not response.next_page_token


async def test_update_bumps_the_version_and_a_stale_version_is_aborted(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    contact = await new_subject(vault, tenant, {"stage": "new"})
    md = vault.md(tenant)
    updated = await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=contact.id, data=struct({"stage": "won"}), expected_version=1), metadata=md
    )
    assert updated.record.version == 2 and not updated.record.HasField("data")
    got = await get(vault, tenant, contact.id)
    assert got.data == struct({"stage": "won"}) and got.version == 2
    assert got.updated_at.ToDatetime() >= got.created_at.ToDatetime()

    await expect(
        vault.records.UpdateRecord(
            pb.UpdateRecordRequest(record_id=contact.id, data=struct({"stage": "lost"}), expected_version=1),
            metadata=md,
        ),
        grpc.StatusCode.ABORTED,
        "version 2, not 1",
        "re-read it and retry",
    )
    assert (await get(vault, tenant, contact.id)).data == struct({"stage": "won"})
    await expect(
        vault.records.UpdateRecord(
            pb.UpdateRecordRequest(record_id=contact.id, data=struct({"stage": "lost"})), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected_version is required",
    )

    note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"memo": 1}))
    await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=note.id, data=struct({"memo": 2}), expected_version=1), metadata=md
    )
    assert (await get(vault, tenant, note.id)).data == struct({"memo": 2})


async def test_delete_removes_the_record_and_honours_expected_version(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    contact = await new_subject(vault, tenant)
    await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=contact.id, data=struct({"x": 1}), expected_version=1), metadata=md
    )
    await expect(
        vault.records.DeleteRecord(pb.DeleteRecordRequest(record_id=contact.id, expected_version=1), metadata=md),
        grpc.StatusCode.ABORTED,
        "version 2, not 1",
    )
    await vault.records.DeleteRecord(pb.DeleteRecordRequest(record_id=contact.id, expected_version=2), metadata=md)
    await expect(
        vault.records.GetRecord(pb.GetRecordRequest(record_id=contact.id), metadata=md), grpc.StatusCode.NOT_FOUND
    )
    await expect(
        vault.records.DeleteRecord(pb.DeleteRecordRequest(record_id=contact.id), metadata=md), grpc.StatusCode.NOT_FOUND
    )
    note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE))
    await vault.records.DeleteRecord(pb.DeleteRecordRequest(record_id=note.id), metadata=md)  # 0 = any version
    await expect(
        vault.records.GetRecord(pb.GetRecordRequest(record_id=note.id), metadata=md), grpc.StatusCode.NOT_FOUND
    )


async def test_subjects_resolve_by_normalised_email_phone_and_external_id(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    email = canary_email()
    typed_phone, e164 = canary_phone()
    contact = await put(vault, tenant, lead(email=email, phone=typed_phone, external_id="crm-0042"))

    for query in (
        pb.ResolveSubjectRequest(email=f"  {email.upper()} "),
        pb.ResolveSubjectRequest(phone=e164),
        pb.ResolveSubjectRequest(phone=e164[3:]),  # national format, read in the default region
        pb.ResolveSubjectRequest(external_id=" crm-0042 "),
    ):
        assert (await vault.records.ResolveSubject(query, metadata=md)).subject_id == contact.subject_id
    await expect(
        vault.records.ResolveSubject(pb.ResolveSubjectRequest(external_id="CRM-0042"), metadata=md),
        grpc.StatusCode.NOT_FOUND,
        "no subject matches",
    )
    # A later lead with only the phone lands on the same subject; one with a known and a new identifier
    # links the new one to it.
    again = await put(vault, tenant, lead(phone=e164))
    assert again.subject_id == contact.subject_id
    second_email = canary_email()
    linked = await put(vault, tenant, lead(email=second_email, external_id="crm-0042"))
    assert linked.subject_id == contact.subject_id
    resolved = await vault.records.ResolveSubject(pb.ResolveSubjectRequest(email=second_email), metadata=md)
    assert resolved.subject_id == contact.subject_id


async def test_export_streams_every_record_of_the_subject_then_a_summary(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    contact = await new_subject(vault, tenant, {"n": 0})
    other = await new_subject(vault, tenant)
    for i in range(3):
        await put(vault, tenant, new_record(pb.RECORD_KIND_INTERACTION, {"n": i + 1}, subject_id=contact.subject_id))
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, subject_id=other.subject_id))

    items = await export(vault, tenant, contact.subject_id, "dsr-1")
    *records, last = items
    assert [item.WhichOneof("item") for item in records] == ["record"] * 4
    assert sorted(int(item.record.data["n"]) for item in records) == [0, 1, 2, 3]
    assert {item.record.subject_id for item in records} == {contact.subject_id}
    summary = last.summary
    assert summary.record_count == 4
    assert dict(summary.counts_by_kind) == {"RECORD_KIND_LEAD_CONTACT": 1, "RECORD_KIND_INTERACTION": 3}
    assert len(summary.sha256) == 64
    # Deterministic: the same records give the same digest; a correction changes it.
    assert (await export(vault, tenant, contact.subject_id))[-1].summary.sha256 == summary.sha256
    await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=contact.id, data=struct({"n": 9}), expected_version=1),
        metadata=vault.md(tenant),
    )
    assert (await export(vault, tenant, contact.subject_id))[-1].summary.sha256 != summary.sha256


async def test_concurrent_writers_share_one_new_subject_and_one_update_wins(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    email = canary_email()
    puts = await asyncio.gather(
        *(
            vault.records.PutRecord(pb.PutRecordRequest(record=lead({"i": i}, email=email)), metadata=md)
            for i in range(12)
        )
    )
    assert len({p.record.subject_id for p in puts}) == 1
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    assert raw.scalar("SELECT count(*) FROM vault_subjects WHERE tenant_id = :t", t=tenant) == 1

    target = puts[0].record.id
    outcomes = await asyncio.gather(
        *(
            vault.records.UpdateRecord(
                pb.UpdateRecordRequest(record_id=target, data=struct({"writer": i}), expected_version=1), metadata=md
            )
            for i in range(8)
        ),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, pb.UpdateRecordResponse)]
    losers = [o for o in outcomes if not isinstance(o, pb.UpdateRecordResponse)]
    assert len(winners) == 1 and winners[0].record.version == 2
    assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.ABORTED for o in losers)
    assert (await get(vault, tenant, target)).version == 2
    # The audit chain stayed a chain under concurrent appends.
    report = await vault.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=md)
    assert report.intact and report.entries_checked == 1 + 12 + 1 + 1  # create, puts, the update, the read
    raw.close()


async def test_export_of_more_records_than_one_chunk(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    contact = await new_subject(vault, tenant)
    md = vault.md(tenant)
    for start in range(0, 1100, 500):
        batch = [
            new_record(pb.RECORD_KIND_INTERACTION, {"i": i}, subject_id=contact.subject_id)
            for i in range(start, min(start + 500, 1100))
        ]
        await vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md)
    *records, last = await export(vault, tenant, contact.subject_id)
    assert last.summary.record_count == len(records) == 1101
    assert len({item.record.id for item in records}) == 1101
    numbered = [item.record.data["i"] for item in records if "i" in item.record.data]
    assert sorted(int(i) for i in numbered) == list(range(1100))
