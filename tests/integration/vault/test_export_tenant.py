"""ExportTenant against a real vault (OpenBao Transit, SQLite and PostgreSQL): a resumed export equals an
uninterrupted one, the signed manifest verifies offline and catches a tampered chunk, continuation tokens are
refused when forged, expired or another tenant's (each with its own reason), every export is audited, a closed
tenant exports and a shredded one does not."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from grpc import aio
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.clock import ManualClock
from services.chassis.errors import error_reason
from services.cli.ops.tenant_export import MANIFEST_FILE, chunk_path, verify_export_dir
from services.vault.exports import signature_valid, whole_digest
from tests.integration.vault.helpers import canary_email, lead, new_record, put, rpc_error
from tests.plugins.stack import VaultFactory, VaultHarness

NOTE, OPPORTUNITY = pb.RECORD_KIND_NOTE, pb.RECORD_KIND_OPPORTUNITY


async def stored_tenant(vault: VaultHarness, subjects: int = 4, per_subject: int = 3) -> tuple[str, dict[str, Any]]:
    """A tenant with leads, records per lead, subject-less records, a restricted subject and a legal hold;
    returns it and {record id: data as stored}."""
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    stored: dict[str, Any] = {}
    subject_ids = []
    for i in range(subjects):
        contact = await put(vault, tenant, lead({"name": f"Lead {i}", "stage": "new"}, email=canary_email()))
        subject_ids.append(contact.subject_id)
        stored[contact.id] = {"name": f"Lead {i}", "stage": "new"}
        for j in range(per_subject):
            record = await put(vault, tenant, new_record(NOTE, {"i": i, "j": j}, subject_id=contact.subject_id))
            stored[record.id] = {"i": i, "j": j}
    for k in range(5):
        record = await put(vault, tenant, new_record(OPPORTUNITY, {"k": k}))
        stored[record.id] = {"k": k}
    await vault.records.RestrictSubject(
        pb.RestrictSubjectRequest(subject_id=subject_ids[0], request_id="r1"), metadata=md
    )
    await vault.records.SetLegalHold(pb.SetLegalHoldRequest(subject_id=subject_ids[1], hold_id="case-7"), metadata=md)
    return tenant, stored


async def read_export(
    vault: VaultHarness, tenant: str, *, token: str = "", chunk_records: int = 0, stop_after: int | None = None
) -> tuple[list[pb.ExportChunk], pb.ExportManifest | None]:
    """Chunks (and the manifest) of one ExportTenant call; ``stop_after`` drops the stream after that many chunks."""
    call = vault.records.ExportTenant(
        pb.ExportTenantRequest(continuation_token=token, chunk_records=chunk_records), metadata=vault.md(tenant)
    )
    chunks: list[pb.ExportChunk] = []
    async for item in call:
        if item.WhichOneof("item") == "manifest":
            return chunks, item.manifest
        chunks.append(item.chunk)
        if stop_after is not None and len(chunks) == stop_after:
            call.cancel()  # the client's end of the stream drops
            return chunks, None
    return chunks, None


def content(chunks: list[pb.ExportChunk]) -> list[tuple[int, list[Any], list[Any]]]:
    """Each chunk's seq, subjects and records (everything but the export id)."""
    out = []
    for chunk in chunks:
        body = pb.ExportChunkBody()
        body.ParseFromString(chunk.body)
        out.append((body.seq, [MessageToDict(s) for s in body.subjects], [MessageToDict(r) for r in body.records]))
    return out


def verifies(chunks: list[pb.ExportChunk], manifest: pb.ExportManifest) -> bool:
    """The chunks are the manifest's (digests, whole digest) and its signature verifies offline."""
    digests = [hashlib.sha256(chunk.body).hexdigest() for chunk in chunks]
    return (
        digests == list(manifest.chunk_sha256)
        and whole_digest(digests) == manifest.sha256
        and signature_valid(manifest)
    )


def write_folder(folder: Path, chunks: list[pb.ExportChunk], manifest: pb.ExportManifest) -> None:
    """Lay an export out as ``steward tenant export`` does."""
    folder.mkdir()
    for chunk in chunks:
        chunk_path(folder, chunk.seq).write_bytes(chunk.body)
    (folder / MANIFEST_FILE).write_bytes(manifest.SerializeToString())


