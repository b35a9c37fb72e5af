"""Fixtures of the gateway integration tests: an IdP, the fake vault, a gateway and bootstrap credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from steward.gateway.v1 import gateway_pb2

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.gateway.main import GatewayHandle, create_server
from tests.integration.gateway.legal_stack import legal_stack  # noqa: F401 - the real-vault stack fixture
from tests.integration.gateway.support import (
    Clients,
    FakeVaultState,
    TestIdP,
    bearer,
    clients,
    gateway_settings,
    sample_details,
    start_fake_vault,
)
from tests.plugins.infra import NatsServer


@pytest.fixture
def idp(tmp_path: Path) -> TestIdP:
    return TestIdP(tmp_path)


@pytest.fixture
async def fake_vault() -> AsyncIterator[tuple[FakeVaultState, int]]:
    state = FakeVaultState()
    running = await start_fake_vault(state)
    yield state, running.port
    await running.server.stop(0)


@dataclass
class GatewayEnv:
    """A running gateway with an admin token and two tenants with all-scope keys."""

    handle: GatewayHandle
    port: int
    c: Clients
    idp: TestIdP
    vault: FakeVaultState
    admin_token: str
    tenant_a: str
    tenant_b: str
    key_a: str
    key_b: str

    def admin_md(self, **extra: str) -> Any:
        return bearer(self.admin_token, **extra)

    async def new_key(self, tenant: str, scopes: list[str], ttl: int = 0) -> tuple[str, str]:
        response = await self.c.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id=tenant, name="test key", scopes=scopes, ttl_seconds=ttl),
            metadata=self.admin_md(),
        )
        return response.token, response.api_key.key_id


ALL_SCOPES = [
    "records:read",
    "records:write",
    "subjects:export",
    "subjects:erase",
    "dsr:submit",
    "dsr:manage",
    "notify:send",
    "audit:read",
    "keys:manage",
    "support:approve",
]


async def start_env(
    idp: TestIdP,
    vault: tuple[FakeVaultState, int],
    database_url: str,
    nats_url: str | None,
    clock: Clock = SYSTEM_CLOCK,
    **overrides: Any,
) -> GatewayEnv:
    state, vault_port = vault
    settings = gateway_settings(
        database_url=database_url, idp=idp, vault_address=f"127.0.0.1:{vault_port}", nats_url=nats_url, **overrides
    )
    handle, port = await create_server(settings, clock=clock)
    c = clients(port)
    admin_token = idp.token("alice", ["ops:admin"])
    ids = []
    for name in ("Tenant A Ltd", "Tenant B Ltd"):
        created = await c.admin.CreateTenant(
            gateway_pb2.CreateTenantRequest(details=sample_details(name)), metadata=bearer(admin_token)
        )
        ids.append(created.tenant.tenant_id)
    env = GatewayEnv(handle, port, c, idp, state, admin_token, ids[0], ids[1], "", "")
    env.key_a, _ = await env.new_key(ids[0], ALL_SCOPES)
    env.key_b, _ = await env.new_key(ids[1], ALL_SCOPES)
    return env


@pytest.fixture
async def env(
    idp: TestIdP, fake_vault: tuple[FakeVaultState, int], sqlite_url: str, nats_server: NatsServer
) -> AsyncIterator[GatewayEnv]:
    gateway = await start_env(idp, fake_vault, sqlite_url, nats_server.url)
    yield gateway
    await gateway.c.channel.close()
    await gateway.handle.stop(0.5)
