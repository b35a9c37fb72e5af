"""ExportTenant through the real gateway in front of the real vault: only the tenant admin's key (keys:manage)
exports, application keys and operators are refused, a token of another tenant's export is refused with the vault's
reason passed through unchanged; and ``steward tenant export`` resumes after a dropped stream and verifies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.errors import error_reason
from services.cli.client import GatewayCallError, GatewayClient, GatewayTarget
from services.cli.main import cli
from services.cli.ops.tenant_export import chunk_path, download_tenant_export, verify_export_dir
from services.gateway.main import GatewayHandle, create_server
from tests.integration.gateway.support import Clients, TestIdP, bearer, clients, gateway_settings, sample_details
from tests.integration.vault.helpers import canary_email, lead, new_record, rpc_error
from tests.plugins.stack import VaultFactory

APP_SCOPES = ["records:read", "records:write", "subjects:export", "subjects:erase", "dsr:manage", "audit:read"]


@dataclass
class Env:
    handle: GatewayHandle
    port: int
    c: Clients
    idp: TestIdP
    tenant_a: str
    admin_a: str
    admin_b: str
    app_a: str
    records: int


@pytest.fixture
async def env(vault_factory: VaultFactory, tmp_path: Path) -> AsyncIterator[Env]:
    vault = await vault_factory()
    idp = TestIdP(tmp_path)
    settings = gateway_settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}", idp=idp, vault_address=f"127.0.0.1:{vault.port}"
    )
    handle, port = await create_server(settings)
    c = clients(port)
    ops = bearer(idp.token("alice", ["ops:admin"]))
    tenants = []
    for name in ("Export A Ltd", "Export B Ltd"):
        made = await c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=sample_details(name)), metadata=ops)
        tenants.append(made.tenant.tenant_id)

    async def key(tenant: str, scopes: list[str]) -> str:
        request = gateway_pb2.CreateApiKeyRequest(tenant_id=tenant, name="export", scopes=scopes)
        return (await c.admin.CreateApiKey(request, metadata=ops)).token

    admin_a, admin_b = await key(tenants[0], ["keys:manage"]), await key(tenants[1], ["keys:manage"])
    app_a = await key(tenants[0], APP_SCOPES)
    records = 0
    for i in range(3):
        contact = (
            await c.vault.PutRecord(
                pb.PutRecordRequest(record=lead({"n": i}, email=canary_email())), metadata=bearer(app_a)
            )
        ).record
        batch = [new_record(pb.RECORD_KIND_NOTE, {"i": i, "j": j}, subject_id=contact.subject_id) for j in range(4)]
        await c.vault.PutRecords(pb.PutRecordsRequest(records=batch), metadata=bearer(app_a))
        records += 5
    yield Env(handle, port, c, idp, tenants[0], admin_a, admin_b, app_a, records)
    await c.channel.close()
    await handle.stop(0.5)


async def export_items(c: Clients, token: str, request: pb.ExportTenantRequest, **md: str) -> list[Any]:
    return [item async for item in c.vault.ExportTenant(request, metadata=bearer(token, **md))]


async def test_only_the_tenant_admin_key_exports_through_the_gateway(env: Env, tmp_path: Path) -> None:
    items = await export_items(env.c, env.admin_a, pb.ExportTenantRequest(chunk_records=4))
    manifest = items[-1].manifest
    assert manifest.tenant_id == env.tenant_a and manifest.record_count == env.records and manifest.subject_count == 3
    folder = tmp_path / "via-gateway"
    folder.mkdir()
    for item in items[:-1]:
        chunk_path(folder, item.chunk.seq).write_bytes(item.chunk.body)
    (folder / "manifest.pb").write_bytes(manifest.SerializeToString())
    assert verify_export_dir(folder).ok

    refusals = {
        "application key without keys:manage": bearer(env.app_a),
        "ops:admin operator": bearer(env.idp.token("alice", ["ops:admin"]), x_steward_target_tenant=env.tenant_a),
        "support engineer": bearer(env.idp.token("sam", ["support"]), x_steward_target_tenant=env.tenant_a),
    }
    for who, metadata in refusals.items():
        exc = await rpc_error(env.c.vault.ExportTenant(pb.ExportTenantRequest(), metadata=metadata))
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, who

    # Tenant B's admin resuming tenant A's export: the vault's refusal and reason pass through unchanged.
    exc = await rpc_error(
        env.c.vault.ExportTenant(
            pb.ExportTenantRequest(continuation_token=items[0].chunk.continuation_token), metadata=bearer(env.admin_b)
        )
    )
    assert (exc.code(), error_reason(exc)) == (grpc.StatusCode.PERMISSION_DENIED, "EXPORT_TOKEN_OTHER_TENANT")


class DroppingClient(GatewayClient):
    """The CLI's gateway client on a plain channel (the test gateway has no TLS), whose export stream drops with
    UNAVAILABLE after ``drop_after`` chunks, ``drops`` times."""

    def __init__(self, port: int, token: str, *, drop_after: int, drops: int) -> None:
        self.target = GatewayTarget(address=f"127.0.0.1:{port}", token=token, token_source="test")
        self.timeout_s = 30.0
        self.channel = grpc.insecure_channel(self.target.address)
        self.vault = vault_pb2_grpc.VaultServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.drop_after, self.drops, self.calls, self.received = drop_after, drops, 0, 0

    def stream(self, method: Any, request: Any, **kwargs: Any) -> Iterator[Any]:
        self.calls += 1
        stream = super().stream(method, request, **kwargs)
        for sent, item in enumerate(stream, start=1):
            self.received += 1
            yield item
            if self.calls > self.drops:
                continue
            if sent == self.drop_after:
                stream.close()
                raise GatewayCallError("UNAVAILABLE", "connection reset (injected by the test)")


async def test_the_cli_resumes_a_dropped_export_and_verifies_it(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    client = DroppingClient(env.port, env.admin_a, drop_after=2, drops=2)
    try:
        manifest = await asyncio.to_thread(download_tenant_export, client, folder, chunk_records=3)
    finally:
        client.close()
    assert client.calls == 3 and manifest.record_count == env.records
    # Resumed, not restarted: every chunk crossed the wire once, plus the manifest.
    assert client.received == len(manifest.chunk_sha256) + 1
    assert verify_export_dir(folder).ok

    verified = CliRunner().invoke(cli, ["tenant", "export", "--verify", str(folder), "--json"])
    assert verified.exit_code == 0, verified.output
    assert '"verified": true' in verified.output

    body = bytearray(chunk_path(folder, 1).read_bytes())
    body[5] ^= 0xFF
    chunk_path(folder, 1).write_bytes(bytes(body))
    refused = CliRunner().invoke(cli, ["tenant", "export", "--verify", str(folder)])
    assert refused.exit_code == 1 and "chunk 1" in refused.output