async def test_an_export_interrupted_twice_and_resumed_equals_an_uninterrupted_one_and_verifies(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant, stored = await stored_tenant(vault)

    whole, whole_manifest = await read_export(vault, tenant, chunk_records=4)
    assert whole_manifest is not None and verifies(whole, whole_manifest)

    # First drop after 2 chunks; the resumed stream drops after 2 more, and the client lost the last of those
    # (it resumes from the token of the one before), so the vault must send that chunk again, the same.
    first, none = await read_export(vault, tenant, chunk_records=4, stop_after=2)
    assert none is None
    second, none = await read_export(vault, tenant, token=first[-1].continuation_token, stop_after=2)
    assert none is None
    rest, manifest = await read_export(vault, tenant, token=second[0].continuation_token)
    assert manifest is not None
    resumed = first + second[:1] + rest

    assert content(resumed) == content(whole)
    assert [c.seq for c in resumed] == list(range(1, len(whole) + 1))
    assert verifies(resumed, manifest)
    assert (manifest.subject_count, manifest.record_count) == (
        whole_manifest.subject_count,
        whole_manifest.record_count,
    )
    assert (
        dict(manifest.counts_by_kind)
        == dict(whole_manifest.counts_by_kind)
        == {
            "RECORD_KIND_LEAD_CONTACT": 4,
            "RECORD_KIND_NOTE": 12,
            "RECORD_KIND_OPPORTUNITY": 5,
        }
    )
    assert resumed[-1].records_done == resumed[-1].records_total == len(stored)

    # Every record, with its plaintext, exactly once; every subject, with its restriction and holds.
    exported = [record for _seq, _subjects, records in content(resumed) for record in records]
    assert {r["id"]: r["data"] for r in exported} == stored and len(exported) == len(stored)
    subjects = [s for _seq, subjects, _records in content(resumed) for s in subjects]
    assert len(subjects) == 4
    assert sum(1 for s in subjects if s.get("restricted")) == 1
    assert [s["legalHoldIds"] for s in subjects if s.get("legalHoldIds")] == [["case-7"]]


async def test_a_tampered_chunk_or_manifest_fails_verification(vault: VaultHarness, tmp_path: Path) -> None:
    tenant, _ = await stored_tenant(vault, subjects=2, per_subject=2)
    chunks, manifest = await read_export(vault, tenant, chunk_records=3)
    assert manifest is not None

    good = tmp_path / "good"
    write_folder(good, chunks, manifest)
    check = verify_export_dir(good)
    assert check.ok, check.problems

    tampered = tmp_path / "tampered"
    write_folder(tampered, chunks, manifest)
    body = bytearray(chunk_path(tampered, 2).read_bytes())
    body[-3] ^= 0x01
    chunk_path(tampered, 2).write_bytes(bytes(body))
    check = verify_export_dir(tampered)
    assert not check.ok and any("chunk 2" in p for p in check.problems), check.problems

    dropped = tmp_path / "dropped"
    write_folder(dropped, chunks, manifest)
    chunk_path(dropped, len(chunks)).unlink()
    assert not verify_export_dir(dropped).ok

    # A manifest claiming fewer records, or a re-pointed chunk list, no longer matches its signature.
    forged = pb.ExportManifest()
    forged.CopyFrom(manifest)
    forged.record_count -= 1
    assert not signature_valid(forged)
    relisted = tmp_path / "relisted"
    write_folder(relisted, chunks[:-1], manifest)
    forged.CopyFrom(manifest)
    del forged.chunk_sha256[-1]
    forged.sha256 = whole_digest(forged.chunk_sha256)
    (relisted / MANIFEST_FILE).write_bytes(forged.SerializeToString())
    check = verify_export_dir(relisted)
    assert not check.ok and any("signature" in p for p in check.problems), check.problems


async def refusal(vault: VaultHarness, tenant: str, token: str) -> tuple[grpc.StatusCode, str | None, str]:
    """(code, reason, message) of an ExportTenant call with ``token``."""
    exc: aio.AioRpcError = await rpc_error(
        vault.records.ExportTenant(pb.ExportTenantRequest(continuation_token=token), metadata=vault.md(tenant))
    )
    return exc.code(), error_reason(exc), exc.details() or ""


async def test_forged_expired_and_other_tenants_tokens_are_refused_with_distinct_reasons(
    vault_factory: VaultFactory, manual_clock: ManualClock
) -> None:
    vault = await vault_factory(clock=manual_clock)
    tenant, _ = await stored_tenant(vault, subjects=2, per_subject=1)
    other = await vault.new_tenant()
    chunks, _ = await read_export(vault, tenant, chunk_records=2, stop_after=1)
    token = chunks[0].continuation_token
    body, mac = token.split(".")

    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "EXPORT_TOKEN_INVALID")
    for forged in ("not-a-token", "abc.def", body + "." + mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]):
        assert (await refusal(vault, tenant, forged))[:2] == invalid, forged
    # The body altered (another position) with the old MAC.
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields[3] = 0
    altered = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode().rstrip("=")
    assert (await refusal(vault, tenant, altered + "." + mac))[:2] == invalid
    # Claiming the other tenant in a genuine token's body breaks the MAC too.
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields[1] = other
    renamed = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode().rstrip("=")
    assert (await refusal(vault, other, renamed + "." + mac))[:2] == invalid

    code, reason, message = await refusal(vault, other, token)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "EXPORT_TOKEN_OTHER_TENANT")
    assert tenant not in message

    # Still valid just before its expiry, refused after it (the vault's clock, moved by the test).
    manual_clock.advance(timedelta(hours=23, minutes=59))
    rest, manifest = await read_export(vault, tenant, token=token)
    assert manifest is not None and rest
    manual_clock.advance(timedelta(minutes=2))
    assert (await refusal(vault, tenant, token))[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "EXPORT_TOKEN_EXPIRED")

    for size in (-1, 5001):
        exc = await rpc_error(
            vault.records.ExportTenant(pb.ExportTenantRequest(chunk_records=size), metadata=vault.md(tenant))
        )
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    exc = await rpc_error(
        vault.records.ExportTenant(pb.ExportTenantRequest(continuation_token="x\x00y"), metadata=vault.md(tenant))
    )
    assert (exc.code(), error_reason(exc)) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_ID")


