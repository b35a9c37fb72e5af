"""EraseSubject: records, DEK and blind-index entries go, a PII-free tombstone stays (in the vault database and
in the separate ledger); a database restored from before the erasure is erased again by ApplyTombstones; a
legal hold blocks erasure and the refusal names the hold. (Start-up applying tombstones: test_restore.py.)"""

from __future__ import annotations

from pathlib import Path

import grpc
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    canary_phone,
    expect,
    export,
    get,
    lead,
    new_record,
    put,
    sqlite_backup,
)
from tests.plugins.stack import VaultFactory, VaultHarness


async def erase(vault: VaultHarness, tenant: str, subject_id: str, request_id: str = "dsr-1") -> pb.Tombstone:
    response = await vault.records.EraseSubject(
        pb.EraseSubjectRequest(subject_id=subject_id, request_id=request_id, reason="art17"),
        metadata=vault.md(tenant),
    )
    return response.tombstone


async def assert_gone(vault: VaultHarness, tenant: str, record_ids: list[str], subject_id: str, **identifiers: str):
    md = vault.md(tenant)
    for record_id in record_ids:
        await expect(
            vault.records.GetRecord(pb.GetRecordRequest(record_id=record_id), metadata=md), grpc.StatusCode.NOT_FOUND
        )
    for field, value in identifiers.items():
        await expect(
            vault.records.ResolveSubject(pb.ResolveSubjectRequest(**{field: value}), metadata=md),
            grpc.StatusCode.NOT_FOUND,
        )
    await expect(
        vault.records.ExportSubject(pb.ExportSubjectRequest(subject_id=subject_id), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect(
        vault.records.ListRecords(pb.ListRecordsRequest(subject_id=subject_id), metadata=md), grpc.StatusCode.NOT_FOUND
    )


async def test_erased_subject_cannot_be_resolved_or_read(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    email, (phone, _) = canary_email(), canary_phone()
    contact = await put(vault, tenant, lead({"n": 0}, email=email, phone=phone, external_id="crm-9"))
    sid = contact.subject_id
    notes = [await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"n": i}, subject_id=sid)) for i in range(3)]
    bystander = await put(vault, tenant, lead({"n": "keep"}, email=canary_email()))
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    key_id = raw.scalar("SELECT key_id FROM vault_subjects WHERE id = :s", s=sid)
    assert key_id in vault.app.ctx.keyring.cache

    tomb = await erase(vault, tenant, sid, "dsr-42")
    assert (tomb.subject_id, tomb.request_id, tomb.records_erased) == (sid, "dsr-42", 4)
    assert tomb.erased_at.seconds > 0

    await assert_gone(
        vault, tenant, [contact.id] + [n.id for n in notes], sid, email=email, phone=phone, external_id="crm-9"
    )
    # Nothing of the subject is left but the tombstone; the DEK is gone from the database and from memory.
    assert raw.scalar("SELECT count(*) FROM vault_records WHERE subject_id = :s", s=sid) == 0
    assert raw.scalar("SELECT count(*) FROM vault_subject_identifiers WHERE subject_id = :s", s=sid) == 0
    assert raw.scalar("SELECT count(*) FROM vault_subjects WHERE id = :s", s=sid) == 0
    assert raw.scalar("SELECT count(*) FROM vault_data_keys WHERE id = :k", k=key_id) == 0
    assert key_id not in vault.app.ctx.keyring.cache
    ledger = RawDatabase(vault.settings.tombstone_database_url.get_secret_value())
    for db in (raw, ledger):
        [(subject, digests, request_id, count)] = db.all(
            "SELECT subject_id, identifier_digests, request_id, records_erased FROM vault_tombstones"
        )
        assert (subject, request_id, count) == (sid, "dsr-42", 4)
        assert sorted(d.split(":")[0] for d in digests.split()) == ["email", "external_id", "phone"]
    raw.close()
    ledger.close()

    # Others are untouched; erasing again is NOT_FOUND; the same person may come back as a new subject.
    assert (await get(vault, tenant, bystander.id)).data["n"] == "keep"
    await expect(
        vault.records.EraseSubject(pb.EraseSubjectRequest(subject_id=sid), metadata=vault.md(tenant)),
        grpc.StatusCode.NOT_FOUND,
    )
    again = await put(vault, tenant, lead({"n": "new consent"}, email=email))
    assert again.subject_id != sid
    assert [m.record.id for m in (await export(vault, tenant, again.subject_id))[:-1]] == [again.id]


