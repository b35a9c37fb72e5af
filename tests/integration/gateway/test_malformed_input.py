"""Through the gateway to a real vault: a body that does not parse comes back as the vault's INVALID_ARGUMENT
(the gateway forwards bytes), and malformed ids in the gateway's own API are INVALID_ARGUMENT naming the field,
with the gateway on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.errors import Reason, error_reason
from services.gateway.admission import MD_SUPPORT_GRANT, MD_TARGET_TENANT
from services.gateway.main import GatewayHandle, create_server
from tests.integration.gateway.support import (
    Clients,
    TestIdP,
    bearer,
    clients,
    gateway_settings,
    sample_details,
    status_of,
)
from tests.plugins.stack import VaultFactory

NUL_ID = "tnt_\x00abc"


@dataclass
class Edge:
    gateway: GatewayHandle
    c: Clients
    idp: TestIdP
    admin: tuple[tuple[str, str], ...]
    tenant: str
    key: tuple[tuple[str, str], ...]


@pytest.fixture
async def edge(vault_factory: VaultFactory, database_url: str, tmp_path: Path) -> AsyncIterator[Edge]:
    # The gateway's own database is the one under test; the vault's database has its own test (test_malformed_ids).
    vault = await vault_factory()
    idp = TestIdP(tmp_path)
    settings = gateway_settings(database_url=database_url, idp=idp, vault_address=f"127.0.0.1:{vault.port}")
    handle, port = await create_server(settings)
    c = clients(port)
    admin = bearer(idp.token("alice", ["ops:admin"]))
    created = await c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=sample_details()), metadata=admin)
    tenant = created.tenant.tenant_id
    made = await c.admin.CreateApiKey(
        gateway_pb2.CreateApiKeyRequest(
            tenant_id=tenant, name="edge", scopes=["records:read", "records:write", "keys:manage"]
        ),
        metadata=admin,
    )
    yield Edge(handle, c, idp, admin, tenant, bearer(made.token))
    await c.channel.close()
    await handle.stop(0)


BAD_BODIES = {
    "random bytes": b"\xff\xff\xff\xff\x0f\x8a",
    "invalid UTF-8": vault_pb2.GetRecordRequest(record_id="ok").SerializeToString().replace(b"ok", b"\xc3\x28"),
}


@pytest.mark.parametrize("body", sorted(BAD_BODIES))
async def test_an_undecodable_body_through_the_gateway_is_the_vaults_invalid_argument(edge: Edge, body: str) -> None:
    for method, message in (("GetRecord", "GetRecordRequest"), ("PutRecord", "PutRecordRequest")):
        call = edge.c.channel.unary_unary(f"/steward.vault.v1.VaultService/{method}")
        try:
            await call(BAD_BODIES[body], metadata=edge.key, timeout=30)
        except aio.AioRpcError as err:
            code, details, reason = err.code(), err.details() or "", error_reason(err)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert reason == Reason.UNDECODABLE_REQUEST  # the vault's reason, passed through unchanged
        assert details.startswith(f"request body is not a valid steward.vault.v1.{message}: "), details
        assert "DecodeError" not in details


async def test_a_nul_in_a_forwarded_id_is_invalid_argument(edge: Edge) -> None:
    code, details = await status_of(
        edge.c.vault.GetRecord(vault_pb2.GetRecordRequest(record_id="0190\x00"), metadata=edge.key, timeout=30)
    )
    assert (code, details.split(" ", 1)[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "record_id"), details


async def test_malformed_ids_in_the_gateways_own_api_are_invalid_argument_naming_the_field(edge: Edge) -> None:
    a, md = edge.c.admin, edge.admin
    calls = {
        "tenant_id": a.GetTenant(gateway_pb2.GetTenantRequest(tenant_id=NUL_ID), metadata=md),
        "key_id": a.RevokeApiKey(gateway_pb2.RevokeApiKeyRequest(key_id="ab\x00cd"), metadata=md),
        "grant_id": a.RevokeSupportAccess(gateway_pb2.RevokeSupportAccessRequest(grant_id="g\x00"), metadata=md),
        "page_token": a.ListSupportAccesses(
            gateway_pb2.ListSupportAccessesRequest(grant_id="g1", page_token="1\x00"), metadata=md
        ),
        MD_TARGET_TENANT: edge.c.vault_admin.CloseTenant(
            vault_pb2.CloseTenantRequest(), metadata=(*md, (MD_TARGET_TENANT, "t" * 200))
        ),
        MD_SUPPORT_GRANT: edge.c.vault.GetRecord(
            vault_pb2.GetRecordRequest(record_id="r1"),
            metadata=(*bearer(edge.idp.token("sam", ["support"])), (MD_SUPPORT_GRANT, "g 1")),
        ),
    }
    for field, call in calls.items():
        code, details = await status_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {code.name} {details}"
        assert details.startswith(f"{field} must be"), details


async def test_an_api_key_call_with_a_malformed_tenant_id_is_invalid_argument(edge: Edge) -> None:
    code, details = await status_of(
        edge.c.admin.ListApiKeys(gateway_pb2.ListApiKeysRequest(tenant_id=NUL_ID), metadata=edge.key)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("tenant_id must be"), details