async def test_every_export_is_audited_at_start_resume_and_completion(vault: VaultHarness) -> None:
    tenant, _ = await stored_tenant(vault, subjects=2, per_subject=1)
    chunks, _ = await read_export(vault, tenant, chunk_records=1, stop_after=1)
    _, manifest = await read_export(vault, tenant, token=chunks[0].continuation_token)
    assert manifest is not None
    events = (
        await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(page_size=500), metadata=vault.md(tenant))
    ).events
    exports = [(e.action, list(e.target_ids)) for e in events if e.action.startswith("tenant.export")]
    assert exports == [
        ("tenant.export.start", [manifest.export_id]),
        ("tenant.export.resume", [manifest.export_id]),
        ("tenant.export.complete", [manifest.export_id]),
    ]
    verified = await vault.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=vault.md(tenant))
    assert verified.intact


async def test_a_closed_tenant_exports_and_a_shredded_one_does_not(vault: VaultHarness) -> None:
    tenant, stored = await stored_tenant(vault, subjects=2, per_subject=1)
    md = vault.md(tenant)
    started, _ = await read_export(vault, tenant, chunk_records=2, stop_after=1)
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    chunks, manifest = await read_export(vault, tenant)
    assert manifest is not None and manifest.record_count == len(stored) and verifies(chunks, manifest)

    holder = next(s for _seq, subjects, _r in content(chunks) for s in subjects if s.get("legalHoldIds"))["id"]
    await vault.records.ClearLegalHold(pb.ClearLegalHoldRequest(subject_id=holder, hold_id="case-7"), metadata=md)
    await vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)
    entries = (await vault.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=md)).entries_checked
    for token in ("", started[0].continuation_token):
        code, reason, _ = await refusal(vault, tenant, token)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TENANT_SHREDDED")
    # Refused before anything began: the (surviving) audit chain gained no export entry after the shred.
    verified = await vault.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=md)
    assert verified.intact and verified.entries_checked == entries


async def test_a_tenant_with_no_data_exports_an_empty_signed_manifest(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    chunks, manifest = await read_export(vault, tenant)
    assert chunks == [] and manifest is not None
    assert (manifest.subject_count, manifest.record_count, list(manifest.chunk_sha256)) == (0, 0, [])
    assert signature_valid(manifest)


async def test_chunks_stop_at_the_byte_budget(vault_factory: VaultFactory) -> None:
    vault = await vault_factory(max_record_bytes=300_000, grpc={"max_message_bytes": 1_000_000})
    tenant = await vault.new_tenant()
    for _ in range(6):
        await put(vault, tenant, new_record(NOTE, {"blob": "x" * 250_000}))
    chunks, manifest = await read_export(vault, tenant, chunk_records=5000)
    assert manifest is not None and manifest.record_count == 6
    budget = vault.app.ctx.policy.max_message_bytes
    assert len(chunks) > 1 and all(len(c.body) < budget for c in chunks)