async def test_restored_database_is_erased_again_by_apply_tombstones(
    vault_factory: VaultFactory, tmp_path: Path
) -> None:
    live = await vault_factory()
    tenant = await live.new_tenant()
    email = canary_email()
    doomed = await put(live, tenant, lead({"who": "doomed"}, email=email, external_id="crm-doomed"))
    doomed_note = await put(live, tenant, new_record(pb.RECORD_KIND_NOTE, subject_id=doomed.subject_id))
    kept = await put(live, tenant, lead({"who": "kept"}, email=canary_email()))

    backup = sqlite_backup(live.settings.database_url.get_secret_value(), tmp_path / "backup-before-erasure.db")
    await erase(live, tenant, doomed.subject_id)
    # Start-up applies the tombstones newer than the database's applied mark by itself (test_restore.py). Here
    # the restored copy claims to be current, as a mark copied by hand might: only the operator's ApplyTombstones,
    # which checks every tombstone of the tenant, finds what the restore brought back.
    raw = RawDatabase(backup)
    assert raw.execute("UPDATE vault_tombstone_marks SET seq = 1 WHERE name = 'applied'") == 1
    raw.close()

    # Disaster recovery: a new vault on the restored copy, same Transit keys, same (separately kept) ledger.
    restored = await vault_factory(
        database_url=backup,
        ledger_url=live.settings.tombstone_database_url.get_secret_value(),
        key_prefix=live.settings.transit.key_prefix,
    )
    assert (await get(restored, tenant, doomed.id)).data["who"] == "doomed"  # the restore brought it back

    applied = await restored.admin.ApplyTombstones(pb.ApplyTombstonesRequest(), metadata=restored.md(tenant))
    assert (applied.tombstones_checked, applied.subjects_reerased) == (1, 1)
    await assert_gone(
        restored, tenant, [doomed.id, doomed_note.id], doomed.subject_id, email=email, external_id="crm-doomed"
    )
    assert (await get(restored, tenant, kept.id)).data["who"] == "kept"
    raw = RawDatabase(backup)
    assert raw.scalar("SELECT count(*) FROM vault_data_keys WHERE purpose = 'subject'") == 1  # only kept's
    assert raw.scalar("SELECT count(*) FROM vault_tombstones") == 1
    raw.close()

    again = await restored.admin.ApplyTombstones(pb.ApplyTombstonesRequest(), metadata=restored.md(tenant))
    assert (again.tombstones_checked, again.subjects_reerased) == (1, 0)


async def test_apply_tombstones_spares_a_subject_who_came_back_after_the_erasure(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    email = canary_email()
    first = await put(vault, tenant, lead({"who": "before"}, email=email))
    await erase(vault, tenant, first.subject_id)
    # The person signs up again later: a new subject, lawfully holding new data under the same email.
    returned = await put(vault, tenant, lead({"who": "after"}, email=email))

    applied = await vault.admin.ApplyTombstones(pb.ApplyTombstonesRequest(), metadata=vault.md(tenant))
    assert (applied.tombstones_checked, applied.subjects_reerased) == (1, 0)
    assert (await get(vault, tenant, returned.id)).data["who"] == "after"


async def test_legal_hold_blocks_erasure_naming_the_hold(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    contact = await put(vault, tenant, lead(email=canary_email()))
    sid = contact.subject_id
    for hold in ("case-2026-17", "matter:88"):
        await vault.records.SetLegalHold(pb.SetLegalHoldRequest(subject_id=sid, hold_id=hold), metadata=md)
    await vault.records.SetLegalHold(pb.SetLegalHoldRequest(subject_id=sid, hold_id="matter:88"), metadata=md)

    message = await expect(
        vault.records.EraseSubject(pb.EraseSubjectRequest(subject_id=sid), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "legal hold",
        "clear the hold",
    )
    assert "case-2026-17" in message or "matter:88" in message
    await vault.records.ClearLegalHold(pb.ClearLegalHoldRequest(subject_id=sid, hold_id="case-2026-17"), metadata=md)
    await expect(
        vault.records.EraseSubject(pb.EraseSubjectRequest(subject_id=sid), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "matter:88",
    )
    # The refusals erased nothing and left no tombstone anywhere.
    assert (await get(vault, tenant, contact.id)).id == contact.id
    ledger = RawDatabase(vault.settings.tombstone_database_url.get_secret_value())
    assert ledger.scalar("SELECT count(*) FROM vault_tombstones") == 0
    ledger.close()

    await expect(
        vault.records.ClearLegalHold(pb.ClearLegalHoldRequest(subject_id=sid, hold_id="case-2026-17"), metadata=md),
        grpc.StatusCode.NOT_FOUND,
        "no such legal hold",
    )
    for bad in ("", "case 17", "x" * 129, "case/17", "case-17\n"):
        await expect(
            vault.records.SetLegalHold(pb.SetLegalHoldRequest(subject_id=sid, hold_id=bad), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hold_id must be",
        )
    await vault.records.ClearLegalHold(pb.ClearLegalHoldRequest(subject_id=sid, hold_id="matter:88"), metadata=md)
    assert (await erase(vault, tenant, sid)).records_erased == 1
