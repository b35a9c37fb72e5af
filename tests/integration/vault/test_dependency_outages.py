"""Database outages fail closed with UNAVAILABLE (retry later), and legal holds block a tenant shred."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import expect, get, lead, new_subject, put, sqlite_backup
from tests.plugins.infra import POSTGRES_ADMIN_URL
from tests.plugins.stack import VaultFactory


@pytest.mark.postgres
async def test_database_down_gives_unavailable_not_internal_and_recovers(
    vault_factory: VaultFactory, postgres_url: str
) -> None:
    vault = await vault_factory(database_url=postgres_url)
    tenant = await vault.new_tenant()
    record = await put(vault, tenant, lead({"n": 1}, email="outage@example.com"))
    name = sa.engine.make_url(postgres_url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
    try:
        message = await expect(
            vault.records.GetRecord(pb.GetRecordRequest(record_id=record.id), metadata=vault.md(tenant)),
            grpc.StatusCode.UNAVAILABLE,
            "database is unavailable",
        )
        assert "outage" not in message
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert (await get(vault, tenant, record.id)).id == record.id


async def test_a_legal_hold_blocks_shredding_the_tenant(vault_factory: VaultFactory) -> None:
    vault = await vault_factory()
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    subject = (await new_subject(vault, tenant)).subject_id
    await vault.records.SetLegalHold(pb.SetLegalHoldRequest(subject_id=subject, hold_id="case-42"), metadata=md)
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    await expect(
        vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "legal hold case-42",
    )
    await vault.records.ClearLegalHold(pb.ClearLegalHoldRequest(subject_id=subject, hold_id="case-42"), metadata=md)
    reply = await vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)
    assert reply.certificate.subjects_removed == 1


async def test_a_database_restored_after_a_shred_fails_precondition_not_internal(
    vault_factory: VaultFactory, tmp_path: Path
) -> None:
    live = await vault_factory()
    tenant = await live.new_tenant()
    md = live.md(tenant)
    record = await put(live, tenant, lead({"n": 1}, email="restored@example.com"))
    backup = sqlite_backup(live.settings.database_url.get_secret_value(), tmp_path / "before-shred.db")
    await live.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    await live.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)

    restored = await vault_factory(database_url=backup, key_prefix=live.settings.transit.key_prefix)
    for call in (
        restored.admin.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md),
        restored.records.GetRecord(pb.GetRecordRequest(record_id=record.id), metadata=md),
    ):
        message = await expect(call, grpc.StatusCode.FAILED_PRECONDITION, "key")
        assert "restored@" not in message
