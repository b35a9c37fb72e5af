"""Signed audit checkpoints: someone who can write the vault's database can rewrite an audit entry and
recompute every later hash and the head, but not the Transit signature over a head. VerifyAuditChain checks
the chain against the signed checkpoints, refuses a checkpoint whose signature does not verify, still works
after a shred, and GetAuditCheckpoint hands the tenant a signed head it can verify offline."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import hvac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.clock import ManualClock
from services.vault import audit
from services.vault.checkpoints import AuditCheckpointer, checkpoint_message
from services.vault.models import AuditEntry
from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    lead,
    new_record,
    put,
    stream_messages,
)
from tests.plugins.infra import NatsServer, OpenBaoDev
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually

ENTRY_COLUMNS = "tenant_id, seq, at, principal, principal_kind, action, target_ids, result, support_grant_id"


async def verify(vault: VaultHarness, tenant: str) -> pb.VerifyAuditChainResponse:
    return await vault.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=vault.md(tenant))


async def read(vault: VaultHarness, tenant: str, record_id: str) -> None:
    await vault.records.GetRecord(pb.GetRecordRequest(record_id=record_id), metadata=vault.md(tenant))


def rewrite_history(vault: VaultHarness, tenant: str, seq: int) -> None:
    """What a database writer can do: change entry ``seq``'s principal, then recompute every later hash and link
    and the head on the tenant row, so the plain hash chain verifies again."""
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    try:
        rows = raw.all(
            f"SELECT {ENTRY_COLUMNS}, prev_hash FROM vault_audit WHERE tenant_id = :t AND seq >= :s ORDER BY seq",
            t=tenant,
            s=seq,
        )
        prev = rows[0][-1]
        for row in rows:
            entry = AuditEntry(**dict(zip(ENTRY_COLUMNS.split(", "), row[:-1], strict=True)))
            entry.at = datetime.fromisoformat(str(entry.at))
            if entry.seq == seq:
                entry.principal = "key:mallory"
            new_hash = audit.entry_hash(prev, entry)
            raw.execute(
                "UPDATE vault_audit SET principal = :p, prev_hash = :prev, hash = :h WHERE tenant_id = :t AND seq = :s",
                p=entry.principal,
                prev=prev,
                h=new_hash,
                t=tenant,
                s=entry.seq,
            )
            prev = new_hash
        raw.execute("UPDATE vault_tenants SET audit_head = :h WHERE tenant_id = :t", h=prev, t=tenant)
    finally:
        raw.close()
    # The rewrite is complete: the hash chain alone (what VerifyAuditChain used to check) finds nothing.
    with Session(raw.engine) as session:
        assert audit.verify(session, tenant).intact


async def tenant_with_a_checkpoint_at_every_entry(vault: VaultHarness) -> tuple[str, int]:
    """A tenant with five entries, each signed by a checkpointer pass (every_entries=1); returns (tenant, last)."""
    tenant = await vault.new_tenant()
    await vault.app.checkpointer.run_once()
    contact = await put(vault, tenant, lead(email=canary_email()))
    await vault.app.checkpointer.run_once()
    for _ in range(3):
        await read(vault, tenant, contact.id)
        await vault.app.checkpointer.run_once()
    return tenant, 5


async def test_a_rewrite_with_every_later_hash_recomputed_is_caught_at_the_rewritten_entry(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url, audit_checkpoint_every_entries=1)
    tenant, last = await tenant_with_a_checkpoint_at_every_entry(vault)
    before = await verify(vault, tenant)
    assert (before.intact, before.checkpoints_verified, before.anchored_seq) == (True, last, last)

    rewrite_history(vault, tenant, 3)
    report = await verify(vault, tenant)
    assert (report.intact, report.first_broken_seq, report.fault) == (
        False,
        3,
        pb.AUDIT_FAULT_CHECKPOINT_CONTRADICTED,
    )
    assert (report.anchored_seq, report.checkpoints_verified, report.bad_checkpoint_seq) == (2, 2, 0)
    assert (await verify(vault, tenant)).first_broken_seq == 3  # a failed verification appends nothing


async def test_with_sparse_checkpoints_the_rewrite_is_bracketed_by_the_signed_heads(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    await read(vault, tenant, contact.id)
    await read(vault, tenant, contact.id)
    kept = (await vault.admin.GetAuditCheckpoint(pb.GetAuditCheckpointRequest(), metadata=vault.md(tenant))).checkpoint
    assert kept.seq == 5  # create, put, 2 reads, and this request's own entry, which the signed head includes

    rewrite_history(vault, tenant, 3)
    report = await verify(vault, tenant)
    assert (report.intact, report.fault) == (False, pb.AUDIT_FAULT_CHECKPOINT_CONTRADICTED)
    assert report.anchored_seq < 3 <= report.first_broken_seq == kept.seq
    # The tenant's own copy of the signed head (external anchoring) disagrees with the rewritten chain too.
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    assert raw.scalar("SELECT hash FROM vault_audit WHERE tenant_id = :t AND seq = 5", t=tenant) != kept.head_hash
    raw.close()


async def test_a_checkpoint_whose_signature_does_not_verify_is_refused(vault_factory: VaultFactory) -> None:
    vault = await vault_factory(audit_checkpoint_every_entries=1)
    tenant, _ = await tenant_with_a_checkpoint_at_every_entry(vault)
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    signature = raw.scalar("SELECT signature FROM vault_audit_checkpoints WHERE tenant_id = :t AND seq = 4", t=tenant)
    prefix, body = signature.rsplit(":", 1)
    forged = bytearray(base64.b64decode(body))
    forged[10] ^= 0x01
    raw.execute(
        "UPDATE vault_audit_checkpoints SET signature = :s WHERE tenant_id = :t AND seq = 4",
        s=f"{prefix}:{base64.b64encode(bytes(forged)).decode()}",
        t=tenant,
    )
    report = await verify(vault, tenant)
    assert (report.intact, report.fault, report.bad_checkpoint_seq, report.first_broken_seq) == (
        False,
        pb.AUDIT_FAULT_CHECKPOINT_SIGNATURE_INVALID,
        4,
        0,
    )
    assert report.checkpoints_verified == 4  # the four genuine ones still anchor the chain

    # A key version Transit never had is no better than a wrong signature.
    raw.execute("UPDATE vault_audit_checkpoints SET key_version = 99 WHERE tenant_id = :t AND seq = 2", t=tenant)
    assert (await verify(vault, tenant)).bad_checkpoint_seq == 2
    raw.close()


async def test_forging_the_checkpoints_along_with_the_history_is_refused(vault_factory: VaultFactory) -> None:
    vault = await vault_factory(audit_checkpoint_every_entries=1)
    tenant, _ = await tenant_with_a_checkpoint_at_every_entry(vault)
    rewrite_history(vault, tenant, 3)
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    raw.execute(
        "UPDATE vault_audit_checkpoints SET head_hash = "
        "(SELECT hash FROM vault_audit a WHERE a.tenant_id = vault_audit_checkpoints.tenant_id "
        "AND a.seq = vault_audit_checkpoints.seq) WHERE tenant_id = :t",
        t=tenant,
    )
    raw.close()
    report = await verify(vault, tenant)
    assert (report.intact, report.bad_checkpoint_seq, report.anchored_seq) == (False, 3, 2)


async def test_a_shredded_tenants_audit_still_verifies_against_its_final_signed_head(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    for _ in range(3):
        await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE))
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    await vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    last = raw.scalar("SELECT max(seq) FROM vault_audit WHERE tenant_id = :t", t=tenant)
    assert raw.all("SELECT seq, reason FROM vault_audit_checkpoints WHERE tenant_id = :t", t=tenant) == [
        (last, "shred")
    ]

    report = await verify(vault, tenant)
    assert (report.intact, report.entries_checked, report.checkpoints_verified, report.anchored_seq) == (
        True,
        last,
        1,
        last,
    )
    final = (await vault.admin.GetAuditCheckpoint(pb.GetAuditCheckpointRequest(), metadata=md)).checkpoint
    assert final.seq == last
    # The shredded chain is sealed: neither call extended it.
    assert raw.scalar("SELECT max(seq) FROM vault_audit WHERE tenant_id = :t", t=tenant) == last
    raw.close()

    rewrite_history(vault, tenant, 2)
    broken = await verify(vault, tenant)
    assert (broken.intact, broken.first_broken_seq) == (False, last)


async def test_the_signed_head_verifies_offline_with_the_public_key_and_one_changed_byte_fails(
    vault: VaultHarness, openbao: OpenBaoDev
) -> None:
    tenant = await vault.new_tenant()
    await put(vault, tenant, lead(email=canary_email()))
    checkpoint = (
        await vault.admin.GetAuditCheckpoint(pb.GetAuditCheckpointRequest(), metadata=vault.md(tenant))
    ).checkpoint
    assert (checkpoint.tenant_id, checkpoint.seq, checkpoint.key_version) == (tenant, 3, 1)
    signed_at = checkpoint.signed_at.ToDatetime(tzinfo=UTC)
    assert abs(datetime.now(UTC) - signed_at) < timedelta(minutes=1)
    # The message is rebuilt from the fields alone (the format the proto documents).
    assert (
        checkpoint.message
        == json.dumps(
            [
                "steward.audit.checkpoint.v1",
                tenant,
                3,
                checkpoint.head_hash,
                signed_at.replace(tzinfo=None).isoformat(),
            ],
            separators=(",", ":"),
        ).encode()
    )
    assert checkpoint.message == checkpoint_message(tenant, 3, checkpoint.head_hash, signed_at)

    key = Ed25519PublicKey.from_public_bytes(checkpoint.public_key)
    prefix, body = checkpoint.signature.rsplit(":", 1)
    assert prefix == "vault:v1"
    signature = base64.b64decode(body)
    key.verify(signature, checkpoint.message)  # raises if it does not verify
    for position in (0, len(checkpoint.message) // 2, len(checkpoint.message) - 1):
        changed = bytearray(checkpoint.message)
        changed[position] ^= 0x01
        try:
            key.verify(signature, bytes(changed))
            raise AssertionError(f"a message with byte {position} changed still verified")
        except Exception as exc:
            assert type(exc).__name__ == "InvalidSignature"

    # The public key is Transit's own, and Transit keeps the private half: not exportable, not deletable.
    bao = hvac.Client(url=openbao.url, token=openbao.token, timeout=5)
    info = bao.secrets.transit.read_key(checkpoint.key_name)["data"]
    assert base64.b64decode(info["keys"]["1"]["public_key"]) == checkpoint.public_key
    assert (info["type"], info["exportable"], info["deletion_allowed"]) == ("ed25519", False, False)
    assert checkpoint.key_name == "steward-audit-signing"  # outside the tenant-key namespace and its policy


async def test_heads_are_signed_every_n_entries_or_after_the_interval_by_the_injected_clock(
    vault_factory: VaultFactory, manual_clock: ManualClock
) -> None:
    vault = await vault_factory(clock=manual_clock)
    checkpointer = AuditCheckpointer(vault.app.db, vault.app.ctx, every_entries=4, interval_s=300.0)
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead(email=canary_email()))
    calls = vault.app.transit.calls
    assert await checkpointer.run_once() == 0  # two entries, just created: nothing due, no Transit call
    assert vault.app.transit.calls == calls

    manual_clock.advance(timedelta(seconds=301))
    assert await checkpointer.run_once() == 1  # never signed, created over interval_s ago
    assert await checkpointer.run_once() == 0  # nothing new
    for _ in range(3):
        await read(vault, tenant, contact.id)
    assert await checkpointer.run_once() == 0  # three new entries, last signed just now
    await read(vault, tenant, contact.id)
    assert await checkpointer.run_once() == 1  # the fourth
    await read(vault, tenant, contact.id)
    manual_clock.advance(timedelta(seconds=301))
    assert await checkpointer.run_once() == 1  # one new entry, but interval_s passed

    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    assert raw.all("SELECT seq FROM vault_audit_checkpoints WHERE tenant_id = :t ORDER BY seq", t=tenant) == [
        (2,),
        (6,),
        (7,),
    ]
    raw.close()
    assert (await verify(vault, tenant)).checkpoints_verified == 3


async def test_the_background_task_signs_due_heads_and_publishes_them_on_nats(
    vault_factory: VaultFactory, nats_server: NatsServer
) -> None:
    vault = await vault_factory(
        nats_url=nats_server.url, audit_checkpoint_every_entries=2, audit_checkpoint_interval_s=0.2
    )
    tenant = await vault.new_tenant()
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE))
    raw = RawDatabase(vault.settings.database_url.get_secret_value())

    async def published() -> list[events_pb2.Event]:
        events = [m.event() for m in await stream_messages(nats_server.url)]
        return [e for e in events if e.type == "vault.audit.checkpointed" and e.tenant_id == tenant]

    async def signed_and_published() -> bool:
        return bool(await published())

    await eventually(signed_and_published, what="a checkpoint event on the stream")
    event = (await published())[0].audit_checkpointed
    row = raw.all(
        "SELECT head_hash, signature, key_version FROM vault_audit_checkpoints WHERE tenant_id = :t AND seq = :s",
        t=tenant,
        s=event.seq,
    )
    assert row == [(event.head_hash, event.signature, event.key_version)]
    assert raw.scalar("SELECT hash FROM vault_audit WHERE tenant_id = :t AND seq = :s", t=tenant, s=event.seq) == (
        event.head_hash
    )
    raw.close()
    # The event alone is enough to check the head offline, with the public key a tenant fetched once.
    public = (
        await vault.admin.GetAuditCheckpoint(pb.GetAuditCheckpointRequest(), metadata=vault.md(tenant))
    ).checkpoint.public_key
    message = checkpoint_message(tenant, event.seq, event.head_hash, event.signed_at.ToDatetime(tzinfo=UTC))
    Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(event.signature.rsplit(":", 1)[1]), message)
