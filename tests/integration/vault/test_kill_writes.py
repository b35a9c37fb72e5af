"""The vault killed with SIGKILL while many callers write to one tenant (group commit, on SQLite and PostgreSQL),
then restarted on the same databases: every write it acknowledged is there, each stored record has its audit entry
and its outbox event (nothing half-written), and the tenant's audit chain verifies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from grpc import aio
from steward.events.v1 import events_pb2
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from tests.integration.dsr.support import VaultProcess
from tests.integration.vault.helpers import RawDatabase, canary_email, lead
from tests.plugins.infra import NatsServer, OpenBaoDev
from tests.plugins.stack import VaultHarness
from tests.plugins.waiting import eventually

TENANT = "t-kill-writes"
CALLERS = 16


async def test_a_vault_killed_under_concurrent_writes_keeps_every_acknowledged_write_whole(
    tmp_path: Path, openbao: OpenBaoDev, nats_server: NatsServer, database_url: str
) -> None:
    vault = VaultProcess(tmp_path, openbao, nats_server.url, database_url=database_url)
    md = VaultHarness.md(TENANT)
    acknowledged: list[str] = []
    try:
        vault.start()
        await vault.serving()
        async with aio.insecure_channel(f"127.0.0.1:{vault.port}") as channel:
            records = vault_pb2_grpc.VaultServiceStub(channel)
            await vault_pb2_grpc.VaultAdminServiceStub(channel).CreateTenant(pb.CreateTenantRequest(), metadata=md)
            first = await records.PutRecord(
                pb.PutRecordRequest(record=lead({"name": "Test Lead"}, email=canary_email())), metadata=md
            )
            acknowledged.append(first.record.id)
            subject = first.record.subject_id

            async def write() -> None:
                while True:
                    item = pb.NewRecord(kind=pb.RECORD_KIND_NOTE, subject_id=subject)
                    item.data.update({"text": "asked about pricing"})
                    try:
                        reply = await records.PutRecord(pb.PutRecordRequest(record=item), metadata=md, timeout=10)
                    except aio.AioRpcError:
                        return  # the vault is gone
                    acknowledged.append(reply.record.id)

            callers = [asyncio.ensure_future(write()) for _ in range(CALLERS)]
            await eventually(lambda: len(acknowledged) >= 300, 60, what="writes acknowledged")
            vault.kill9()
            await asyncio.gather(*callers)

        vault.start()
        await vault.serving()
        async with aio.insecure_channel(f"127.0.0.1:{vault.port}") as channel:
            chain = await vault_pb2_grpc.VaultAdminServiceStub(channel).VerifyAuditChain(
                pb.VerifyAuditChainRequest(), metadata=md
            )
        assert chain.intact, chain
    finally:
        vault.close()

    raw = RawDatabase(vault.database_url or f"sqlite:///{tmp_path / 'vault.db'}")
    try:
        with raw.engine.connect() as conn:
            stored = set(conn.scalars(sa.text("SELECT id FROM vault_records WHERE tenant_id = :t"), {"t": TENANT}))
            audited = {
                rid
                for targets in conn.scalars(
                    sa.text("SELECT target_ids FROM vault_audit WHERE tenant_id = :t AND action = 'records.put'"),
                    {"t": TENANT},
                )
                for rid in targets.split()
            }
            published = {
                ref.record_id
                for payload in conn.scalars(sa.text("SELECT payload FROM outbox"))
                for ref in events_pb2.Event.FromString(payload).record_changed.records
            }
    finally:
        raw.close()
    assert set(acknowledged) <= stored  # no acknowledged write lost
    assert stored == audited == published  # a record, its audit entry and its event: all three or none
