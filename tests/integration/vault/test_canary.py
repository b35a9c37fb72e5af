"""No plaintext anywhere: unique canary values planted in record data (values and field names) and in subject
identifiers must not appear in any column of any table (nor, on SQLite, anywhere in the raw file and WAL), in
the tombstone ledger, in any message on the NATS stream, in any log line or in any error message."""

from __future__ import annotations

import logging

import grpc
import pytest
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import (
    KINDS,
    RawDatabase,
    canary,
    canary_email,
    canary_phone,
    expect,
    export,
    get,
    lead,
    leaks,
    new_record,
    outbox_drained,
    put,
    rpc_error,
    stream_messages,
    struct,
)
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually


class Canaries:
    """Every planted value, in every form the vault might write it in."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def new(self, label: str = "canary") -> str:
        value = canary(label)
        self.values.append(value)
        return value

    def email(self) -> str:
        value = canary_email()
        self.values += [value, value.split("@")[0]]
        return value

    def phone(self) -> str:
        typed, e164 = canary_phone()
        self.values += [e164, e164[1:], e164[3:]]  # +91..., 91..., the national digits
        return typed


async def plant(vault: VaultHarness, tenant: str, c: Canaries) -> dict[str, tuple[str, pb.Struct]]:
    """Store, update, delete, export, restrict, hold and erase data full of canaries; returns what must read back."""
    md = vault.md(tenant)
    expected: dict[str, tuple[str, pb.Struct]] = {}
    email, phone, external = c.email(), c.phone(), c.new("ext")
    fields = {"name": c.new("name"), c.new("fieldname"): "value", "nested": {"deep": [c.new("deep")]}}
    contact = await put(vault, tenant, lead(fields, email=email.upper(), phone=phone, external_id=external))
    expected[contact.id] = (contact.subject_id, struct(fields))
    for name, kind in KINDS.items():
        data = {"text": c.new(name.lower()), "amount": 1250}
        record = await put(vault, tenant, new_record(kind, data, subject_id=contact.subject_id))
        expected[record.id] = (contact.subject_id, struct(data))
    subjectless = {"memo": c.new("memo")}
    note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, subjectless))
    expected[note.id] = ("", struct(subjectless))

    batch = [lead({"batch": c.new("batch")}, email=c.email(), phone=c.phone()) for _ in range(3)]
    batch += [new_record(pb.RECORD_KIND_CUSTOM, {"batch": c.new("batchnote")}) for _ in range(2)]
    stored = (await vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md)).records
    for message, record in zip(batch, stored, strict=True):
        expected[record.id] = (record.subject_id, message.data)

    corrected = {"name": c.new("corrected")}
    await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=contact.id, data=struct(corrected), expected_version=1), metadata=md
    )
    expected[contact.id] = (contact.subject_id, struct(corrected))
    gone = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"deleted": c.new("deleted")}))
    await vault.records.DeleteRecord(pb.DeleteRecordRequest(record_id=gone.id), metadata=md)

    assert (await vault.records.ResolveSubject(pb.ResolveSubjectRequest(email=email), metadata=md)).subject_id
    await export(vault, tenant, contact.subject_id, "dsr-export")
    await vault.records.RestrictSubject(
        pb.RestrictSubjectRequest(subject_id=stored[1].subject_id, request_id="dsr-r"), metadata=md
    )
    await vault.records.SetLegalHold(
        pb.SetLegalHoldRequest(subject_id=stored[2].subject_id, hold_id="case-7"), metadata=md
    )
    erased = stored[0]
    await vault.records.EraseSubject(
        pb.EraseSubjectRequest(subject_id=erased.subject_id, request_id="dsr-e"), metadata=md
    )
    del expected[erased.id]
    del expected[stored[1].id]  # restricted: not readable, but still stored (encrypted)
    return expected


async def refused_messages(vault: VaultHarness, tenant: str, c: Canaries) -> list[str]:
    """Bad requests whose bodies hold canaries; returns every error message."""
    md = vault.md(tenant)
    r = vault.records
    limit = vault.settings.max_record_bytes
    calls = [
        r.PutRecord(pb.PutRecordRequest(record=lead(email=f"{c.new('bademail')}@")), metadata=md),
        r.PutRecord(pb.PutRecordRequest(record=lead(email=f"{c.new('sp')} @example.com")), metadata=md),
        r.PutRecord(pb.PutRecordRequest(record=lead(phone=c.new("badphone"))), metadata=md),
        r.PutRecord(pb.PutRecordRequest(record=lead(phone="+91 00000 00000")), metadata=md),
        r.PutRecord(pb.PutRecordRequest(record=lead(external_id=c.new("longid") * 10)), metadata=md),
        r.PutRecord(
            pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE, {"big": c.new("big") * (limit // 30)})),
            metadata=md,
        ),
        r.PutRecord(pb.PutRecordRequest(record=new_record(99, {"x": c.new("kind")})), metadata=md),
        r.ResolveSubject(pb.ResolveSubjectRequest(email=c.email()), metadata=md),
        r.ResolveSubject(pb.ResolveSubjectRequest(phone=c.new("resolvephone")), metadata=md),
        r.ResolveSubject(pb.ResolveSubjectRequest(external_id=c.new("resolveext")), metadata=md),
        r.ListRecords(pb.ListRecordsRequest(kind=pb.RECORD_KIND_NOTE, page_token=c.new("token")), metadata=md),
        r.GetRecord(pb.GetRecordRequest(record_id=c.new("recordid")), metadata=md),
        r.ExportSubject(pb.ExportSubjectRequest(subject_id=c.new("subjectid")), metadata=md),
        r.SetLegalHold(
            pb.SetLegalHoldRequest(subject_id=c.new("holdsubject"), hold_id="case 1 " + c.new("hold")), metadata=md
        ),
    ]
    messages = []
    for position, call in enumerate(calls):
        exc = await rpc_error(call)
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (position, exc)
        messages.append(exc.details() or "")
    return messages


async def test_canaries_appear_nowhere_but_in_the_callers_reads(
    vault_factory: VaultFactory, database_url: str, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vault = await vault_factory(database_url=database_url, nats_url=nats_server.url, max_record_bytes=4096)
    tenant = await vault.new_tenant()
    c = Canaries()
    expected = await plant(vault, tenant, c)
    messages = await refused_messages(vault, tenant, c)

    # The owner reads back exactly what was stored.
    for record_id, (subject_id, data) in expected.items():
        got = await get(vault, tenant, record_id)
        assert (got.subject_id, got.data) == (subject_id, data)

    needles = c.values
    assert len(needles) > 30
    for message in messages:
        assert not leaks(message.encode(), needles), message

    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    ledger = RawDatabase(vault.settings.tombstone_database_url.get_secret_value())
    try:
        for db in (raw, ledger):
            for table, value in db.every_value():
                found = leaks(value, needles)
                assert not found, f"{table} holds plaintext {found}"
            if db.url.startswith("sqlite"):
                assert not leaks(db.file_bytes(), needles), "plaintext in the raw SQLite file or WAL"
        assert raw.scalar("SELECT count(*) FROM vault_records") >= len(expected)
        assert ledger.scalar("SELECT count(*) FROM vault_tombstones") == 1

        # Positive controls: the scans do see what is stored in the clear (ids), so a miss above means something.
        assert any(leaks(value, [tenant]) for _, value in raw.every_value())
        if raw.url.startswith("sqlite"):
            assert leaks(raw.file_bytes(), [tenant])

        async def published() -> bool:
            return await outbox_drained(raw)

        await eventually(published, what="outbox published")
    finally:
        raw.close()
        ledger.close()

    stream = await stream_messages(nats_server.url)
    assert len(stream) > len(expected)
    for published in stream:
        blob = published.subject.encode() + published.data + repr(sorted(published.headers.items())).encode()
        assert not leaks(blob, needles), f"{published.subject} carries plaintext"
        assert published.event().tenant_id == tenant

    logged = "\n".join(f"{r.name} {r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert not leaks(logged.encode(), needles), "plaintext in the logs"
    assert leaks(logged.encode(), [tenant]), "the log capture saw nothing"


async def test_tampered_ciphertext_is_data_loss_and_the_message_holds_no_data(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    secret = canary("tamper")
    record = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"s": secret}))
    other = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"s": "other"}))
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    # Swap two valid ciphertexts between rows: each is authentic, but bound to the other row's id.
    blob_a = raw.scalar("SELECT ciphertext FROM vault_records WHERE id = :i", i=record.id)
    blob_b = raw.scalar("SELECT ciphertext FROM vault_records WHERE id = :i", i=other.id)
    raw.execute("UPDATE vault_records SET ciphertext = :b WHERE id = :i", b=blob_b, i=record.id)
    raw.execute("UPDATE vault_records SET ciphertext = :b WHERE id = :i", b=blob_a, i=other.id)
    raw.close()
    for rid in (record.id, other.id):
        message = await expect(
            vault.records.GetRecord(pb.GetRecordRequest(record_id=rid), metadata=vault.md(tenant)),
            grpc.StatusCode.DATA_LOSS,
            "integrity check",
        )
        assert secret not in message and "other" not in message
