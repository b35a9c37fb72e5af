"""ReopenTenant in the vault: a closed tenant takes writes again, the reopening is audited and announced
(vault.tenant.reopened, ids only); after the shred it is refused with TENANT_SHREDDED."""

from __future__ import annotations

import grpc
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.errors import error_info
from tests.integration.vault.helpers import (
    RawDatabase,
    lead,
    new_record,
    outbox_drained,
    put,
    rpc_error,
    stream_messages,
)
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually


def _reason(err: grpc.RpcError) -> str:
    info = error_info(err)
    return info[0] if info else ""


async def test_reopened_tenant_takes_writes_again_and_the_reopening_is_audited(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant, principal="operator:alice")
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    refused = await rpc_error(
        vault.records.PutRecord(pb.PutRecordRequest(record=new_record(pb.RECORD_KIND_NOTE)), metadata=md)
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION

    reopened = (await vault.admin.ReopenTenant(pb.ReopenTenantRequest(), metadata=md)).tenant
    assert reopened.state == pb.TENANT_STATE_ACTIVE and not reopened.HasField("closed_at")
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"after": "reopen"}))

    # Reopening an active tenant changes nothing but is still audited (who tried, when).
    again = (await vault.admin.ReopenTenant(pb.ReopenTenantRequest(), metadata=md)).tenant
    assert again.state == pb.TENANT_STATE_ACTIVE
    audit = (await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=md)).events
    reopens = [e for e in audit if e.action == "tenant.reopen"]
    assert len(reopens) == 2 and reopens[0].principal == "operator:alice"
    assert (await vault.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=md)).intact


async def test_reopen_after_the_shred_is_refused_with_tenant_shredded(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    await put(vault, tenant, lead({"n": 1}, email="shredded.lead@example.org"))
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    await vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)

    err = await rpc_error(vault.admin.ReopenTenant(pb.ReopenTenantRequest(), metadata=md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(err) == "TENANT_SHREDDED"
    # Closing an already shredded tenant is refused the same way.
    err = await rpc_error(vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md))
    assert _reason(err) == "TENANT_SHREDDED"


async def test_reopen_of_unknown_tenant_is_not_found(vault: VaultHarness) -> None:
    err = await rpc_error(vault.admin.ReopenTenant(pb.ReopenTenantRequest(), metadata=vault.md("t-nonexistent")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and _reason(err) == "TENANT_NOT_FOUND"


async def test_reopen_publishes_one_id_only_event(vault_factory: VaultFactory, nats_server: NatsServer) -> None:
    vault = await vault_factory(nats_url=nats_server.url)
    tenant = await vault.new_tenant()
    md = vault.md(tenant, principal="operator:bob")
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    await vault.admin.ReopenTenant(pb.ReopenTenantRequest(), metadata=md)
    await vault.admin.ReopenTenant(pb.ReopenTenantRequest(), metadata=md)  # no second event
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    try:
        await eventually(lambda: outbox_drained(raw), what="outbox published")
    finally:
        raw.close()
    events = [m.event() for m in await stream_messages(nats_server.url)]
    reopened = [e for e in events if e.type == "vault.tenant.reopened"]
    assert len(reopened) == 1
    event = reopened[0]
    assert event.tenant_id == tenant and event.tenant_reopened.tenant_id == tenant
    assert event.tenant_reopened.reopened_by == "operator:bob" and event.tenant_reopened.reopened_at.seconds > 0
