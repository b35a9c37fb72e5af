"""``StewardClient`` re-reads its mTLS files: a renewed client certificate is used without a new client.

A real gateway (mTLS) in front of a real vault. The gateway's client CA rotates to a new PKI generation together
with the app's certificate files, and the gateway restarts on the same port (as a new pod would take over), so
every client must handshake again: one that kept the first generation is refused, the reloading one is not.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.settings import GrpcSettings, TlsSettings
from services.client import RetryPolicy, StewardClient
from services.devstack.devca import DevPki, ensure_dev_pki
from services.gateway.main import create_server
from services.gateway.settings import GatewaySettings
from tests.integration.gateway.support import TestIdP, bearer, gateway_settings, sample_details
from tests.integration.vault.helpers import new_record
from tests.plugins.infra import free_port
from tests.plugins.stack import VaultFactory

APP = "crm"


@dataclass
class MtlsGateway:
    port: int
    api_key: str
    first: DevPki
    second: DevPki
    client_ca_file: Path  # the gateway's live trust for client certificates
    settings: GatewaySettings
    handle: Any

    async def restart(self) -> None:
        """Stop the gateway and start it again on the same port, with the same settings (files re-read)."""
        await self.handle.stop(0)
        self.handle, port = await create_server(self.settings)
        assert port == self.port


def _install(source: Path, target: Path) -> None:
    """Replace ``target`` the way kubelet does: write aside, rename over."""
    staged = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staged)
    staged.replace(target)


@pytest.fixture
async def gateway(vault_factory: VaultFactory, tmp_path: Path) -> AsyncIterator[MtlsGateway]:
    first, _ = ensure_dev_pki(tmp_path / "gen1", ["gateway", APP])
    second, _ = ensure_dev_pki(tmp_path / "gen2", [APP])
    client_ca = tmp_path / "client-ca.crt"
    _install(first.ca_file, client_ca)
    vault = await vault_factory()
    idp = TestIdP(tmp_path)
    server = first["gateway"]
    tls = TlsSettings(cert_file=server.cert_file, key_file=server.key_file, client_ca_file=client_ca)
    settings = gateway_settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        idp=idp,
        vault_address=f"127.0.0.1:{vault.port}",
        grpc=GrpcSettings(tls=tls, port=free_port()),
    )
    handle, port = await create_server(settings)
    credentials = grpc.ssl_channel_credentials(
        first.ca_file.read_bytes(), first[APP].key_file.read_bytes(), first[APP].cert_file.read_bytes()
    )
    async with aio.secure_channel(f"localhost:{port}", credentials) as channel:
        admin = gateway_pb2_grpc.GatewayAdminServiceStub(channel)
        operator = bearer(idp.token("alice", ["ops:admin"]))
        created = await admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=sample_details()), metadata=operator)
        key = await admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(
                tenant_id=created.tenant.tenant_id, name="crm app", scopes=["records:read", "records:write"]
            ),
            metadata=operator,
        )
    running = MtlsGateway(port, key.token, first, second, client_ca, settings, handle)
    yield running
    await running.handle.stop(0)


def _client(gateway: MtlsGateway, cert_file: Path, key_file: Path) -> StewardClient:
    return StewardClient(
        f"127.0.0.1:{gateway.port}",
        gateway.api_key,
        ca_file=gateway.first.ca_file,
        cert_file=cert_file,
        key_file=key_file,
        server_name="localhost",
        retry=RetryPolicy(max_attempts=1),
        reload_check_s=0,
    )


def _note(text: str) -> pb.NewRecord:
    return new_record(pb.RECORD_KIND_NOTE, {"text": text})


async def test_a_client_whose_certificate_files_were_renewed_keeps_calling(
    gateway: MtlsGateway, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    cert_file, key_file = live / "tls.crt", live / "tls.key"
    _install(gateway.first[APP].cert_file, cert_file)
    _install(gateway.first[APP].key_file, key_file)
    stale = _client(gateway, gateway.first[APP].cert_file, gateway.first[APP].key_file)
    reloading = _client(gateway, cert_file, key_file)
    try:
        stored = await reloading.put_record(_note("before"))
        await stale.get_record(stored.id)

        # The app's certificate is renewed by a new CA, and the gateway now trusts only that CA.
        _install(gateway.second[APP].cert_file, cert_file)
        _install(gateway.second[APP].key_file, key_file)
        _install(gateway.second.ca_file, gateway.client_ca_file)

        await gateway.restart()

        with pytest.raises(aio.AioRpcError) as refused:
            await stale.get_record(stored.id, timeout_s=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The reloading client, the same kind of object, opened a new channel with the new files.
        assert (await reloading.get_record(stored.id)).data["text"] == "before"
        again = await reloading.put_record(_note("after"))
        assert (await reloading.get_record(again.id)).data["text"] == "after"
    finally:
        await stale.close()
        await reloading.close()
