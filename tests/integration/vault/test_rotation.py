"""KEK rotation and DEK rewrap: RotateTenantKey adds a Transit key version, RewrapTenantKeys moves every stored DEK
to it in batches (streaming progress) and then raises min_decryption_version, so the old version can no longer
decrypt anything; record ciphertexts are never touched and every record stays readable from a cold cache."""

from __future__ import annotations

import base64

import grpc
import hvac
import pytest
from steward.vault.v1 import vault_pb2 as pb

from services.vault.sealing import key_aad
from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    expect,
    get,
    lead,
    new_record,
    put,
    struct,
)
from tests.plugins.infra import OpenBaoDev
from tests.plugins.stack import VaultFactory, VaultHarness


async def rewrap(vault: VaultHarness, tenant: str, batch_size: int) -> list[pb.RewrapTenantKeysResponse]:
    call = vault.admin.RewrapTenantKeys(pb.RewrapTenantKeysRequest(batch_size=batch_size), metadata=vault.md(tenant))
    return [step async for step in call]


def cold_cache(vault: VaultHarness) -> None:
    """Forget every unwrapped key, as a restarted replica would."""
    vault.app.ctx.keyring.cache.clear()
    vault.app.ctx.keyring.blind_cache.clear()


async def test_rotate_and_rewrap_keep_data_readable_and_retire_the_old_version(
    vault_factory: VaultFactory, database_url: str, openbao: OpenBaoDev
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    emails = [canary_email() for _ in range(7)]
    stored = {}
    for i, email in enumerate(emails):
        contact = await put(vault, tenant, lead({"i": i}, email=email))
        stored[contact.id] = struct({"i": i})
        note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"note": i}, subject_id=contact.subject_id))
        stored[note.id] = struct({"note": i})
    loose = await put(vault, tenant, new_record(pb.RECORD_KIND_CUSTOM, {"loose": True}))
    stored[loose.id] = struct({"loose": True})

    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    old_keys = raw.all("SELECT id, wrapped FROM vault_data_keys WHERE tenant_id = :t", t=tenant)
    assert len(old_keys) == 9 and all(w.startswith("vault:v1:") for _, w in old_keys)  # 7 subjects, epoch, blind
    ciphertexts = dict(raw.all("SELECT id, ciphertext FROM vault_records WHERE tenant_id = :t", t=tenant))

    assert (await vault.admin.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md)).key_version == 2
    tenant_row = (await vault.admin.GetTenant(pb.GetTenantRequest(), metadata=md)).tenant
    assert (tenant_row.key_version, tenant_row.min_decryption_version) == (2, 1)
    late = await put(vault, tenant, lead({"late": True}, email=canary_email()))  # wrapped under v2 already
    stored[late.id] = struct({"late": True})
    assert (
        raw.scalar(
            "SELECT kek_version FROM vault_data_keys k JOIN vault_subjects s ON s.key_id = k.id WHERE s.id = :s",
            s=late.subject_id,
        )
        == 2
    )

    steps = await rewrap(vault, tenant, batch_size=4)
    assert [(s.rewrapped, s.total, s.done) for s in steps] == [
        (4, 9, False),
        (8, 9, False),
        (9, 9, False),
        (9, 9, True),
    ]
    assert steps[-1].min_decryption_version == 2

    # Every DEK moved to v2; no record was re-encrypted.
    assert raw.all("SELECT DISTINCT kek_version FROM vault_data_keys WHERE tenant_id = :t", t=tenant) == [(2,)]
    assert all(
        w.startswith("vault:v2:")
        for (w,) in raw.all("SELECT wrapped FROM vault_data_keys WHERE tenant_id = :t", t=tenant)
    )
    after = dict(raw.all("SELECT id, ciphertext FROM vault_records WHERE tenant_id = :t", t=tenant))
    assert {rid: bytes(blob) for rid, blob in after.items() if rid in ciphertexts} == {
        rid: bytes(blob) for rid, blob in ciphertexts.items()
    }
    raw.close()

    # Readable from a cold cache (every DEK and the blind-index key unwrapped again under v2).
    cold_cache(vault)
    for record_id, data in stored.items():
        assert (await get(vault, tenant, record_id)).data == data
    resolved = await vault.records.ResolveSubject(pb.ResolveSubjectRequest(email=emails[3]), metadata=md)
    assert resolved.subject_id

    # The old key version is retired in Transit itself: the v1-wrapped copies (say, in a backup) are dead.
    tenant_row = (await vault.admin.GetTenant(pb.GetTenantRequest(), metadata=md)).tenant
    assert (tenant_row.key_version, tenant_row.min_decryption_version) == (2, 2)
    bao = hvac.Client(url=openbao.url, token=openbao.token, timeout=5)
    key_name = vault.app.transit.key_name(tenant)
    assert bao.secrets.transit.read_key(key_name)["data"]["min_decryption_version"] == 2
    for key_id, wrapped in old_keys:
        with pytest.raises(hvac.exceptions.InvalidRequest):
            bao.secrets.transit.decrypt_data(
                key_name, ciphertext=wrapped, associated_data=base64.b64encode(key_aad(tenant, key_id)).decode()
            )

    # Audited, and a second rotation works the same way.
    events = (await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000), metadata=md)).events
    actions = [e.action for e in events]
    assert actions.index("key.rotate") < actions.index("key.rewrap.start") < actions.index("key.rewrap.done")
    assert (await vault.admin.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md)).key_version == 3
    steps = await rewrap(vault, tenant, batch_size=0)
    assert (steps[-1].rewrapped, steps[-1].total, steps[-1].done, steps[-1].min_decryption_version) == (10, 10, True, 3)
    cold_cache(vault)
    for record_id, data in stored.items():
        assert (await get(vault, tenant, record_id)).data == data


async def test_rewrap_batches_larger_than_one_transit_call_accepts(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    batch = [lead({"i": i}, email=canary_email()) for i in range(300)]
    stored = (await vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md)).records
    await vault.admin.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md)
    steps = await rewrap(vault, tenant, batch_size=1000)
    assert [(s.rewrapped, s.total, s.done) for s in steps] == [(302, 302, False), (302, 302, True)]
    cold_cache(vault)
    assert (await get(vault, tenant, stored[-1].id)).data == struct({"i": 299})


async def test_rewrap_with_nothing_to_do_still_completes(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    steps = await rewrap(vault, tenant, batch_size=10)
    assert [(s.rewrapped, s.total, s.done, s.min_decryption_version) for s in steps] == [(0, 0, True, 1)]


async def test_rewrap_batch_size_is_bounded(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    for size in (-1, 1001):
        await expect(
            vault.admin.RewrapTenantKeys(pb.RewrapTenantKeysRequest(batch_size=size), metadata=vault.md(tenant)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "batch_size must be between 1 and 1000",
        )
